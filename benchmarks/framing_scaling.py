"""Per-message cost of terminator framing versus read size (a script, not a test).

Feeds N lines of 16 bytes (14 + b"\\r\\n") through ``handle_read`` of each
implementation — chatcore on its compiled engine, chatcore on its pure-Python
twin, and stdlib ``asynchat`` where it exists (Python <= 3.11) — with the same
handler code, reading 4 KiB, 64 KiB or 1 MiB at a time from a fake socket.
Prints nanoseconds per line (best of --repeat) and the speed-up over stdlib.
The result is checked after every run, so a fast wrong answer cannot pass.

    python benchmarks/framing_scaling.py [--lines 1000000] [--repeat 3]
"""

import argparse
import platform
import sys
import time
import warnings

import chatcore
from chatcore import _framing_py

try:
    from chatcore import _framing_c
except ImportError:
    _framing_c = None

with warnings.catch_warnings():
    warnings.simplefilter("ignore", DeprecationWarning)
    try:
        import asynchat as stdlib_asynchat
    except ImportError:
        stdlib_asynchat = None

LINE = b"0123456789abcd\r\n"
READ_SIZES = [4096, 65536, 1 << 20]


class ChunkSocket:
    """Just enough socket for dispatcher.__init__ and recv(): replays chunks."""

    def __init__(self, chunks):
        self.chunks = chunks
        self.index = 0

    def setblocking(self, flag):
        pass

    def fileno(self):
        return -1

    def getpeername(self):
        return ("127.0.0.1", 0)

    def recv(self, size):
        chunk = self.chunks[self.index]
        self.index += 1
        return chunk


def handler_class(base):
    class LineCounter(base):
        ac_in_buffer_size = 1 << 20

        def __init__(self, sock):
            base.__init__(self, sock, map={})
            self.set_terminator(b"\r\n")
            self.lines = 0
            self.bytes = 0

        def collect_incoming_data(self, data):
            self._collect_incoming_data(data)

        def found_terminator(self):
            self.bytes += len(self._get_data())
            self.lines += 1

    return LineCounter


def implementations():
    found = {}
    if _framing_c is not None:
        found["chatcore (cython)"] = type("chat", (chatcore.async_chat,), {"_engine": _framing_c})
    found["chatcore (python)"] = type("chat", (chatcore.async_chat,), {"_engine": _framing_py})
    if stdlib_asynchat is not None:
        found["stdlib asynchat"] = stdlib_asynchat.async_chat
    return {name: handler_class(base) for name, base in found.items()}


def run_once(cls, chunks, lines):
    channel = cls(ChunkSocket(chunks))
    start = time.perf_counter()
    for _ in range(len(chunks)):
        channel.handle_read()
    elapsed = time.perf_counter() - start
    if channel.lines != lines or channel.bytes != lines * (len(LINE) - 2):
        raise AssertionError("wrong result: %d lines, %d bytes" % (channel.lines, channel.bytes))
    return elapsed


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--lines", type=int, default=1_000_000)
    parser.add_argument("--repeat", type=int, default=3)
    args = parser.parse_args(argv)
    stream = LINE * args.lines
    print(
        "python %s on %s, %s; %d lines of %d bytes"
        % (
            platform.python_version(),
            platform.machine(),
            platform.processor() or platform.system(),
            args.lines,
            len(LINE),
        )
    )
    results = {}
    for name, cls in implementations().items():
        for read_size in READ_SIZES:
            chunks = [stream[i : i + read_size] for i in range(0, len(stream), read_size)]
            repeat = 1 if name == "stdlib asynchat" and read_size > 65536 else args.repeat
            best = min(run_once(cls, chunks, args.lines) for _ in range(repeat))
            results[name, read_size] = best
            print("%-20s read %7d B: %7.1f ns/line" % (name, read_size, best / args.lines * 1e9), flush=True)
    if stdlib_asynchat is not None:
        for name in implementations():
            if name == "stdlib asynchat":
                continue
            ratios = ", ".join(
                "%d B %.1fx" % (size, results["stdlib asynchat", size] / results[name, size]) for size in READ_SIZES
            )
            print("speed-up of %s over stdlib: %s" % (name, ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())
