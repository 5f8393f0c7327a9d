#!/usr/bin/env bash
# End-to-end benchmark: tessera against restic and Borg (Debian's packages) on
# the shared benchmark corpus, side by side in one run.
#
#   benches/e2e.sh            full corpus (~2.5 GB apparent, 57k files)
#   benches/e2e.sh --quick    CI's reduced run: big/ reduced to 64 MiB of text
#   E2E_REPEAT=3 benches/e2e.sh   restore and check run 3 times (tools
#                             interleaved, each restore into a new directory);
#                             the table shows medians, as PERF-BASELINES does
#   E2E_KEEP=1                keep the work directory (a mounted fresh ext4
#                             when run as root; see below) after the run
#
# Steps, each timed per tool with the page cache dropped and the step's
# inputs read back in first: initial backup, unchanged re-backup, backup
# after one mutate.sh day, full restore of the last snapshot, check with
# all data read. Then repository size and peak RSS. Prints a Markdown
# table with ratios ours / restic. Tools run interleaved per step, so a
# noisy neighbour hits all of them alike.
set -euo pipefail
export LC_ALL=C
ROOT=$(cd "$(dirname "$0")/.." && pwd)
QUICK=0
[ "${1:-}" = "--quick" ] && QUICK=1
WORK=${E2E_WORK:-/tmp/tessera-e2e}
BENCH=${SHARED_BENCH:-$ROOT/../shared/bench}
[ -f "$BENCH/make_corpus.sh" ] || BENCH=$ROOT/benches/corpus
TOOLS=(tessera restic borg)
REPEAT=${E2E_REPEAT:-1}

# The peers and tools, from Debian's packages.
if ! command -v restic >/dev/null || ! command -v borg >/dev/null || [ ! -x /usr/bin/time ] || ! command -v openssl >/dev/null; then
  SUDO=""; [ "$(id -u)" = 0 ] || SUDO=sudo
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq restic borgbackup time openssl python3 >/dev/null
fi

(cd "$ROOT" && cargo build --release --locked -q -p tessera-cli)
TESSERA=$ROOT/target/release/tessera

# A fresh ext4 for every run (root only: a sparse image on a loop device
# with direct I/O, so its pages are not cached twice), removed at exit.
# Leftovers of an earlier run must not skew this one: on an ext4 without a
# journal (these machines' root), every new inode is checked against the
# inodes deleted in the last 1-6 minutes, so restoring 58k files shortly
# after deleting an earlier run's 230k cost both tools ~3 CPU-s of that
# scan (tessera 2.8 -> 6.2 s, restic 10 -> 15 s). E2E_FRESH_FS=0: use a
# plain directory.
IMG=$WORK.img
LOOP=""
cleanup() {
  if [ -n "$LOOP" ] && [ "${E2E_KEEP:-0}" != 1 ]; then
    umount "$WORK" 2>/dev/null || umount -l "$WORK" 2>/dev/null || true
    losetup -d "$LOOP" 2>/dev/null || true
    rm -f "$IMG"
  fi
}
if mountpoint -q "$WORK" 2>/dev/null; then umount "$WORK"; fi
for dev in $(losetup -j "$IMG" -O NAME -n 2>/dev/null); do losetup -d "$dev"; done
rm -rf "$WORK" "$IMG"
mkdir -p "$WORK"
if [ "${E2E_FRESH_FS:-1}" = 1 ] && [ "$(id -u)" = 0 ] && command -v mkfs.ext4 >/dev/null; then
  avail=$(df --output=avail -B1 "$(dirname "$WORK")" | tail -1)
  size=$((avail * 9 / 10 >> 20 << 20)); [ $size -gt $((64 << 30)) ] && size=$((64 << 30))
  truncate -s "$size" "$IMG"
  if mkfs.ext4 -q -F -N 3000000 -E lazy_itable_init=0,lazy_journal_init=0 "$IMG" >/dev/null &&
    LOOP=$(losetup --direct-io=on -f --show "$IMG") && mount "$LOOP" "$WORK"; then
    trap cleanup EXIT
  else
    echo "e2e: no loop device for a fresh ext4: running in a plain directory" >&2
    [ -n "$LOOP" ] && losetup -d "$LOOP"
    LOOP=""
    rm -f "$IMG"
  fi
fi
bash "$BENCH/make_corpus.sh" "$WORK/corpus" >"$WORK/corpus.log"
# Quick: big/ shrunk to 64 MiB of text (mutate.sh edits its middle), no random file.
if [ $QUICK = 1 ]; then
  truncate -s 64M "$WORK/corpus/big/bigtext.dat"
  rm -f "$WORK/corpus/big/random.dat"
fi
CORPUS=$WORK/corpus

export TESSERA_PASSWORD=bench RESTIC_PASSWORD=bench BORG_PASSPHRASE=bench
export TESSERA_REPO=$WORK/repo-tessera RESTIC_REPOSITORY=$WORK/repo-restic
export TESSERA_CACHE_DIR=$WORK/cache-tessera RESTIC_CACHE_DIR=$WORK/cache-restic
export BORG_BASE_DIR=$WORK/borg-base BORG_REPO=$WORK/repo-borg
export BORG_UNKNOWN_UNENCRYPTED_REPO_ACCESS_IS_OK=yes BORG_RELOCATED_REPO_ACCESS_IS_OK=yes

drop_caches() {
  sync
  if ! echo 3 >/proc/sys/vm/drop_caches 2>/dev/null; then
    echo "e2e: cannot drop the page cache (not root?): timings are warm" >&2
  fi
}
# Reads files back into the page cache (cat, not tar: tar skips /dev/null output).
warm() { find "$@" -type f -print0 | xargs -0 -r -n 512 cat >/dev/null; }

declare -A SECS RSS
# run TOOL STEP INPUT... -- COMMAND...: times COMMAND after dropping the
# cache and reading INPUT back in.
run() {
  local tool=$1 step=$2; shift 2
  local inputs=()
  while [ "$1" != "--" ]; do inputs+=("$1"); shift; done
  shift
  drop_caches
  warm "${inputs[@]}"
  local rc=0
  /usr/bin/time -f "%e %M" -o "$WORK/time.out" "$@" >"$WORK/$tool.$step.log" 2>&1 || rc=$?
  # tessera exits 3 for "completed with warnings": still a measurement.
  if [ $rc -ne 0 ] && ! { [ "$tool" = tessera ] && [ $rc -eq 3 ]; }; then
    echo "e2e: $tool $step failed ($rc):" >&2
    tail -20 "$WORK/$tool.$step.log" >&2
    exit 1
  fi
  read -r s m <"$WORK/time.out"
  SECS[$tool.$step]=$s
  RSS[$tool.$step]=$m
  printf '%-8s %-10s %7.2f s %7d KiB\n' "$tool" "$step" "$s" "$m" >&2
}

"$TESSERA" init -q >/dev/null
restic init >/dev/null
borg init -e repokey-blake2 >/dev/null

backup_step() {
  local step=$1
  run tessera "$step" "$CORPUS" -- "$TESSERA" backup -q "$CORPUS"
  run restic "$step" "$CORPUS" -- restic backup -q "$CORPUS"
  run borg "$step" "$CORPUS" -- bash -c "cd '$WORK' && borg create --compression zstd,3 ::$step corpus"
}
backup_step initial
backup_step unchanged
echo "mutating the corpus (one day)" >&2
bash "$BENCH/mutate.sh" "$CORPUS" 1 >"$WORK/mutate.log"
backup_step day

# Read-only steps, REPEAT rounds, tools interleaved. Each restore goes
# into a new directory: nothing is deleted between rounds (ext4 without a
# journal scans recently deleted inodes on every new one for minutes).
for r in $(seq 1 "$REPEAT"); do
  for t in "${TOOLS[@]}"; do mkdir -p "$WORK/restore-$t-$r"; done
  run tessera restore-$r "$WORK/repo-tessera" -- "$TESSERA" restore -q latest --target "$WORK/restore-tessera-$r"
  run restic restore-$r "$WORK/repo-restic" -- restic restore -q latest --target "$WORK/restore-restic-$r"
  run borg restore-$r "$WORK/repo-borg" -- bash -c "cd '$WORK/restore-borg-$r' && borg extract --sparse ::day"
done
for r in $(seq 1 "$REPEAT"); do
  run tessera check-$r "$WORK/repo-tessera" -- "$TESSERA" check -q --read-data
  run restic check-$r "$WORK/repo-restic" -- restic check --read-data
  run borg check-$r "$WORK/repo-borg" -- borg check --verify-data
done
# The median of the rounds (the middle one of an odd count), the largest RSS.
for t in "${TOOLS[@]}"; do
  for step in restore check; do
    SECS[$t.$step]=$(for r in $(seq 1 "$REPEAT"); do echo "${SECS[$t.$step-$r]}"; done | sort -n | awk '{a[NR]=$1} END {print a[int((NR+1)/2)]}')
    RSS[$t.$step]=$(for r in $(seq 1 "$REPEAT"); do echo "${RSS[$t.$step-$r]}"; done | sort -n | tail -1)
  done
done

# Restores must equal the corpus (content); the VM image's allocation shows sparseness.
declare -A ALLOC
for t in "${TOOLS[@]}"; do
  dir=$WORK/restore-$t-1$CORPUS
  [ "$t" = borg ] && dir=$WORK/restore-borg-1/corpus
  if ! diff -r --no-dereference "$CORPUS" "$dir" >"$WORK/$t.diff" 2>&1; then
    echo "e2e: $t restored something different from the corpus:" >&2
    head "$WORK/$t.diff" >&2
    exit 1
  fi
  ALLOC[$t]=$(du -B1 "$dir/vm/disk.img" | cut -f1)
done

size() { du -sb "$1" | cut -f1; }
ratio() { python3 -c "import sys; a,b=float(sys.argv[1]),float(sys.argv[2]); print(f'{a/b:.2f}' if b else '-')" "$1" "$2"; }
peak() { local m=0; for s in initial unchanged day; do [ "${RSS[$1.$s]}" -gt $m ] && m=${RSS[$1.$s]}; done; echo $((m / 1024)); }

echo
echo "Corpus: $(find "$CORPUS" -type f | wc -l) files, $(du -sb --apparent-size "$CORPUS" | cut -f1) bytes apparent$([ $QUICK = 1 ] && echo ' (quick: big/ reduced to 64 MiB of text)')$([ "$REPEAT" -gt 1 ] && echo "; restore and check: median of $REPEAT rounds")"
echo
echo "| step | tessera | restic | borg | tessera/restic | target |"
echo "|---|---|---|---|---|---|"
declare -A TARGET=([initial]=0.50 [unchanged]=0.25 [day]=0.45 [restore]=0.30 [check]=0.40)
for step in initial unchanged day restore check; do
  echo "| $step (s) | ${SECS[tessera.$step]} | ${SECS[restic.$step]} | ${SECS[borg.$step]} | $(ratio "${SECS[tessera.$step]}" "${SECS[restic.$step]}") | <= ${TARGET[$step]} |"
done
st=$(size "$WORK/repo-tessera"); sr=$(size "$WORK/repo-restic"); sb=$(size "$WORK/repo-borg")
echo "| repository (MB) | $((st / 1000000)) | $((sr / 1000000)) | $((sb / 1000000)) | $(ratio "$st" "$sr") | <= 1.0 |"
echo "| peak RSS backup (MiB) | $(peak tessera) | $(peak restic) | $(peak borg) | | |"
echo "| peak RSS restore (MiB) | $((RSS[tessera.restore] / 1024)) | $((RSS[restic.restore] / 1024)) | $((RSS[borg.restore] / 1024)) | | |"
echo "| restored vm/disk.img allocated (MB) | $((ALLOC[tessera] / 1000000)) | $((ALLOC[restic] / 1000000)) | $((ALLOC[borg] / 1000000)) | | |"
