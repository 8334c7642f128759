#!/usr/bin/env bash
# Runs the push fuzzer for SECONDS from the committed seed corpus (fuzz/corpus); new inputs go to a
# scratch folder, crashes to the current directory. Prints libFuzzer's execution count.
# Usage: run_fuzz.sh FUZZER SECONDS [more libFuzzer flags]
set -euo pipefail
fuzzer=$1
seconds=$2
shift 2
seeds=$(cd "$(dirname "$0")/corpus" && pwd)
scratch=$(mktemp -d)
trap 'rm -rf "$scratch"' EXIT
"$fuzzer" -max_total_time="$seconds" -print_final_stats=1 -timeout=10 -rss_limit_mb=2048 \
  "$@" "$scratch" "$seeds" 2>&1 | tee "$scratch/log" | grep -E "^#[0-9]+ +(INITED|DONE)|ERROR|stat::number_of_executed_units|stat::peak_rss" || true
grep -q "stat::number_of_executed_units" "$scratch/log" || { tail -50 "$scratch/log"; exit 1; }
