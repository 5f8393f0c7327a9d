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

# Something real to protect: this machine's documentation and headers.
tar -cf "$WORK/data.tar" -C / usr/share/doc usr/include 2>/dev/null || true
ls -la "$WORK/data.tar"

$T -r "$REPO" init
$T -r "$REPO" backup --stdin --stdin-name data.tar --tag demo < "$WORK/data.tar"
$T -r "$REPO" backup --stdin --stdin-name data.tar --tag demo < "$WORK/data.tar"
$T -r "$REPO" snapshots
$T -r "$REPO" restore latest --target "$WORK/restored"
cmp "$WORK/data.tar" "$WORK/restored/data.tar"
$T -r "$REPO" dump latest data.tar | cmp - "$WORK/data.tar"
$T -r "$REPO" check --read-data
$T -r "$REPO" stats
echo "demo: restored data.tar bit for bit from $REPO"
