#!/usr/bin/env bash
# Builds the browser page into web/dist/ and the npm package into web/dist/npm/: the pgp-web crate for wasm32 in the size-optimised
# `wasm-release` profile, wasm-bindgen's JavaScript glue (the CLI must be Cargo.lock's version:
# `cargo install wasm-bindgen-cli --version <that version>`), and the page's static files.
set -euo pipefail
cd "$(dirname "$0")/.."

want=$(awk '/^name = "wasm-bindgen"$/ { getline; gsub(/version = |"/, ""); print; exit }' Cargo.lock)
have=$(wasm-bindgen --version 2>/dev/null | awk '{ print $2 }') || true
if [ "$have" != "$want" ]; then
  echo "web/build.sh: needs wasm-bindgen $want on PATH (found: ${have:-none});" >&2
  echo "  cargo install wasm-bindgen-cli --version $want" >&2
  exit 1
fi

cargo build -p pgp-web --target wasm32-unknown-unknown --profile wasm-release --locked
target="${CARGO_TARGET_DIR:-target}"
rm -rf web/dist
mkdir -p web/dist/pkg
wasm-bindgen --target web --remove-name-section --out-dir web/dist/pkg --out-name pgp_web \
  "$target/wasm32-unknown-unknown/wasm-release/pgp_web.wasm"
cp web/static/* web/dist/
# The npm package (`npm pack web/dist/npm`): the module, its types and the wasm.
mkdir -p web/dist/npm/pkg
cp web/npm/package.json web/npm/index.js web/npm/index.d.ts web/npm/README.md web/dist/npm/
cp web/dist/pkg/pgp_web.js web/dist/pkg/pgp_web.d.ts web/dist/pkg/pgp_web_bg.wasm \
  web/dist/pkg/pgp_web_bg.wasm.d.ts web/dist/npm/pkg/
wasm="web/dist/pkg/pgp_web_bg.wasm"
echo "web/dist: $(wc -c < "$wasm") bytes of wasm, $(gzip -9c "$wasm" | wc -c) gzipped"
