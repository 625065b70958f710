#!/usr/bin/env bash
# Measures what authentication costs on a trivial JSON-RPC call: the same
# call through the real HTTP stack in development mode (no key) and with a
# key checked against a real SQLite registry, interleaved in one run.
# Prints ns/op of each and the throughput ratio auth/dev.
set -euo pipefail
cd "$(dirname "$0")/.."
count=${COUNT:-6}
out=$(go test ./rpc/ -run '^$' -bench 'BenchmarkRequestPath' -benchtime "${BENCHTIME:-2s}" -count "$count")
echo "$out" | grep -E '^Benchmark'
echo "$out" | awk '
  /RequestPath\/dev/  { dev += $3; nd++ }
  /RequestPath\/auth/ { au += $3; na++ }
  END {
    if (nd == 0 || na == 0) { print "no benchmark results"; exit 1 }
    d = dev / nd; a = au / na
    printf "dev  mean: %.0f ns/op\nauth mean: %.0f ns/op\nthroughput with auth = %.1f%% of dev mode (cost %.1f%%)\n", d, a, 100 * d / a, 100 * (1 - d / a)
  }'
