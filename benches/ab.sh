#!/usr/bin/env bash
# Before/after benchmark of two tessera builds on the benchmark corpus, side
# by side in one run (a change that should not change speed, e.g. a
# refactoring, is shown to be within noise):
#
#   benches/ab.sh OLD_BINARY [NEW_BINARY]      NEW defaults to this tree's release build
#   AB_QUICK=1 benches/ab.sh ...               big/ reduced to 64 MiB of text (as e2e.sh --quick)
#   AB_REPEAT=3 benches/ab.sh ...              every step 3 times, builds interleaved; medians
#
# Steps per build, each with the page cache dropped and its inputs read back
# in: initial backup, unchanged re-backup, backup after one mutate.sh day,
# full restore, check --read-data. Prints a Markdown table of seconds and
# the ratio new/old. Each round uses fresh repositories for both builds.
set -euo pipefail
export LC_ALL=C
ROOT=$(cd "$(dirname "$0")/.." && pwd)
OLD=${1:?usage: benches/ab.sh OLD_BINARY [NEW_BINARY]}
NEW=${2:-}
if [ -z "$NEW" ]; then
  (cd "$ROOT" && cargo build --release --locked -q -p tessera-cli)
  NEW=${CARGO_TARGET_DIR:-$ROOT/target}/release/tessera
fi
WORK=${AB_WORK:-/tmp/tessera-ab}
BENCH=${SHARED_BENCH:-$ROOT/../shared/bench}
[ -f "$BENCH/make_corpus.sh" ] || BENCH=$ROOT/benches/corpus
REPEAT=${AB_REPEAT:-1}

rm -rf "$WORK"
mkdir -p "$WORK"
bash "$BENCH/make_corpus.sh" "$WORK/corpus" >"$WORK/corpus.log"
if [ "${AB_QUICK:-0}" = 1 ]; then
  truncate -s 64M "$WORK/corpus/big/bigtext.dat"
  rm -f "$WORK/corpus/big/random.dat"
fi
cp -a "$WORK/corpus" "$WORK/pristine"
export TESSERA_PASSWORD=bench

drop_caches() { sync; echo 3 >/proc/sys/vm/drop_caches 2>/dev/null || true; }
warm() { find "$@" -type f -print0 | xargs -0 -r -n 512 cat >/dev/null; }
declare -A SECS
# run BUILD STEP ROUND INPUT -- COMMAND...
run() {
  local build=$1 step=$2 round=$3 input=$4; shift 5
  drop_caches
  warm "$input"
  local rc=0
  /usr/bin/time -f "%e" -o "$WORK/time.out" "$@" >"$WORK/$build.$step.log" 2>&1 || rc=$?
  if [ $rc -ne 0 ] && [ $rc -ne 3 ]; then
    echo "ab: $build $step failed ($rc):" >&2
    tail -20 "$WORK/$build.$step.log" >&2
    exit 1
  fi
  SECS[$build.$step.$round]=$(cat "$WORK/time.out")
  printf '%-4s %-10s round %d %7.2f s\n' "$build" "$step" "$round" "${SECS[$build.$step.$round]}" >&2
}

for r in $(seq 1 "$REPEAT"); do
  rm -rf "$WORK/corpus" "$WORK"/repo-* "$WORK"/restore-* "$WORK"/cache-*
  cp -a "$WORK/pristine" "$WORK/corpus"
  for b in old new; do
    bin=$OLD; [ $b = new ] && bin=$NEW
    TESSERA_REPO=$WORK/repo-$b "$bin" init -q >/dev/null
  done
  for step in initial unchanged day; do
    [ $step = day ] && bash "$BENCH/mutate.sh" "$WORK/corpus" 1 >"$WORK/mutate.log"
    for b in old new; do
      bin=$OLD; [ $b = new ] && bin=$NEW
      run $b $step "$r" "$WORK/corpus" -- env TESSERA_REPO="$WORK/repo-$b" TESSERA_CACHE_DIR="$WORK/cache-$b" "$bin" backup -q "$WORK/corpus"
    done
  done
  for b in old new; do
    bin=$OLD; [ $b = new ] && bin=$NEW
    mkdir -p "$WORK/restore-$b"
    run $b restore "$r" "$WORK/repo-$b" -- env TESSERA_REPO="$WORK/repo-$b" "$bin" restore -q latest --target "$WORK/restore-$b"
  done
  diff -r --no-dereference "$WORK/restore-old$WORK/corpus" "$WORK/restore-new$WORK/corpus" >/dev/null ||
    { echo "ab: the two builds restored different trees" >&2; exit 1; }
  for b in old new; do
    bin=$OLD; [ $b = new ] && bin=$NEW
    run $b check "$r" "$WORK/repo-$b" -- env TESSERA_REPO="$WORK/repo-$b" TESSERA_CACHE_DIR="$WORK/cache-$b" "$bin" check -q --read-data
  done
done

median() { sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}'; }
echo
echo "Corpus: $(find "$WORK/pristine" -type f | wc -l) files, $(du -sb --apparent-size "$WORK/pristine" | cut -f1) bytes apparent; median of $REPEAT round(s)"
echo
echo "| step | old (s) | new (s) | new/old |"
echo "|---|---|---|---|"
for step in initial unchanged day restore check; do
  o=$(for r in $(seq 1 "$REPEAT"); do echo "${SECS[old.$step.$r]}"; done | median)
  n=$(for r in $(seq 1 "$REPEAT"); do echo "${SECS[new.$step.$r]}"; done | median)
  echo "| $step | $o | $n | $(python3 -c "import sys; print(f'{float(sys.argv[2])/float(sys.argv[1]):.2f}')" "$o" "$n") |"
done
echo "| repository (MB) | $(($(du -sb "$WORK/repo-old" | cut -f1) / 1000000)) | $(($(du -sb "$WORK/repo-new" | cut -f1) / 1000000)) | |"
