#!/usr/bin/env node
// msb v1 ("cloud" protocol) conformance client.
//
// Drives every flow through the real npm SDK (microsandbox@0.6.18 + the
// linux-x64-gnu addon) plus a few raw HTTP / raw agent-WebSocket checks for
// wire rules the SDK is lenient about. Prints one line per check and exits
// non-zero on the first failure (pass --keep-going to run everything).
// run.sh beside it builds msb, starts it and runs this script; by hand:
//
//   MSB_API_URL=http://127.0.0.1:5555 MSB_API_KEY=msb_... OTHER_NS_KEY=msb_... \
//     node client.mjs [--keep-going] [--no-cleanup]
//
// Optional env: MSB_TEST_IMAGE (default alpine:3.20; run.sh uses msb's
// built-in "host" image, which needs no registry), CONFORMANCE_PREFIX.
// Needs ./cbor.mjs (tiny CBOR codec) next to it. Takes ~1-3 minutes.
//
// What these checks rely on of msb (docs/api.md, "The v1 API"):
//  A1  The test image has a POSIX /bin/sh with echo, cat, sleep, stty, id,
//      head, tr, ln, test, sha256sum (Alpine's busybox, or the host image's
//      coreutils); user "nobody" has uid 65534; /tmp, /root and /etc/passwd
//      exist.
//  A2  Exec semantics follow the upstream agent: argv exec (no shell), stdin is
//      a pipe that stays open until EOF, signals go to the process (group),
//      death by signal reports code -1, spawn failures come back as
//      core.exec.failed (kind not_found / bad_cwd), PTY initial size is the
//      request's rows/cols (24x80 from the TS SDK) and resize applies.
//  A3  The sandbox's env/workdir/user are applied to every exec (the SDK also
//      merges them client-side from the echoed `spec`).
//  A4  File ops resolve paths inside the sandbox root; symlinks (absolute or
//      with "..") never escape to the host. (A sandbox's own files do not
//      survive a stop in msb, which releases its writable layer: what must
//      last goes in a named volume; the restart check does not expect them.)
//  A5  Logs: GET /v1/sandboxes/{id}/logs replays retained output of the
//      sandbox's exec sessions (stdout/stderr/output) and follows live output;
//      Last-Event-ID resumes strictly after that entry. The SDK cuts any SSE
//      stream 30 s after opening it, so log checks finish well within 30 s.
//  A6  Stop reaches `stopped` within 10 s and is idempotent; an ephemeral
//      sandbox stays visible as `stopped` right after stop and is removed
//      (404 by name) within EPHEMERAL_REAP_S seconds afterwards.
//  A7  lifecycle.max_duration_secs and lifecycle.idle_timeout_secs stop the
//      sandbox (status stopped/crashed, or 404 if reaped) within the limit +
//      LIFECYCLE_SLACK_S seconds; an idle timer is not reset by the server's
//      own polling (no agent traffic is sent to the idle sandbox).
//  A8  Another namespace's key sees no trace of our resources: by-name/by-id,
//      logs, stop, delete and the agent upgrade are refused with 403 or 404,
//      lists omit them, nothing is changed. No key => 401 JSON error envelope.
//  A9  Named volumes: POST /v1/volumes creates a "managed" volume; the volume
//      files REST API and a mount at create time see the same files.
//  A10 The server advertises protocol generation >= 2 (7 recommended) in
//      core.ready and sends the 8-byte id range [id_min>=1, id_max) first.
//  A11 Name validation accepts the generated names (letters, digits, '-').

import crypto from "node:crypto";
import fs from "node:fs";
import http from "node:http";
import os from "node:os";
import https from "node:https";
import path from "node:path";
import {
  CloudHttpError, ExecTimeoutError, Sandbox, SandboxAlreadyExistsError, SandboxFsOpsError,
  SandboxNotFoundError, UnsupportedError, Volume, VolumeNotFoundError, setDefaultBackend, withDefaultBackend,
} from "microsandbox";
import { decode, encode } from "./cbor.mjs";

// ------------------------------------------------------------------ config
const API = (process.env.MSB_API_URL ?? "").replace(/\/+$/, "");
const KEY = (process.env.MSB_API_KEY ?? "").trim();
const OTHER = (process.env.OTHER_NS_KEY ?? "").trim();
const IMAGE = process.env.MSB_TEST_IMAGE ?? "alpine:3.20";
const KEEP_GOING = process.argv.includes("--keep-going");
const NO_CLEANUP = process.argv.includes("--no-cleanup");
const P = process.env.CONFORMANCE_PREFIX ?? `conf-${Date.now().toString(36)}`;
const EPHEMERAL_REAP_S = 60;
const LIFECYCLE_LIMIT_S = 12;
const LIFECYCLE_SLACK_S = 30;
if (!API || !KEY || !OTHER) {
  console.error("set MSB_API_URL, MSB_API_KEY and OTHER_NS_KEY");
  process.exit(2);
}
const TMP = process.env.CONFORMANCE_TMP ?? fs.mkdtempSync(path.join(os.tmpdir(), "msb-v1-client-"));
fs.mkdirSync(TMP, { recursive: true });

setDefaultBackend({ kind: "cloud", url: API, apiKey: KEY });

// ------------------------------------------------------------------ harness
let n = 0, failures = 0;
const createdSandboxes = new Set();
const createdVolumes = new Set();

class CheckError extends Error {}
function assert(cond, msg) { if (!cond) throw new CheckError(msg); }
function eq(actual, expected, what) {
  assert(Object.is(actual, expected) || JSON.stringify(actual) === JSON.stringify(expected),
    `${what}: expected ${JSON.stringify(expected)}, got ${JSON.stringify(actual)}`);
}
async function expectReject(promise, pred, what) {
  try { await promise; } catch (e) {
    assert(pred(e), `${what}: wrong error ${e?.constructor?.name}: ${String(e?.message).slice(0, 300)}`);
    return e;
  }
  throw new CheckError(`${what}: expected an error, call succeeded`);
}
const sleep = (ms) => new Promise((r) => setTimeout(r, ms));
const withTimeout = (p, ms, what) => Promise.race([p, sleep(ms).then(() => { throw new CheckError(`${what}: timed out after ${ms} ms`); })]);
const text = (u8) => Buffer.from(u8).toString("utf8");

async function check(name, fn) {
  n += 1;
  const t0 = Date.now();
  try {
    const note = await fn();
    console.log(`ok   ${String(n).padStart(3)} ${name} (${Date.now() - t0} ms)${note ? " — " + note : ""}`);
  } catch (e) {
    failures += 1;
    console.log(`FAIL ${String(n).padStart(3)} ${name}: ${e?.constructor?.name}: ${String(e?.message ?? e).split("\n")[0].slice(0, 400)}`);
    if (!KEEP_GOING) { await cleanup(); process.exit(1); }
  }
}

// ------------------------------------------------------------------ raw HTTP
function rawRequest(method, p, { key, headers = {}, body, timeoutMs = 15000, upgrade = false, onHeaders } = {}) {
  const url = new URL(API + p);
  const mod = url.protocol === "https:" ? https : http;
  const h = { ...headers };
  if (key) h.authorization = `Bearer ${key}`;
  if (body !== undefined) { h["content-type"] = "application/json"; }
  return new Promise((resolve, reject) => {
    const req = mod.request(url, { method, headers: h });
    const timer = setTimeout(() => { req.destroy(new Error(`${method} ${p}: timeout`)); }, timeoutMs);
    req.on("error", (e) => { clearTimeout(timer); reject(e); });
    req.on("upgrade", (res, socket, head) => { clearTimeout(timer); resolve({ status: res.statusCode, headers: res.headers, socket, head }); });
    req.on("response", (res) => {
      if (onHeaders) { clearTimeout(timer); resolve({ status: res.statusCode, headers: res.headers, res }); return; }
      const chunks = [];
      res.on("data", (c) => chunks.push(c));
      res.on("end", () => {
        clearTimeout(timer);
        const raw = Buffer.concat(chunks).toString("utf8");
        let json; try { json = JSON.parse(raw); } catch {}
        resolve({ status: res.statusCode, headers: res.headers, raw, json });
      });
    });
    if (body !== undefined) req.write(JSON.stringify(body));
    req.end();
  });
}
const cloudId = (sbOrHandle) => String(sbOrHandle.id).replace(/^cloud:/, "");
const STATUSES = ["created", "starting", "running", "stopping", "stopped", "failed"];
const RFC3339 = /^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d(\.\d+)?(Z|[+-]\d\d:\d\d)$/;
function validateSandboxJson(o, what) {
  assert(o && typeof o === "object", `${what}: not an object`);
  for (const k of ["id", "org_id", "name", "slug"]) assert(typeof o[k] === "string", `${what}: ${k} must be a string`);
  assert(STATUSES.includes(o.status), `${what}: bad status ${JSON.stringify(o.status)}`);
  assert(typeof o.ephemeral === "boolean", `${what}: ephemeral must be a bool`);
  assert(RFC3339.test(o.created_at ?? ""), `${what}: created_at must be RFC 3339 with offset, got ${o.created_at}`);
  for (const k of ["started_at", "stopped_at"]) if (o[k] != null) assert(RFC3339.test(o[k]), `${what}: ${k} not RFC 3339`);
  if (o.status_reason != null) assert(["scheduling", "insufficient_capacity"].includes(o.status_reason), `${what}: bad status_reason`);
}
function validateErrorEnvelope(r, what) {
  assert(r.json && r.json.error && typeof r.json.error.code === "string" && typeof r.json.error.message === "string",
    `${what}: body must be {"error":{"code","message"}}, got ${r.raw?.slice(0, 200)}`);
}

// ------------------------------------------------------------------ raw agent WebSocket (RFC 6455 client)
class RawAgent {
  static async open(sandboxId, key) {
    const wsKey = crypto.randomBytes(16).toString("base64");
    const r = await rawRequest("GET", `/v1/sandboxes/${encodeURIComponent(sandboxId)}/agent`, {
      key, headers: { connection: "Upgrade", upgrade: "websocket", "sec-websocket-version": "13", "sec-websocket-key": wsKey },
    });
    if (r.status !== 101) return { status: r.status };
    const accept = crypto.createHash("sha1").update(wsKey + "258EAFA5-E914-47DA-95CA-C5AB0DC85B11").digest("base64");
    assert(r.headers["sec-websocket-accept"] === accept, "agent upgrade: bad Sec-WebSocket-Accept");
    const a = new RawAgent(r.socket, r.head);
    return { status: 101, agent: a };
  }
  constructor(socket, head) {
    this.socket = socket; this.wsbuf = Buffer.from(head ?? []); this.bytes = Buffer.alloc(0);
    this.waiters = []; this.closed = false; this.textMessages = 0;
    socket.on("data", (d) => { this.wsbuf = Buffer.concat([this.wsbuf, d]); this.parse(); });
    socket.on("close", () => { this.closed = true; this.wake(); });
    socket.on("error", () => {});
    this.parse();
  }
  parse() {
    for (;;) {
      const b = this.wsbuf;
      if (b.length < 2) break;
      const op = b[0] & 0x0f, masked = b[1] & 0x80;
      let len = b[1] & 0x7f, off = 2;
      if (len === 126) { if (b.length < 4) break; len = b.readUInt16BE(2); off = 4; }
      else if (len === 127) { if (b.length < 10) break; len = Number(b.readBigUInt64BE(2)); off = 10; }
      if (masked) off += 4; // servers must not mask; tolerate anyway
      if (b.length < off + len) break;
      let payload = Buffer.from(b.subarray(off, off + len));
      if (masked) { const mk = b.subarray(off - 4, off); for (let i = 0; i < len; i++) payload[i] ^= mk[i & 3]; }
      this.wsbuf = b.subarray(off + len);
      if (op === 0x2 || op === 0x0) this.bytes = Buffer.concat([this.bytes, payload]);
      else if (op === 0x1) this.textMessages += 1;
      else if (op === 0x9) this.sendWs(0xA, payload);
      else if (op === 0x8) { this.closed = true; }
    }
    this.wake();
  }
  wake() { const w = this.waiters; this.waiters = []; for (const f of w) f(); }
  async readExact(nb, ms = 10000) {
    const deadline = Date.now() + ms;
    while (this.bytes.length < nb) {
      if (this.closed) throw new CheckError(`agent socket closed while waiting for ${nb} bytes`);
      if (Date.now() > deadline) throw new CheckError(`agent: timed out waiting for ${nb} bytes`);
      await Promise.race([new Promise((r) => this.waiters.push(r)), sleep(100)]);
    }
    const out = this.bytes.subarray(0, nb);
    this.bytes = this.bytes.subarray(nb);
    return Buffer.from(out);
  }
  async readFrame(ms) {
    const len = (await this.readExact(4, ms)).readUInt32BE(0);
    assert(len >= 5 && len <= 4 * 1024 * 1024, `agent frame length ${len} out of range`);
    const rest = await this.readExact(len, ms);
    const id = rest.readUInt32BE(0), flags = rest[4], body = rest.subarray(5);
    const env = decode(body);
    assert(env && typeof env === "object" && !Array.isArray(env), "envelope must be a CBOR map");
    assert(Number.isInteger(env.v) && env.v >= 0 && env.v <= 255, `envelope v must be an unsigned int (u8), got ${env.v}`);
    assert(typeof env.t === "string", "envelope t must be a text string");
    assert(Buffer.isBuffer(env.p), `envelope p must be a CBOR byte string (major type 2), got ${typeof env.p}`);
    return { id, flags, v: env.v, t: env.t, payload: decode(env.p) };
  }
  sendWs(op, payload) {
    const mask = crypto.randomBytes(4);
    const n = payload.length;
    let hdr;
    if (n < 126) hdr = Buffer.from([0x80 | op, 0x80 | n]);
    else if (n < 65536) { hdr = Buffer.alloc(4); hdr[0] = 0x80 | op; hdr[1] = 0x80 | 126; hdr.writeUInt16BE(n, 2); }
    else { hdr = Buffer.alloc(10); hdr[0] = 0x80 | op; hdr[1] = 0x80 | 127; hdr.writeBigUInt64BE(BigInt(n), 2); }
    const masked = Buffer.from(payload);
    for (let i = 0; i < n; i++) masked[i] ^= mask[i & 3];
    this.socket.write(Buffer.concat([hdr, mask, masked]));
  }
  sendFrame(id, flags, t, payload) {
    const body = encode({ v: 7, t, p: encode(payload) });
    const hdr = Buffer.alloc(9);
    hdr.writeUInt32BE(5 + body.length, 0); hdr.writeUInt32BE(id, 4); hdr[8] = flags;
    this.sendWs(0x2, Buffer.concat([hdr, body]));
  }
  close() { this.socket.destroy(); }
}
const execReq = (cmd, args = [], extra = {}) => ({ cmd, args, env: [], cwd: "/", user: null, tty: false, rows: 24, cols: 80, rlimits: [], ...extra });

// ------------------------------------------------------------------ cleanup
async function cleanup() {
  if (NO_CLEANUP) return;
  for (const name of createdSandboxes) {
    try { await withTimeout((async () => (await Sandbox.get(name)).destroy())(), 30000, "cleanup"); } catch {}
  }
  for (const name of createdVolumes) { try { await Volume.remove(name); } catch {} }
}
async function create(name, configure = (b) => b) {
  const sb = await configure(Sandbox.builder(name).image(IMAGE)).create();
  createdSandboxes.add(name);
  return sb;
}
async function pollStatus(name, accept, seconds) {
  const deadline = Date.now() + seconds * 1000;
  let last;
  while (Date.now() < deadline) {
    try { last = (await Sandbox.get(name)).status; } catch (e) { if (e instanceof SandboxNotFoundError) last = "<gone>"; else throw e; }
    if (accept.includes(last)) return last;
    await sleep(500);
  }
  throw new CheckError(`${name}: status ${last} after ${seconds}s, wanted one of ${accept.join("|")}`);
}

// =================================================================== checks
const S1 = `${P}-main`, S2 = `${P}-b`, S3 = `${P}-c`, SE = `${P}-eph`, SM = `${P}-maxdur`, SI = `${P}-idle`, SV = `${P}-vol`;
const VOL = `${P}-vol`;
let sb, sbId;

// ---- A. authentication / refusals
await check("no key: GET /v1/sandboxes -> 401 + JSON error envelope", async () => {
  const r = await rawRequest("GET", "/v1/sandboxes");
  eq(r.status, 401, "status");
  validateErrorEnvelope(r, "401 body");
  return r.headers["www-authenticate"] ? undefined : "note: no WWW-Authenticate header";
});
await check("bogus key: SDK list -> CloudHttpError 401", async () => {
  await withDefaultBackend({ kind: "cloud", url: API, apiKey: "msb_not-a-valid-key" }, () =>
    expectReject(Sandbox.list(), (e) => e instanceof CloudHttpError && /401/.test(e.message), "list"));
});
await check("no key: agent WebSocket upgrade -> 401, not 101", async () => {
  const r = await rawRequest("GET", "/v1/sandboxes/00000000-0000-0000-0000-000000000000/agent",
    { headers: { connection: "Upgrade", upgrade: "websocket", "sec-websocket-version": "13", "sec-websocket-key": crypto.randomBytes(16).toString("base64") } });
  if (r.socket) r.socket.destroy();
  eq(r.status, 401, "status");
});

// ---- B. create / get / list
await check("create sandbox (labels, env, workdir, resources, lifecycle)", async () => {
  sb = await create(S1, (b) => b.cpus(1).memory(512).env("FOO", "bar").env("SHARED", "sandbox")
    .workdir("/tmp").label("suite", P).label("role", "main").idleTimeout(3600).maxDuration(7200));
  eq(sb.name, S1, "name");
  eq(sb.backendKind, "cloud", "backendKind");
  assert(/^cloud:./.test(sb.id), `id should look like cloud:<id>, got ${sb.id}`);
  sbId = cloudId(sb);
});
await check("create lifecycle sandboxes (max_duration_secs, idle_timeout_secs, ephemeral)", async () => {
  await create(SM, (b) => b.maxDuration(LIFECYCLE_LIMIT_S).label("suite", `${P}-lc`));
  await create(SI, (b) => b.idleTimeout(LIFECYCLE_LIMIT_S).label("suite", `${P}-lc`));
  await create(SE, (b) => b.ephemeral(true).label("suite", `${P}-lc`));
  eq((await Sandbox.get(SM)).status, "running", "max-duration sandbox status right after create");
});
await check("duplicate name -> SandboxAlreadyExistsError", async () => {
  await expectReject(Sandbox.builder(S1).image(IMAGE).create(), (e) => e instanceof SandboxAlreadyExistsError, "create");
});
await check("get by name (SDK) -> running, same id, spec echoed", async () => {
  const h = await Sandbox.get(S1);
  eq(h.name, S1, "name"); eq(h.status, "running", "status"); eq(h.id, sb.id, "id");
  assert(h.createdAt instanceof Date, "createdAt must be a Date");
  let spec; try { spec = JSON.parse(h.configJson); } catch {}
  if (!spec || typeof spec !== "object") return "note: spec not echoed (exec env/workdir then rely on server)";
  eq(spec?.labels?.suite, P, "spec.labels.suite");
});
await check("get by name / by id (raw) -> valid sandbox JSON", async () => {
  const a = await rawRequest("GET", `/v1/sandboxes/by-name/${encodeURIComponent(S1)}`, { key: KEY });
  eq(a.status, 200, "by-name status"); validateSandboxJson(a.json, "by-name");
  const b = await rawRequest("GET", `/v1/sandboxes/${encodeURIComponent(sbId)}`, { key: KEY });
  eq(b.status, 200, "by-id status"); validateSandboxJson(b.json, "by-id");
  eq(b.json.id, a.json.id, "ids"); eq(b.json.name, S1, "name");
});
await check("get missing name -> SandboxNotFoundError; raw 404 envelope", async () => {
  await expectReject(Sandbox.get(`${P}-does-not-exist`), (e) => e instanceof SandboxNotFoundError, "get");
  const r = await rawRequest("GET", `/v1/sandboxes/by-name/${P}-does-not-exist`, { key: KEY });
  eq(r.status, 404, "status"); validateErrorEnvelope(r, "404");
});
await check("list with labels filter and cursor pagination", async () => {
  await create(S2, (b) => b.label("suite", P).label("role", "extra"));
  await create(S3, (b) => b.label("suite", P).label("role", "extra"));
  const p1 = await Sandbox.listWith((l) => l.label("suite", P).limit(2));
  eq(p1.sandboxes.length, 2, "page 1 size");
  assert(typeof p1.nextCursor === "string" && p1.nextCursor.length > 0, "page 1 must have nextCursor");
  const p2 = await Sandbox.listWith((l) => l.label("suite", P).limit(2).cursor(p1.nextCursor));
  eq(p2.sandboxes.length, 1, "page 2 size");
  assert(!p2.nextCursor, "page 2 must be the last");
  const names = [...p1.sandboxes, ...p2.sandboxes].map((s) => s.name).sort();
  eq(names, [S1, S2, S3].sort(), "names across pages");
  const only = await Sandbox.listWith((l) => l.labels({ suite: P, role: "main" }));
  eq(only.sandboxes.map((s) => s.name), [S1], "AND label filter");
  const none = await Sandbox.listWith((l) => l.label("suite", `${P}-nothing`));
  eq(none.sandboxes.length, 0, "no match");
  const raw = await rawRequest("GET", `/v1/sandboxes?limit=20&labels=${encodeURIComponent(JSON.stringify({ suite: P }))}`, { key: KEY });
  eq(raw.status, 200, "raw list status");
  assert(Array.isArray(raw.json?.data), "raw list: data must be an array");
  raw.json.data.forEach((o, i) => validateSandboxJson(o, `data[${i}]`));
  assert(raw.json.next_cursor === undefined || raw.json.next_cursor === null || typeof raw.json.next_cursor === "string", "next_cursor type");
});

// ---- C. exec
await check("exec argv (no shell) -> stdout, code 0", async () => {
  const o = await sb.exec("echo", ["hello", "$HOME"]);
  eq(o.code, 0, "code"); eq(o.success, true, "success"); eq(o.stdout(), "hello $HOME\n", "stdout");
});
await check("sandbox env + workdir apply to exec (A3)", async () => {
  const o = await sb.shell("echo $FOO; pwd");
  eq(o.stdout(), "bar\n/tmp\n", "stdout");
});
await check("per-exec env (overrides sandbox env) and cwd", async () => {
  const o = await sb.execWith("sh", (b) => b.args(["-c", "echo $X $SHARED; pwd"]).env("X", "y").env("SHARED", "exec").cwd("/"));
  eq(o.stdout(), "y exec\n/\n", "stdout");
});
await check("stdout and stderr are separate streams", async () => {
  const o = await sb.shell("echo out; echo err >&2");
  eq(o.stdout(), "out\n", "stdout"); eq(o.stderr(), "err\n", "stderr");
});
await check("non-zero exit code", async () => {
  const o = await sb.shell("exit 7");
  eq(o.code, 7, "code"); eq(o.success, false, "success");
});
await check("streamed output arrives before the process exits", async () => {
  const h = await sb.execStream("sh", ["-c", "echo first; sleep 1; echo second >&2; sleep 0.2"]);
  const seen = [];
  const t0 = Date.now();
  for await (const ev of h) {
    seen.push({ kind: ev.kind, at: Date.now() - t0, data: ev.data ? text(ev.data) : undefined, code: ev.code });
    if (ev.kind === "exited") break;
  }
  eq(seen[0]?.kind, "started", "first event");
  const first = seen.find((e) => e.kind === "stdout" && e.data.includes("first"));
  const second = seen.find((e) => e.kind === "stderr" && e.data.includes("second"));
  const exited = seen.find((e) => e.kind === "exited");
  assert(first && second && exited, `missing events: ${JSON.stringify(seen)}`);
  assert(exited.at - first.at >= 700, `"first" must arrive >=700 ms before exit (got ${exited.at - first.at} ms)`);
  eq(exited.code, 0, "exit code");
  return `first@${first.at}ms exit@${exited.at}ms`;
});
await check("stdin streaming with EOF (cat)", async () => {
  const h = await sb.execStreamWith("cat", (b) => b.stdinPipe());
  const sink = await h.takeStdin();
  assert(sink, "takeStdin returned null");
  await sink.write("abc\n");
  let out = "";
  const deadline = Date.now() + 5000;
  while (!out.includes("abc\n")) {          // echo must come back before EOF
    assert(Date.now() < deadline, "no echo of the first stdin chunk before EOF");
    const ev = await withTimeout(h.recv(), 5000, "recv");
    assert(ev && ev.kind !== "exited", "cat exited early");
    if (ev.kind === "stdout") out += text(ev.data);
  }
  await sink.write(Buffer.from("def\n"));
  await sink.close();
  for (;;) {
    const ev = await withTimeout(h.recv(), 5000, "recv");
    if (ev === null) break;
    if (ev.kind === "stdout") out += text(ev.data);
    if (ev.kind === "exited") { eq(ev.code, 0, "exit code"); break; }
  }
  eq(out, "abc\ndef\n", "stdout");
});
await check("stdinBytes", async () => {
  const o = await sb.execWith("cat", (b) => b.stdinBytes(Buffer.from("from-bytes")));
  eq(o.stdout(), "from-bytes", "stdout");
});
await check("signal SIGTERM is delivered (trap runs, custom exit code)", async () => {
  const h = await sb.execStream("sh", ["-c", "trap 'echo got-term; exit 3' TERM; echo ready; while :; do sleep 0.1; done"]);
  let out = "";
  while (!out.includes("ready")) { const ev = await withTimeout(h.recv(), 5000, "recv"); assert(ev, "stream ended"); if (ev.kind === "stdout") out += text(ev.data); }
  await h.signal(15);
  const o = await withTimeout(h.collect(), 5000, "collect");
  eq(o.code, 3, "exit code"); assert((out + o.stdout()).includes("got-term"), "trap output missing");
});
await check("death by signal reports exit code -1 (SIGTERM to sleep)", async () => {
  const h = await sb.execStream("sleep", ["30"]);
  eq((await withTimeout(h.recv(), 5000, "recv"))?.kind, "started", "first event");
  await h.signal(15);
  const st = await withTimeout(h.wait(), 5000, "wait");
  eq(st.code, -1, "code"); eq(st.success, false, "success");
});
await check("kill() -> exit code -1", async () => {
  const h = await sb.execStream("sleep", ["30"]);
  await withTimeout(h.recv(), 5000, "recv");
  await h.kill();
  eq((await withTimeout(h.wait(), 5000, "wait")).code, -1, "code");
});
await check("exec timeout option kills the process (ExecTimeoutError)", async () => {
  await withTimeout(expectReject(sb.execWith("sleep", (b) => b.args(["30"]).timeout(1000)), (e) => e instanceof ExecTimeoutError, "exec"), 10000, "timeout");
});
await check("missing binary -> typed spawn failure ([ExecFailed]), not a shell 127", async () => {
  await expectReject(sb.exec("/definitely/not/a/binary", []), (e) => /^\[ExecFailed\]/.test(e.message), "exec");
});
await check("bad cwd -> typed spawn failure ([ExecFailed])", async () => {
  await expectReject(sb.execWith("pwd", (b) => b.cwd("/definitely/not/a/dir")), (e) => /^\[ExecFailed\]/.test(e.message), "exec");
});
await check("per-exec user (A1: nobody = 65534)", async () => {
  eq((await sb.execWith("id", (b) => b.args(["-u"]).user("nobody"))).stdout().trim(), "65534", "uid");
});
await check("per-exec rlimit (nofile)", async () => {
  eq((await sb.execWith("sh", (b) => b.args(["-c", "ulimit -n"]).rlimit("nofile", 256))).stdout().trim(), "256", "ulimit -n");
});
await check("large output (1 MB) is complete", async () => {
  const o = await sb.shell("head -c 1000000 /dev/zero | tr '\\0' a");
  eq(o.stdoutBytes().length, 1000000, "bytes");
});
await check("PTY: tty true, initial 24x80, resize to 40x120", async () => {
  const h = await sb.execStreamWith("sh", (b) => b.args(["-c", "[ -t 0 ] && [ -t 1 ] && echo is-tty; stty size; read line; stty size"]).tty(true).stdinPipe());
  const sink = await h.takeStdin();
  let out = "";
  const deadline = Date.now() + 8000;
  while (!/\d+ \d+/.test(out)) {
    assert(Date.now() < deadline, `no stty output: ${JSON.stringify(out)}`);
    const ev = await withTimeout(h.recv(), 8000, "recv");
    assert(ev && ev.kind !== "exited", `exited early: ${JSON.stringify(out)}`);
    if (ev.kind === "stdout") out += text(ev.data);
    assert(ev.kind !== "stderr", "PTY output must not arrive as stderr");
  }
  assert(out.includes("is-tty"), `stdin/stdout not a TTY: ${JSON.stringify(out)}`);
  assert(/24 80/.test(out), `initial size: ${JSON.stringify(out)}`);
  await h.resize(40, 120);
  await sleep(200);
  await sink.write("\n");
  const o = await withTimeout(h.collect(), 8000, "collect");
  out += o.stdout();
  assert(/40 120/.test(out), `after resize: ${JSON.stringify(out)}`);
  eq(o.code, 0, "exit code");
});

// ---- D. files
const D = "/tmp/conf";
await check("fs mkdir (with parents) + exists", async () => {
  const f = sb.fs();
  await f.mkdir(`${D}/sub/deeper`);
  eq(await f.exists(`${D}/sub/deeper`), true, "exists");
  eq(await f.exists(`${D}/nope`), false, "exists(nope)");
});
await check("fs write/read text", async () => {
  await sb.fs().write(`${D}/a.txt`, "hello files\n");
  eq(await sb.fs().readToString(`${D}/a.txt`), "hello files\n", "content");
});
const big = crypto.randomBytes(7 * 1024 * 1024 + 123);
const sha = (b) => crypto.createHash("sha256").update(b).digest("hex");
await check("fs multi-chunk write/read (7 MiB + 123 B) and readStream", async () => {
  await sb.fs().write(`${D}/big.bin`, big);
  const back = await sb.fs().read(`${D}/big.bin`);
  eq(back.length, big.length, "size"); eq(sha(back), sha(big), "sha256");
  const rs = await sb.fs().readStream(`${D}/big.bin`);
  let total = 0, chunks = 0;
  const hsh = crypto.createHash("sha256");
  for await (const c of rs) { chunks += 1; total += c.length; assert(c.length <= 3 * 1024 * 1024, `chunk ${c.length} > 3 MiB`); hsh.update(c); }
  eq(total, big.length, "stream size"); eq(hsh.digest("hex"), sha(big), "stream sha256");
  const inGuest = (await sb.shell(`sha256sum ${D}/big.bin | cut -d' ' -f1`)).stdout().trim();
  eq(inGuest, sha(big), "sha256 seen by exec");
  return `${chunks} chunks`;
});
await check("fs writeStream (several writes) + exec sees the file", async () => {
  const w = await sb.fs().writeStream(`${D}/ws.txt`);
  await w.write("part1-"); await w.write(Buffer.from("part2-")); await w.write("part3");
  await w.close();
  eq((await sb.exec("cat", [`${D}/ws.txt`])).stdout(), "part1-part2-part3", "cat");
});
await check("exec-written file is visible to fs", async () => {
  await sb.shell(`printf 'from-exec' > ${D}/sub/e.txt`);
  eq(await sb.fs().readToString(`${D}/sub/e.txt`), "from-exec", "content");
});
await check("fs list", async () => {
  const entries = await sb.fs().list(D);
  const by = Object.fromEntries(entries.map((e) => [e.path.split("/").pop(), e]));
  assert(by["a.txt"] && by["sub"] && by["big.bin"], `entries: ${entries.map((e) => e.path).join(",")}`);
  eq(by["a.txt"].kind, "file", "a.txt kind"); eq(by["sub"].kind, "directory", "sub kind");
  eq(by["a.txt"].size, 12, "a.txt size");
  assert(!entries.some((e) => /\/\.\.?$/.test(e.path)), "list must not include . or ..");
});
await check("fs stat file and dir", async () => {
  const s = await sb.fs().stat(`${D}/big.bin`);
  eq(s.kind, "file", "kind"); eq(s.size, big.length, "size");
  assert((s.mode & 0o170000) === 0o100000 || (s.mode & 0o777) > 0, `mode ${s.mode}`);
  assert(s.modified instanceof Date, "modified must be a Date");
  eq((await sb.fs().stat(`${D}/sub`)).kind, "directory", "dir kind");
});
await check("fs copy and rename", async () => {
  await sb.fs().copy(`${D}/a.txt`, `${D}/b.txt`);
  await sb.fs().rename(`${D}/b.txt`, `${D}/c.txt`);
  eq(await sb.fs().exists(`${D}/b.txt`), false, "b.txt after rename");
  eq(await sb.fs().readToString(`${D}/c.txt`), "hello files\n", "c.txt");
  eq(await sb.fs().readToString(`${D}/a.txt`), "hello files\n", "a.txt still there");
});
await check("fs remove file; removeDir is recursive", async () => {
  await sb.fs().remove(`${D}/c.txt`);
  eq(await sb.fs().exists(`${D}/c.txt`), false, "c.txt");
  await sb.fs().write(`${D}/sub/deeper/x.txt`, "x");
  await sb.fs().removeDir(`${D}/sub`);
  eq(await sb.fs().exists(`${D}/sub`), false, "sub");
});
await check("fs read of a missing file -> SandboxFsOpsError", async () => {
  await expectReject(sb.fs().read(`${D}/missing.txt`), (e) => e instanceof SandboxFsOpsError, "read");
});
await check("symlinks pointing outside resolve inside the sandbox (A4)", async () => {
  const marker = crypto.randomBytes(8).toString("hex");
  await sb.shell(`printf '${marker}' > /etc/msb-conf-marker; ln -sf /etc/msb-conf-marker ${D}/abs-link; ln -sf ../../../../../../../etc/msb-conf-marker ${D}/rel-link; ln -sfn /etc ${D}/etc-dir-link`);
  eq(await sb.fs().readToString(`${D}/abs-link`), marker, "absolute symlink");
  eq(await sb.fs().readToString(`${D}/rel-link`), marker, "relative ../ symlink");
  eq(await sb.fs().readToString(`${D}/etc-dir-link/msb-conf-marker`), marker, "through a directory symlink");
  const guestPasswd = (await sb.exec("cat", ["/etc/passwd"])).stdout();
  eq(await sb.fs().readToString(`${D}/etc-dir-link/passwd`), guestPasswd, "/etc/passwd via link = guest's");
  await sb.fs().write(`${D}/abs-link`, "written-through-link");
  eq((await sb.exec("cat", ["/etc/msb-conf-marker"])).stdout(), "written-through-link", "write through symlink lands in guest");
  await sb.fs().mkdir(`/../../..${D}/dotdot`);
  eq((await sb.exec("sh", ["-c", `test -d ${D}/dotdot && echo yes`])).stdout().trim(), "yes", "'..' above / stays at /");
});
await check("copyFromHost / copyToHost", async () => {
  const src = path.join(TMP, `${P}-up.bin`), dst = path.join(TMP, `${P}-down.bin`);
  const data = crypto.randomBytes(100000);
  fs.writeFileSync(src, data);
  await sb.fs().copyFromHost(src, `${D}/up.bin`);
  await sb.fs().copyToHost(`${D}/up.bin`, dst);
  eq(sha(fs.readFileSync(dst)), sha(data), "round trip");
  fs.rmSync(src); fs.rmSync(dst);
});

// ---- E. logs (SSE)
let logCursor1;
await check("logStream(follow) sees a background process's output (stdout + stderr)", async () => {
  const ls = await withTimeout(sb.logStream({ follow: true }), 5000, "logStream open (headers must be flushed)");
  const h = await sb.execStream("sh", ["-c", `for i in 1 2 3; do echo log-${P}-$i; sleep 0.3; done; echo log-${P}-err >&2`]);
  void h; // background: not awaited
  const want = new Set([`log-${P}-1`, `log-${P}-2`, `log-${P}-3`, `log-${P}-err`]);
  const deadline = Date.now() + 20000;
  while (want.size && Date.now() < deadline) {
    const e = await withTimeout(ls.recv(), Math.max(1, deadline - Date.now()), "log recv");
    assert(e, "log stream ended early");
    for (const line of e.text().split("\n")) {
      if (!want.has(line)) continue;
      want.delete(line);
      if (line.endsWith("-err")) eq(e.source, "stderr", "source of stderr line");
      else eq(e.source, "stdout", "source of stdout line");
      assert(typeof e.cursor === "string" && e.cursor.length > 0, "entry cursor");
      assert(e.timestamp instanceof Date && !isNaN(e.timestamp), "timestamp");
      if (line === `log-${P}-1`) logCursor1 = e.cursor;
    }
  }
  assert(want.size === 0, `missing log lines: ${[...want].join(",")}`);
  await ls[Symbol.asyncDispose]?.();
});
await check("logStream fromCursor resumes strictly after the entry (Last-Event-ID)", async () => {
  assert(logCursor1, "no cursor from the previous check");
  const raw = Buffer.from(logCursor1, "base64");
  assert(raw.length === 1 + 16 * raw[0] && Buffer.from(raw).toString("base64") === logCursor1, "cursor must be padded std base64 of [count][count x 16 bytes]");
  const ls = await withTimeout(sb.logStream({ follow: true, fromCursor: logCursor1 }), 5000, "open");
  const deadline = Date.now() + 15000;
  for (;;) {
    const e = await withTimeout(ls.recv(), Math.max(1, deadline - Date.now()), "recv");
    assert(e, "stream ended");
    const hit = e.text().split("\n").find((l) => l.startsWith(`log-${P}-`));
    if (!hit) continue;
    eq(hit, `log-${P}-2`, "first tagged line after the cursor");
    break;
  }
  await ls[Symbol.asyncDispose]?.();
});
await check("logs: raw SSE headers flushed promptly even with nothing to send yet", async () => {
  // The ephemeral sandbox never ran anything, so there is no output to replay:
  // the server must still send the status line and headers at once (the SDK's
  // logStream() waits for them).
  const quietId = cloudId(await Sandbox.get(SE));
  const r = await rawRequest("GET", `/v1/sandboxes/${encodeURIComponent(quietId)}/logs?sources=stdout,stderr,output`, {
    key: KEY, headers: { accept: "text/event-stream" }, onHeaders: true, timeoutMs: 3000,
  });
  r.res?.destroy();
  eq(r.status, 200, "status");
  assert(/^text\/event-stream/.test(r.headers["content-type"] ?? ""), `content-type ${r.headers["content-type"]}`);
});
await check("non-follow logs are refused client-side on cloud", async () => {
  await expectReject(sb.logs(), (e) => e instanceof UnsupportedError, "logs()");
});

// ---- F. raw agent protocol (wire rules the SDK tolerates)
await check("agent handshake: 8-byte id range then core.ready (id 0, flags 0, v>=2, p bytes)", async () => {
  const { status, agent } = await RawAgent.open(sbId, KEY);
  eq(status, 101, "upgrade status");
  try {
    const range = await agent.readExact(8);
    const idMin = range.readUInt32BE(0), idMax = range.readUInt32BE(4);
    assert(idMin >= 1 && idMin < idMax, `id range [${idMin}, ${idMax})`);
    const f = await agent.readFrame();
    eq(f.t, "core.ready", "t"); eq(f.id, 0, "id"); eq(f.flags, 0, "flags");
    assert(f.v >= 2, `ready.v must be >= 2 (fs needs generation 2), got ${f.v}`);
    for (const k of ["boot_time_ns", "init_time_ns", "ready_time_ns"]) assert(Number.isInteger(f.payload[k]) && f.payload[k] >= 0, `ready.${k} must be an unsigned int`);
    // exec on the raw socket: flags per message type.
    const id = idMin;
    agent.sendFrame(id, 2, "core.exec.request", execReq("echo", ["raw"]));
    const started = await agent.readFrame();
    eq([started.t, started.id, started.flags], ["core.exec.started", id, 0], "started");
    assert(Number.isInteger(started.payload.pid), "pid");
    let out = Buffer.alloc(0), fr;
    for (;;) {
      fr = await agent.readFrame();
      eq(fr.id, id, "frame id");
      if (fr.t !== "core.exec.stdout") break;
      eq(fr.flags, 0, "stdout flags"); assert(Buffer.isBuffer(fr.payload.data), "stdout data must be a byte string");
      out = Buffer.concat([out, fr.payload.data]);
    }
    eq([fr.t, fr.flags, fr.payload.code], ["core.exec.exited", 1, 0], "exited");
    eq(out.toString(), "raw\n", "stdout");
    // typed failure kinds.
    agent.sendFrame(id + 1, 2, "core.exec.request", execReq("/definitely/not/a/binary"));
    const nf = await agent.readFrame();
    eq([nf.t, nf.flags, nf.payload.kind], ["core.exec.failed", 1, "not_found"], "missing binary");
    assert(typeof nf.payload.message === "string", "failed.message");
    agent.sendFrame(id + 2, 2, "core.exec.request", execReq("pwd", [], { cwd: "/definitely/not/a/dir" }));
    const bc = await agent.readFrame();
    eq([bc.t, bc.flags, bc.payload.kind], ["core.exec.failed", 1, "bad_cwd"], "bad cwd");
    // one fs round trip: Stat "/" -> TERMINAL fs.response with {Stat: {kind: "dir"}}.
    agent.sendFrame(id + 3, 2, "core.fs.request", { op: { Stat: { path: "/", follow_symlink: true } } });
    const st = await agent.readFrame();
    eq([st.t, st.id, st.flags, st.payload.ok], ["core.fs.response", id + 3, 1, true], "fs response");
    eq(st.payload.data?.Stat?.kind, "dir", "Stat kind on the agent socket is \"dir\"");
    return `ready.v=${f.v} range=[${idMin},${idMax})`;
  } finally { agent.close(); }
});

// ---- G. volumes
await check("volume create / list / get / default", async () => {
  const v = await Volume.builder(VOL).label("suite", P).create();
  createdVolumes.add(VOL);
  eq(v.name, VOL, "name");
  const list = await Volume.list();
  const mine = list.find((x) => x.name === VOL);
  assert(mine, "created volume missing from Volume.list()");
  eq(mine.isDefault, false, "isDefault");
  assert(mine.labels.some(([k, val]) => k === "suite" && val === P), "labels");
  eq((await Volume.get(VOL)).name, VOL, "get");
  eq((await Volume.getDefault()).isDefault, true, "default volume");
  const raw = await rawRequest("GET", "/v1/volumes", { key: KEY });
  assert(Array.isArray(raw.json), "GET /v1/volumes must return a bare JSON array");
  await expectReject(Volume.builder(VOL).create(), (e) => /already exists/i.test(e.message), "duplicate volume");
});
await check("volume files REST: write/read/list/stat/exists/mkdir/copy/rename/remove", async () => {
  const vf = (await Volume.get(VOL)).fs();
  await vf.write("seed/hello.txt", "from-rest");
  eq(await vf.readToString("seed/hello.txt"), "from-rest", "read");
  await vf.mkdir("made/dir");
  const root = await vf.list("");
  const names = root.map((e) => e.path.split("/").filter(Boolean).pop());
  assert(names.includes("seed") && names.includes("made"), `root listing: ${root.map((e) => e.path)}`);
  const s = await vf.stat("seed/hello.txt");
  eq([s.kind, s.size], ["file", 9], "stat");
  eq(await vf.exists("seed/hello.txt"), true, "exists"); eq(await vf.exists("seed/nope"), false, "exists(nope)");
  await vf.copy("seed/hello.txt", "seed/copy.txt");
  await vf.rename("seed/copy.txt", "seed/moved.txt");
  eq(await vf.readToString("seed/moved.txt"), "from-rest", "moved");
  await vf.remove("seed/moved.txt");
  eq(await vf.exists("seed/moved.txt"), false, "removed");
  await vf.removeDir("made");
  eq(await vf.exists("made"), false, "removeDir");
  await expectReject(vf.read("seed/missing.txt"), (e) => e instanceof SandboxFsOpsError || e instanceof VolumeNotFoundError, "missing file");
});
await check("mount the volume into a sandbox (both directions)", async () => {
  const s = await create(SV, (b) => b.volume("/data", (m) => m.named(VOL)).label("suite", `${P}-vol`));
  eq((await s.exec("cat", ["/data/seed/hello.txt"])).stdout(), "from-rest", "REST -> sandbox");
  await s.shell("printf 'from-sandbox' > /data/seed/back.txt");
  eq(await (await Volume.get(VOL)).fs().readToString("seed/back.txt"), "from-sandbox", "sandbox -> REST");
  await s.destroy();
  createdSandboxes.delete(SV);
  await expectReject(Sandbox.get(SV), (e) => e instanceof SandboxNotFoundError, "destroyed sandbox");
});
await check("volume delete", async () => {
  await Volume.remove(VOL);
  createdVolumes.delete(VOL);
  await expectReject(Volume.get(VOL), (e) => e instanceof VolumeNotFoundError, "get after delete");
});

// ---- H. other namespace is refused (A8)
await check("other-namespace key: SDK get/list/volumes see nothing", async () => {
  await withDefaultBackend({ kind: "cloud", url: API, apiKey: OTHER }, async () => {
    await expectReject(Sandbox.get(S1), (e) => e instanceof SandboxNotFoundError || (e instanceof CloudHttpError && /403/.test(e.message)), "get");
    const page = await Sandbox.listWith((l) => l.label("suite", P));
    eq(page.sandboxes.length, 0, "labelled list");
    const all = await Sandbox.list();
    assert(!all.sandboxes.some((s) => s.name.startsWith(P)), "unfiltered list leaks our sandboxes");
  });
});
await check("other-namespace key: raw by-id, logs, stop, delete, agent upgrade refused; nothing changed", async () => {
  const refused = (s) => s === 403 || s === 404;
  const a = await rawRequest("GET", `/v1/sandboxes/${sbId}`, { key: OTHER });
  assert(refused(a.status), `by-id: ${a.status}`);
  const b = await rawRequest("GET", `/v1/sandboxes/by-name/${S1}`, { key: OTHER });
  assert(refused(b.status), `by-name: ${b.status}`);
  const c = await rawRequest("GET", `/v1/sandboxes/${sbId}/logs`, { key: OTHER, headers: { accept: "text/event-stream" }, onHeaders: true, timeoutMs: 5000 });
  c.res?.destroy();
  assert(refused(c.status), `logs: ${c.status}`);
  const d = await rawRequest("POST", `/v1/sandboxes/${sbId}/stop`, { key: OTHER, body: {} });
  assert(refused(d.status), `stop by id: ${d.status}`);
  const d2 = await rawRequest("POST", `/v1/sandboxes/by-name/${S1}/stop`, { key: OTHER, body: {} });
  assert(refused(d2.status), `stop by name: ${d2.status}`);
  const e = await rawRequest("DELETE", `/v1/sandboxes/${sbId}`, { key: OTHER });
  assert(refused(e.status), `delete: ${e.status}`);
  const w = await RawAgent.open(sbId, OTHER);
  if (w.agent) w.agent.close();
  assert(w.status !== 101 && refused(w.status), `agent upgrade: ${w.status}`);
  eq((await Sandbox.get(S1)).status, "running", "our sandbox still running");
});

// ---- I. stop / start / restart / remove
await check("stop (SDK) -> stopped within 10 s; stop is idempotent", async () => {
  await sb.stop();
  eq((await Sandbox.get(S1)).status, "stopped", "status");
  await sb.stop();
  const raw = await rawRequest("POST", `/v1/sandboxes/${sbId}/stop`, { key: KEY, body: {} });
  eq(raw.status, 200, "raw stop of a stopped sandbox");
});
await check("exec on a stopped sandbox fails", async () => {
  await expectReject(sb.exec("true", []), () => true, "exec");
});
await check("start again (handle.start, by id) -> running, same id", async () => {
  const s = await (await Sandbox.get(S1)).start();
  eq((await Sandbox.get(S1)).status, "running", "status");
  eq(cloudId(s), sbId, "same id after restart");
  eq((await s.exec("echo", ["again"])).stdout(), "again\n", "exec after start");
  sb = s;
});
await check("Sandbox.start(name) on a running sandbox is a no-op success", async () => {
  sb = await Sandbox.start(S1);
  eq((await Sandbox.get(S1)).status, "running", "status");
});
await check("restart()", async () => {
  const r = await sb.restart();
  eq((await Sandbox.get(S1)).status, "running", "status");
  eq((await r.exec("echo", ["back"])).stdout(), "back\n", "exec after restart");
  sb = r;
});
await check("Sandbox.remove(name) and destroy()", async () => {
  await (await Sandbox.get(S2)).stop();
  await Sandbox.remove(S2); createdSandboxes.delete(S2);
  await expectReject(Sandbox.get(S2), (e) => e instanceof SandboxNotFoundError, "S2 after remove");
  await (await Sandbox.get(S3)).destroy(); createdSandboxes.delete(S3);
  await expectReject(Sandbox.get(S3), (e) => e instanceof SandboxNotFoundError, "S3 after destroy");
});

// ---- J. lifecycle (A6, A7)
await check("ephemeral: stop succeeds, then the sandbox is reaped", async () => {
  await (await Sandbox.get(SE)).stop();
  const st = await pollStatus(SE, ["<gone>"], EPHEMERAL_REAP_S);
  createdSandboxes.delete(SE);
  return st;
});
await check("max_duration_secs stops the sandbox", async () => {
  const st = await pollStatus(SM, ["stopped", "crashed", "<gone>"], LIFECYCLE_LIMIT_S + LIFECYCLE_SLACK_S);
  return st;
});
await check("idle_timeout_secs stops an idle sandbox", async () => {
  const st = await pollStatus(SI, ["stopped", "crashed", "<gone>"], LIFECYCLE_LIMIT_S + LIFECYCLE_SLACK_S);
  return st;
});
await check("destroy the main sandbox", async () => {
  await (await Sandbox.get(S1)).destroy();
  createdSandboxes.delete(S1);
  await expectReject(Sandbox.get(S1), (e) => e instanceof SandboxNotFoundError, "after destroy");
});

await cleanup();
console.log(failures ? `${failures} of ${n} checks FAILED` : `all ${n} checks passed`);
process.exit(failures ? 1 : 0);
