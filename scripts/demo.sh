#!/usr/bin/env bash
# The main job, end to end, against a local repository (no server):
# init, back up a stream, back it up again (dedup), list, restore, verify.
# Usage: scripts/demo.sh [REPO_DIR]   (default: ./demo-repo, created fresh)
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
cargo build --release -q -p tessera-cli
T=$PWD/target/release/tessera
REPO=${1:-$PWD/demo-repo}
WORK=$(mktemp -d)
trap 'rm -rf "$WORK"' EXIT
export TESSERA_PASSWORD=${TESSERA_PASSWORD:-demo-password}
rm -rf "$REPO"

export TESSERA_CACHE_DIR=$WORK/cache
# Something real to protect: this machine's documentation and headers.
$T -r "$REPO" init
$T -r "$REPO" backup /usr/share/doc /usr/include --tag demo
echo "== again: unchanged files come from the files cache, nothing new is stored"
$T -r "$REPO" backup /usr/share/doc /usr/include --tag demo
$T -r "$REPO" snapshots
$T -r "$REPO" ls latest /usr/include/stdio.h --long
$T -r "$REPO" restore latest --target "$WORK/restored"
diff -r --no-dereference /usr/share/doc "$WORK/restored/usr/share/doc"
diff -r --no-dereference /usr/include "$WORK/restored/usr/include"
$T -r "$REPO" dump latest /usr/include/stdio.h | cmp - /usr/include/stdio.h
echo "== a stream from standard input"
tar -cf - -C / usr/share/doc 2>/dev/null | $T -r "$REPO" backup --stdin --stdin-name doc.tar
$T -r "$REPO" check --read-data
$T -r "$REPO" stats
echo "demo: restored /usr/share/doc and /usr/include identical from $REPO"
