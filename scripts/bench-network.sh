#!/usr/bin/env bash
# Measures a sandbox's outbound network against the host's own, in a world
# of the benchmark's own making (a network namespace behind a veth, with
# documentation addresses; nothing leaves the machine): download MiB/s
# through a sandbox vs directly from the host, their ratio, the msb
# process's CPU per GiB, and connect + first byte latency through the
# policy path (rules by address and by name) vs directly. The measurements
# are interleaved and repeated; medians are reported. Needs root.
#
#   NETBENCH_REPEATS (default 5), NETBENCH_BYTES (default 268435456),
#   NETBENCH_CONNS (default 200), COUNT (runs, default 1)
set -euo pipefail
cd "$(dirname "$0")/.."
go test -run '^$' -bench '^BenchmarkNetwork$' -benchtime 1x -count "${COUNT:-1}" -v . |
	grep -E '^(Benchmark|ok|FAIL|\s+network_bench_test)' | sed 's/\t/\n/g' | sed 's/^ *//'
