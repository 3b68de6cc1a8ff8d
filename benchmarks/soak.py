"""Soak run: many connections with random, partly hostile behaviour against the example echo server.

    python benchmarks/soak.py --connections 1000 --seconds 120 [--seed N] [--json]

The server under test is ``examples/echo_server.py``, started as its
docstring tells a user to.  Why the example: it is the server a chatcore user
starts from (``chatcore.demo``'s ``EchoHandler`` and ``Listener``, the
classes ``python -m chatcore demo`` runs, behind a line limit), and it has
the settings a soak needs: a line limit (``--max-line``, 64 KiB by default),
which the oversized clients must run into; an idle timeout
(``--idle-timeout``, given this run's own, 20 s by default), which must close
the slowloris clients; an output limit (``--max-output``, 1 MiB by default),
which must stop it reading from the never-readers; and a lifetime of its own
(``--max-seconds``), so it cannot outlive this run.  It runs in its own
process on 127.0.0.1, on a kernel-chosen port.  ``--server`` soaks another
script instead (tests/test_soak.py passes broken copies of the example) that
behaves the same way: it takes ``--port 0``, ``--max-line``,
``--max-seconds``, ``--idle-timeout`` and ``--max-output``, prints
``listening on HOST:PORT (engine: NAME)`` once it listens, sends its log
records (the "chatcore" logger's included) to stdout, and exits 0 on SIGINT.

Descriptor pressure: once the server has served a first connection, its
descriptor limit is lowered (``prlimit``, Linux) to the descriptors it has
open plus room for all but ``--descriptor-shortfall`` (10%) of the
connections.  The last connections made then wait in its listen backlog, and
its ``accept()`` runs out of descriptors again and again as connections come
and go: it must back off, go on serving, and take them as room frees up.

One client process, one selectors loop, keeps ``--connections`` connections
open for ``--seconds`` seconds, replacing every client that finishes with a
new one.  A seeded RNG draws each one's behaviour, so that the open
connections keep a fixed mix (``WEIGHTS``), and everything it then does.
No well-behaved client goes quiet for more than half the server's idle
timeout (the pauses below are capped at that), so only the hostile ones
meet it:

* echo: rounds of pipelined lines (random lengths, random depth, written
  whole, in random pieces or a few bytes at a time with pauses), each round's
  echo checked before the next after a random pause;
* slow: a small receive buffer, reading a few hundred bytes a tick for 2-8 s
  while keeping up to 512 KiB of lines in flight (a third of them more than
  the kernel's largest send buffer, tcp_wmem's maximum, so the echo backs up
  in the server's own output queue); then it reads fast and checks that
  everything came back;
* reset: batches of lines (sometimes never reading), then, 0.5-8 s in,
  SO_LINGER 0 and close (sometimes just after a partial line): an RST in the
  middle of the stream;
* half-close: lines (sometimes a partial one last), ``shutdown(SHUT_WR)``
  (sometimes after all the echoes came), then read until the server closes,
  which it must do only once it has sent the whole echo;
* oversized: a few lines, then 0.5-8 s in a line two to four times the
  server's limit; the server must close the connection;
* garbage: up to half the limit of random binary bytes, of bytes without any
  newline, or of control characters with stray CR/LF, in a few bursts; the
  lines it did end must come back exact;
* slowloris: one byte of a line that never ends, up to three more well
  within the idle timeout, then silence: the server must close it, no sooner
  than the timeout after its last byte and within ``--close-timeout``
  seconds after that;
* never-reader: a small receive buffer, and 1-8 MiB of long lines or
  16-256 KiB of 2-byte lines sent as fast as the server takes them, never
  reading; it leaves 0.5 s to twice the idle timeout later (the server may
  have closed it by then, not sooner than the timeout after it connected).
  The server's output limit must stop it reading from them instead of
  holding their echo: their share of its memory is bounded, and steady;
* idle: connects, says nothing, and leaves 0.05-2 s later, half of the time
  with a reset: descriptor churn, and connections waiting in the backlog.

Every client checks that what it receives is exactly the echo of the lines it
sent, in order (the header of each line carries the connection and line
number, so a line echoed to the wrong connection or twice shows up as a wrong
byte).  The server's resident set size is read every second
(``/proc/PID/status``; "unavailable" where there is no /proc).

The run fails (exit status 1) when a client sees a wrong or extra byte, when
the server closes a client that stayed within the rules, when it does not
close an oversized one or a slowloris (or closes a slowloris too soon), when
a half-closed connection is closed before its whole echo came, when an echo
stalls for ``--close-timeout`` seconds,
when the server dies or logs an uncaptured exception, or when its memory
grows: the median RSS of the last third of the load phase more than
``RSS_GROWTH_FRACTION`` *and* more than ``RSS_GROWTH_BYTES`` above that of
the first third.  Why those numbers: the mix stays the same from start to
end, so after the first seconds the server's working set is a plateau (the
channels plus the output held back for slow readers, a sum of about a
hundred random windows, and for never-readers, each at most the output
limit and the echo of one read): +0.6 MiB between the thirds of a two-minute
run at 1,000 connections on a ~98 MiB plateau, before the slowloris,
never-reader and idle clients and the descriptor limit joined the mix;
+2.6 MiB on a ~80 MiB plateau in a one-minute run with them (17,500
connections).  What the allocator got for the
highest backlog so far it keeps, so RSS still creeps up as the backlog sets
new peaks, most while the plateau forms (+7 MiB in a one-minute run, whose
first third holds the ramp): 20% leaves room for that, and the 8 MiB floor
keeps a small run, whose plateau is a few MiB, from failing on noise.  A
leak must outgrow that and the free memory the allocator holds to show.
Measured with a server that keeps a buffer per connection, over two minutes
at 1,000 connections (about 33,000 connections, 8 million lines): 2 KiB a
connection fails the run (+45 MiB against a 19 MiB limit), 1 KiB passes
(+16.5 MiB).  Smaller leaks are for the fault tests and valgrind.

Everything is bounded: each client has its own deadline, the run a hard
deadline after which a watchdog kills the server and exits, and every socket
is closed and the server reaped on the way out.  Not collected by pytest;
``tests/test_soak.py`` runs it at a small size.
"""

import argparse
import collections
import errno
import heapq
import json
import os
import random
import re
import selectors
import signal
import socket
import statistics
import struct
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path
from typing import Any, Callable, Optional

try:
    import resource
except ImportError:  # Windows: no descriptor limit to lower
    resource = None  # type: ignore[assignment]

ROOT = Path(__file__).resolve().parent.parent
try:
    import chatcore  # noqa: F401  (the installed one, editable or not, when there is one)
except ImportError:  # a bare checkout: soak its source tree
    sys.path.insert(0, str(ROOT))

from chatcore.benchmark.serverproc import (  # noqa: E402
    LOOPBACK,
    package_root,
    raise_descriptor_limit,
    resident_bytes,
)

EXAMPLE_SERVER = ROOT / "examples" / "echo_server.py"
KINDS = ("echo", "slow", "reset", "half-close", "oversized", "garbage", "slowloris", "never-reader", "idle")
#: Share of the open connections that have each behaviour (see Soak.draw_behaviour).
WEIGHTS = (0.34, 0.13, 0.10, 0.10, 0.09, 0.09, 0.05, 0.04, 0.06)
DEFAULT_MAX_LINE = 64 * 1024
#: The server's idle timeout and output limit (its --idle-timeout, --max-output).
DEFAULT_IDLE_TIMEOUT = 20.0
DEFAULT_MAX_OUTPUT = 1 << 20
#: Share of the connections the server has no descriptor for (see ExampleServer.limit_descriptors).
DEFAULT_DESCRIPTOR_SHORTFALL = 0.1
#: Memory growth that fails the run: more than both (see the module docstring).
RSS_GROWTH_FRACTION = 0.20
RSS_GROWTH_BYTES = 8 << 20
#: Connections in the middle of their handshake at once: the example listens
#: with a backlog of 128, so more would only have SYNs dropped and retried.
MAX_CONNECTING = 64
#: Opening the connections may take this long before the run gives up.
RAMP_SECONDS = 60.0
STARTUP_SECONDS = 30.0
#: How long (seconds, drawn uniformly) a hostile client behaves before it
#: resets, sends its oversized line or leaves: connections last seconds, so
#: a thousand of them open a few hundred new ones a second, not thousands
#: (the example accepts one connection per loop turn, as asyncore does).
LINGER = (0.5, 8.0)
#: A resetter stops sending new lines after this many bytes.
RESETTER_MAX_SEND = 512 << 10
#: What a never-reader sends at the most, by variant: long lines are cheap for
#: the server to echo, 2-byte lines cost it a callback and a push each.
NEVER_READER_SEND = {"long lines": (1 << 20, 8 << 20), "2-byte lines": (16 << 10, 256 << 10)}
#: How long an idle connection stays (seconds, drawn uniformly, at most half the idle timeout).
IDLE_STAY = (0.05, 2.0)
#: Failures listed in the summary (all are counted), and after how many the run gives up.
KEPT_FAILURES = 20
MAX_FAILURES = 1000
RECV_SIZE = 65536
POOL_SIZE = 1 << 20
MIB = float(1 << 20)

READ = selectors.EVENT_READ
WRITE = selectors.EVENT_WRITE
_IN_PROGRESS = {0, errno.EINPROGRESS, errno.EWOULDBLOCK, errno.EAGAIN, getattr(errno, "WSAEWOULDBLOCK", -1)}
_CLOSED_BY_PEER = (BrokenPipeError, ConnectionResetError, ConnectionAbortedError)
_TEXT_ALPHABET = b"abcdefghijklmnop \t\r\n\x00\xff,.:;"
_TEXT_TABLE = bytes(_TEXT_ALPHABET[i % len(_TEXT_ALPHABET)] for i in range(256))


class SoakError(Exception):
    """The soak could not run at all (the server did not start)."""


# --- The server ------------------------------------------------------------------


class ExampleServer:
    """``examples/echo_server.py`` (or *script*, see ``--server``) in a child process.

    Its stdout is read by a thread: the first line gives the port, the rest
    are the server's log lines (``logging`` writes them there), counted here so a
    chatty server can never block on a full pipe.
    """

    def __init__(
        self,
        max_line: int,
        max_seconds: float,
        script: Path = EXAMPLE_SERVER,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
        max_output: int = DEFAULT_MAX_OUTPUT,
    ):
        self.max_line = max_line
        self.max_seconds = max_seconds
        self.script = script
        self.idle_timeout = idle_timeout
        self.max_output = max_output
        self.process: Optional[subprocess.Popen[bytes]] = None
        self.port: Optional[int] = None
        self.engine = "unknown"
        self.log_lines = 0
        self.uncaptured = 0
        self.overflows = 0
        self.idle_timeouts = 0
        self.accept_backoffs = 0
        self.descriptor_limit: Optional[int] = None
        self.descriptors_at_start: Optional[int] = None
        self.last_log: collections.deque[str] = collections.deque(maxlen=5)
        self.exit_status: Optional[int] = None
        self.stopped_by_us = False
        self._listening = threading.Event()
        self._reader: Optional[threading.Thread] = None
        self._stderr: Any = None

    @property
    def pid(self) -> int:
        assert self.process is not None
        return self.process.pid

    def start(self) -> "ExampleServer":
        environment = dict(os.environ)
        environment["PYTHONPATH"] = os.pathsep.join(
            [package_root()] + [entry for entry in [os.environ.get("PYTHONPATH")] if entry]
        )
        self._stderr = tempfile.TemporaryFile()
        command = [
            sys.executable,
            "-u",
            str(self.script),
            "--port",
            "0",
            "--max-line",
            str(self.max_line),
            "--max-seconds",
            repr(self.max_seconds),
            "--idle-timeout",
            repr(self.idle_timeout),
            "--max-output",
            str(self.max_output),
        ]
        self.process = subprocess.Popen(
            command,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            cwd=str(ROOT),
            env=environment,
        )
        self._reader = threading.Thread(target=self._read_stdout, name="server-stdout", daemon=True)
        self._reader.start()
        deadline = time.monotonic() + STARTUP_SECONDS
        while not self._listening.wait(0.05):
            if self.process.poll() is not None or time.monotonic() > deadline:
                self.stop()
                raise SoakError("the echo server did not start listening: %s" % self.stderr_tail())
        return self

    def _read_stdout(self) -> None:
        assert self.process is not None and self.process.stdout is not None
        for raw in self.process.stdout:
            line = raw.decode("utf-8", "replace").rstrip()
            if not self._listening.is_set():
                match = re.search(r"listening on \S+:(\d+) \(engine: (\w+)\)", line)
                if match:
                    self.port, self.engine = int(match.group(1)), match.group(2)
                    self._listening.set()
                    continue
            self.log_lines += 1
            if "uncaptured python exception" in line:
                self.uncaptured += 1
            elif "longer than" in line:  # handle_message_overflow's log line
                self.overflows += 1
            elif "nothing from or to" in line:  # handle_idle_timeout's
                self.idle_timeouts += 1
            elif "accept() failed" in line:  # the start of an accept backoff
                self.accept_backoffs += 1
            self.last_log.append(line[:300])

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def rss(self) -> Optional[int]:
        return resident_bytes(self.pid) if self.alive() else None

    def limit_descriptors(self, connections: int) -> Optional[int]:
        """Lower the server's descriptor limit so it can hold only *connections* connections.

        Counted from the descriptors it has open once it has served a first
        connection (its poller and wake-up descriptor exist by then).  None,
        and no limit, where there is no /proc or ``resource.prlimit``.
        """
        prlimit = getattr(resource, "prlimit", None) if resource is not None else None
        if prlimit is None or not os.path.isdir("/proc/%d/fd" % self.pid):
            return None
        try:
            with socket.create_connection((LOOPBACK, self.port), timeout=STARTUP_SECONDS) as probe:
                probe.sendall(b"probe\n")
                echo = b""
                while not echo.endswith(b"\n"):
                    piece = probe.recv(64)
                    if not piece:
                        raise SoakError("the server closed its first connection unanswered")
                    echo += piece
        except OSError as error:
            raise SoakError("the server did not answer a first connection: %s" % error) from error
        time.sleep(0.2)  # the server sees the probe close
        self.descriptors_at_start = len(os.listdir("/proc/%d/fd" % self.pid))
        limit = self.descriptors_at_start + connections
        _, hard = prlimit(self.pid, resource.RLIMIT_NOFILE)
        prlimit(self.pid, resource.RLIMIT_NOFILE, (limit, hard))
        self.descriptor_limit = limit
        return limit

    def stderr_tail(self, limit: int = 1500) -> str:
        if self._stderr is None:
            return ""
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace")[-limit:].strip()

    def kill(self) -> None:
        """Last resort (the watchdog): no waiting, no clean-up."""
        if self.alive():
            self.process.kill()  # type: ignore[union-attr]

    def stop(self) -> None:
        """Interrupt the server (it closes its channels and exits 0), kill it if it lingers, reap it."""
        process = self.process
        if process is None:
            return
        if process.poll() is None:
            self.stopped_by_us = True
            try:
                if sys.platform == "win32":
                    process.terminate()
                else:
                    process.send_signal(signal.SIGINT)
                process.wait(timeout=10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()
        self.exit_status = process.returncode
        if self._reader is not None:
            self._reader.join(5)
        if process.stdout is not None:
            process.stdout.close()


# --- The clients ------------------------------------------------------------------


class Client:
    """One connection and its behaviour; the subclasses are the behaviours.

    ``expect`` holds the echo the server owes: every complete line queued so
    far (the bytes after the last newline wait in ``tail``), ``pos`` how much
    of it has arrived.  ``out`` holds what is still to send: byte pieces, each
    one ``send()`` call, and floats, pauses between pieces.
    """

    kind = "?"

    def __init__(self, soak: "Soak", ident: int):
        self.soak = soak
        self.ident = ident
        self.rng = random.Random(soak.seed * 1000003 + ident)
        self.sock: Optional[socket.socket] = None
        self.mask = 0
        self.connected = False
        self.closed = False
        self.want_read = False
        self.paused = False
        self.out: collections.deque[Any] = collections.deque()
        self.current: Optional[memoryview] = None
        self.expect = bytearray()
        self.pos = 0
        self.received = 0
        self.tail = bytearray()
        self.queued = 0
        self.sent = 0
        self.lines_queued = 0
        self.deadline: Optional[float] = None

    def __repr__(self) -> str:
        return "%s client %d" % (self.kind, self.ident)

    # Plumbing

    def start(self) -> None:
        sock = self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        sock.setblocking(False)
        sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)
        self.configure(sock)
        error = sock.connect_ex((LOOPBACK, self.soak.port))
        if error not in _IN_PROGRESS:
            self.fail("connect failed: %s" % os.strerror(error))
            return
        self.deadline = time.monotonic() + self.soak.close_timeout
        self.soak.selector.register(sock, WRITE, self)
        self.mask = WRITE

    def configure(self, sock: socket.socket) -> None:
        """Socket options to set before connecting."""

    def update_mask(self) -> None:
        if self.closed:
            return
        mask = READ if self.want_read else 0
        if (self.current is not None or self.out) and not self.paused:
            mask |= WRITE
        if mask != self.mask:
            selector = self.soak.selector
            if not self.mask:
                selector.register(self.sock, mask, self)  # type: ignore[arg-type]
            elif not mask:
                selector.unregister(self.sock)  # type: ignore[arg-type]
            else:
                selector.modify(self.sock, mask, self)  # type: ignore[arg-type]
            self.mask = mask

    def on_event(self, mask: int) -> None:
        if not self.connected:
            error = self.sock.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)  # type: ignore[union-attr]
            if error:
                self.fail("connect failed: %s" % os.strerror(error))
                return
            self.connected = True
            self.deadline = None
            self.soak.connecting -= 1
            self.on_connected()
            if not self.closed:
                self.flush()
            return
        if mask & READ:
            data = self.receive(RECV_SIZE)
            if data:
                self.on_echo()
        if mask & WRITE and not self.closed:
            self.flush()

    def queue(self, data: bytes, chunking: str = "whole", echoed: bool = True) -> None:
        """Queue *data* to send in pieces as *chunking* says; *echoed*: owed back up to its last newline."""
        self.queued += len(data)
        if echoed:
            newline = data.rfind(b"\n")
            if newline < 0:
                self.tail += data
            else:
                self.expect += self.tail
                self.expect += memoryview(data)[: newline + 1]
                self.tail = bytearray(data[newline + 1 :])
        view = memoryview(data)
        rng = self.rng
        if chunking == "trickle":  # a few bytes at a time, with pauses, then the rest
            for _ in range(rng.randint(1, 16)):
                if not view:
                    break
                step = rng.randint(1, 32)
                self.out.append(view[:step])
                self.out.append(rng.uniform(0.001, 0.01))
                view = view[step:]
            chunking = "whole"
        if chunking == "whole":
            if view:
                self.out.append(view)
            return
        low, high = (1, 4096) if chunking == "random" else (16384, 65536)
        while view:
            step = rng.randint(low, high)
            self.out.append(view[:step])
            view = view[step:]

    def flush(self, resumed: bool = False) -> None:
        """Send queued pieces until the socket is full, a pause, or nothing is left."""
        had_data = resumed or self.current is not None or bool(self.out)
        sock = self.sock
        while not self.paused:
            if self.current is None:
                if not self.out:
                    break
                item = self.out.popleft()
                if isinstance(item, float):
                    self.paused = True
                    self.soak.after(item, self, self.resume)
                    break
                self.current = item
            try:
                count = sock.send(self.current)  # type: ignore[union-attr]
            except BlockingIOError:
                break
            except _CLOSED_BY_PEER as error:
                self.server_closed("%s on send" % type(error).__name__)
                return
            except OSError as error:
                self.fail("send failed: %s" % error)
                return
            self.sent += count
            self.soak.bytes_sent += count
            if count < len(self.current):
                self.current = self.current[count:]
                break
            self.current = None
        self.update_mask()
        if had_data and self.current is None and not self.out and not self.paused and not self.closed:
            self.on_sent()

    def resume(self) -> None:
        self.paused = False
        self.flush(resumed=True)

    def receive(self, size: int) -> Optional[bytes]:
        """Read and check up to *size* bytes; None when nothing was read or the connection ended."""
        try:
            data = self.sock.recv(size)  # type: ignore[union-attr]
        except BlockingIOError:
            return None
        except _CLOSED_BY_PEER as error:
            self.server_closed(type(error).__name__)
            return None
        except OSError as error:
            self.fail("recv failed: %s" % error)
            return None
        if not data:
            self.server_closed("EOF")
            return None
        end = self.pos + len(data)
        if end > len(self.expect) or self.expect[self.pos : end] != data:
            self.report_mismatch(data)
            return None
        self.pos = end
        self.received += len(data)
        lines = data.count(b"\n")
        self.soak.verified(self.kind, lines, len(data))
        if self.pos > 1 << 16 and 2 * self.pos > len(self.expect):
            del self.expect[: self.pos]
            self.pos = 0
        return data

    def report_mismatch(self, data: bytes) -> None:
        owed = bytes(self.expect[self.pos : self.pos + len(data)])
        if len(data) > len(owed) and data[: len(owed)] == owed:
            what = "%d bytes more than it was owed" % (len(data) - len(owed))
        else:
            first = next(i for i in range(min(len(data), len(owed)) + 1) if i == len(owed) or data[i] != owed[i])
            what = "byte %d differs: got %r, expected %r" % (
                self.received + first,
                data[first : first + 24],
                owed[first : first + 24],
            )
        self.soak.wrong_echoes += 1
        self.fail("wrong echo: " + what)

    def lines_of(self, count: int) -> bytes:
        """*count* random lines, ready to queue."""
        return b"".join([self.soak.make_line(self, self.rng) for _ in range(count)])

    def all_echoed(self) -> bool:
        return self.pos == len(self.expect)

    def expect_progress(self) -> None:
        """Give the server close_timeout seconds, from now, to send more of what it owes."""
        self.deadline = time.monotonic() + self.soak.close_timeout

    def fail(self, message: str) -> None:
        self.soak.failure("%r: %s" % (self, message))
        self.finish("failed")

    def finish(self, outcome: str, reset: bool = False) -> None:
        if self.closed:
            return
        self.closed = True
        sock = self.sock
        if sock is not None:
            if self.mask:
                self.soak.selector.unregister(sock)
                self.mask = 0
            if reset:
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
            sock.close()
        self.soak.client_done(self, outcome)

    # The behaviour: what subclasses override

    def on_connected(self) -> None:
        raise NotImplementedError

    def on_echo(self) -> None:
        """Bytes arrived and matched."""

    def on_sent(self) -> None:
        """Everything queued has been sent."""

    def on_deadline(self) -> None:
        if not self.connected:
            self.fail("not connected after %g s" % self.soak.close_timeout)
        else:
            self.fail("no echo for %g s with %d bytes owed" % (self.soak.close_timeout, len(self.expect) - self.pos))

    def server_closed(self, how: str) -> None:
        self.fail("closed by the server (%s) with %d bytes owed" % (how, len(self.expect) - self.pos))

    def begin_drain(self) -> None:
        """The run is ending: finish soon, checking everything owed."""


class EchoClient(Client):
    """Well-behaved: rounds of pipelined lines, each round's echo checked whole before the next."""

    kind = "echo"
    DEPTHS = (1, 1, 2, 3, 4, 8, 16, 32, 64)

    def on_connected(self) -> None:
        self.rounds = self.rng.randint(2, 16)
        self.want_read = True
        self.next_round()

    def next_round(self) -> None:
        if self.rounds == 0 or self.soak.draining:
            self.finish("ok")
            return
        self.rounds -= 1
        rng = self.rng
        batch = self.lines_of(rng.choice(self.DEPTHS))
        self.queue(batch, rng.choice(("whole", "random", "random", "trickle")))
        self.expect_progress()
        self.flush()

    def on_echo(self) -> None:
        if self.all_echoed():
            self.deadline = None
            think = 0.0 if self.rng.random() < 0.3 else self.rng.uniform(0.0, 1.0)
            self.soak.after(think, self, self.next_round)
        else:
            self.expect_progress()


def _kernel_send_buffer_max() -> int:
    """The most a TCP send buffer may grow to (Linux's tcp_wmem maximum; 4 MiB where unknown)."""
    try:
        with open("/proc/sys/net/ipv4/tcp_wmem") as stream:
            return int(stream.read().split()[2])
    except (OSError, ValueError, IndexError):
        return 4 << 20


class SlowReader(Client):
    """Reads a few hundred bytes a tick while keeping a window of lines in flight, then reads fast."""

    kind = "slow"

    def configure(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rng.choice((4096, 8192, 16384)))

    def on_connected(self) -> None:
        rng = self.rng
        # The kernel takes up to tcp_wmem's maximum of a slow reader's echo
        # into the server's send buffer; only a deeper window backs the
        # server's own output queue up, so a third of the slow readers go deeper.
        self.deep = rng.random() < 0.3
        if self.deep:
            self.window = _kernel_send_buffer_max() + rng.randint(128 << 10, 1 << 20)
        else:
            self.window = rng.randint(64 << 10, 512 << 10)
        self.read_size = rng.choice((256, 1024, 4096))
        self.tick = rng.uniform(0.05, 0.25)
        self.slow_until = time.monotonic() + self.soak.quiet_draw(rng, 2.0, 8.0)
        self.slow = True
        self.fill()
        self.soak.after(self.tick, self, self.slow_tick)

    def fill(self) -> None:
        missing = self.window - (len(self.expect) - self.pos)
        if not self.slow or missing <= 0 or self.current is not None or self.out:
            return
        lines, size = [], 0
        while size < missing:
            line = self.soak.make_line(self, self.rng, 8000)
            lines.append(line)
            size += len(line)
        self.queue(b"".join(lines), "bulk")
        self.flush()

    def slow_tick(self) -> None:
        if time.monotonic() >= self.slow_until or self.soak.draining:
            self.go_fast()
            return
        self.receive(self.read_size)
        if not self.closed:
            self.fill()
            self.soak.after(self.tick, self, self.slow_tick)

    def go_fast(self) -> None:
        if not self.slow:
            return
        self.slow = False
        self.want_read = True
        self.expect_progress()
        self.update_mask()
        self.on_echo()

    def on_echo(self) -> None:
        if self.slow:
            return
        if self.all_echoed() and self.current is None and not self.out:
            self.finish("ok, deep" if self.deep else "ok")
        else:
            self.expect_progress()

    def begin_drain(self) -> None:
        self.go_fast()


class Resetter(Client):
    """Sends batches of lines (perhaps never reading), then resets the connection, perhaps mid-line."""

    kind = "reset"

    def on_connected(self) -> None:
        rng = self.rng
        self.variant = rng.choice(("reading", "not-reading", "mid-line"))
        self.want_read = self.variant != "not-reading"
        self.soak.after(self.soak.quiet_draw(rng, *LINGER), self, self.reset)
        self.send_batch()

    def send_batch(self) -> None:
        rng = self.rng
        if self.queued < RESETTER_MAX_SEND:
            data = self.lines_of(rng.randint(1, 50))
            self.queue(data, rng.choice(("whole", "random", "bulk")))
            self.flush()
            self.soak.after(rng.uniform(0.05, 1.0), self, self.send_batch)

    def reset(self) -> None:
        if self.variant == "mid-line":
            self.queue(self.soak.filler(self.rng, self.rng.randint(1, 1000)))
            self.flush()
            if self.closed:
                return
        self.finish("ok", reset=True)

    def begin_drain(self) -> None:
        self.reset()


class HalfCloser(Client):
    """Sends lines (perhaps a partial one last), shuts down its sending side, reads until the server closes."""

    kind = "half-close"

    def on_connected(self) -> None:
        rng = self.rng
        self.wait_for_echoes = rng.random() < 0.5
        self.shut = self.shut_planned = False
        data = self.lines_of(rng.randint(0, 100))
        if rng.random() < 0.5:
            data += self.soak.filler(rng, rng.randint(1, 1000))
        self.want_read = True
        if data:
            self.queue(data, rng.choice(("whole", "random", "trickle")))
            self.expect_progress()
        else:
            self.update_mask()
            self.plan_shut_down()

    def on_sent(self) -> None:
        if not self.wait_for_echoes or self.all_echoed():
            self.plan_shut_down()

    def on_echo(self) -> None:
        if not self.shut:
            self.expect_progress()
            if self.wait_for_echoes and self.all_echoed() and self.current is None and not self.out:
                self.plan_shut_down()

    def plan_shut_down(self) -> None:
        if not self.shut_planned:
            self.shut_planned = True
            delay = 0.0 if self.soak.draining else self.soak.quiet_draw(self.rng, 0.0, 3.0)
            self.soak.after(delay, self, self.shut_down)

    def shut_down(self) -> None:
        if self.shut:
            return
        self.shut = True
        try:
            self.sock.shutdown(socket.SHUT_WR)  # type: ignore[union-attr]
        except OSError as error:
            self.fail("shutdown failed: %s" % error)
            return
        self.deadline = time.monotonic() + self.soak.close_timeout

    def server_closed(self, how: str) -> None:
        if not self.shut or how != "EOF":
            Client.server_closed(self, how)
        elif not self.all_echoed():
            # The server closes at the end of input, but only once it has
            # sent the echo it still owed.
            self.fail("closed after the half-close with %d bytes of echo owed" % (len(self.expect) - self.pos))
        else:
            self.finish("closed, all echoed")

    def on_deadline(self) -> None:
        if self.shut:
            self.fail("the server did not close within %g s of the half-close" % self.soak.close_timeout)
        else:
            Client.on_deadline(self)

    def begin_drain(self) -> None:
        if self.shut_planned:
            self.shut_down()


class OversizedSender(Client):
    """A few lines, a while later a line two to four times the server's limit: the server must close it."""

    kind = "oversized"

    def on_connected(self) -> None:
        rng = self.rng
        self.long_sent = False
        normal = self.lines_of(rng.randint(0, 5))
        self.normal_bytes = len(normal)
        self.queue(normal)
        self.want_read = True
        self.expect_progress()
        self.soak.after(self.soak.quiet_draw(rng, *LINGER), self, self.send_long_line)

    def send_long_line(self) -> None:
        if self.long_sent:
            return
        self.long_sent = True
        limit = self.soak.max_line
        # Not owed back: any byte of it echoed is a wrong echo.
        self.queue(self.soak.filler(self.rng, self.rng.randint(2 * limit, 4 * limit)), "bulk", echoed=False)
        self.deadline = time.monotonic() + self.soak.close_timeout
        self.flush()

    def on_echo(self) -> None:
        if not self.long_sent:
            self.expect_progress()

    def server_closed(self, how: str) -> None:
        sent_long = self.sent - self.normal_bytes
        if not self.long_sent or sent_long <= self.soak.max_line:
            self.fail(
                "closed (%s) after only %d bytes of the long line (limit %d)"
                % (how, max(0, sent_long), self.soak.max_line)
            )
        else:
            self.finish("closed by the server")

    def on_deadline(self) -> None:
        if self.long_sent:
            self.fail(
                "the server did not close the connection within %g s (%d bytes sent)"
                % (self.soak.close_timeout, self.sent)
            )
        else:
            Client.on_deadline(self)

    def begin_drain(self) -> None:
        self.send_long_line()


class GarbageSender(Client):
    """Random bytes within the limit, in a few bursts: binary, without any newline, or control characters."""

    kind = "garbage"

    def on_connected(self) -> None:
        rng = self.rng
        size = rng.randint(1, min(self.soak.max_line // 2, POOL_SIZE // 2))
        start = rng.randrange(POOL_SIZE - size)
        variant = rng.choice(("binary", "no-newline", "text"))
        if variant == "binary":
            data = self.soak.pool_raw[start : start + size]
        elif variant == "no-newline":
            data = self.soak.pool_no_newline[start : start + size]
        else:
            data = self.soak.pool_raw[start : start + size].translate(_TEXT_TABLE)
        cuts = sorted(rng.randint(0, size) for _ in range(rng.randint(0, 3)))
        self.bursts = [data[low:high] for low, high in zip([0] + cuts, cuts + [size])]
        self.want_read = True
        self.send_burst()

    def send_burst(self) -> None:
        rng = self.rng
        if self.bursts:
            burst = self.bursts.pop(0)
            if burst:
                self.queue(burst, rng.choice(("whole", "random", "trickle")))
                self.flush()
            self.expect_progress()
        if self.closed:
            return
        if self.bursts:
            self.soak.after(rng.uniform(0.1, 1.0), self, self.send_burst)
        else:
            self.soak.after(self.soak.quiet_draw(rng, *LINGER), self, self.leave)

    def leave(self) -> None:
        self.finish("ok", reset=self.rng.random() < 0.5)

    def begin_drain(self) -> None:
        self.leave()


class Slowloris(Client):
    """One byte of a line that never ends, a few more within the idle timeout, then silence: the server must close it.

    No sooner than the idle timeout after its last byte (the server heard
    that byte later still), and within ``--close-timeout`` seconds after that.
    """

    kind = "slowloris"

    def on_connected(self) -> None:
        if self.soak.draining:
            self.finish("ok, not started")
            return
        self.want_read = True  # nothing is owed: any byte is a wrong echo, the end of stream the close
        self.dripping = True
        self.quick_bytes = self.rng.randint(0, 3)
        self.last_byte = time.monotonic()
        self.drip()

    def drip(self) -> None:
        self.queue(self.soak.filler(self.rng, 1), echoed=False)
        self.flush()
        if self.closed:
            return
        self.last_byte = time.monotonic()
        timeout = self.soak.idle_timeout
        if self.quick_bytes and not self.soak.draining:
            self.quick_bytes -= 1
            self.soak.after(self.rng.uniform(0.1, 0.5) * timeout, self, self.drip)
        else:
            self.dripping = False
            self.deadline = self.last_byte + timeout + self.soak.close_timeout

    def server_closed(self, how: str) -> None:
        quiet_for = time.monotonic() - self.last_byte
        timeout = self.soak.idle_timeout
        if self.dripping:
            self.fail(
                "closed (%s) while it sent a byte every %.1f s at most (idle timeout %g s)"
                % (how, timeout / 2, timeout)
            )
        elif quiet_for < timeout:
            self.fail(
                "closed (%s) %.2f s after its last byte, before the idle timeout of %g s" % (how, quiet_for, timeout)
            )
        else:
            self.finish("closed by the idle timeout")

    def on_deadline(self) -> None:
        if self.connected:
            self.fail(
                "the server did not close it within %g s of its last byte (idle timeout %g s)"
                % (self.soak.idle_timeout + self.soak.close_timeout, self.soak.idle_timeout)
            )
        else:
            Client.on_deadline(self)


class NeverReader(Client):
    """Sends long lines or a flood of 2-byte ones as fast as the server takes them, never reads, leaves later.

    The server must stop reading from it (its output limit) rather than hold
    the echo; after its idle timeout it may close the connection, which this
    client notices only if it still has something to send.
    """

    kind = "never-reader"

    def configure(self, sock: socket.socket) -> None:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, self.rng.choice((4096, 16384, 65536)))

    def on_connected(self) -> None:
        if self.soak.draining:
            self.finish("ok, not started")
            return
        rng = self.rng
        self.connected_at = time.monotonic()
        self.variant = rng.choice(sorted(NEVER_READER_SEND))
        block = self.soak.long_lines if self.variant == "long lines" else self.soak.tiny_lines
        left = rng.randint(*NEVER_READER_SEND[self.variant])
        while left > 0:
            piece = memoryview(block)[:left]
            self.queue(piece, "bulk", echoed=False)
            left -= len(piece)
        self.flush()
        self.soak.after(rng.uniform(LINGER[0], 2 * self.soak.idle_timeout), self, self.leave)

    def leave(self) -> None:
        self.finish("left, %s" % self.variant)  # unread echo in its buffer: the close is a reset

    def server_closed(self, how: str) -> None:
        # The server may close it once it has been idle for the timeout: not
        # before the timeout has passed since the connection was made.
        open_for = time.monotonic() - self.connected_at
        if open_for < self.soak.idle_timeout:
            self.fail("closed by the server (%s) after only %.2f s" % (how, open_for))
        else:
            self.finish("closed by the server, %s" % self.variant)

    def begin_drain(self) -> None:
        self.leave()


class IdleClient(Client):
    """Connects, says nothing and leaves (half of the time with a reset) a moment later: descriptor churn.

    With the server's descriptor limit below the number of connections
    (``--descriptor-shortfall``), some of them always wait in the listen
    backlog for a descriptor, so the server runs into EMFILE again and again.
    """

    kind = "idle"

    def on_connected(self) -> None:
        if self.soak.draining:
            self.finish("ok, not started")
            return
        self.want_read = True  # the server must neither send anything nor close it
        self.update_mask()
        self.soak.after(self.soak.quiet_draw(self.rng, *IDLE_STAY), self, self.leave)

    def leave(self) -> None:
        self.finish("ok", reset=self.rng.random() < 0.5)

    def begin_drain(self) -> None:
        self.leave()


BEHAVIOURS = dict(
    zip(
        KINDS,
        (
            EchoClient,
            SlowReader,
            Resetter,
            HalfCloser,
            OversizedSender,
            GarbageSender,
            Slowloris,
            NeverReader,
            IdleClient,
        ),
    )
)


# --- The run ----------------------------------------------------------------------


class Soak:
    """One client process driving every connection from one selectors loop."""

    def __init__(
        self,
        port: int,
        connections: int,
        seconds: float,
        seed: int,
        max_line: int,
        close_timeout: float,
        behaviours: tuple[str, ...] = KINDS,
        idle_timeout: float = DEFAULT_IDLE_TIMEOUT,
    ):
        self.port = port
        self.idle_timeout = idle_timeout
        #: The longest a well-behaved client goes without a byte to or from the
        #: server: half its idle timeout, so that only the hostile ones meet it.
        self.quiet = idle_timeout / 2
        self.target = connections
        self.seconds = seconds
        self.seed = seed
        self.max_line = max_line
        self.close_timeout = close_timeout
        self.rng = random.Random(seed)
        self.behaviours = behaviours
        weights = [WEIGHTS[KINDS.index(kind)] for kind in behaviours]
        self.shares = [weight / sum(weights) for weight in weights]
        self.open_by_kind: collections.Counter = collections.Counter()
        pool = random.Random(seed ^ 0x5EED).randbytes(POOL_SIZE)
        self.pool_raw = pool
        self.pool_no_newline = pool.replace(b"\n", b"N")
        self.max_body = max(1, min(max_line // 2, 32 << 10) - 24)
        # What the never-readers send: 1 MiB of lines within the server's limit, or of 2-byte lines.
        body = self.pool_no_newline[: self.max_body]
        self.long_lines = (body + b"\n") * max(1, (1 << 20) // (len(body) + 1))
        self.tiny_lines = b"x\n" * (1 << 19)
        self.selector = selectors.DefaultSelector()
        self.timers: list[tuple[float, int, Client, Callable[[], None]]] = []
        self._timer_seq = 0
        self.active: dict[int, Client] = {}
        self.next_ident = 0
        self.connecting = 0
        self.draining = False
        self.opened = 0
        self.bytes_sent = 0
        self.bytes_verified = 0
        self.messages_verified = 0
        self.wrong_echoes = 0
        self.failures: list[str] = []
        self.failure_count = 0
        self.kinds: dict[str, collections.Counter] = {kind: collections.Counter() for kind in KINDS}

    # Bookkeeping the clients call

    def after(self, delay: float, client: Client, action: Callable[[], None]) -> None:
        self._timer_seq += 1
        heapq.heappush(self.timers, (time.monotonic() + delay, self._timer_seq, client, action))

    def quiet_draw(self, rng: random.Random, low: float, high: float) -> float:
        """A pause drawn uniformly from (low, high), both capped at ``quiet``."""
        return rng.uniform(min(low, self.quiet), min(high, self.quiet))

    def verified(self, kind: str, lines: int, size: int) -> None:
        self.messages_verified += lines
        self.bytes_verified += size
        counter = self.kinds[kind]
        counter["messages"] += lines
        counter["bytes"] += size

    def failure(self, message: str, first: bool = False) -> None:
        """Record a failure; *first*: the cause of the others, listed before them."""
        self.failure_count += 1
        if first:
            self.failures.insert(0, message)
            del self.failures[KEPT_FAILURES:]
        elif len(self.failures) < KEPT_FAILURES:
            self.failures.append(message)

    def client_done(self, client: Client, outcome: str) -> None:
        if not client.connected and client.ident in self.active:
            self.connecting -= 1
        if self.active.pop(client.ident, None) is not None:
            self.open_by_kind[client.kind] -= 1
        self.kinds[client.kind]["outcome: " + outcome] += 1

    def make_line(self, client: Client, rng: random.Random, longest: int = 0) -> bytes:
        """A line of random length and random bytes (no newline inside), headed by connection and number."""
        draw = rng.random()
        if draw < 0.08:
            return b"\n"
        if draw < 0.6:
            length = rng.randint(1, 100)
        elif draw < 0.92:
            length = rng.randint(100, 2000)
        else:
            length = rng.randint(2000, 2000 + self.max_body)
        length = min(length, longest or self.max_body, self.max_body)
        start = rng.randrange(POOL_SIZE - length)
        client.lines_queued += 1
        return b"%x:%x:" % (client.ident, client.lines_queued) + self.pool_no_newline[start : start + length] + b"\n"

    def filler(self, rng: random.Random, size: int) -> bytes:
        """*size* random bytes without a newline."""
        pieces, left = [], size
        while left:
            step = min(left, POOL_SIZE // 2)
            start = rng.randrange(POOL_SIZE - step)
            pieces.append(self.pool_no_newline[start : start + step])
            left -= step
        return b"".join(pieces)

    # The loop

    def open_more(self) -> None:
        while len(self.active) < self.target and self.connecting < MAX_CONNECTING:
            kind = self.draw_behaviour()
            client = BEHAVIOURS[kind](self, self.next_ident)
            self.next_ident += 1
            self.opened += 1
            self.kinds[kind]["opened"] += 1
            self.active[client.ident] = client
            self.open_by_kind[kind] += 1
            self.connecting += 1
            client.start()

    def draw_behaviour(self) -> str:
        """A behaviour drawn in proportion to how far its open connections are below its share.

        Drawing by share alone would fill the connections with the behaviours
        that last longest (slow readers): the mix, and the server's memory
        with it, would keep shifting for minutes instead of holding steady.
        """
        room = [
            max(0.0, share * self.target - self.open_by_kind[kind]) for kind, share in zip(self.behaviours, self.shares)
        ]
        return self.rng.choices(self.behaviours, room if sum(room) > 0 else self.shares)[0]

    def connected_count(self) -> int:
        return len(self.active) - self.connecting

    def run_timers(self, now: float) -> None:
        timers = self.timers
        while timers and timers[0][0] <= now:
            _, _, client, action = heapq.heappop(timers)
            if not client.closed:
                action()

    def check_deadlines(self, now: float) -> None:
        for client in list(self.active.values()):
            if client.deadline is not None and now > client.deadline and not client.closed:
                client.on_deadline()

    def wait_for_events(self, timeout: float) -> None:
        if self.timers:
            timeout = min(timeout, self.timers[0][0] - time.monotonic())
        for key, mask in self.selector.select(max(0.0, timeout)):
            client = key.data
            if not client.closed:
                client.on_event(mask)

    def close_all(self, outcome: str) -> None:
        for client in list(self.active.values()):
            client.finish(outcome)
        self.selector.close()


def _median(values: list[int]) -> Optional[float]:
    return statistics.median(values) if values else None


def run(options: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    """One whole soak: server, clients, sampling, verdict; the summary as a dict."""
    began = time.monotonic()
    budget = STARTUP_SECONDS + RAMP_SECONDS + options.seconds + options.close_timeout + 30.0
    raise_descriptor_limit(2 * options.connections + 256)  # the server inherits it
    budget += options.idle_timeout  # the drain waits for the last slowloris to be closed
    server = ExampleServer(
        options.max_line,
        budget + 30.0,
        Path(options.server).resolve(),
        options.idle_timeout,
        options.max_output,
    ).start()
    if options.descriptor_shortfall:
        try:
            server.limit_descriptors(max(1, round(options.connections * (1 - options.descriptor_shortfall))))
        except BaseException:
            server.stop()
            raise
    finished = threading.Event()

    def watchdog() -> None:
        if not finished.wait(budget + 15.0):
            sys.stderr.write("soak: hard deadline of %.0f s passed: killing the server\n" % budget)
            sys.stderr.flush()
            server.kill()
            os._exit(3)

    threading.Thread(target=watchdog, name="soak-watchdog", daemon=True).start()
    soak = Soak(
        server.port,
        options.connections,
        options.seconds,
        options.seed,
        options.max_line,  # type: ignore[arg-type]
        options.close_timeout,
        options.behaviours,
        options.idle_timeout,
    )
    samples: list[tuple[float, Optional[int], int]] = []
    phase = "ramp"
    load_start = load_end = None
    min_open: Optional[int] = None
    hard_deadline = began + budget
    next_sample = time.monotonic()
    next_progress = next_sample + options.progress
    drain_deadline = None
    server_died = None
    failures_seen = 0
    try:
        while True:
            now = time.monotonic()
            soak.run_timers(now)
            if phase == "ramp":
                soak.open_more()
                # All slots filled, and at most 5% of them still in their handshake.
                if len(soak.active) >= soak.target and soak.connected_count() >= soak.target - soak.target // 20:
                    phase, load_start = "load", now
                    next_sample = now
                elif now - began > STARTUP_SECONDS + RAMP_SECONDS:
                    soak.failure("could not open %d connections within %.0f s" % (soak.target, RAMP_SECONDS))
                    break
            elif phase == "load":
                soak.open_more()
                if now >= load_start + options.seconds:  # type: ignore[operator]
                    phase, load_end = "drain", now
                    samples.append((now - began, server.rss(), len(soak.active)))
                    soak.draining = True
                    for client in list(soak.active.values()):
                        if client.connected:  # the others learn of it when they connect
                            client.begin_drain()
                    drain_deadline = now + options.close_timeout + options.idle_timeout + 5.0
            elif not soak.active:
                break
            elif now > drain_deadline:  # type: ignore[operator]
                for client in list(soak.active.values()):
                    client.fail("still open at the end of the drain")
                break
            if now >= hard_deadline:
                soak.failure("hard deadline of %.0f s reached" % budget)
                break
            if now >= next_sample or soak.failure_count != failures_seen:
                # Clients failing may mean the server is gone: look at once.
                failures_seen = soak.failure_count
                if not server.alive():
                    server_died = server.process.returncode  # type: ignore[union-attr]
                    soak.failure("the server exited with status %s" % server_died, first=True)
                    break
                if soak.failure_count >= MAX_FAILURES:
                    soak.failure("giving up after %d failures" % soak.failure_count, first=True)
                    break
            if now >= next_sample:
                next_sample += 1.0
                if phase == "load":
                    samples.append((now - began, server.rss(), len(soak.active)))
                    connected = soak.connected_count()
                    min_open = connected if min_open is None else min(min_open, connected)
                soak.check_deadlines(now)
                if options.progress and now >= next_progress:
                    next_progress += options.progress
                    rss = server.rss()
                    log(
                        "[%5.0fs] %s: %d open, %d opened, %d messages, %.1f MiB verified, server RSS %s"
                        % (
                            now - began,
                            phase,
                            len(soak.active),
                            soak.opened,
                            soak.messages_verified,
                            soak.bytes_verified / MIB,
                            "%.1f MiB" % (rss / MIB) if rss else "unavailable",
                        )
                    )
            soak.wait_for_events(min(0.1, max(0.0, next_sample - time.monotonic())))
    finally:
        soak.close_all("aborted")
        rss_after_close = None
        if server.alive():
            time.sleep(1.0)  # let the server see the last closes
            rss_after_close = server.rss()
        server.stop()
        finished.set()
    runtime = time.monotonic() - began
    if server.uncaptured:
        soak.failure(
            "the server logged %d uncaptured exceptions, last: %s" % (server.uncaptured, list(server.last_log)[-1:])
        )
    if server_died is None and not server.stopped_by_us:
        soak.failure("the server exited early with status %s" % server.exit_status)

    load_samples = [s for s in samples if load_start is not None and s[0] >= load_start - began]
    rss_values = [s[1] for s in load_samples if s[1] is not None]
    available = bool(rss_values)
    third = max(1, len(rss_values) // 3)
    first = _median(rss_values[:third])
    last = _median(rss_values[-third:])
    growth = (last - first) if available else None  # type: ignore[operator]
    growth_limit = max(RSS_GROWTH_BYTES, RSS_GROWTH_FRACTION * first) if available else None  # type: ignore[operator]
    if available and growth > growth_limit:  # type: ignore[operator]
        soak.failure(
            "server RSS grew by %.1f MiB between the first and last third of the run (limit %.1f MiB)"
            % (growth / MIB, growth_limit / MIB)
        )  # type: ignore[operator]
    behaviours = {kind: dict(sorted(counter.items())) for kind, counter in soak.kinds.items()}
    return {
        "verdict": "fail" if soak.failure_count else "pass",
        "seed": options.seed,
        "engine": server.engine,
        "max_line": options.max_line,
        "idle_timeout": options.idle_timeout,
        "max_output": options.max_output,
        "runtime_seconds": round(runtime, 1),
        "load_seconds": round((load_end or time.monotonic()) - load_start, 1) if load_start else 0.0,
        "connections": {
            "target": soak.target,
            "opened": soak.opened,
            "min_open_during_load": min_open,
        },
        "messages_verified": soak.messages_verified,
        "bytes_verified": soak.bytes_verified,
        "bytes_sent": soak.bytes_sent,
        "wrong_echoes": soak.wrong_echoes,
        "behaviours": behaviours,
        "rss": {
            "available": available,
            "start": rss_values[0] if available else None,
            "max": max(rss_values) if available else None,
            "end": rss_values[-1] if available else None,
            "first_third_median": first,
            "last_third_median": last,
            "growth": growth,
            "growth_limit": growth_limit,
            "after_close": rss_after_close,
            "samples": [[round(t, 1), rss, open_] for t, rss, open_ in samples],
        },
        "server": {
            "script": os.path.relpath(str(server.script), str(ROOT))
            if server.script.is_relative_to(ROOT)
            else str(server.script),
            "log_lines": server.log_lines,
            "uncaptured_exceptions": server.uncaptured,
            "overflows_logged": server.overflows,
            "idle_timeouts_logged": server.idle_timeouts,
            "accept_backoffs_logged": server.accept_backoffs,
            "descriptor_limit": server.descriptor_limit,
            "descriptors_at_start": server.descriptors_at_start,
            "exit_status": server.exit_status,
            "last_log": list(server.last_log),
        },
        "failure_count": soak.failure_count,
        "failures": soak.failures,
    }


def _mib(value: Optional[float]) -> str:
    return "unavailable" if value is None else "%.1f MiB" % (value / MIB)


def format_report(summary: dict[str, Any]) -> str:
    connections, rss = summary["connections"], summary["rss"]
    lines = [
        "soak: %d connections for %.0f s against %s (engine %s, max line %d bytes), seed %d"
        % (
            connections["target"],
            summary["load_seconds"],
            summary["server"]["script"],
            summary["engine"],
            summary["max_line"],
            summary["seed"],
        ),
        "connections: %d opened in total, %d concurrent (at least %s open during the load)"
        % (connections["opened"], connections["target"], connections["min_open_during_load"]),
        "echoed and verified: %d messages, %.1f MiB (%.1f MiB sent); wrong echoes: %d"
        % (
            summary["messages_verified"],
            summary["bytes_verified"] / MIB,
            summary["bytes_sent"] / MIB,
            summary["wrong_echoes"],
        ),
        "behaviours:",
    ]
    for kind, counts in summary["behaviours"].items():
        outcomes = ", ".join(
            "%s %d" % (name[len("outcome: ") :], number)
            for name, number in counts.items()
            if name.startswith("outcome: ")
        )
        lines.append(
            "  %-12s %6d opened; %s; %d messages, %.1f MiB verified"
            % (
                kind,
                counts.get("opened", 0),
                outcomes or "none finished",
                counts.get("messages", 0),
                counts.get("bytes", 0) / MIB,
            )
        )
    if rss["available"]:
        lines.append(
            "server RSS: start %s (connections established), max %s, end %s; after all clients closed %s"
            % (_mib(rss["start"]), _mib(rss["max"]), _mib(rss["end"]), _mib(rss["after_close"]))
        )
        lines.append(
            "  median of the first third %s, of the last third %s: growth %+.1f MiB (limit %.1f MiB)"
            % (
                _mib(rss["first_third_median"]),
                _mib(rss["last_third_median"]),
                rss["growth"] / MIB,
                rss["growth_limit"] / MIB,
            )
        )
    else:
        lines.append("server RSS: unavailable (no /proc here)")
    server = summary["server"]
    lines.append(
        "server: idle timeout %g s, output limit %d bytes, descriptor limit %s"
        % (
            summary["idle_timeout"],
            summary["max_output"],
            "none set"
            if server["descriptor_limit"] is None
            else "%d (%d open at the start)" % (server["descriptor_limit"], server["descriptors_at_start"]),
        )
    )
    lines.append(
        "server: %d log lines (%d overflows, %d idle timeouts, %d accept backoffs; each kind rate-limited), "
        "%d uncaptured exceptions, exit status %s"
        % (
            server["log_lines"],
            server["overflows_logged"],
            server["idle_timeouts_logged"],
            server["accept_backoffs_logged"],
            server["uncaptured_exceptions"],
            server["exit_status"],
        )
    )
    for failure in summary["failures"]:
        lines.append("FAILURE: " + failure)
    if summary["failure_count"] > len(summary["failures"]):
        lines.append("... and %d more failures" % (summary["failure_count"] - len(summary["failures"])))
    lines.append("verdict: %s (runtime %.1f s)" % (summary["verdict"].upper(), summary["runtime_seconds"]))
    return "\n".join(lines)


def main(argv: Optional[list[str]] = None) -> int:
    parser = argparse.ArgumentParser(description="Soak the example echo server with random client behaviour.")
    parser.add_argument("--connections", type=int, default=1000, help="connections kept open (default 1000)")
    parser.add_argument("--seconds", type=float, default=60.0, help="length of the load phase (default 60)")
    parser.add_argument("--seed", type=int, default=1, help="seed of the behaviour RNG (default 1)")
    parser.add_argument(
        "--max-line",
        type=int,
        default=DEFAULT_MAX_LINE,
        help="the server's line limit, passed to it (default %(default)s)",
    )
    parser.add_argument(
        "--close-timeout",
        type=float,
        default=30.0,
        help="seconds a client waits for an echo or a close before failing (default 30)",
    )
    parser.add_argument(
        "--idle-timeout",
        type=float,
        default=DEFAULT_IDLE_TIMEOUT,
        help="the server's idle timeout, seconds (at least 2; default %(default)s): slowloris clients "
        "must be closed by it, the well-behaved ones never go quiet for half of it",
    )
    parser.add_argument(
        "--max-output",
        type=int,
        default=DEFAULT_MAX_OUTPUT,
        help="the server's output limit per connection, bytes (default %(default)s)",
    )
    parser.add_argument(
        "--descriptor-shortfall",
        type=float,
        default=DEFAULT_DESCRIPTOR_SHORTFALL,
        help="share of the connections the server gets no descriptor for: its descriptor limit is lowered "
        "(Linux) so that it runs out now and then; 0 leaves it alone (default %(default)s)",
    )
    parser.add_argument(
        "--progress", type=float, default=10.0, help="seconds between progress lines on stderr; 0 for none (default 10)"
    )
    parser.add_argument(
        "--server", default=str(EXAMPLE_SERVER), help="the echo server script (default examples/echo_server.py)"
    )
    parser.add_argument(
        "--behaviours",
        default=",".join(KINDS),
        help="comma-separated behaviours to draw from (default: all of %(default)s)",
    )
    parser.add_argument("--json", action="store_true", help="print the summary as JSON")
    options = parser.parse_args(argv)
    options.behaviours = tuple(kind.strip() for kind in options.behaviours.split(",") if kind.strip())
    unknown = [kind for kind in options.behaviours if kind not in KINDS]
    if unknown or not options.behaviours:
        parser.error("--behaviours takes a comma-separated subset of %s" % ",".join(KINDS))
    if options.connections < 1 or options.seconds <= 0 or options.max_line < 64 or options.close_timeout <= 0:
        parser.error("--connections and --seconds must be positive, --max-line at least 64")
    if not options.idle_timeout >= 2 or options.max_output < 1 or not 0 <= options.descriptor_shortfall < 1:
        parser.error("--idle-timeout must be at least 2, --max-output positive, --descriptor-shortfall in [0, 1)")

    def log(message: str) -> None:
        sys.stderr.write(message + "\n")
        sys.stderr.flush()

    try:
        summary = run(options, log)
    except SoakError as error:
        log("soak: %s" % error)
        return 2
    if options.json:
        print(json.dumps(summary, indent=2))
    else:
        print(format_report(summary))
    return 0 if summary["verdict"] == "pass" else 1


if __name__ == "__main__":
    sys.exit(main())
