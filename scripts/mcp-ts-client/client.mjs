// The official MCP TypeScript client against a running msb server, over
// Streamable HTTP: no key is refused, then with MSB_API_KEY it lists tools
// and prompts, starts a sandbox, runs Python and a command, and stops it.
// With MSB_OTHER_KEY (a key for another namespace) it also checks that such a
// key's tool call on the sandbox fails with a clear denial.
// Any failure exits non-zero with a message saying what went wrong.
//
//   MSB_SERVER_URL=http://127.0.0.1:5555 MSB_API_KEY=msb_... [MSB_OTHER_KEY=msb_...] node client.mjs
import { Client } from "@modelcontextprotocol/sdk/client/index.js";
import { StreamableHTTPClientTransport } from "@modelcontextprotocol/sdk/client/streamableHttp.js";

const base = process.env.MSB_SERVER_URL || "http://127.0.0.1:5555";
const key = process.env.MSB_API_KEY || "";
const otherKey = process.env.MSB_OTHER_KEY || "";
const url = new URL("/mcp", base);
const namespace = "default";
const sandbox = `ts-client-${process.pid}`;

// Never hang CI: the whole check gets two minutes.
setTimeout(() => {
  console.error("FAIL: the MCP TypeScript client check took longer than 120s");
  process.exit(1);
}, 120_000).unref();

function fail(msg) {
  throw new Error(msg);
}

async function connect(apiKey) {
  const headers = apiKey ? { Authorization: `Bearer ${apiKey}` } : {};
  const client = new Client({ name: "msb-ci-ts-client", version: "1.0.0" });
  await client.connect(new StreamableHTTPClientTransport(url, { requestInit: { headers } }));
  return client;
}

function text(result) {
  return (result.content || []).filter((c) => c.type === "text").map((c) => c.text).join("");
}

async function call(client, name, args, { wantError = false } = {}) {
  // A cold sandbox start can take longer than the SDK's 60s default.
  const result = await client.callTool({ name, arguments: args }, undefined, { timeout: 100_000 });
  const out = text(result);
  if (Boolean(result.isError) !== wantError) {
    fail(`${name}: isError=${Boolean(result.isError)}, want ${wantError}: ${out}`);
  }
  console.log(`ok  ${name} -> ${JSON.stringify(out)}`);
  return out;
}

async function main() {
  // Without a key the server refuses the connection.
  let refused = false;
  try {
    const c = await connect("");
    await c.close();
  } catch (err) {
    refused = /401|API key is required/.test(String(err?.message ?? err));
    if (!refused) fail(`connecting without a key failed, but not with 401: ${err}`);
  }
  if (key && !refused) fail("connecting without a key succeeded, want HTTP 401");
  console.log(key ? "ok  no key -> 401" : "--  dev mode: no key needed");

  const client = await connect(key);
  const info = client.getServerVersion();
  console.log(`ok  connected to ${info?.name} ${info?.version}`);

  const tools = (await client.listTools()).tools.map((t) => t.name).sort();
  const want = ["sandbox_get_metrics", "sandbox_list_files", "sandbox_read_file", "sandbox_run_code", "sandbox_run_command",
    "sandbox_start", "sandbox_stop", "sandbox_update_network", "sandbox_write_file"];
  if (JSON.stringify(tools) !== JSON.stringify(want)) fail(`tools ${tools}, want ${want}`);
  console.log(`ok  tools: ${tools.join(", ")}`);

  const prompts = (await client.listPrompts()).prompts.map((p) => p.name).sort();
  if (JSON.stringify(prompts) !== JSON.stringify(["create_node_sandbox", "create_python_sandbox"])) {
    fail(`prompts ${prompts}`);
  }
  console.log(`ok  prompts: ${prompts.join(", ")}`);

  const target = { sandbox, namespace };
  let started = false;
  let failure;
  try {
    started = true; // from the moment it is asked for: a start that fails half-way is stopped too
    const start = await call(client, "sandbox_start", { ...target, config: { image: "microsandbox/python", memory: 256, cpus: 1 } });
    if (!start.includes(`Sandbox ${sandbox} started successfully`)) fail(`start said ${start}`);

    const code = await call(client, "sandbox_run_code", { ...target, language: "python", code: "print(6*7)" });
    if (!/^status: success\nstdout:\n42\n$/.test(code)) fail(`print(6*7) gave ${JSON.stringify(code)}, want 42`);

    const cmd = await call(client, "sandbox_run_command", { ...target, command: "sh", args: ["-c", "echo hi; exit 3"], timeout: 30 });
    if (!cmd.startsWith("exit code: 3") || !cmd.includes("hi")) fail(`command gave ${JSON.stringify(cmd)}`);

    const metrics = await call(client, "sandbox_get_metrics", { namespace: "*" });
    if (!metrics.includes(`${sandbox} (namespace ${namespace}): running`)) fail(`metrics gave ${JSON.stringify(metrics)}`);

    if (otherKey) {
      // A key for another namespace reaches the server but not the sandbox.
      const other = await connect(otherKey);
      try {
        const denied = await call(other, "sandbox_run_code", { ...target, language: "python", code: "print(1)" }, { wantError: true });
        if (!/permission denied/.test(denied) || !denied.includes(`"${namespace}"`)) fail(`denial said ${JSON.stringify(denied)}`);
      } finally {
        await other.close();
      }
    }
  } catch (err) {
    failure = err;
  }
  // Stop what was started, also after a failure (which stays the one reported).
  if (started) {
    try {
      const stop = await call(client, "sandbox_stop", target);
      if (!stop.includes("stopped successfully")) fail(`stop said ${stop}`);
    } catch (err) {
      console.error(`FAIL: stopping ${sandbox}: ${err?.message ?? err}`);
      failure ??= err;
    }
  }
  await client.close();
  if (failure) throw failure;
  console.log("PASS: MCP TypeScript client");
}

main().catch((err) => {
  console.error(`FAIL: ${err?.stack ?? err}`);
  process.exit(1);
});
