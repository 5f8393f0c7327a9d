#!/usr/bin/env bash
# The whole test suite. Installs what it needs (see scripts/setup.sh).
# Servers: s3s-fs (an S3-compatible server, from crates.io) for the S3 tests,
# moto (PyPI) for object lock.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
if ! command -v s3s-fs >/dev/null && [ ! -x "$HOME/.cargo/bin/s3s-fs" ]; then
  cargo install s3s-fs --version 0.14.1 --locked --features binary
fi
# moto (PyPI), an AWS emulator with object lock, for the object lock test.
if ! command -v moto_server >/dev/null; then
  python3 -m pip install --quiet 'moto[server]==5.*' boto3
fi
cargo test --workspace --all-targets --all-features --locked "$@"
# The whole CLI suite again, every repository on the S3 test server.
TESSERA_TEST_STORAGE=s3 cargo test -p tessera-cli --all-features --locked --test main "$@"
cargo test --workspace --doc --all-features --locked
