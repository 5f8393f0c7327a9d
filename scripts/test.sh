#!/usr/bin/env bash
# The whole test suite. Installs what it needs (see scripts/setup.sh).
# Servers: s3s-fs (an S3-compatible server, from crates.io) for the S3 tests,
# moto (PyPI) for object lock and tiers, Azurite (npm) for Azure.
set -euo pipefail
cd "$(dirname "$0")/.."
. scripts/setup.sh
[ -f "$HOME/.cargo/env" ] && . "$HOME/.cargo/env"
if ! command -v s3s-fs >/dev/null && [ ! -x "$HOME/.cargo/bin/s3s-fs" ]; then
  cargo install s3s-fs --version 0.14.1 --locked --features binary
fi
# moto (PyPI), an AWS emulator with object lock and storage classes.
if ! command -v moto_server >/dev/null; then
  python3 -m pip install --quiet 'moto[server]==5.*' boto3
fi
# Azurite (npm), Microsoft's Azure Storage emulator, and the Python SDK
# that makes its container.
if ! command -v azurite-blob >/dev/null; then
  command -v npm >/dev/null || { SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo; $SUDO apt-get install -y -qq npm; }
  npm install --global --silent azurite@3
fi
python3 -c 'import azure.storage.blob' 2>/dev/null || python3 -m pip install --quiet azure-storage-blob
cargo test --workspace --all-targets --all-features --locked "$@"
# The whole CLI suite again, every repository on the S3 test server.
TESSERA_TEST_STORAGE=s3 cargo test -p tessera-cli --all-features --locked --test main "$@"
cargo test --workspace --doc --all-features --locked
