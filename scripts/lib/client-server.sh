# Sourced by the client conformance scripts (scripts/*-client/run.sh): runs
# a real msb for a client to test against, and stops it whatever happens.
#
#   name=my-client here=... repo=...; . "$repo/scripts/lib/client-server.sh"
#   npm_install "what it installs"
#   start_server                    # sets work, pid, address; MSB_HOME
#   key="$(make_key default my-client)"
#
# Messages are prefixed with $name. On failure the server's log is shown.

work="$(mktemp -d)"
pid=""
cleanup() {
  status=$?
  if [ -n "$pid" ] && kill -0 "$pid" 2>/dev/null; then
    kill -TERM "$pid" 2>/dev/null || true
    for _ in $(seq 1 600); do kill -0 "$pid" 2>/dev/null || break; sleep 0.1; done
    if kill -0 "$pid" 2>/dev/null; then
      echo "$name: server did not stop within 60s of SIGTERM; killing it" >&2
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

# npm_install installs the client's packages from its lockfile.
npm_install() {
  echo "$name: installing $1"
  (cd "$here" && npm ci --prefer-offline --no-audit --no-fund --loglevel=error)
}

# start_server builds msb (static, as the README builds it) and starts it on
# a free loopback port with a temporary home; address is where it serves.
start_server() {
  echo "$name: building msb"
  (cd "$repo" && go generate ./sandbox/linux/portalbin && go build -tags netgo,osusergo,urfave_cli_no_docs -ldflags '-extldflags "-static"' -o "$work/msb" .)
  export MSB_HOME="$work/home"
  "$work/msb" server start --port 0 >"$work/server.log" 2>&1 &
  pid=$!
  address=""
  for _ in $(seq 1 300); do
    kill -0 "$pid" 2>/dev/null || { echo "$name: msb server exited at start" >&2; exit 1; }
    if [ -f "$MSB_HOME/server.json" ]; then
      address="$(node -e 'const s = JSON.parse(require("fs").readFileSync(process.argv[1], "utf8")); if (s.pid === Number(process.argv[2])) console.log(s.address)' "$MSB_HOME/server.json" "$pid" 2>/dev/null || true)"
      [ -n "$address" ] && break
    fi
    sleep 0.1
  done
  [ -n "$address" ] || { echo "$name: msb server did not start within 30s" >&2; exit 1; }
  echo "$name: msb server at $address"
}

# make_key NAMESPACE LABEL prints a new key of NAMESPACE, valid for an hour
# (keygen prints the key alone on stdout, and its details on stderr).
make_key() {
  "$work/msb" server keygen --namespace "$1" --expire 1h --name "$2" 2>>"$work/keygen.log" ||
    { echo "$name: keygen failed:" >&2; cat "$work/keygen.log" >&2; exit 1; }
}
