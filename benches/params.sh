#!/usr/bin/env bash
# Measures the two defaults chosen by measurement: chunk size (dedup after
# small edits vs speed vs index entries) and data pack size (local-disk
# backup speed vs objects per GiB, i.e. S3 requests).
# Usage: benches/params.sh [MiB of input, default 512]
set -euo pipefail
cd "$(dirname "$0")/.."
cargo build --release -q -p tessera-cli
T=$PWD/target/release/tessera
MIB=${1:-512}
W=$(mktemp -d /tmp/tessera-params.XXXX)
trap 'rm -rf "$W"' EXIT
export TESSERA_PASSWORD=params
python3 - "$W" "$MIB" <<'PY'
import os, random, sys
w, mib = sys.argv[1], int(sys.argv[2])
rnd = random.Random(1)
words = [bytes(rnd.choice(b"abcdefghijklmnopqrstuvwxyz") for _ in range(rnd.randint(2, 9))) for _ in range(5000)]
# Half text-like (compressible), half random (incompressible).
text = bytearray()
while len(text) < mib * 2**19:
    text += b" ".join(rnd.choice(words) for _ in range(12)) + b"\n"
data = bytes(text[: mib * 2**19]) + os.urandom(mib * 2**19)
open(f"{w}/day0", "wb").write(data)
# A "day of edits": 64 inserts/overwrites of 1-4 KiB at random places.
d = bytearray(data)
for _ in range(64):
    at, n = rnd.randrange(len(d)), rnd.randint(1024, 4096)
    if rnd.random() < 0.5:
        d[at:at] = os.urandom(n)
    else:
        d[at:at + n] = os.urandom(n)
open(f"{w}/day1", "wb").write(bytes(d))
PY
size() { du -sb "$1" | cut -f1; }
calc() { python3 -c "print($1)"; }
now() { date +%s.%N; }
echo "input: $MIB MiB (half text, half random), then 64 small edits"
echo
echo "| chunk min/avg/max KiB | day0 backup s | MB/s | chunks | day1 added KiB | added / edited bytes |"
echo "|---|---|---|---|---|---|"
for cs in 128,512,2048 256,1024,4096 512,1024,4096 512,1024,8192 1024,2048,8192; do
  R=$W/repo-$cs; $T -q -r "$R" init --kdf-memory 64 --kdf-iterations 1 --chunk-sizes $cs >/dev/null
  sync; t0=$(now); $T -q -r "$R" backup --stdin --stdin-name s < "$W/day0"; t1=$(now)
  chunks=$($T -r "$R" stats --json | python3 -c 'import json,sys; print(json.load(sys.stdin)["chunks"])')
  before=$(size "$R"); $T -q -r "$R" backup --stdin --stdin-name s < "$W/day1"; after=$(size "$R")
  secs=$(calc "$t1 - $t0")
  printf '| %s | %.2f | %.0f | %s | %d | %.0f |\n' "${cs//,//}" "$secs" "$(calc "$MIB * 1.048576 / $secs")" "$chunks" $(( (after - before) / 1024 )) "$(calc "($after - $before) / (64 * 2560)")"
  rm -rf "$R"
done
echo
echo "| data pack MiB | backup s | MB/s | packs per GiB stored |"
echo "|---|---|---|---|"
for ps in 4 8 16 32 64; do
  R=$W/repo-p$ps; $T -q -r "$R" init --kdf-memory 64 --kdf-iterations 1 --pack-size $ps >/dev/null
  sync; t0=$(now); $T -q -r "$R" backup --stdin --stdin-name s < "$W/day0"; sync; t1=$(now)
  packs=$(find "$R/packs" -type f | wc -l); stored=$(size "$R/packs")
  secs=$(calc "$t1 - $t0")
  printf '| %s | %.2f | %.0f | %.0f |\n' "$ps" "$secs" "$(calc "$MIB * 1.048576 / $secs")" "$(calc "$packs * 1073741824 / $stored")"
  rm -rf "$R"
done
