"""A Python job that misbehaves as `--param mode=...` says: `loop-map`
(never returns), `grow` (allocates without end), `raise` (raises with a
message of its own), `abort` (says why on stderr, then aborts the interpreter), `escape` (tries files, sockets, the environment and
the arguments, and reports what it reached)."""

import os
import sys

import wmr


class Hostile(wmr.Job):
    key = str
    value = str
    output = str

    def __init__(self, params):
        self.mode = params.require("mode")
        # A port the test listens on, for `escape` to try.
        self.port = int(params.get("port", "9"))

    def map(self, record, emit):
        if self.mode == "loop-map":
            n = 0
            while True:
                n += 1
        if self.mode == "grow":
            hoard = []
            while True:
                hoard.append(bytearray(1 << 20))
        if self.mode == "abort":
            sys.stderr.write("hostile: giving up on purpose\n")
            sys.stderr.flush()
            os.abort()
        if self.mode == "raise" and record.offset > 100:
            raise ValueError(f"refusing the line at offset {record.offset}")
        if self.mode == "escape" and record.offset == 0:
            emit("file", str(_reached(lambda: open("/etc/passwd").read())))
            emit("dir", str(_reached(lambda: os.listdir("/"))))
            emit("env", str(len(os.environ)))
            emit("args", str(len(sys.argv) - 1 if sys.argv else 0))
            emit("socket", str(_reached(lambda: _connect(self.port))))

    def reduce(self, key, values, emit):
        for value in values:
            emit(f"{key} {value}")


def _reached(attempt):
    try:
        attempt()
        return 1
    except Exception:
        return 0


def _connect(port):
    import socket

    socket.create_connection(("127.0.0.1", port), timeout=1)


WitWorld = wmr.export(Hostile)
