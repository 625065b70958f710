#!/usr/bin/env node
// Benchmark of the v1 API through the real SDK (run by scripts/bench-v1.sh,
// which starts the server): against baselines measured in the same run,
//
//   1. exec of `true` through the SDK (by-name lookup, agent socket,
//      exec) vs sandbox.command.run of `true` over JSON-RPC, on the same
//      sandbox: p50 of each and their ratio (target <= 1.5);
//   2. a 256 MiB file written and read through the SDK's sb.fs() vs `cat`
//      of the same file on the host (MiB/s both ways);
//   3. the server's RSS growth during the transfers (target < 32 MiB).
//
// Env: MSB_API_URL, MSB_API_KEY, MSB_SERVER_PID, MSB_TEST_IMAGE (run.sh's),
// BENCH_N (exec samples, default 50), BENCH_MIB (default 256).
import { execFileSync } from "node:child_process";
import crypto from "node:crypto";
import fs from "node:fs";
import os from "node:os";
import path from "node:path";
import { Sandbox, setDefaultBackend } from "microsandbox";

const API = process.env.MSB_API_URL, KEY = process.env.MSB_API_KEY, PID = Number(process.env.MSB_SERVER_PID);
const IMAGE = process.env.MSB_TEST_IMAGE ?? "host";
const N = Number(process.env.BENCH_N ?? 50), MIB = Number(process.env.BENCH_MIB ?? 256);
setDefaultBackend({ kind: "cloud", url: API, apiKey: KEY });

const p50 = (xs) => [...xs].sort((a, b) => a - b)[Math.floor(xs.length / 2)];
const ms = (t0) => Number(process.hrtime.bigint() - t0) / 1e6;
const now = () => process.hrtime.bigint();
function rssKiB() {
  const m = fs.readFileSync(`/proc/${PID}/status`, "utf8").match(/^VmRSS:\s+(\d+) kB/m);
  return m ? Number(m[1]) : NaN;
}
// sampleRSS samples the server's RSS every 20 ms while fn runs and returns
// fn's duration and the highest RSS seen.
async function sampleRSS(fn) {
  let peak = rssKiB();
  const timer = setInterval(() => { peak = Math.max(peak, rssKiB()); }, 20);
  const t0 = now();
  try { await fn(); } finally { clearInterval(timer); }
  return { ms: ms(t0), peak: Math.max(peak, rssKiB()) };
}

const name = `bench-${Date.now().toString(36)}`;
const sb = await Sandbox.builder(name).image(IMAGE).create();
try {
  // 1. exec of `true`.
  for (let i = 0; i < 5; i++) await sb.exec("true", []);
  const sdk = [];
  for (let i = 0; i < N; i++) { const t0 = now(); const o = await sb.exec("true", []); sdk.push(ms(t0)); if (o.code !== 0) throw new Error(`true exited ${o.code}`); }
  const rpcCall = async () => {
    const r = await fetch(`${API}/api/v1/rpc`, { method: "POST", headers: { authorization: `Bearer ${KEY}`, "content-type": "application/json" },
      body: JSON.stringify({ jsonrpc: "2.0", id: 1, method: "sandbox.command.run", params: { namespace: "default", sandbox: name, command: "true" } }) });
    const j = await r.json();
    if (j.error || j.result?.exit_code !== 0) throw new Error(`command.run: ${JSON.stringify(j)}`);
  };
  for (let i = 0; i < 5; i++) await rpcCall();
  const rpc = [];
  for (let i = 0; i < N; i++) { const t0 = now(); await rpcCall(); rpc.push(ms(t0)); }
  const ratio = p50(sdk) / p50(rpc);
  console.log(`exec true via SDK          p50 ${p50(sdk).toFixed(2)} ms`);
  console.log(`command.run true (JSON-RPC) p50 ${p50(rpc).toFixed(2)} ms`);
  console.log(`ratio ${ratio.toFixed(2)} (target <= 1.5: ${ratio <= 1.5 ? "met" : "NOT met"})`);

  // 2. and 3. 256 MiB both ways, and the server's RSS.
  const dir = fs.mkdtempSync(path.join(os.tmpdir(), "msb-bench-"));
  const src = path.join(dir, "src.bin"), copy = path.join(dir, "copy.bin");
  const data = crypto.randomBytes(MIB << 20);
  fs.writeFileSync(src, data);
  execFileSync("sync");
  let t0 = now();
  execFileSync("sh", ["-c", `cat '${src}' > '${copy}'`]);
  const hostWrite = MIB / (ms(t0) / 1000);
  t0 = now();
  execFileSync("sh", ["-c", `cat '${copy}' > /dev/null`]);
  const hostRead = MIB / (ms(t0) / 1000);
  fs.rmSync(dir, { recursive: true });

  const before = rssKiB();
  const w = await sampleRSS(() => sb.fs().write("/tmp/bench.bin", data));
  let back;
  const r = await sampleRSS(async () => { back = await sb.fs().read("/tmp/bench.bin"); });
  if (back.length !== data.length || !Buffer.from(back).equals(data)) throw new Error("the file read back differs");
  const growth = (Math.max(w.peak, r.peak) - before) / 1024;
  console.log(`write ${MIB} MiB via SDK ${(MIB / (w.ms / 1000)).toFixed(0)} MiB/s; host cat ${hostWrite.toFixed(0)} MiB/s`);
  console.log(`read  ${MIB} MiB via SDK ${(MIB / (r.ms / 1000)).toFixed(0)} MiB/s; host cat ${hostRead.toFixed(0)} MiB/s`);
  console.log(`server RSS growth during the transfers ${growth.toFixed(1)} MiB (target < 32: ${growth < 32 ? "met" : "NOT met"})`);
} finally {
  await Sandbox.remove(name).catch(() => {});
}
