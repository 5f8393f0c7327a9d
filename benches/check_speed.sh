#!/usr/bin/env bash
# check --read-data against the raw read speed of the same repository,
# cold (page cache dropped) and warm, side by side in one run.
#
#   benches/check_speed.sh [REPO]
#
# REPO defaults to the end-to-end benchmark's repository
# ($E2E_WORK/repo-tessera, made by benches/e2e.sh); its password comes
# from TESSERA_PASSWORD (default "bench", as there). Raw read = `cat` of
# every file of the repository; check reads, authenticates, decompresses
# and re-hashes every blob, and walks every tree. Needs root to drop the
# page cache.
set -euo pipefail
ROOT=$(cd "$(dirname "$0")/.." && pwd)
REPO=${1:-${E2E_WORK:-/tmp/tessera-e2e}/repo-tessera}
export TESSERA_PASSWORD=${TESSERA_PASSWORD:-bench}
[ -f "$REPO/config" ] || { echo "no repository at $REPO: run benches/e2e.sh first or give one" >&2; exit 1; }
(cd "$ROOT" && cargo build --release --locked -q -p tessera-cli)
TESSERA=$ROOT/target/release/tessera
BYTES=$(du -sb "$REPO" | cut -f1)

drop() { sync; echo 3 >/proc/sys/vm/drop_caches; }
raw() { find "$REPO" -type f -print0 | xargs -0 -r -n 256 cat >/dev/null; }
secs() { local s e; s=$(date +%s.%N); "$@" >/dev/null 2>&1; e=$(date +%s.%N); echo "$e - $s" | bc; }

drop; raw_cold=$(secs raw)
drop; check_cold=$(secs "$TESSERA" -r "$REPO" check --read-data)
raw; raw_warm=$(secs raw)
raw; check_warm=$(secs "$TESSERA" -r "$REPO" check --read-data)
"$TESSERA" -r "$REPO" check --read-data -q >/dev/null 2>&1 || { echo "check failed on $REPO" >&2; exit 1; }

mbs() { echo "scale=0; $BYTES / $1 / 1000000" | bc; }
ratio() { echo "scale=2; $2 / $1" | bc; }
echo "repository: $REPO, $((BYTES / 1000000)) MB"
echo
echo "| | raw read | check --read-data | check / raw (time) |"
echo "|---|---|---|---|"
printf '| cold cache | %.2f s (%s MB/s) | %.2f s (%s MB/s) | %s |\n' "$raw_cold" "$(mbs "$raw_cold")" "$check_cold" "$(mbs "$check_cold")" "$(ratio "$raw_cold" "$check_cold")"
printf '| warm cache | %.2f s (%s MB/s) | %.2f s (%s MB/s) | %s |\n' "$raw_warm" "$(mbs "$raw_warm")" "$check_warm" "$(mbs "$check_warm")" "$(ratio "$raw_warm" "$check_warm")"
