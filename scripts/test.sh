#!/usr/bin/env bash
# The whole test suite. Installs what it needs (see scripts/setup.sh).
# Later adapters add their servers (PostgreSQL, an S3 server, qemu-utils) here.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
cargo test --workspace --all-targets --locked "$@"
cargo test --workspace --doc --locked
