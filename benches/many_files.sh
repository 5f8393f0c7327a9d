#!/usr/bin/env bash
# Peak memory (and time) of backing up many small files: N files (default
# 1,000,000) of 50-250 bytes, each unique, in directories of 1,000.
#
#   benches/many_files.sh [N]        (work dir: $MANY_WORK or /tmp/tessera-many)
#
# Prints tessera's and restic's wall time and peak RSS for the first and
# an unchanged second backup. The tree is kept between runs (making a
# million files takes a minute); delete the work dir to start over.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
N=${1:-1000000}
WORK=${MANY_WORK:-/tmp/tessera-many}
TREE=$WORK/tree-$N
mkdir -p "$WORK"
if [ ! -f "$TREE/.complete" ]; then
  rm -rf "$TREE"
  python3 - "$TREE" "$N" <<'PY'
import os, random, sys
root, n = sys.argv[1], int(sys.argv[2])
rng = random.Random(1)
for i in range(n):
    d = os.path.join(root, "d%04d" % (i // 1000))
    if i % 1000 == 0:
        os.makedirs(d)
    with open(os.path.join(d, "f%07d.txt" % i), "wb") as f:
        f.write(b"file %d " % i + rng.randbytes(rng.randint(25, 120)).hex().encode())
open(os.path.join(root, ".complete"), "w").close()
PY
fi
(cd "$ROOT" && cargo build --release --locked -q -p tessera-cli)
TESSERA=$ROOT/target/release/tessera
export TESSERA_PASSWORD=bench RESTIC_PASSWORD=bench
export TESSERA_REPO=$WORK/repo-tessera RESTIC_REPOSITORY=$WORK/repo-restic
export TESSERA_CACHE_DIR=$WORK/cache-tessera RESTIC_CACHE_DIR=$WORK/cache-restic
rm -rf "$TESSERA_REPO" "$RESTIC_REPOSITORY" "$TESSERA_CACHE_DIR" "$RESTIC_CACHE_DIR"
"$TESSERA" init -q >/dev/null
measure() {
  local name=$1; shift
  /usr/bin/time -f "%e %M" -o "$WORK/time.out" "$@" >/dev/null
  read -r s m <"$WORK/time.out"
  printf '| %s | %s | %d |\n' "$name" "$s" $((m / 1024))
}
echo "$N files"
echo
echo "| run | seconds | peak RSS (MiB) |"
echo "|---|---|---|"
measure "tessera first backup" "$TESSERA" backup -q "$TREE"
measure "tessera unchanged backup" "$TESSERA" backup -q "$TREE"
if command -v restic >/dev/null; then
  restic init >/dev/null
  measure "restic first backup" restic backup -q "$TREE"
  measure "restic unchanged backup" restic backup -q "$TREE"
fi
