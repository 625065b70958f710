#!/usr/bin/env bash
# Measures the v1 API through the real microsandbox SDK (npm, cloud backend)
# on a real server (root, as the sandbox benchmarks): exec of `true` vs
# sandbox.command.run of `true`, a 256 MiB file written and read vs `cat`
# on the host, and the server's RSS growth during the transfers. See
# scripts/v1-sdk-client/bench.mjs; BENCH_N and BENCH_MIB tune it.
set -euo pipefail
cd "$(dirname "$0")/.."
V1_CLIENT=bench.mjs exec scripts/v1-sdk-client/run.sh "$@"
