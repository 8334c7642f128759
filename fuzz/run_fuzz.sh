#!/usr/bin/env bash
# Runs the push fuzzer for SECONDS from the committed seed corpus (fuzz/corpus); new inputs go to a
# scratch folder, a crashing input to ./crash-* in the current directory. Prints libFuzzer's first
# and last status lines and its execution count; exits non-zero if the fuzzer found anything.
# Usage: run_fuzz.sh FUZZER SECONDS [more libFuzzer flags]
set -euo pipefail
fuzzer=$1
seconds=$2
shift 2
seeds=$(cd "$(dirname "$0")/corpus" && pwd)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
status=0
"$fuzzer" -max_total_time="$seconds" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
  "$@" "$scratch" "$seeds" >"$scratch/log" 2>&1 || status=$?
grep -E "^#[0-9]+[[:space:]]+(INITED|DONE)|stat::number_of_executed_units|stat::peak_rss" \
  "$scratch/log" || true
if [ "$status" -ne 0 ]; then
  tail -80 "$scratch/log"
  echo "run_fuzz: the fuzzer exited with $status" >&2
  exit "$status"
fi
