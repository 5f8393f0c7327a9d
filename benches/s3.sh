#!/usr/bin/env bash
# Backup and restore throughput to a local S3-compatible server (s3s-fs on
# 127.0.0.1) against local disk, for tessera and restic, side by side in
# one run. Prints wall seconds, MB/s of corpus and the ratios.
#
#   benches/s3.sh            the shared corpus with big/ reduced (~1.1 GB)
#   S3_BENCH_SMALL=1 ...     only the 58k small files (~0.7 GB)
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
WORK=${S3_BENCH_WORK:-/tmp/tessera-s3-bench}
BENCH=${SHARED_BENCH:-$ROOT/../shared/bench}
command -v restic >/dev/null || { apt-get update -qq && apt-get install -y -qq restic >/dev/null; }
command -v s3s-fs >/dev/null || [ -x "$HOME/.cargo/bin/s3s-fs" ] || cargo install s3s-fs --version 0.14.1 --locked --features binary
export PATH=$PATH:$HOME/.cargo/bin
(cd "$ROOT" && cargo build --release --locked -q -p tessera-cli)
TESSERA=$ROOT/target/release/tessera

rm -rf "$WORK"; mkdir -p "$WORK/s3/bench"
bash "$BENCH/make_corpus.sh" "$WORK/corpus" >"$WORK/corpus.log"
truncate -s 64M "$WORK/corpus/big/bigtext.dat"
rm -f "$WORK/corpus/big/random.dat"
[ "${S3_BENCH_SMALL:-0}" = 1 ] && rm -rf "$WORK/corpus/big" "$WORK/corpus/vm"
CORPUS=$WORK/corpus
MB=$(du -sm --apparent-size "$CORPUS" | cut -f1)

PORT=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
s3s-fs --host 127.0.0.1 --port "$PORT" --access-key bench --secret-key benchsecret "$WORK/s3" >"$WORK/s3s.log" 2>&1 &
S3PID=$!
trap 'kill $S3PID 2>/dev/null || true' EXIT
until (exec 3<>/dev/tcp/127.0.0.1/"$PORT") 2>/dev/null; do sleep 0.1; done

export AWS_ENDPOINT_URL=http://127.0.0.1:$PORT AWS_ACCESS_KEY_ID=bench AWS_SECRET_ACCESS_KEY=benchsecret AWS_ALLOW_HTTP=true AWS_REGION=us-east-1
export TESSERA_PASSWORD=bench RESTIC_PASSWORD=bench
declare -A SECS

warm() { find "$@" -type f -print0 | xargs -0 -r -n 512 cat >/dev/null; }
# time_it KEY COMMAND...: wall seconds of COMMAND, inputs warmed first.
time_it() {
  local key=$1; shift
  sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true
  warm "$CORPUS"
  local t0 t1
  t0=$(date +%s.%N); "$@" >/dev/null 2>"$WORK/$key.err" || { cat "$WORK/$key.err"; exit 1; }; t1=$(date +%s.%N)
  SECS[$key]=$(echo "$t1 - $t0" | bc)
}

for where in local s3; do
  if [ $where = local ]; then T=$WORK/repo-tessera; R=$WORK/repo-restic
  else T=s3://bench/tessera; R=s3:http://127.0.0.1:$PORT/bench/restic; fi
  "$TESSERA" -r "$T" -q init --kdf-memory 65536 --kdf-iterations 3
  restic -r "$R" init -q
  time_it "tessera-$where-backup" "$TESSERA" -r "$T" --cache-dir "$WORK/cache-t-$where" -q backup "$CORPUS"
  time_it "restic-$where-backup" restic -r "$R" --cache-dir "$WORK/cache-r-$where" -q backup "$CORPUS"
  rm -rf "$WORK/out"; time_it "tessera-$where-restore" "$TESSERA" -r "$T" --cache-dir "$WORK/cache-t-$where" -q restore latest --target "$WORK/out"
  rm -rf "$WORK/out"; time_it "restic-$where-restore" restic -r "$R" --cache-dir "$WORK/cache-r-$where" -q restore latest --target "$WORK/out"
  rm -rf "$WORK/out"
done

printf '\ncorpus: %s MB apparent; seconds (MB/s)\n' "$MB"
printf '| step | tessera local | tessera S3 | restic local | restic S3 | tessera S3 / local | tessera / restic on S3 |\n|---|---|---|---|---|---|---|\n'
for step in backup restore; do
  tl=${SECS[tessera-local-$step]} ts=${SECS[tessera-s3-$step]} rl=${SECS[restic-local-$step]} rs=${SECS[restic-s3-$step]}
  f() { printf '%.2f (%.0f)' "$1" "$(echo "$MB / $1" | bc -l)"; }
  printf '| %s | %s | %s | %s | %s | %.2f | %.2f |\n' "$step" "$(f "$tl")" "$(f "$ts")" "$(f "$rl")" "$(f "$rs")" \
    "$(echo "$ts / $tl" | bc -l)" "$(echo "$ts / $rs" | bc -l)"
done
