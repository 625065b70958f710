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

work="$(mktemp -d)"
pid=""
cleanup() {
  status=$?
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "v1-sdk-client: server did not stop within 60s of SIGTERM; killing it" >&2
      kill -KILL "$pid" 2>/dev/null || true
      status=1
    fi
    wait "$pid" 2>/dev/null || true
  fi
  if [ "$status" -ne 0 ] && [ -f "$work/server.log" ]; then
    echo "---- msb server log ----" >&2
    tail -n 100 "$work/server.log" >&2
  fi
  rm -rf "$work"
  exit "$status"
}
trap cleanup EXIT
trap 'exit 130' INT TERM

echo "v1-sdk-client: installing microsandbox (npm)"
(cd "$here" && npm ci --prefer-offline --no-audit --no-fund --loglevel=error)

echo "v1-sdk-client: building msb"
(cd "$repo" && go build -tags netgo,osusergo -ldflags '-extldflags "-static"' -o "$work/msb" .)

export MSB_HOME="$work/home"
"$work/msb" server start --port 0 >"$work/server.log" 2>&1 &
pid=$!
address=""
for _ in $(seq 1 300); do
  kill -0 "$pid" 2>/dev/null || { echo "v1-sdk-client: msb server exited at start" >&2; exit 1; }
  if [ -f "$MSB_HOME/server.json" ]; then
    address="$(node -e 'const s = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")); if (s.pid === Number(process.argv[2])) console.log(s.address)' "$MSB_HOME/server.json" "$pid" 2>/dev/null || true)"
    [ -n "$address" ] && break
  fi
  sleep 0.1
done
[ -n "$address" ] || { echo "v1-sdk-client: msb server did not start within 30s" >&2; exit 1; }
echo "v1-sdk-client: msb server at $address"

# keygen prints the key alone on stdout, and its details on stderr.
key="$("$work/msb" server keygen --namespace default --expire 1h --name v1-sdk 2>>"$work/keygen.log")" ||
  { echo "v1-sdk-client: keygen failed:" >&2; cat "$work/keygen.log" >&2; exit 1; }
other="$("$work/msb" server keygen --namespace other --expire 1h --name v1-sdk-other 2>>"$work/keygen.log")" ||
  { echo "v1-sdk-client: keygen failed:" >&2; cat "$work/keygen.log" >&2; exit 1; }

MSB_API_URL="$address" MSB_API_KEY="$key" OTHER_NS_KEY="$other" MSB_TEST_IMAGE="${MSB_TEST_IMAGE:-host}" \
  MSB_SERVER_PID="$pid" CONFORMANCE_TMP="$work/tmp" node "$here/${V1_CLIENT:-client.mjs}" "$@"
