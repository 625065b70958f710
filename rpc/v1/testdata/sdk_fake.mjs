// The real microsandbox SDK (cloud backend) against the v1 API on the fake
// service of the package's tests (TestSDKOnFake): the SDK must decode every
// object and frame msb sends. The fake's commands: echo, err, cat, sleep, big.
import { Sandbox, Volume, SandboxNotFoundError, SandboxAlreadyExistsError, InvalidConfigError, setDefaultBackend } from "microsandbox";

const API = process.env.MSB_API_URL, KEY = process.env.MSB_API_KEY;
setDefaultBackend({ kind: "cloud", url: API, apiKey: KEY });
let n = 0;
function assert(c, m) { if (!c) throw new Error(m); }
async function check(name, fn) {
  n++;
  try { await fn(); console.log(`ok ${n} ${name}`); } catch (e) { console.log(`FAIL ${n} ${name}: ${e?.constructor?.name}: ${e?.message}`); process.exitCode = 1; }
}
async function rejects(p, pred, what) {
  try { await p; } catch (e) { assert(pred(e), `${what}: wrong error ${e?.constructor?.name} ${e?.message}`); return; }
  throw new Error(`${what}: no error`);
}
const text = (u8) => Buffer.from(u8).toString();

let sb;
await check("create", async () => {
  sb = await Sandbox.builder("sdk").image("alpine:3.20").env("FOO", "bar").label("suite", "s").workdir("/tmp")
    .volume("/scratch", (m) => m.tmpfs().size(16)).create();
  assert(sb.name === "sdk" && /^cloud:/.test(sb.id), `sandbox ${sb.name} ${sb.id}`);
});
await check("duplicate", () => rejects(Sandbox.builder("sdk").image("alpine:3.20").create(), (e) => e instanceof SandboxAlreadyExistsError, "dup"));
await check("bind mount refused", () => rejects(Sandbox.builder("bad").image("alpine:3.20").volume("/h", (m) => m.bind("/etc")).create(), (e) => e instanceof InvalidConfigError, "bind"));
await check("get + spec", async () => {
  const h = await Sandbox.get("sdk");
  assert(h.status === "running", `status ${h.status}`);
  const spec = JSON.parse(h.configJson);
  assert(spec.labels.suite === "s" && spec.runtime.workdir === "/tmp", `spec ${h.configJson}`);
  const c = h.config();
  assert(c, "config");
});
await check("get missing", () => rejects(Sandbox.get("nope"), (e) => e instanceof SandboxNotFoundError, "get"));
await check("list", async () => {
  const p = await Sandbox.listWith((l) => l.label("suite", "s").limit(5));
  assert(p.sandboxes.length === 1 && p.sandboxes[0].name === "sdk", `list ${p.sandboxes.map((s) => s.name)}`);
});
await check("exec", async () => {
  const o = await sb.exec("echo", ["hello", "$HOME"]);
  assert(o.code === 0 && o.stdout() === "hello $HOME\n", `exec ${o.code} ${o.stdout()}`);
  const e = await sb.exec("err", ["oops"]);
  assert(e.stderr() === "oops\n", `stderr ${e.stderr()}`);
});
await check("exec failure", () => rejects(sb.exec("nonexistent", []), (e) => /^\[ExecFailed\]/.test(e.message), "failed"));
await check("stream + stdin", async () => {
  const h = await sb.execStreamWith("cat", (b) => b.stdinPipe());
  const sink = await h.takeStdin();
  await sink.write("abc\n");
  let out = "";
  for (;;) { const ev = await h.recv(); if (ev.kind === "stdout") { out += text(ev.data); if (out.includes("abc")) break; } }
  await sink.close();
  const st = await h.wait();
  assert(st.code === 0 && out === "abc\n", `cat ${st.code} ${out}`);
});
await check("kill", async () => {
  const h = await sb.execStream("sleep", ["30"]);
  await h.recv();
  await h.kill();
  const st = await h.wait();
  assert(st.code === -1 && !st.success, `kill ${st.code}`);
});
await check("big output", async () => {
  const o = await sb.exec("big", ["5000000"]);
  assert(o.stdoutBytes().length === 5000000, `big ${o.stdoutBytes().length}`);
});
const big = Buffer.alloc(7 * 1024 * 1024 + 123, 7);
await check("fs write/read 7 MiB", async () => {
  await sb.fs().write("/tmp/big.bin", big);
  const back = await sb.fs().read("/tmp/big.bin");
  assert(Buffer.from(back).equals(big), `read ${back.length}`);
  let total = 0;
  for await (const c of await sb.fs().readStream("/tmp/big.bin")) total += c.length;
  assert(total === big.length, `stream ${total}`);
  const w = await sb.fs().writeStream("/tmp/ws.txt");
  await w.write("a-"); await w.write("b"); await w.close();
  assert(await sb.fs().readToString("/tmp/ws.txt") === "a-b", "writeStream");
});
await check("fs ops", async () => {
  await sb.fs().mkdir("/tmp/d/e");
  assert(await sb.fs().exists("/tmp/d/e"), "exists");
  assert(!(await sb.fs().exists("/tmp/nope")), "exists nope");
  await sb.fs().copy("/tmp/ws.txt", "/tmp/d/c.txt");
  await sb.fs().rename("/tmp/d/c.txt", "/tmp/d/r.txt");
  const st = await sb.fs().stat("/tmp/d/r.txt");
  assert(st.kind === "file" && st.size === 3 && st.modified instanceof Date, `stat ${JSON.stringify(st)}`);
  const list = await sb.fs().list("/tmp/d");
  assert(list.length === 2 && list.some((e) => e.kind === "directory"), `list ${JSON.stringify(list)}`);
  await sb.fs().remove("/tmp/d/r.txt");
  await sb.fs().removeDir("/tmp/d");
  assert(!(await sb.fs().exists("/tmp/d")), "removeDir");
  await rejects(sb.fs().read("/tmp/missing"), (e) => /fs/i.test(e.constructor.name) || /sandbox fs error/.test(e.message), "missing");
});
await check("logs", async () => {
  const ls = await sb.logStream({ follow: true });
  await sb.exec("echo", ["to-the-log"]);
  let cursor;
  for (;;) {
    const e = await ls.recv();
    if (e.text().includes("to-the-log")) { assert(e.source === "stdout" && e.timestamp instanceof Date, `entry ${e.source}`); cursor = e.cursor; break; }
  }
  await sb.exec("echo", ["after"]);
  const again = await sb.logStream({ follow: true, fromCursor: cursor });
  for (;;) {
    const e = await again.recv();
    assert(!e.text().includes("to-the-log"), "resumed before the cursor");
    if (e.text().includes("after")) break;
  }
});
await check("volumes", async () => {
  const v = await Volume.builder("vol").label("k", "v").create();
  assert(v.name === "vol", "name");
  const list = await Volume.list();
  assert(list.some((x) => x.name === "vol" && !x.isDefault) && list.some((x) => x.isDefault), `list ${JSON.stringify(list.map((x) => x.name))}`);
  const vf = (await Volume.get("vol")).fs();
  await vf.write("seed/hello.txt", "from-rest");
  assert(await vf.readToString("seed/hello.txt") === "from-rest", "read");
  const st = await vf.stat("seed/hello.txt");
  assert(st.kind === "file" && st.size === 9, `stat ${JSON.stringify(st)}`);
  const root = await vf.list("");
  assert(root.length === 1, `root ${JSON.stringify(root)}`);
  assert(await vf.exists("seed/hello.txt") && !(await vf.exists("nope")), "exists");
  await vf.mkdir("m/n"); await vf.copy("seed/hello.txt", "m/c.txt"); await vf.rename("m/c.txt", "m/r.txt");
  await vf.remove("m/r.txt"); await vf.removeDir("m");
  assert((await Volume.getDefault()).isDefault, "default");
  await Volume.remove("vol");
  await rejects(Volume.get("vol"), (e) => /not found/i.test(e.message) || e.constructor.name === "VolumeNotFoundError", "gone");
});
await check("stop, start, remove", async () => {
  await sb.stop();
  assert((await Sandbox.get("sdk")).status === "stopped", "stopped");
  await sb.stop();
  const s = await (await Sandbox.get("sdk")).start();
  assert((await Sandbox.get("sdk")).status === "running" && s.id === sb.id, "started");
  await s.destroy();
  await rejects(Sandbox.get("sdk"), (e) => e instanceof SandboxNotFoundError, "destroyed");
});
console.log(process.exitCode ? "FAILED" : `all ${n} passed`);
