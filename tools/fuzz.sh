#!/bin/sh
# Fuzzes the parsers (docs/RELIABILITY.md) with libFuzzer on the stable toolchain.
#
#   tools/fuzz.sh                  every target for 60 s each (what CI runs)
#   tools/fuzz.sh SECONDS          every target for SECONDS each
#   tools/fuzz.sh SECONDS TARGET…  the named targets (pickle safetensors manifest config
#                                  tokenizer image)
#
# Each target starts from the committed seeds (fuzz/corpus/TARGET) and grows a working corpus
# under the target folder (kept between runs). A crash, a hang over 10 s or more than 2 GiB
# stops the run with the input saved as fuzz/artifacts/TARGET/…; commit it to
# fuzz/corpus/TARGET once fixed (tests/corpus.rs replays it in every test run). Exit status 1
# when any target found something. The build selects the whole workspace so that dependencies
# resolve the features of the test build and reuse its artifacts.
set -eu
root=$(cd "$(dirname "$0")/.." && pwd)
secs=${1:-60}
[ $# -gt 0 ] && shift
targets=${*:-pickle safetensors manifest config tokenizer image}
target_dir=${CARGO_TARGET_DIR:-$root/target}
cd "$root"
RUSTC_WORKSPACE_WRAPPER="$root/tools/fuzz-rustc.sh" \
  cargo build --locked --workspace --features pgp-fuzz/libfuzzer $(for t in $targets; do printf -- '--bin %s ' "$t"; done)
status=0
for t in $targets; do
  work="$target_dir/fuzz-corpus/$t"
  mkdir -p "$work" "fuzz/artifacts/$t"
  echo "fuzzing $t for $secs s" >&2
  if ! "$target_dir/debug/$t" "$work" "fuzz/corpus/$t" \
      -max_total_time="$secs" -timeout=10 -rss_limit_mb=2048 -max_len=65536 \
      -artifact_prefix="fuzz/artifacts/$t/" -print_final_stats=1 2>"$target_dir/fuzz-$t.log"; then
    status=1
    echo "fuzz target $t FAILED; the input is in fuzz/artifacts/$t/:" >&2
    grep -E "ERROR|panicked|SUMMARY|Test unit written" "$target_dir/fuzz-$t.log" | head -20 >&2
  else
    grep -E "stat::number_of_executed_units|stat::peak_rss_mb" "$target_dir/fuzz-$t.log" >&2 || true
    grep -E "cov: " "$target_dir/fuzz-$t.log" | tail -1 >&2 || true
  fi
done
exit $status
