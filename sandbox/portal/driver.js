// The msb REPL driver for Node, run by the portal as `node -e`. It reads
// {"seq": N, "code": "..."} lines from fd 3, runs each in one vm context
// created once (so top-level definitions persist), awaits a returned
// Promise, and writes records to fd 4: ["o", text] / ["e", text] for what
// the code prints, ["d", status] when done ("ok", "error", "interrupted").
(function () {
  'use strict';
  const fs = require('fs');
  const vm = require('vm');
  const util = require('util');
  const { Console } = require('console');
  const { EventEmitter } = require('events');

  function writeAll(fd, buf) {
    let off = 0;
    while (off < buf.length) {
      try {
        off += fs.writeSync(fd, buf, off, buf.length - off);
      } catch (e) {
        if (e.code !== 'EAGAIN') throw e;
      }
    }
  }

  const CHUNK = 16384;
  function emit(kind, text) {
    text = String(text);
    let out = '';
    for (let i = 0; i < text.length;) {
      let j = Math.min(i + CHUNK, text.length);
      if (j < text.length) {
        const c = text.charCodeAt(j - 1);
        if (c >= 0xd800 && c <= 0xdbff) j--; // keep surrogate pairs whole
      }
      out += JSON.stringify([kind, text.slice(i, j)]) + '\n';
      i = j;
    }
    if (out) writeAll(4, Buffer.from(out, 'utf8'));
  }

  // A synchronous stream for the context's console: each write becomes a
  // record at once, so the order across stdout and stderr is exact.
  class Sink extends EventEmitter {
    constructor(kind) {
      super();
      this.kind = kind;
      this.isTTY = false;
      this.writable = true;
    }
    write(chunk, encoding, cb) {
      emit(this.kind, typeof chunk === 'string' ? chunk : Buffer.from(chunk).toString('utf8'));
      if (typeof encoding === 'function') encoding();
      else if (typeof cb === 'function') cb();
      return true;
    }
  }
  const con = new Console({ stdout: new Sink('o'), stderr: new Sink('e'), colorMode: false });

  const ctx = vm.createContext({});
  const own = new Set(vm.runInContext('Object.getOwnPropertyNames(globalThis)', ctx));
  // Node's own globals (setTimeout, fetch, the lazily loaded built-in
  // modules of -e) are copied as descriptors: reading them here would load
  // every module and print its deprecation warnings.
  for (const k of Object.getOwnPropertyNames(globalThis)) {
    if (own.has(k) || k === 'console' || k === 'global') continue;
    try {
      Object.defineProperty(ctx, k, Object.getOwnPropertyDescriptor(globalThis, k));
    } catch (_) { /* not configurable */ }
  }
  Object.assign(ctx, {
    console: con, require, process, Buffer, module: { exports: {} },
    __filename: '<input>', __dirname: process.cwd(),
  });
  ctx.exports = ctx.module.exports;
  vm.runInContext('globalThis.global = globalThis', ctx);

  function report(e) {
    let s;
    try {
      if (e !== null && typeof e === 'object' && typeof e.stack === 'string') s = e.stack;
      else s = 'Uncaught ' + util.inspect(e);
    } catch (_) {
      s = 'Uncaught exception';
    }
    // Frames of the driver and of node itself say nothing about the code.
    s = s.split('\n').filter((l) => !/^\s+at (.*\()?(node:|\[eval\])/.test(l)).join('\n');
    emit('e', s + '\n');
  }
  process.on('uncaughtException', report);
  process.on('unhandledRejection', report);

  let interrupt = null;
  const INTERRUPTED = Symbol('interrupted');
  // While a script runs, breakOnSigint handles SIGINT; while its Promise is
  // awaited, this listener abandons the wait. Between calls SIGINT is ignored.
  process.on('SIGINT', () => { if (interrupt) interrupt(); });

  function isThenable(r) {
    return r !== null && (typeof r === 'object' || typeof r === 'function') && typeof r.then === 'function';
  }

  async function run(code) {
    let script;
    try {
      script = new vm.Script(code, { filename: '<input>' });
    } catch (e) {
      // Top-level await is not valid in a script: run the code as the
      // body of an async function instead (its declarations stay local).
      if (!(e && e.name === 'SyntaxError' && /\bawait\b/.test(code))) {
        report(e);
        return 'error';
      }
      try {
        script = new vm.Script('(async () => {\n' + code + '\n})()', { filename: '<input>', lineOffset: -1 });
      } catch (_) {
        report(e);
        return 'error';
      }
    }
    try {
      const r = script.runInContext(ctx, { breakOnSigint: true, displayErrors: false });
      if (isThenable(r)) {
        const res = await new Promise((resolve, reject) => {
          interrupt = () => resolve(INTERRUPTED);
          r.then(() => resolve(null), reject);
        });
        if (res === INTERRUPTED) {
          emit('e', 'Error: Script execution was interrupted while awaiting a Promise\n');
          return 'interrupted';
        }
      }
      return 'ok';
    } catch (e) {
      report(e);
      if (e && e.code === 'ERR_SCRIPT_EXECUTION_INTERRUPTED') return 'interrupted';
      return 'error';
    } finally {
      interrupt = null;
    }
  }

  function finish(seq, status) {
    const m = Buffer.from('\0msb-sync:' + seq + '\0\n');
    for (const fd of [1, 2]) {
      try { writeAll(fd, m); } catch (_) { /* the code closed it */ }
    }
    emit('d', status);
  }

  const queue = [];
  let busy = false;
  async function pump() {
    if (busy) return;
    busy = true;
    while (queue.length) {
      const req = JSON.parse(queue.shift());
      finish(req.seq, await run(req.code));
    }
    busy = false;
  }

  let pending = '';
  const ctl = fs.createReadStream(null, { fd: 3, highWaterMark: 1 << 16 });
  ctl.setEncoding('utf8');
  ctl.on('data', (d) => {
    pending += d;
    let i;
    while ((i = pending.indexOf('\n')) >= 0) {
      queue.push(pending.slice(0, i));
      pending = pending.slice(i + 1);
    }
    pump();
  });
  // The portal is gone: so is the point of this interpreter.
  ctl.on('end', () => process.exit(0));
  ctl.on('error', () => process.exit(0));
})();
