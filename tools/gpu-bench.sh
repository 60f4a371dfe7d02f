#!/bin/sh
# The GPU benchmarks in one go, for a machine with a GPU and no Rust toolchain. Prints one JSON
# line per result on stdout (progress and notes on stderr); record them in docs/PERFORMANCE.md
# with the machine.
#
# Build the binary elsewhere and copy it over (it needs a Vulkan, Metal or DX12 driver only):
#     cargo build --release -p pgp-wgpu && strip target/release/pgp-wgpu
# Then, on the GPU machine:
#     tools/gpu-bench.sh ./pgp-wgpu [SCRATCH_DIR]  > gpu-bench.jsonl
#
# What runs (all with made-up weights, nothing to download):
#   - one UNet call on a full-size 1024² tile (latent 128²), FaithDiff and PGP-DiffSR, f16 and
#     f32: time per call and the device pool's peak;
#   - the flash-attention kernel against burn's attention at the level-1 and level-2 shapes of a
#     1024² tile, and the phase exchange at PEAM's shape;
#   - a full-size PGP-DiffSR bundle (3.6 GiB, written to SCRATCH_DIR) loaded in f16 and f32:
#     load time, host peak RSS, device pool.
# A failing bench prints a JSON line with "error" and the script goes on.
set -u
BIN=${1:-./pgp-wgpu}
SCRATCH=${2:-${TMPDIR:-/tmp}/pgp-gpu-bench}
[ -x "$BIN" ] || { echo "usage: $0 PATH/TO/pgp-wgpu [SCRATCH_DIR]" >&2; exit 2; }

run() { # NAME ARGS...: the bench's JSON lines, or one error line
    name=$1; shift
    echo "== $name" >&2
    "$BIN" "$@"
    status=$?
    if [ "$status" -ne 0 ]; then
        printf '{"bench":"%s","args":"%s","error":"exit status %s"}\n' "$name" "$*" "$status"
    fi
}

"$BIN" devices >&2
for arch in faithdiff pgp; do
    for precision in f16 f32; do
        run unet bench unet --arch "$arch" --size full -t 1024 --runs 3 --precision "$precision" --json
    done
done
run attention bench attention --heads 10 --tokens 4096 --dim 64 --runs 10 --json
run attention bench attention --heads 20 --tokens 1024 --dim 64 --runs 10 --json
run phase bench phase --shape 1 320 128 128 --runs 10 --json
rm -rf "$SCRATCH" && mkdir -p "$SCRATCH"
run bundle bench bundle --arch pgp -o "$SCRATCH/pgp.bundle"
for precision in f16 f32; do
    run load bench load --model "$SCRATCH/pgp.bundle" --precision "$precision" --json
done
rm -rf "$SCRATCH"
