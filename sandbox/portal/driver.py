# The msb REPL driver for Python, run by the portal as `python3 -u -c`.
# It reads {"seq": N, "code": "..."} lines from fd 3, runs each in the one
# namespace of __main__ (so definitions persist), and writes records to fd 4:
# ["o", text] / ["e", text] for what the code prints, ["d", status] when done
# (status "ok", "error" or "interrupted"). Everything lives inside one
# function so that the user's namespace holds nothing of the driver's.
def _msb_driver():
    import io, json, os, signal, sys, threading, traceback, codecs

    ns = sys.modules["__main__"].__dict__
    ns.pop("_msb_driver", None)
    os.set_inheritable(3, False)
    os.set_inheritable(4, False)

    lock = threading.Lock()
    main_thread = threading.get_ident()
    # running: user code is executing, so SIGINT may interrupt it.
    # critical: a record is being written and must not be torn by an
    # exception; a SIGINT that arrives then is raised right after.
    st = {"running": False, "critical": 0, "pending": False}

    def on_sigint(signum, frame):
        if not st["running"]:
            return
        if st["critical"]:
            st["pending"] = True
            return
        raise KeyboardInterrupt

    def write_all(fd, data):
        while data:
            n = os.write(fd, data)
            data = data[n:]

    def emit(kind, text):
        data = "".join(
            json.dumps([kind, text[i:i + 16384]]) + "\n"
            for i in range(0, len(text), 16384)
        ).encode()
        if not data:
            return
        is_main = threading.get_ident() == main_thread
        with lock:
            if is_main:
                st["critical"] += 1
            try:
                write_all(4, data)
            finally:
                if is_main:
                    st["critical"] -= 1
        if is_main and st["pending"] and not st["critical"]:
            st["pending"] = False
            if st["running"]:
                raise KeyboardInterrupt

    class Buffer(io.RawIOBase):
        def __init__(self, kind):
            self._kind = kind
            self._dec = codecs.getincrementaldecoder("utf-8")("replace")

        def writable(self):
            return True

        def write(self, b):
            emit(self._kind, self._dec.decode(bytes(b)))
            return len(b)

    class Stream(io.TextIOBase):
        def __init__(self, kind, name):
            self._kind = kind
            self._name = name
            self.buffer = Buffer(kind)

        @property
        def name(self):
            return self._name

        @property
        def encoding(self):
            return "utf-8"

        @property
        def errors(self):
            return "strict"

        def writable(self):
            return True

        def isatty(self):
            return False

        def fileno(self):
            # Whoever needs a real descriptor (subprocess, faulthandler)
            # gets the raw pipe, which the portal reads too.
            return 1 if self._kind == "o" else 2

        def write(self, s):
            if not isinstance(s, str):
                raise TypeError("write() argument must be str, not " + type(s).__name__)
            if s:
                emit(self._kind, s)
            return len(s)

        def flush(self):
            pass

    out, err = Stream("o", "<stdout>"), Stream("e", "<stderr>")
    sys.stdout, sys.stderr = out, err

    def report(e, tb):
        try:
            err.write("".join(traceback.format_exception(type(e), e, tb)))
        except BaseException:
            pass

    def run(code):
        try:
            compiled = compile(code, "<input>", "exec")
        except Exception as e:
            report(e, None)
            return "error"
        try:
            try:
                st["running"] = True
                exec(compiled, ns)
            finally:
                st["running"] = False
        except SystemExit:
            # sys.exit() ends the interpreter, as it would anywhere else;
            # the portal says so and starts a fresh one next time.
            raise
        except KeyboardInterrupt as e:
            st["running"] = False
            report(e, e.__traceback__.tb_next)
            return "interrupted"
        except BaseException as e:
            st["running"] = False
            # tb_next drops this function's frame from the traceback.
            report(e, e.__traceback__.tb_next)
            return "error"
        return "ok"

    def finish(seq, status):
        st["critical"] += 1
        try:
            marker = ("\0msb-sync:%d\0\n" % seq).encode()
            for fd in (1, 2):
                try:
                    write_all(fd, marker)
                except OSError:
                    pass
            emit("d", status)
        finally:
            st["critical"] -= 1
            st["pending"] = False

    signal.signal(signal.SIGINT, on_sigint)
    ctl = io.open(3, "r", encoding="utf-8", newline="\n")
    while True:
        st["running"] = False
        try:
            line = ctl.readline()
        except KeyboardInterrupt:
            continue
        if not line:
            break
        req = json.loads(line)
        finish(req["seq"], run(req["code"]))


_msb_driver()
