#!/usr/bin/env bash
# Prune time and peak memory on a repository of about 1.5 million chunks.
#
#   benches/prune.sh [CHUNKS]      (default 1,000,000)
#
# Two backups of a directory tree, with fixed 4 KiB chunks: A holds CHUNKS
# unique blocks in 1 MiB files (50 files per directory), B the second
# half of A's files plus as many new ones (so the repository holds
# 1.5 x CHUNKS blobs). A is forgotten, then `prune` marks, repacks and
# deletes; it is timed with /usr/bin/time (wall, peak RSS). Every block is
# a counter plus a fixed pattern: unique, yet it compresses to a few dozen
# bytes, so the repository stays small. The trees are written to
# /dev/shm when it exists (CHUNKS x 4 KiB each). B is restored and
# compared afterwards, and `check` must pass.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
N=${1:-1000000}
WORK=${PRUNE_WORK:-/tmp/tessera-prune-bench}
TREES=/dev/shm/tessera-prune-bench
[ -d /dev/shm ] || TREES=$WORK/trees
export TESSERA_PASSWORD=bench TESSERA_CACHE_DIR=$WORK/cache
(cd "$ROOT" && cargo build --release --locked -q -p tessera-cli)
T=$ROOT/target/release/tessera
rm -rf "$WORK" "$TREES"; mkdir -p "$WORK" "$TREES"
trap 'rm -rf "$TREES"' EXIT
# tree DIR FIRST COUNT: COUNT 4 KiB blocks numbered from FIRST, 256 per file.
tree() {
  python3 - "$1" "$2" "$3" <<'PY'
import os, struct, sys
root, first, count = sys.argv[1], int(sys.argv[2]), int(sys.argv[3])
pattern = bytes(range(256)) * 16
buf = bytearray(pattern * 256)
for f in range(count // 256):
    number = first // 256 + f
    d = os.path.join(root, f"d{number // 50:05}")
    os.makedirs(d, exist_ok=True)
    for i in range(256):
        struct.pack_into("<Q", buf, i * 4096, number * 256 + i)
    with open(os.path.join(d, f"f{number:07}"), "wb") as out:
        out.write(buf)
PY
}
secs() { local s e; s=$(date +%s.%N); "$@" >/dev/null; e=$(date +%s.%N); echo "$e - $s" | bc; }
"$T" -r "$WORK/repo" init -q --fixed-chunks 4
tree "$TREES/a" 0 "$N"
a=$(secs "$T" -r "$WORK/repo" backup -q --tag a "$TREES/a")
rm -rf "$TREES/a"
tree "$TREES/b" $((N / 2)) "$N"
b=$(secs "$T" -r "$WORK/repo" backup -q --tag b "$TREES/b")
"$T" -r "$WORK/repo" forget -q --keep-tag b --group-by ''
stats=$("$T" -r "$WORK/repo" stats --json)
/usr/bin/time -f "%e %M" -o "$WORK/time" "$T" -r "$WORK/repo" prune --json >"$WORK/prune.json"
read -r wall rss <"$WORK/time"
# B restores bit for bit; the repository checks clean.
"$T" -r "$WORK/repo" restore -q latest --target "$WORK/out"
diff -r "$TREES/b" "$WORK/out$TREES/b"
rm -rf "$WORK/out"
"$T" -r "$WORK/repo" check -q
python3 - "$N" "$a" "$b" "$wall" "$rss" "$WORK/prune.json" "$stats" <<'PY'
import json, sys
n, a, b, wall, rss = int(sys.argv[1]), float(sys.argv[2]), float(sys.argv[3]), float(sys.argv[4]), int(sys.argv[5])
r = json.load(open(sys.argv[6]))
s = json.loads(sys.argv[7])
print(f"chunks in the index before prune: {s['chunks']:,} (index {s['index_memory_bytes'] / 2**20:.1f} MiB in RAM)")
print(f"backups: A {a:.1f} s, B {b:.1f} s")
print(f"prune: {wall:.2f} s wall, peak RSS {rss / 1024:.0f} MiB")
print(f"  {r['blobs_used']:,} of {r['blobs']:,} blobs used; {r['packs']} packs; "
      f"{r['packs_unused']} unused, {r['packs_repacked']} repacked ({r['blobs_repacked']:,} blobs); "
      f"deleted {r['packs_deleted']} packs, freed {r['bytes_freed'] / 2**20:.1f} MiB; "
      f"segments {r['segments_before']} -> {r['segments_after']}")
PY
