#!/usr/bin/env bash
# Measures what authentication costs on a trivial JSON-RPC call: the same
# call through the real HTTP stack in development mode (no key) and with a
# key checked against a real SQLite registry, with the key's rate limit,
# scope check, usage count and the audit log on, in one run. auth-audited
# is a call that changes something, so each one is also written to the audit
# log. Prints ns/op of each and the throughput ratios against dev mode.
set -euo pipefail
cd "$(dirname "$0")/.."
count=${COUNT:-6}
out=$(go test ./rpc/ -run '^$' -bench 'BenchmarkRequestPath' -benchtime "${BENCHTIME:-2s}" -count "$count")
echo "$out" | grep -E '^Benchmark'
echo "$out" | awk '
  /RequestPath\/dev(-[0-9]+)?[ \t]/          { dev += $3; nd++ }
  /RequestPath\/auth(-[0-9]+)?[ \t]/         { au += $3; na++ }
  /RequestPath\/auth-audited(-[0-9]+)?[ \t]/ { ad += $3; nw++ }
  END {
    if (nd == 0 || na == 0 || nw == 0) { print "no benchmark results"; exit 1 }
    d = dev / nd; a = au / na; w = ad / nw
    printf "dev          mean: %.0f ns/op\nauth         mean: %.0f ns/op\nauth-audited mean: %.0f ns/op\n", d, a, w
    printf "throughput with auth         = %.1f%% of dev mode (cost %.1f%%)\n", 100 * d / a, 100 * (1 - d / a)
    printf "throughput with auth+audited = %.1f%% of dev mode (cost %.1f%%)\n", 100 * d / w, 100 * (1 - d / w)
  }'
