#!/usr/bin/env bash
# Measures what authentication costs on a trivial JSON-RPC call, through the
# real HTTP stack, in one run:
#   dev              development mode: no key
#   auth             a key checked against a real SQLite registry
#   limited          the same, with the key's rate limit, scope check, usage
#                    count and the audit log on
#   limited-audited  the same for a call that changes something, so each one
#                    is also written to the audit log
# Prints the median ns/op of each and the throughput of each against dev,
# from COUNT (8) rounds that each run all four.
set -euo pipefail
cd "$(dirname "$0")/.."
count=${COUNT:-8}
# One test binary, run count times: each run measures the four set-ups one
# after another, so they interleave and share the machine's moods.
bin=$(mktemp -d)
trap 'rm -rf "$bin"' EXIT
go test -c -o "$bin/rpc.test" ./rpc/
out=$(cd rpc && for _ in $(seq "$count"); do
  "$bin/rpc.test" -test.run '^$' -test.bench 'BenchmarkRequestPath' -test.benchtime "${BENCHTIME:-2s}"
done)
echo "$out" | grep -E '^Benchmark'
echo "$out" | awk '
  /^BenchmarkRequestPath\// {
    name = $1; sub(/^BenchmarkRequestPath\//, "", name); sub(/-[0-9]+$/, "", name)
    v[name] = v[name] " " $3
  }
  function median(list,   a, n, i, j, t) {
    n = split(list, a, " ")
    for (i = 1; i <= n; i++) for (j = i + 1; j <= n; j++) if (a[j] + 0 < a[i] + 0) { t = a[i]; a[i] = a[j]; a[j] = t }
    return n % 2 ? a[(n + 1) / 2] : (a[n / 2] + a[n / 2 + 1]) / 2
  }
  END {
    split("dev auth limited limited-audited", names, " ")
    for (i = 1; i <= 4; i++) if (!(names[i] in v)) { print "no results for " names[i]; exit 1 }
    d = median(v["dev"])
    for (i = 1; i <= 4; i++) {
      m = median(v[names[i]])
      printf "%-16s median %6.0f ns/op   throughput %5.1f%% of dev (cost %4.1f%%)\n", names[i], m, 100 * d / m, 100 * (1 - d / m)
    }
  }'
