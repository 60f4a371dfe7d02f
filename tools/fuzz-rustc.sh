#!/bin/sh
# RUSTC_WORKSPACE_WRAPPER for tools/fuzz.sh: adds libFuzzer's coverage instrumentation (the
# flags cargo fuzz passes) to the workspace's crates only — dependencies keep the test build's
# artifacts — and never to build scripts, which do not link libFuzzer.
rustc=$1
shift
case " $* " in
  *" --crate-name build_script_"*) exec "$rustc" "$@" ;;
esac
exec "$rustc" "$@" \
  -Cpasses=sancov-module \
  -Cllvm-args=-sanitizer-coverage-level=4 \
  -Cllvm-args=-sanitizer-coverage-inline-8bit-counters \
  -Cllvm-args=-sanitizer-coverage-pc-table \
  -Cllvm-args=-sanitizer-coverage-trace-compares \
  --cfg fuzzing
