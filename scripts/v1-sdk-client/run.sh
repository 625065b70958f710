#!/usr/bin/env bash
# Runs the real microsandbox SDK (npm microsandbox 0.6.18 on its "cloud"
# backend, the v1 API) against a real msb server: builds msb, starts it on a
# free loopback port with a temporary MSB_HOME, makes a key of namespace
# default and one of another namespace, runs client.mjs, and stops the
# server whatever happens. Exits non-zero if any step or check fails.
# Needs node (20 or later), npm, and root (sandboxes).
#
#   scripts/v1-sdk-client/run.sh [--keep-going]
#
# V1_CLIENT=bench.mjs runs the benchmark instead (scripts/bench-v1.sh).
#
# The SDK's native addon declares node >= 22 but loads on node 20: npm ci
# installs it because package.json names it (npm skips it as the SDK's
# optional dependency on node 20); package-lock.json records the addons of
# the other platforms as optional, so that npm ci does not fetch them.
# The checks use msb's built-in "host" image (MSB_TEST_IMAGE), which needs
# no registry.
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

name=v1-sdk-client
. "$repo/scripts/lib/client-server.sh"
npm_install "microsandbox (npm)"
start_server
key="$(make_key default v1-sdk)"
other="$(make_key other v1-sdk-other)"

MSB_API_URL="$address" MSB_API_KEY="$key" OTHER_NS_KEY="$other" MSB_TEST_IMAGE="${MSB_TEST_IMAGE:-host}" \
  MSB_SERVER_PID="$pid" CONFORMANCE_TMP="$work/tmp" node "$here/${V1_CLIENT:-client.mjs}" "$@"
