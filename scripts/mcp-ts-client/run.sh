#!/usr/bin/env bash
# Runs the official MCP TypeScript client (client.mjs) against a real msb
# server: builds msb, starts it on a free loopback port with a temporary
# MSB_HOME, makes a key, runs the client, and stops the server whatever
# happens. Exits non-zero if any step fails. Needs node (18 or later) and npm.
#
#   scripts/mcp-ts-client/run.sh            (from anywhere; root for sandboxes)
set -euo pipefail
here="$(cd "$(dirname "$0")" && pwd)"
repo="$(cd "$here/../.." && pwd)"

name=mcp-ts-client
. "$repo/scripts/lib/client-server.sh"
npm_install "@modelcontextprotocol/sdk"
start_server
key="$(make_key default mcp-ts)"
other="$(make_key other mcp-ts-other)"

MSB_SERVER_URL="$address" MSB_API_KEY="$key" MSB_OTHER_KEY="$other" node "$here/client.mjs"
