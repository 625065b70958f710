#!/usr/bin/env bash
# Measures the sandbox paths of the real server (the built msb binary, dev
# mode, HTTP on loopback) in one run (BenchmarkSandbox and
# BenchmarkSandboxPool in bench_test.go):
#
#   - interleaved rounds, medians: sandbox.start served from the warm pool
#     against a bare /usr/bin/python3 -c 'print(1)' and against a cold
#     start of the same root on the same server (BenchmarkSandboxPool);
#   - interleaved rounds, medians, the pool off: sandbox.start against a bare
#     /usr/bin/python3 -c 'print(1)', and a full create + python line +
#     destroy against `crun run` of the same on the same root file system;
#   - sandbox.command.run of true and a warm sandbox.repl.run;
#   - cold starts per second and CPU per start+stop, 4 clients at once, in
#     rounds with two baselines: a bare python3 -c's CPU and time, and the
#     portal binary's start and exit (the floor under every init);
#   - host memory per idle sandbox, sandbox.metrics.get p99 and
#     sandbox.repl.run p99 and p50 with 10, 100 and 1,000 idle sandboxes
#     running (1,000 calls of each).
#
# Needs root. crun (Debian's, a baseline only) is installed if missing; its
# 1.8 refuses this host's hybrid cgroup layout, so the benchmark runs it
# under `unshare -m` with /sys/fs/cgroup/unified unmounted in that private
# mount namespace. MSB_BENCH_ROUNDS, MSB_BENCH_STARTS and MSB_BENCH_IDLE
# scale the run. Everything the run makes (homes, sandboxes, cgroups, the
# crun bundle) is removed at its end.
set -euo pipefail
cd "$(dirname "$0")/.."
if ! command -v crun >/dev/null; then
	apt-get install -y crun >/dev/null 2>&1 || { apt-get update >/dev/null && apt-get install -y crun >/dev/null; } ||
		echo "crun could not be installed: the run has no crun baseline" >&2
fi
go test -run '^$' -bench '^BenchmarkSandbox(Pool)?$' -benchtime 1x -count "${COUNT:-1}" -timeout 60m . |
	grep -E '^(Benchmark|ok|FAIL|    bench_test)' | tr '\t' '\n' | sed 's/^ *//'
left=$(ls -d /sys/fs/cgroup/*/msb-bench-crun 2>/dev/null || true)
if [ -n "$left" ]; then
	echo "left behind: $left" >&2
	exit 1
fi
