#!/usr/bin/env bash
# Measures sandbox start, command.run and warm repl.run latency (p50) and host
# memory per idle sandbox on the real server, against baselines measured on
# the host in the same run (python3 -c 'print(1)', /bin/true). Needs root.
set -euo pipefail
cd "$(dirname "$0")/.."
go test -run '^$' -bench '^BenchmarkSandbox$' -benchtime 1x -count "${COUNT:-1}" . | grep -E '^(Benchmark|ok|FAIL)' | tr '\t' '\n' | sed 's/^ *//'
