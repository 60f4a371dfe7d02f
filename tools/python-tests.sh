#!/usr/bin/env bash
# The Python package from a fresh venv: `pip install ./crates/pgp-py` (maturin builds the
# extension with the workspace's dev profile into the same target folder as the tests, so it
# reuses their build), then its pytest suite against the CLI of the same build.
#
#   tools/python-tests.sh [PYTEST ARGS...]
#
# The venv is made anew each run at $PGP_WGPU_PY_VENV (default: a folder under $TMPDIR).
set -euo pipefail
cd "$(dirname "$0")/.."
venv="${PGP_WGPU_PY_VENV:-${TMPDIR:-/tmp}/pgp-wgpu-py-venv}"
rm -rf "$venv"
python3 -m venv "$venv"
"$venv/bin/pip" install --quiet --disable-pip-version-check ./crates/pgp-py pytest Pillow
# The suite compares with the binary of the same build (cargo test built it).
target="${CARGO_TARGET_DIR:-$PWD/target}"
export PGP_WGPU_BIN="${PGP_WGPU_BIN:-$target/debug/pgp-wgpu}"
export XDG_RUNTIME_DIR="${XDG_RUNTIME_DIR:-/tmp}"
cd crates/pgp-py
"$venv/bin/python" -m pytest -q tests "$@"
