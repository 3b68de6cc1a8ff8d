"""Legacy fidelity: patterns real asyncore/asynchat programs use, played on the
oracle and on ``chatcore.compat`` (both engines), with the same outcome required.

The oracle is the real pair (stdlib's on Python <= 3.11, pyasyncore and
pyasynchat on 3.12+: see ``oracle.py``).  Each scenario is a function of an
implementation that returns everything observable; it runs on the oracle
first (which must give the outcome written in the test, so the expectation is
the real modules' behaviour) and then on chatcore.compat's classes bound to
the engine of the ``engine`` fixture (helpers/scenarios.py).  The patterns:

* push, then block: a handler pushes one or two replies and then blocks
  (``accept()`` on a data socket, ``Event.wait``) until a client thread that
  has read the replies acts, as an FTP server's PASV handler does; and what
  makes it work, a push handed to the socket before ``push()`` returns;
* STARTTLS: push ``+OK``, ``del_channel()``, wrap the socket with TLS,
  ``set_socket()`` it; the reply must arrive in the clear, then TLS works;
* patched module globals: ``asyncore.socket``, ``.select``, ``.time``, ``.os``
  replaced by fakes, as legacy test suites do (CPython's test_smtpd);
* a relay appending straight to another channel's ``producer_fifo``;
* pushes made just before ``close()`` or an exception;
* every kind of push (a MiB, a producer, ``close_when_done()``) in one
  handler: the same bytes in the same order.

Then the send-timing contract of the APIs that coalesce
(``chatcore.async_chat``, and compat channels with ``ac_coalesce_sends =
True``; docs/migrating.rst, "When pushed data reaches the kernel"): pushes
made in a handler leave at the end of the loop turn, a push from plain code at once; ``flush_sends()`` hands everything
queued over at once and ``initiate_send()`` takes stdlib's single step; queued
pushes are flushed before ``del_channel()``, ``set_socket()``, ``close()`` and
before the default ``handle_error()`` reports; bytes and order are the
oracle's.

Network use is 127.0.0.1 and socketpairs only.  Every blocking call has a
timeout (the sockets' from helpers/sockets.py, the threads' ``TIMEOUT``;
reached only when a test is failing, never asserted on), and every socket,
thread and channel map is released by the ``resources`` fixture.
"""

import itertools
import os
import random
import select
import shutil
import socket
import subprocess
import threading
import types
from collections import deque

import pytest
from helpers.fakes import FakeSocket
from helpers.processes import run_python
from helpers.scenarios import Impl, chatcore_impl, check, compat_impl
from helpers.serving import release, serve_until
from helpers.sockets import Peer, Sockets

import chatcore
from chatcore.compat import asynchat as compat_asynchat
from chatcore.compat import asyncore as compat_asyncore

try:
    import ssl
except ImportError:  # pragma: no cover - Python built without OpenSSL
    ssl = None

#: Seconds the scenarios' threads and their own blocking calls may wait.  Only a failing test waits that long.
TIMEOUT = 5.0

# -- resources: sockets, threads, channel maps ----------------------------------------


class Worker(threading.Thread):
    """Runs ``target(*args)`` and keeps what it returned or raised."""

    def __init__(self, target, args):
        super().__init__(daemon=True)
        self.target, self.args = target, args
        self.result = self.error = None

    def run(self):
        try:
            self.result = self.target(*self.args)
        except BaseException as exc:  # reported in the outcome, compared like a result
            self.error = exc

    def outcome(self):
        self.join(3 * TIMEOUT)
        if self.is_alive():
            return "still running"
        if self.error is not None:
            return ("raised", type(self.error).__name__, str(self.error))
        return self.result


class Resources(Sockets):
    """What a scenario opens (sockets, threads, timers, channel maps); ``release()`` closes and joins all of it."""

    def __init__(self):
        super().__init__()
        self.workers = []
        self.timers = []
        self.maps = []

    def map(self, impl):
        channel_map = {}
        self.maps.append((impl, channel_map))
        return channel_map

    def start(self, target, *args):
        worker = Worker(target, args)
        self.workers.append(worker)
        worker.start()
        return worker

    def timer(self, seconds, function):
        timer = threading.Timer(seconds, function)
        timer.daemon = True
        self.timers.append(timer)
        timer.start()
        return timer

    def release(self):
        for timer in self.timers:
            timer.cancel()
        for impl, channel_map in self.maps:
            release(channel_map, impl.core)
        self.close()
        for thread in self.workers + self.timers:
            thread.join(3 * TIMEOUT)
        alive = [thread for thread in self.workers + self.timers if thread.is_alive()]
        assert not alive, "threads still running after the test: %r" % alive


@pytest.fixture
def resources():
    res = Resources()
    yield res
    res.release()


def drain(sock):
    """What has arrived on *sock* (a socketpair end) so far, without waiting; its timeout is kept."""
    timeout = sock.gettimeout()
    sock.setblocking(False)
    data = bytearray()
    try:
        while True:
            try:
                chunk = sock.recv(1 << 16)
            except BlockingIOError:
                return bytes(data)
            if not chunk:
                return bytes(data)
            data += chunk
    finally:
        sock.settimeout(timeout)


def read_line(sock):
    """One CRLF-terminated line from a blocking socket, never reading past it."""
    line = bytearray()
    while not line.endswith(b"\r\n"):
        byte = sock.recv(1)
        if not byte:
            raise EOFError("connection closed after %r" % bytes(line))
        line += byte
    return bytes(line)


def line_chat(impl):
    """*impl*'s async_chat framing CRLF lines and calling ``line(bytes)`` for each."""
    base = impl.async_chat

    class LineChat(base):
        def __init__(self, sock, channel_map, terminator=b"\r\n"):
            base.__init__(self, sock, channel_map)
            self.set_terminator(terminator)
            self.parts = []

        def collect_incoming_data(self, data):
            self.parts.append(bytes(data))

        def found_terminator(self):
            message, self.parts = b"".join(self.parts), []
            self.line(message)

        def line(self, message):
            raise NotImplementedError

    return LineChat


# -- push, then block -------------------------------------------------------------------

PASV_REPLIES = [b"227 Entering Passive Mode\r\n", b"150 Opening data connection\r\n"]


def play_push_then_block(impl, resources, pushes, wait):
    """A PASV-style handler pushes *pushes* replies, then blocks until the client acts.

    wait "accept": the handler blocks in accept() on a data socket the client
    connects to once it has read the replies (and then reads what the client
    sends there); "event": it blocks on a threading.Event the client sets once
    it has read them.  Either way the handler then pushes "226".
    """
    server_sock, client_sock = resources.tcp_pair()
    data_listener = resources.listener()
    client_has_read = threading.Event()
    channel_map = resources.map(impl)
    handler_saw = []
    replies = PASV_REPLIES[:pushes]

    class Pasv(line_chat(impl)):
        def line(self, message):
            if message != b"PASV":
                self.push(b"500 what?\r\n")
                return
            for reply in replies:
                self.push(reply)
            if wait == "accept":
                try:
                    conn, _ = data_listener.accept()
                except socket.timeout:
                    handler_saw.append("accept() timed out")
                    self.push(b"425 no data connection\r\n")
                    return
                with conn:
                    conn.settimeout(TIMEOUT)
                    data = bytearray()
                    for chunk in iter(lambda: conn.recv(4096), b""):
                        data += chunk
                handler_saw.append(("data", bytes(data)))
            elif not client_has_read.wait(TIMEOUT):
                handler_saw.append("wait timed out")
                self.push(b"425 client never read the reply\r\n")
                return
            self.push(b"226 Transfer complete\r\n")

    def client():
        client_sock.settimeout(TIMEOUT)
        client_sock.sendall(b"PASV\r\n")
        got = [read_line(client_sock) for _ in replies]
        if wait == "accept":
            with socket.create_connection(data_listener.getsockname(), timeout=TIMEOUT) as data:
                data.sendall(b"file contents")
        else:
            client_has_read.set()
        got.append(read_line(client_sock))
        return got

    Pasv(server_sock, channel_map)
    worker = resources.start(client)
    serve_until(channel_map, lambda: not worker.is_alive(), loop=impl.core.loop)
    return {"client": worker.outcome(), "handler": handler_saw}


@pytest.mark.parametrize("wait", ["accept", "event"])
@pytest.mark.parametrize("pushes", [1, 2], ids=["one-push", "two-pushes"])
def test_push_then_block(engine, resources, pushes, wait):
    check(
        play_push_then_block,
        compat_impl(engine),
        {
            "client": PASV_REPLIES[:pushes] + [b"226 Transfer complete\r\n"],
            "handler": [("data", b"file contents")] if wait == "accept" else [],
        },
        resources,
        pushes,
        wait,
    )


def play_push_is_sent_before_it_returns(impl, resources):
    """What the peer can read right after each push() inside a handler."""
    left, right = resources.pair()
    channel_map = resources.map(impl)
    seen = []

    class Replier(line_chat(impl)):
        def line(self, message):
            for reply in (b"one\r\n", b"two\r\n"):
                self.push(reply)
                seen.append(drain(right))

    Replier(left, channel_map)
    right.sendall(b"go\r\n")
    serve_until(channel_map, lambda: len(seen) == 2, loop=impl.core.loop)
    return seen


def test_push_is_handed_to_the_socket_before_push_returns(engine, resources):
    # The mechanism behind every push-then-wait pattern, without any waiting.
    check(play_push_is_sent_before_it_returns, compat_impl(engine), [b"one\r\n", b"two\r\n"], resources)


# -- STARTTLS: push, del_channel(), wrap, set_socket() ---------------------------------------


@pytest.fixture(scope="session")
def tls_files(tmp_path_factory):
    """(certfile, keyfile) of a throwaway self-signed certificate for localhost."""
    if ssl is None:
        pytest.skip("this Python has no ssl module")
    openssl = shutil.which("openssl")
    if openssl is not None:
        directory = tmp_path_factory.mktemp("tls")
        cert, key = str(directory / "cert.pem"), str(directory / "key.pem")
        try:
            subprocess.run(
                [
                    openssl,
                    "req",
                    "-x509",
                    "-newkey",
                    "ec",
                    "-pkeyopt",
                    "ec_paramgen_curve:prime256v1",
                    "-nodes",
                    "-days",
                    "2",
                    "-subj",
                    "/CN=localhost",
                    "-keyout",
                    key,
                    "-out",
                    cert,
                ],
                stdout=subprocess.PIPE,
                stderr=subprocess.STDOUT,
                timeout=60,
                check=True,
            )
            return cert, key
        except (OSError, subprocess.SubprocessError):
            pass
    # CPython's test suite ships one (key and certificate in one file; under
    # certdata/ since 3.12).
    from helpers.cpython import THIS_VERSION, find_cpython_test

    versions = [THIS_VERSION, "3.11"]
    keycert = find_cpython_test("keycert.pem", versions) or find_cpython_test(
        os.path.join("certdata", "keycert.pem"), versions
    )
    if keycert is None:
        pytest.skip("no openssl command to make a certificate, and no CPython keycert.pem")
    return keycert, keycert


def play_starttls(impl, resources, tls_files):
    server_context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
    server_context.load_cert_chain(*tls_files)
    client_context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
    client_context.check_hostname = False
    client_context.verify_mode = ssl.CERT_NONE  # a throwaway certificate
    server_sock, client_sock = resources.tcp_pair()
    channel_map = resources.map(impl)
    events = []
    base = line_chat(impl)

    class Pop3(base):
        """STLS as a legacy server does it: the socket swap inside the handler."""

        tls = handshaking = want_write = False

        def line(self, message):
            events.append(("line", self.tls, message))
            if message == b"STLS" and not self.tls:
                self.push(b"+OK Begin TLS negotiation\r\n")
                self.del_channel()
                self.set_socket(
                    server_context.wrap_socket(self.socket, server_side=True, do_handshake_on_connect=False)
                )
                self.tls = self.handshaking = True
            elif self.tls:
                self.push(b"+OK over TLS: " + message + b"\r\n")
            else:
                self.push(b"-ERR\r\n")

        def _handshake(self):
            try:
                self.socket.do_handshake()
            except ssl.SSLWantReadError:
                self.want_write = False
            except ssl.SSLWantWriteError:
                self.want_write = True
            else:
                self.handshaking = False
                events.append(("handshake", self.socket.version() is not None))

        def writable(self):
            return self.want_write if self.handshaking else base.writable(self)

        def handle_read(self):
            if self.handshaking:
                self._handshake()
            if not self.handshaking:  # also right after it: read what it left
                base.handle_read(self)

        def handle_write(self):
            if self.handshaking:
                self._handshake()
            else:
                base.handle_write(self)

        def recv(self, buffer_size):
            if not self.tls:
                return base.recv(self, buffer_size)
            try:
                data = self.socket.recv(buffer_size)
            except (ssl.SSLWantReadError, ssl.SSLWantWriteError):
                return b""
            if not data:
                self.handle_close()
            return data

    def client():
        client_sock.settimeout(TIMEOUT)
        client_sock.sendall(b"STLS\r\n")
        clear = read_line(client_sock)
        tls = resources.track(client_context.wrap_socket(client_sock))  # handshakes
        tls.sendall(b"HELLO\r\n")
        return clear, read_line(tls)

    Pop3(server_sock, channel_map)
    worker = resources.start(client)
    serve_until(channel_map, lambda: not worker.is_alive(), loop=impl.core.loop)
    return {"client": worker.outcome(), "server": events}


def test_starttls_socket_swap(engine, resources, tls_files):
    check(
        play_starttls,
        compat_impl(engine),
        {
            "client": (b"+OK Begin TLS negotiation\r\n", b"+OK over TLS: HELLO\r\n"),
            "server": [("line", False, b"STLS"), ("handshake", True), ("line", True, b"HELLO")],
        },
        resources,
        tls_files,
    )


# -- patched module globals ------------------------------------------------------------


class MockSocket(FakeSocket):
    """A socket stand-in as CPython's test/mock_socket.py is one: scripted, and every call recorded."""

    def __init__(self, fd, calls, family=None, type=None):
        super().__init__(fd=fd)
        self.calls = calls
        self.calls.append(("socket", fd, family, type))

    def setblocking(self, flag):
        self.calls.append(("setblocking", self.fileno(), flag))

    def setsockopt(self, level, name, value):
        self.calls.append(("setsockopt", self.fileno(), level, name, value))

    def getsockopt(self, level, name):
        self.calls.append(("getsockopt", self.fileno(), level, name))
        return 0

    def bind(self, address):
        self.calls.append(("bind", self.fileno(), address))

    def listen(self, backlog):
        self.calls.append(("listen", self.fileno(), backlog))

    def accept(self):
        self.calls.append(("accept", self.fileno()))
        return MockSocket(self.fileno() + 1, self.calls), ("127.0.0.1", 4242)

    def close(self):
        self.calls.append(("close", self.fileno()))
        super().close()


def fake_socket_module(calls):
    """What a test puts in ``asyncore.socket``: constants and a ``socket()`` factory."""
    fds = itertools.count(90_000, 10)
    module = types.ModuleType("mock_socket")
    module.socket = lambda family=socket.AF_INET, type=socket.SOCK_STREAM: MockSocket(next(fds), calls, family, type)
    module.error = OSError
    module.AF_INET, module.SOCK_STREAM = socket.AF_INET, socket.SOCK_STREAM
    # Values of its own, so whoever reads them from the real module is caught.
    module.SOL_SOCKET, module.SO_REUSEADDR, module.SO_ERROR = 0x7001, 0x7002, 0x7003
    return module


def play_patched_socket(impl, monkeypatch):
    """test_smtpd's setup: a server and a channel built on a mock socket module."""
    calls = []
    monkeypatch.setattr(impl.core, "socket", fake_socket_module(calls))
    channel_map = {}
    channels = []

    class Server(impl.core.dispatcher):
        def __init__(self):
            impl.core.dispatcher.__init__(self, map=channel_map)
            self.create_socket()
            self.set_reuse_addr()
            self.bind(("127.0.0.1", 25))
            self.listen(5)

        def handle_accepted(self, sock, address):
            channels.append(Smtp(sock, channel_map))

    class Smtp(line_chat(impl)):
        def __init__(self, sock, channel_map):
            super().__init__(sock, channel_map)
            self.push(b"220 hello\r\n")

        def line(self, message):
            self.push(b"250 " + message + b"\r\n")

    server = Server()
    server.handle_accept()  # what the loop would call on a readable listening socket
    channel = channels[0]
    channel.socket.reads.extend([b"HELO there\r\n", b"NOOP\r", b"\n"])
    for _ in range(3):
        channel.handle_read()
    outcome = {
        "server socket": (type(server.socket).__name__, server.socket.fileno(), server.accepting),
        "map": sorted(channel_map),
        "calls": list(calls),
        "sent": bytes(channel.socket.sent),
    }
    for each in (channel, server):
        each.close()
    return outcome


def test_patched_socket_module_builds_the_sockets(engine, monkeypatch):
    check(
        play_patched_socket,
        compat_impl(engine),
        {
            "server socket": ("MockSocket", 90_000, True),
            "map": [90_000, 90_001],
            "calls": [
                ("socket", 90_000, socket.AF_INET, socket.SOCK_STREAM),
                ("setblocking", 90_000, False),
                ("getsockopt", 90_000, 0x7001, 0x7002),
                ("setsockopt", 90_000, 0x7001, 0x7002, 1),
                ("bind", 90_000, ("127.0.0.1", 25)),
                ("listen", 90_000, 5),
                ("accept", 90_000),
                ("socket", 90_001, None, None),
                ("setblocking", 90_001, False),
            ],
            "sent": b"220 hello\r\n250 HELO there\r\n250 NOOP\r\n",
        },
        monkeypatch,
    )


class FakeSelect:
    """What a test puts in ``asyncore.select``: records calls, returns scripted results."""

    def __init__(self, results, with_poll=True):
        self.calls = []
        self.results = deque(results)
        self.error = OSError
        for name in ("POLLIN", "POLLPRI", "POLLOUT", "POLLERR", "POLLHUP", "POLLNVAL"):
            setattr(self, name, getattr(select, name))
        self.select = self._select
        if with_poll:
            self.poll = self._poll

    def _result(self):
        return self.results.popleft() if self.results else ([], [], [])

    def _select(self, readers, writers, exceptional, timeout=None):
        self.calls.append(("select", list(readers), list(writers), list(exceptional), timeout))
        return self._result()

    def _poll(self):
        self.calls.append(("poll()",))
        return _FakePoller(self)


class _FakePoller:
    def __init__(self, fake):
        self.fake = fake

    def register(self, fd, flags):
        self.fake.calls.append(("register", fd, flags))

    def modify(self, fd, flags):
        self.fake.calls.append(("modify", fd, flags))

    def unregister(self, fd):
        self.fake.calls.append(("unregister", fd))

    def poll(self, timeout=None):
        self.fake.calls.append(("poll", timeout))
        return self.fake._result()


FD = 91_000  # the fake channel's descriptor


def play_patched_select(impl, monkeypatch, with_poll):
    fake = FakeSelect(
        [
            ([FD], [], []),  # turn 1: "one" arrives; its reply does not fit
            ([], [FD], []),  # turn 2: writable; the reply goes
            # turn 3, loop(use_poll=True): "two" arrives (poll), or nothing (select)
            [(FD, select.POLLIN)] if with_poll else ([], [], []),
            ([], [], []),  # poll() called directly: nothing
        ],
        with_poll,
    )
    monkeypatch.setattr(impl.core, "select", fake)
    calls = []
    sock = MockSocket(FD, calls)
    sock.reads.extend([b"one\n", b"two\n"])
    sock.sends.append(0)
    channel_map = {}
    lines = []

    class Echo(line_chat(impl)):
        def line(self, message):
            lines.append(message)
            self.push(message.upper() + b"\n")

    channel = Echo(sock, channel_map, b"\n")
    impl.core.loop(timeout=2.5, map=channel_map, count=1)
    impl.core.loop(timeout=2.5, map=channel_map, count=1)
    impl.core.loop(timeout=1.5, use_poll=True, map=channel_map, count=1)
    impl.core.poll(timeout=0.0, map=channel_map)
    outcome = {"select calls": list(fake.calls), "lines": lines, "sent": bytes(sock.sent)}
    channel.close()
    return outcome


@pytest.mark.parametrize("with_poll", [True, False], ids=["with-poll", "select-only"])
def test_patched_select_module_is_what_the_loop_calls(engine, monkeypatch, with_poll):
    reading = select.POLLIN | select.POLLPRI
    turn_3 = (
        [("poll()",), ("register", FD, reading), ("poll", 1500)]
        if with_poll
        else [
            # Without select.poll, loop(use_poll=True) falls back to select().
            ("select", [FD], [], [FD], 1.5)
        ]
    )
    check(
        play_patched_select,
        compat_impl(engine),
        {
            "select calls": [
                ("select", [FD], [], [FD], 2.5),
                ("select", [FD], [FD], [FD], 2.5),
            ]
            + turn_3
            + [("select", [FD], [], [FD], 0.0)],
            "lines": [b"one", b"two"] if with_poll else [b"one"],
            "sent": b"ONE\n" + (b"TWO\n" if with_poll else b""),
        },
        monkeypatch,
        with_poll,
    )


def play_patched_time(impl, monkeypatch):
    """poll() on a map whose channels want nothing sleeps through ``asyncore.time``."""
    sleeps = []
    fake_time = types.ModuleType("fake_time")
    fake_time.sleep = sleeps.append
    # Anything else the implementation may want from time stays real.
    for name in ("time", "monotonic", "perf_counter"):
        setattr(fake_time, name, getattr(__import__("time"), name))
    monkeypatch.setattr(impl.core, "time", fake_time)

    class Idle(impl.core.dispatcher):
        def readable(self):
            return False

        def writable(self):
            return False

    channel_map = {}
    idle = Idle(MockSocket(FD, []), map=channel_map)
    impl.core.poll(timeout=0.125, map=channel_map)
    impl.core.loop(timeout=0.25, map=channel_map, count=2)
    idle.close()
    return sleeps


def test_patched_time_module_is_what_poll_sleeps_with(engine, monkeypatch):
    check(play_patched_time, compat_impl(engine), [0.125, 0.25, 0.25], monkeypatch)


def play_patched_os(impl, monkeypatch):
    """file_dispatcher's descriptor work goes through ``asyncore.os``."""
    read_end, write_end = os.pipe()
    try:
        return _play_patched_os(impl, monkeypatch, read_end, write_end)
    finally:
        os.close(read_end)
        os.close(write_end)


def _play_patched_os(impl, monkeypatch, read_end, write_end):
    names = {read_end: "pipe"}
    calls = []
    fake_os = types.ModuleType("fake_os")
    for name in dir(os):
        if not name.startswith("__"):
            setattr(fake_os, name, getattr(os, name))

    def recording(name, function):
        def call(fd, *args):
            result = function(fd, *args)
            calls.append((name, names.get(fd, "?")) + args)
            if name == "dup":
                names[result] = "copy"
            return result

        return call

    for name in ("dup", "read", "write", "close", "set_blocking"):
        setattr(fake_os, name, recording(name, getattr(os, name)))
    monkeypatch.setattr(impl.core, "os", fake_os)
    received = []

    class Reader(impl.core.file_dispatcher):
        def handle_read(self):
            received.append(self.recv(64))

    channel_map = {}
    reader = Reader(read_end, map=channel_map)
    os.write(write_end, b"through a pipe")
    reader.handle_read()
    reader.close()
    return {"calls": calls, "received": received, "map": channel_map}


@pytest.mark.skipif(not hasattr(compat_asyncore, "file_dispatcher"), reason="POSIX only")
def test_patched_os_module_is_what_file_dispatcher_uses(engine, monkeypatch):
    check(
        play_patched_os,
        compat_impl(engine),
        {
            "calls": [("dup", "pipe"), ("set_blocking", "pipe", False), ("read", "copy", 64), ("close", "copy")],
            "received": [b"through a pipe"],
            "map": {},
        },
        monkeypatch,
    )


# -- a relay that appends to another channel's producer_fifo ------------------------------

LOOP_TIMEOUT = 10.0  # long, so a channel the loop forgot waits visibly (see WATCHDOG)
WATCHDOG = TIMEOUT  # then a byte on the watchdog channel ends the turn, and is recorded


def play_relay(impl, resources, use_poll, item, where):
    """Channel A's handler (or plain code) appends to channel B's producer_fifo directly.

    The loop runs a counted number of turns with a 10 s timeout; B's bytes
    must have left when they end.  A watchdog ends a turn stuck waiting for
    the loop timeout, and records that it had to.
    """
    a_sock, a_peer = resources.pair()
    b_sock, b_peer = resources.pair()
    w_sock, w_peer = resources.pair()
    channel_map = resources.map(impl)
    woken = []
    base = line_chat(impl)

    class Quiet(base):
        def line(self, message):
            pass

    class Watchdog(Quiet):
        def handle_read(self):
            woken.append(drain(self.socket))

    def queued(message):
        # A producer that gives the whole message at once: one send, as for bytes.
        return message if item == "bytes" else impl.simple_producer(message)

    def wake():
        try:
            w_peer.send(b"!")
        except OSError:  # the test is over
            pass

    class Relay(base):
        def line(self, message):
            b.producer_fifo.append(queued(message + b" (relayed)\n"))

    Relay(a_sock, channel_map, b"\n")
    b = Quiet(b_sock, channel_map, b"\n")
    Watchdog(w_sock, channel_map, b"\n")
    # A few idle turns first, so the loop has seen B with nothing to send.
    impl.core.loop(timeout=0, use_poll=use_poll, map=channel_map, count=3)
    resources.timer(WATCHDOG, wake)
    if where == "handler":
        a_peer.sendall(b"hello\n")
        turns = 2  # the oracle: A reads and relays, then B is writable
    else:
        b.producer_fifo.append(queued(b"hello (relayed)\n"))
        turns = 1  # the oracle: B is writable on the next turn
    impl.core.loop(timeout=LOOP_TIMEOUT, use_poll=use_poll, map=channel_map, count=turns)
    return {"b received": drain(b_peer), "watchdog had to wake the loop": bool(woken)}


@pytest.mark.parametrize("where", ["handler", "outside"], ids=["from-a-handler", "between-turns"])
@pytest.mark.parametrize("item", ["bytes", "producer"])
@pytest.mark.parametrize("use_poll", [False, True], ids=["select", "poll"])
def test_direct_producer_fifo_append_goes_out_on_the_next_turn(engine, resources, use_poll, item, where):
    check(
        play_relay,
        compat_impl(engine),
        {
            "b received": b"hello (relayed)\n",
            "watchdog had to wake the loop": False,
        },
        resources,
        use_poll,
        item,
        where,
    )


# -- pushes just before close() or an exception ----------------------------------------


def play_push_then_end(impl, resources, how):
    left, right = resources.pair()
    channel_map = resources.map(impl)
    peer = Peer(right)

    class Replier(line_chat(impl)):
        def line(self, message):
            for number in (1, 2, 3):
                self.push(b"%s %d\r\n" % (message, number))
            if how == "close":
                self.close()
            elif how == "handle_close":
                self.handle_close()
            elif how == "raise":
                raise ValueError("after the pushes")  # default handle_error: log, close

        def log_info(self, message, type="info"):
            pass  # handle_error's traceback

    Replier(left, channel_map)
    right.sendall(b"bye\r\n")
    serve_until(channel_map, lambda: peer.eof, loop=impl.core.loop, peers=[peer])
    return {"received": bytes(peer.received), "eof": peer.eof}


@pytest.mark.parametrize("how", ["close", "handle_close", "raise"])
def test_pushes_before_close_or_error_reach_the_peer(engine, resources, how):
    check(
        play_push_then_end,
        compat_impl(engine),
        {
            "received": b"bye 1\r\nbye 2\r\nbye 3\r\n",
            "eof": True,
        },
        resources,
        how,
    )


# -- bytes and order, whatever the send timing ------------------------------------------

BIG = random.Random(10).randbytes(1 << 20)


def play_stream(impl, resources):
    """Every kind of push inside one handler, a MiB among them, then close_when_done()."""
    left, right = resources.pair()
    channel_map = resources.map(impl)
    peer = Peer(right)

    class Streamer(line_chat(impl)):
        def line(self, message):
            self.push(b"one\n")
            self.push(bytearray(b"two\n"))
            self.push(memoryview(b"-three\n-")[1:-1])
            self.push_with_producer(impl.simple_producer(b"four\n" * 300, 64))
            self.push(BIG)
            self.push(b"six\n")
            self.push(b"")
            self.push(b"seven\n")
            self.close_when_done()

    Streamer(left, channel_map)
    right.sendall(b"go\r\n")
    serve_until(channel_map, lambda: peer.eof, loop=impl.core.loop, peers=[peer])
    return {"received": bytes(peer.received), "eof": peer.eof}


STREAM = b"one\ntwo\nthree\n" + b"four\n" * 300 + BIG + b"six\nseven\n"


def test_stream_bytes_and_order(engine, resources):
    check(play_stream, compat_impl(engine), {"received": STREAM, "eof": True}, resources)


# -- the contract where sends are coalesced ---------------------------------------------


@pytest.fixture(params=["chatcore", "compat-opt-in"])
def coalescing(request, chat_class):
    """chatcore.async_chat (coalesces by default), or compat with ac_coalesce_sends = True."""
    if request.param == "chatcore":
        return chatcore_impl(chat_class)
    return compat_impl(chat_class._engine, ac_coalesce_sends=True)


def test_which_classes_coalesce_by_default():
    assert chatcore.async_chat.ac_coalesce_sends is True
    assert compat_asynchat.async_chat.ac_coalesce_sends is False


def run_in_handler(impl, resources, action):
    """Serve one request whose handler runs ``action(channel, peer_sock, notes)``.

    Returns the notes and what the peer received once the turn was over.
    """
    left, right = resources.pair()
    channel_map = resources.map(impl)
    notes = []

    class Channel(line_chat(impl)):
        def line(self, message):
            action(self, right, notes)

    channel = Channel(left, channel_map)
    channel.peer = right
    right.sendall(b"go\r\n")
    impl.core.loop(timeout=TIMEOUT, map=channel_map, count=1)
    return notes, drain(right)


def test_pushes_in_a_handler_leave_at_the_end_of_the_turn(coalescing, resources):
    def action(channel, peer, notes):
        channel.push(b"one\r\n")
        notes.append(drain(peer))
        channel.push(b"two\r\n")
        notes.append(drain(peer))

    assert run_in_handler(coalescing, resources, action) == ([b"", b""], b"one\r\ntwo\r\n")


def test_a_push_outside_the_loop_is_sent_at_once(coalescing, resources):
    left, right = resources.pair()
    channel = line_chat(coalescing)(left, resources.map(coalescing))
    channel.push(b"at once\r\n")
    assert drain(right) == b"at once\r\n"


def test_flush_sends_hands_every_queued_push_over(coalescing, resources):
    def action(channel, peer, notes):
        channel.push(b"one\r\n")
        channel.push(b"two\r\n")
        channel.flush_sends()
        notes.append(drain(peer))
        channel.push(b"three\r\n")
        notes.append(drain(peer))

    assert run_in_handler(coalescing, resources, action) == ([b"one\r\ntwo\r\n", b""], b"three\r\n")


def test_initiate_send_takes_stdlibs_single_step(coalescing, resources):
    # Stdlib's initiate_send() sends the head of the queue and returns; the
    # rest still leaves at the end of the turn.
    def action(channel, peer, notes):
        channel.push(b"one\r\n")
        channel.push(b"two\r\n")
        channel.initiate_send()
        notes.append(drain(peer))

    assert run_in_handler(coalescing, resources, action) == ([b"one\r\n"], b"two\r\n")


def test_del_channel_flushes_first(coalescing, resources):
    def action(channel, peer, notes):
        channel.push(b"before\r\n")
        channel.del_channel()
        notes.append(drain(peer))
        channel.add_channel()

    assert run_in_handler(coalescing, resources, action) == ([b"before\r\n"], b"")


def test_set_socket_flushes_to_the_old_socket_first(coalescing, resources):
    new, new_peer = resources.pair()

    def action(channel, peer, notes):
        channel.push(b"old\r\n")
        old_fd = channel._fileno
        channel.set_socket(new)
        notes.append(drain(peer))
        channel._map.pop(old_fd, None)  # set_socket() leaves the old entry (stdlib does too)
        channel.push(b"new\r\n")

    notes, old_after = run_in_handler(coalescing, resources, action)
    assert (notes, old_after, drain(new_peer)) == ([b"old\r\n"], b"", b"new\r\n")


def test_close_flushes_first(coalescing, resources):
    def action(channel, peer, notes):
        channel.push(b"last words\r\n")
        channel.close()
        notes.append(drain(peer))

    assert run_in_handler(coalescing, resources, action) == ([b"last words\r\n"], b"")


def play_push_then_raise(impl, resources, override):
    """A handler pushes, then raises.  What the peer has had when the error is handled."""
    base = impl.async_chat

    class Failing(base):
        def log_info(self, message, type="info"):
            # The default handle_error() reports through here, then closes.
            self.notes.append(("reported", type, drain(self.peer)))

        if override:

            def handle_error(self):
                self.notes.append(("handle_error",))
                self.close()

    def action(channel, peer, notes):
        channel.notes = notes
        channel.push(b"reply\r\n")
        raise ValueError("after the push")

    return run_in_handler(Impl(impl.name, Failing, impl.simple_producer, impl.core), resources, action)


def test_default_handle_error_reports_after_the_reply_left(engine, coalescing, resources):
    expected = ([("reported", "error", b"reply\r\n")], b"")
    check(play_push_then_raise, compat_impl(engine), expected, resources, False)
    assert play_push_then_raise(coalescing, resources, False) == expected


def test_an_overriding_handle_error_that_closes_still_sends_the_reply(engine, coalescing, resources):
    # Stdlib sent the reply before handle_error ran; a coalescing channel sends
    # it when the override closes (docs/migrating.rst: the default handle_error flushes).
    check(play_push_then_raise, compat_impl(engine), ([("handle_error",)], b"reply\r\n"), resources, True)
    notes, received = play_push_then_raise(coalescing, resources, True)
    assert (notes, received) == ([("handle_error",)], b"reply\r\n")


def test_coalesced_stream_has_the_oracles_bytes_and_order(coalescing, resources):
    assert play_stream(coalescing, resources) == {"received": STREAM, "eof": True}


INSTALLED_PROGRAM = """
import socket, sys
import chatcore.compat
chatcore.compat.install(%s)
import asynchat, asyncore

seen = []
class Replier(asynchat.async_chat):
    def collect_incoming_data(self, data):
        pass
    def found_terminator(self):
        self.push(b"reply\\r\\n")
        right.setblocking(False)
        try:
            seen.append(right.recv(100))
        except BlockingIOError:
            seen.append(b"")

left, right = socket.socketpair()
channel = Replier(left)
channel.set_terminator(b"\\r\\n")
right.sendall(b"go\\r\\n")
asyncore.loop(timeout=%r, count=1)
right.setblocking(True)
right.settimeout(%r)
print(seen, right.recv(100))
channel.close()
right.close()
"""


@pytest.mark.parametrize(
    "arguments, expected",
    [
        ("", "[b'reply\\r\\n'] "),
        ("coalesce_sends=False", "[b'reply\\r\\n'] "),
        ("coalesce_sends=True", "[b''] b'reply\\r\\n'"),
    ],
    ids=["default", "false", "opt-in"],
)
def test_install_coalesce_sends_opt_in(arguments, expected):
    # The default keeps stdlib's timing; only the opt-in defers to the turn's end.
    program = INSTALLED_PROGRAM % (arguments, TIMEOUT, TIMEOUT)
    if "True" not in arguments:
        # Everything was read inside the handler: nothing is left for the last recv.
        program = program.replace("print(seen, right.recv(100))", "print(seen, '')")
    out = run_python(program)
    assert out.returncode == 0, out.stdout
    assert out.stdout.strip() == expected.strip()
