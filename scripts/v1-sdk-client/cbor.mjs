// Minimal CBOR (RFC 8949) encoder/decoder for the microsandbox agent probe.
// Encodes the way ciborium does for the types the agent protocol uses:
// shortest-form integers, definite-length text/bytes/arrays/maps, maps in
// insertion order, null = 0xf6, false/true = 0xf4/0xf5.
//
// Value model:
//   number (integer) / bigint -> major 0 or 1
//   string                   -> major 3 (text)
//   Uint8Array / Buffer      -> major 2 (bytes)
//   Array                    -> major 4
//   Map or plain object      -> major 5 (keys in insertion order)
//   null / undefined         -> 0xf6
//   boolean                  -> 0xf4 / 0xf5

function head(major, n, out) {
  n = BigInt(n);
  const m = major << 5;
  if (n < 24n) out.push(m | Number(n));
  else if (n < 0x100n) out.push(m | 24, Number(n));
  else if (n < 0x10000n) out.push(m | 25, Number(n >> 8n), Number(n & 0xffn));
  else if (n < 0x100000000n) {
    out.push(m | 26);
    for (let s = 24n; s >= 0n; s -= 8n) out.push(Number((n >> s) & 0xffn));
  } else {
    out.push(m | 27);
    for (let s = 56n; s >= 0n; s -= 8n) out.push(Number((n >> s) & 0xffn));
  }
}

function enc(v, out) {
  if (v === null || v === undefined) { out.push(0xf6); return; }
  if (v === false) { out.push(0xf4); return; }
  if (v === true) { out.push(0xf5); return; }
  if (typeof v === "number" || typeof v === "bigint") {
    if (typeof v === "number" && !Number.isInteger(v)) throw new Error("floats unsupported");
    const b = BigInt(v);
    if (b >= 0n) head(0, b, out); else head(1, -1n - b, out);
    return;
  }
  if (typeof v === "string") {
    const bytes = Buffer.from(v, "utf8");
    head(3, bytes.length, out);
    for (const x of bytes) out.push(x);
    return;
  }
  if (v instanceof Uint8Array) {
    head(2, v.length, out);
    for (const x of v) out.push(x);
    return;
  }
  if (Array.isArray(v)) {
    head(4, v.length, out);
    for (const x of v) enc(x, out);
    return;
  }
  const entries = v instanceof Map ? [...v.entries()] : Object.entries(v);
  head(5, entries.length, out);
  for (const [k, x] of entries) { enc(k, out); enc(x, out); }
}

export function encode(v) {
  const out = [];
  enc(v, out);
  return Buffer.from(out);
}

// Decoder returns plain JS: maps -> objects (text keys) or Map (other keys),
// bytes -> Buffer, ints -> number (or bigint when > 2^53).
export function decode(buf) {
  let i = 0;
  function readN(ai) {
    if (ai < 24) return BigInt(ai);
    if (ai === 24) return BigInt(buf[i++]);
    if (ai === 25) { const n = buf.readUInt16BE(i); i += 2; return BigInt(n); }
    if (ai === 26) { const n = buf.readUInt32BE(i); i += 4; return BigInt(n); }
    if (ai === 27) { const n = buf.readBigUInt64BE(i); i += 8; return n; }
    throw new Error(`unsupported additional info ${ai} at ${i}`);
  }
  const num = (b) => (b <= BigInt(Number.MAX_SAFE_INTEGER) ? Number(b) : b);
  function item() {
    const ib = buf[i++];
    const major = ib >> 5, ai = ib & 31;
    if (ai === 31 && major >= 2 && major <= 5) { // indefinite length (accepted by ciborium too)
      if (major === 2 || major === 3) {
        const parts = [];
        while (buf[i] !== 0xff) parts.push(item());
        i++;
        return major === 2 ? Buffer.concat(parts) : parts.join("");
      }
      if (major === 4) { const a = []; while (buf[i] !== 0xff) a.push(item()); i++; return a; }
      const pairs = [];
      while (buf[i] !== 0xff) { const key = item(); pairs.push([key, item()]); }
      i++;
      if (pairs.every(([k]) => typeof k === "string")) return Object.fromEntries(pairs);
      return new Map(pairs);
    }
    switch (major) {
      case 0: return num(readN(ai));
      case 1: { const n = readN(ai); const r = -1n - n; return r >= BigInt(Number.MIN_SAFE_INTEGER) ? Number(r) : r; }
      case 2: { const n = Number(readN(ai)); const b = buf.subarray(i, i + n); i += n; return Buffer.from(b); }
      case 3: { const n = Number(readN(ai)); const s = buf.toString("utf8", i, i + n); i += n; return s; }
      case 4: { const n = Number(readN(ai)); const a = []; for (let k = 0; k < n; k++) a.push(item()); return a; }
      case 5: {
        const n = Number(readN(ai));
        const pairs = [];
        for (let k = 0; k < n; k++) { const key = item(); pairs.push([key, item()]); }
        if (pairs.every(([k]) => typeof k === "string")) return Object.fromEntries(pairs);
        return new Map(pairs);
      }
      case 7:
        if (ib === 0xf4) return false;
        if (ib === 0xf5) return true;
        if (ib === 0xf6 || ib === 0xf7) return null;
        throw new Error(`unsupported simple/float 0x${ib.toString(16)}`);
      default: throw new Error(`unsupported major ${major}`);
    }
  }
  const v = item();
  if (i !== buf.length) throw new Error(`trailing bytes: consumed ${i} of ${buf.length}`);
  return v;
}

// Diagnostic notation (RFC 8949 §8) for logs: shows CBOR types exactly.
export function diag(buf) {
  let i = 0;
  function readN(ai) {
    if (ai < 24) return BigInt(ai);
    if (ai === 24) return BigInt(buf[i++]);
    if (ai === 25) { const n = buf.readUInt16BE(i); i += 2; return BigInt(n); }
    if (ai === 26) { const n = buf.readUInt32BE(i); i += 4; return BigInt(n); }
    if (ai === 27) { const n = buf.readBigUInt64BE(i); i += 8; return n; }
    throw new Error("bad ai");
  }
  function item() {
    const ib = buf[i++];
    const major = ib >> 5, ai = ib & 31;
    switch (major) {
      case 0: return readN(ai).toString();
      case 1: return (-1n - readN(ai)).toString();
      case 2: { const n = Number(readN(ai)); const b = buf.subarray(i, i + n); i += n; return `h'${b.toString("hex")}'`; }
      case 3: { const n = Number(readN(ai)); const s = buf.toString("utf8", i, i + n); i += n; return JSON.stringify(s); }
      case 4: { const n = Number(readN(ai)); const a = []; for (let k = 0; k < n; k++) a.push(item()); return `[${a.join(", ")}]`; }
      case 5: { const n = Number(readN(ai)); const a = []; for (let k = 0; k < n; k++) { const key = item(); a.push(`${key}: ${item()}`); } return `{${a.join(", ")}}`; }
      case 7: return ib === 0xf4 ? "false" : ib === 0xf5 ? "true" : ib === 0xf6 ? "null" : `simple(${ib})`;
      default: return "?";
    }
  }
  return item();
}
