"""Serving under hostile load: each attack a server on chatcore must survive, as a test.

All on 127.0.0.1, bounded in time and count, on both engines:

* slowloris connections, closed by ``ac_idle_timeout``, while channels that
  keep talking stay open; no timeout (the default, and compat's) closes
  nothing;
* a client that sends and never reads, against a server in a child process
  (its RSS read from /proc): ``ac_max_output_buffer`` keeps the server's
  memory flat, with long lines and with a flood of 2-byte ones;
* a client that shuts down its sending side gets its whole echo
  (``chatcore.async_chat``), while ``chatcore.compat`` closes at once as
  stdlib does;
* thousands of over-long lines against the example echo server whose stdout
  and stderr are pipes nobody reads;
* a slow reader of 10 MiB: every byte, with the server pausing and resuming
  its reading on the way.

The helpers (drip clients, the never-reading client, the child server) are
in ``helpers/hostile.py``.  The semantics of each setting, one channel at a
time (overrides of ``handle_idle_timeout()``, the pauses, bad values), are
pinned down in test_flow_control.py.
"""

import hashlib
import os
import random
import signal
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest
from helpers.cpython import engine_env
from helpers.engines import engine_id
from helpers.hostile import (
    DripClients,
    EchoServerProcess,
    Listener,
    NeverReader,
    echo_channel_class,
    echo_round_trip,
    highest_rss_while,
    readline_within,
    serve_until_deadline,
)
from helpers.processes import CHILD_TIMEOUT, assert_process_gone, stop_server
from helpers.scenarios import check, compat_impl
from helpers.serving import release, serve_until
from helpers.sockets import TIMEOUT, Peer

import chatcore
from chatcore import log
from chatcore.compat import asynchat as compat_asynchat

#: Whole-server scenarios: CI runs them on one interpreter (see .ci/run).
pytestmark = pytest.mark.scenario

ROOT = Path(__file__).resolve().parent.parent
EXAMPLE_ECHO_SERVER = ROOT / "examples" / "echo_server.py"
MIB = 1 << 20

linux_only = pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the server's RSS from /proc")


@pytest.fixture(autouse=True)
def fresh_limits():
    """The idle timeouts and overflows logged here must not use up the rate limit of later tests."""
    yield
    for kind in log.KINDS.values():
        kind.reset()


# --- Idle timeouts -------------------------------------------------------------------

IDLE_TIMEOUT = 0.5
SLOWLORIS = 200


def test_slowloris_connections_are_closed_by_the_idle_timeout_and_talkers_are_not(chat_class):
    channel_map: dict = {}
    listener = Listener(channel_map, echo_channel_class(chat_class, channel_map, ac_idle_timeout=IDLE_TIMEOUT))
    # One byte of a line that never ends, less often than the timeout.
    slowloris = DripClients(listener.address, SLOWLORIS, b"G", interval=3 * IDLE_TIMEOUT)
    groups = [slowloris]
    try:
        # For 3 s: one byte more often than the timeout (no line ever ends), and
        # whole lines, echoed; then both fall silent.
        trickle = DripClients(listener.address, 1, b"x", interval=0.4 * IDLE_TIMEOUT, talk_for=3.0)
        groups.append(trickle)
        talker = DripClients(listener.address, 1, b"ping\n", interval=0.4 * IDLE_TIMEOUT, talk_for=3.0)
        groups.append(talker)
        everyone = [client for group in groups for client in group.clients]

        def pump():
            for group in groups:
                group.pump()

        serve_until_deadline(
            channel_map,
            lambda: not any(client.open for client in everyone),
            30.0,
            what="every connection closed by the idle timeout",
            between_turns=pump,
        )
        assert len(listener.channels) == SLOWLORIS + 2
        # Closed no sooner than the timeout after their first byte (the server
        # heard it later still), and sent nothing.
        delays = [client.closed_at - client.first_sent for client in slowloris.clients]
        assert min(delays) >= IDLE_TIMEOUT
        assert all(client.received == b"" for client in slowloris.clients)
        for client in trickle.clients + talker.clients:
            assert client.closed_at - client.started >= 3.0, "closed while it kept talking"
            assert client.closed_at - client.last_sent >= IDLE_TIMEOUT
            assert client.sends >= 3.0 / (0.4 * IDLE_TIMEOUT) / 2  # it did keep talking (15 sends, on time)
        assert talker.clients[0].received == b"ping\n" * talker.clients[0].sends
        print(
            "slowloris: %d closed, %.2f-%.2f s after their byte (timeout %g s)"
            % (len(delays), min(delays), max(delays), IDLE_TIMEOUT)
        )
    finally:
        for group in groups:
            group.close()
        release(channel_map)


@pytest.mark.parametrize("api", [chatcore.async_chat, compat_asynchat.async_chat], ids=["chatcore", "compat"])
def test_without_an_idle_timeout_nothing_is_closed_until_one_is_set_on_the_instance(engine, api):
    base = type("async_chat", (api,), {"_engine": engine})
    assert base.ac_idle_timeout is None  # the default
    channel_map: dict = {}
    listener = Listener(channel_map, echo_channel_class(base, channel_map))
    clients = DripClients(listener.address, 5, b"", interval=1.0, talk_for=0.0)  # silent
    try:
        window = time.monotonic() + 1.5
        serve_until_deadline(
            channel_map, lambda: time.monotonic() > window, 10.0, what="a quiet window", between_turns=clients.pump
        )
        assert all(client.open for client in clients.clients)
        assert len(listener.channels) == 5
        # Set on one instance, it applies to that channel alone, at once.
        listener.channels[0].ac_idle_timeout = 0.2
        serve_until_deadline(
            channel_map,
            lambda: not clients.clients[0].open,
            10.0,
            what="the channel with a timeout of its own closed",
            between_turns=clients.pump,
        )
        assert [client.open for client in clients.clients] == [False, True, True, True, True]
    finally:
        clients.close()
        release(channel_map)


# --- A client that never reads ---------------------------------------------------------

#: What a never-reading client sends at the most; the server stops reading long before.
FLOOD = 256 * MIB
#: How far the server's RSS may rise above where it was before the client came.
RSS_ALLOWANCE = 32 * MIB
LINES = {
    "long lines": (b"L" * (256 * 1024 - 1) + b"\n") * 4,
    "2-byte lines": b"x\n" * (512 * 1024),
}


@linux_only
@pytest.mark.timeout(180)
@pytest.mark.parametrize("lines", sorted(LINES))
def test_a_client_that_never_reads_leaves_the_server_memory_flat(engine, lines):
    server = EchoServerProcess(engine_env(engine_id(engine)))
    client = None
    try:
        assert server.implementation == {"c": "cython", "py": "python"}[engine_id(engine)]
        assert echo_round_trip(server.address, b"warm up\n") == b"warm up\n"
        before = server.rss()
        started = time.monotonic()
        # A long stall: on a loaded machine the pure-Python engine working
        # through a backlog of 2-byte lines can leave the client's window
        # shut for seconds before the server has stopped reading.
        client = NeverReader(server.address, LINES[lines], FLOOD, stall=6.0)
        highest = highest_rss_while(server, client.alive, 120.0, before + RSS_ALLOWANCE)
        seconds = time.monotonic() - started
        assert highest - before <= RSS_ALLOWANCE, "the server grew by %.1f MiB" % ((highest - before) / MIB)
        client.join(TIMEOUT)
        sent = client.sent
        assert client.error is None and client.stalled and sent < FLOOD
        # The server stopped reading from it, with a bounded queue; others are still served.
        for _ in range(50):
            (stats,) = server.channel_stats()
            if stats["reading_paused"]:
                break
            time.sleep(0.2)
        assert stats["reading_paused"] and stats["output_buffer_size"] <= 2 * MIB, stats
        assert echo_round_trip(server.address, b"still serving\n") == b"still serving\n"
        client.close()
        client = None
        assert echo_round_trip(server.address, b"and after\n") == b"and after\n"
        after = server.rss()
        assert after - before <= RSS_ALLOWANCE
        print(
            "never-reader, %s, %s engine: %.1f MiB sent in %.1f s; server RSS %.1f MiB before, "
            "%.1f MiB at most, %.1f MiB after; queue %d bytes"
            % (
                lines,
                server.implementation,
                sent / MIB,
                seconds,
                before / MIB,
                highest / MIB,
                after / MIB,
                stats["output_buffer_size"],
            )
        )
    finally:
        if client is not None:
            client.close()
        server.stop()
    assert_process_gone(server.process)


# --- Half-close --------------------------------------------------------------------


def lines_of(size: int, seed: int = 0) -> bytes:
    """About *size* bytes of random lines (0 to 4,000 bytes each, newline-terminated)."""
    rng = random.Random(seed)
    pool = rng.randbytes(1 << 16).replace(b"\n", b"-")
    parts, total = [], 0
    while total < size:
        length = rng.randrange(4000)
        start = rng.randrange(len(pool) - length)
        parts += [pool[start : start + length], b"\n"]
        total += length + 1
    return b"".join(parts)


class Digest:
    """What a client received: its length and SHA-256, compared with what it sent."""

    def __init__(self, data: bytes = b"") -> None:
        self.size = 0
        self.hash = hashlib.sha256()
        self.add(data)

    def add(self, data: bytes) -> None:
        self.size += len(data)
        self.hash.update(data)

    def __eq__(self, other: object) -> bool:
        return isinstance(other, Digest) and (self.size, self.hash.digest()) == (other.size, other.hash.digest())

    def __repr__(self) -> str:
        return "<%d bytes, sha256 %s>" % (self.size, self.hash.hexdigest()[:16])


class ClientThreads:
    """A client's sending and receiving, each in a thread of its own, with their errors kept."""

    def __init__(self) -> None:
        self.threads: list[threading.Thread] = []
        self.errors: list[BaseException] = []

    def start(self, target) -> None:
        def run():
            try:
                target()
            except BaseException as error:
                self.errors.append(error)

        thread = threading.Thread(target=run, daemon=True)
        self.threads.append(thread)
        thread.start()

    def done(self) -> bool:
        return not any(thread.is_alive() for thread in self.threads)

    def join(self) -> None:
        for thread in self.threads:
            thread.join(TIMEOUT)
        assert self.done(), "a client thread is still running"
        assert self.errors == []


HALF_CLOSE = 32 * MIB


@pytest.mark.timeout(240)
@pytest.mark.parametrize("reads", ["after the shutdown", "while it sends"])
def test_a_client_that_shuts_down_its_sending_side_gets_its_whole_echo(chat_class, sockets, reads):
    channel_map: dict = {}
    server_end, client = sockets.tcp_pair()
    client.settimeout(60.0)
    data = lines_of(HALF_CLOSE)
    received = Digest()
    sent_all = threading.Event()
    owed_at_shutdown = []
    if reads == "after the shutdown":
        # It reads nothing before it has sent everything: the server must hold
        # the whole echo (all but what the kernel's buffers take, a few MiB,
        # is still queued when the end of stream comes), so its output is not
        # limited here.
        echo_channel_class(chat_class, channel_map, ac_max_output_buffer=None)(server_end)
    else:
        echo_channel_class(chat_class, channel_map)(server_end)

    def send():
        client.sendall(data)
        client.shutdown(socket.SHUT_WR)
        owed_at_shutdown.append(len(data) - received.size)
        sent_all.set()

    def receive():
        if reads == "after the shutdown":
            assert sent_all.wait(60.0)
        paused = False
        while True:
            if sent_all.is_set() and not paused:
                time.sleep(1.0)  # a second after the half-close, as the attack goes
                paused = True
            piece = client.recv(1 << 16)
            if not piece:
                return
            received.add(piece)

    threads = ClientThreads()
    try:
        threads.start(send)
        threads.start(receive)
        serve_until_deadline(channel_map, threads.done, 180.0, what="the client receiving its echo")
        threads.join()
        assert received == Digest(data)
        assert not channel_map, "the channel outlived its peer"
        print("half-close (%s): %d bytes echoed, %d owed at the shutdown" % (reads, received.size, owed_at_shutdown[0]))
    finally:
        client.close()
        release(channel_map)


def half_close_scenario(impl):
    """A peer sends lines and shuts down its sending side: whether all of its echo comes back.

    The lines and the end of stream are all in the channel's socket before
    the loop turns, and the channel's send buffer is small: most of the echo
    is still queued when the channel reads the end of stream.
    """
    channel_map: dict = {}
    server_end, peer_end = socket.socketpair()
    server_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    try:
        echo_channel_class(impl.async_chat, channel_map)(server_end)
        data = lines_of(96 * 1024)
        peer_end.settimeout(TIMEOUT)
        peer_end.sendall(data)  # the socket's buffer holds it all
        peer_end.shutdown(socket.SHUT_WR)
        peer = Peer(peer_end)
        serve_until(channel_map, lambda: not channel_map, loop=impl.core.loop, peers=[peer], what="the channel closing")
        peer.pump()
        return bytes(peer.received) == data
    finally:
        server_end.close()
        peer_end.close()
        impl.core.close_all(channel_map)


def test_compat_closes_at_the_end_of_stream_dropping_the_echo_as_stdlib_does(engine):
    check(half_close_scenario, compat_impl(engine), False)


# --- Over-long lines, with nobody reading the server's output ------------------------

OVERLONG_LINES = 3000


def _send_overlong_line(address):
    """One over-long line on a new connection; the server must close it."""
    with socket.create_connection(address, timeout=TIMEOUT) as client:
        client.sendall(b"x" * 64 + b"\n")
        try:
            assert client.recv(100) == b""
        except ConnectionResetError:
            pass  # closed, too


@pytest.mark.skipif(not EXAMPLE_ECHO_SERVER.exists(), reason="examples/ not shipped with these tests")
@pytest.mark.skipif(os.name == "nt", reason="sends SIGINT to the server")
@pytest.mark.timeout(240)
def test_the_example_server_keeps_serving_through_overlong_lines_with_its_output_unread(engine):
    # The example logs to stdout; neither it nor stderr is read until the end.
    server = subprocess.Popen(
        [sys.executable, str(EXAMPLE_ECHO_SERVER), "--port", "0", "--max-line", "16", "--max-seconds", "200"],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=engine_env(engine_id(engine)),
        cwd=str(ROOT),
    )
    try:
        first = readline_within(server.stdout, CHILD_TIMEOUT).decode()
        assert "echo server listening on 127.0.0.1:" in first, first
        port = int(first.split(":")[1].split()[0])
        for _ in range(OVERLONG_LINES):
            _send_overlong_line(("127.0.0.1", port))
        assert echo_round_trip(("127.0.0.1", port), b"still there?\n") == b"still there?\n"
    finally:
        out, err = stop_server(server, signal.SIGINT)
    assert_process_gone(server)
    assert server.returncode == 0, err
    lines = out.decode().splitlines()
    overflows = [line for line in lines if "longer than ac_max_message_size (16 bytes)" in line]
    # Rate-limited: a burst, then one line saying the rest are suppressed.
    assert len(overflows) == log.KINDS["message overflow"].burst
    assert any("too many 'message overflow' messages" in line for line in lines)
    assert len(lines) == len(overflows) + 1, lines
    assert err == b""


# --- Output backpressure ---------------------------------------------------------------

SLOW_READ = 10 * MIB


@pytest.mark.timeout(180)
def test_a_slow_reader_gets_10_mib_exact_while_the_server_pauses_and_resumes_reading(chat_class, sockets):
    channel_map: dict = {}
    server_end, client = sockets.tcp_pair()
    # Small kernel buffers, so the echo backs up in the server's own queue.
    server_end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 65536)
    client.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 65536)
    client.settimeout(60.0)
    channel = echo_channel_class(chat_class, channel_map)(server_end)
    data = lines_of(SLOW_READ, seed=1)
    received = Digest()

    def receive_slowly():
        while received.size < len(data):
            piece = client.recv(16384)
            if not piece:
                return
            received.add(piece)
            time.sleep(0.001)

    seen = {"pauses": 0, "resumes": 0, "largest queue": 0, "paused": False}

    def watch():
        paused = channel.reading_paused
        if paused != seen["paused"]:
            seen["pauses" if paused else "resumes"] += 1
            seen["paused"] = paused
        seen["largest queue"] = max(seen["largest queue"], channel.output_buffer_size)

    threads = ClientThreads()
    try:
        threads.start(lambda: client.sendall(data))
        threads.start(receive_slowly)
        serve_until_deadline(channel_map, threads.done, 150.0, what="the slow reader's echo", between_turns=watch)
        threads.join()
        assert received == Digest(data)
        assert seen["pauses"] >= 1 and seen["resumes"] >= 1
        limit = chat_class.ac_max_output_buffer
        assert limit / 2 <= seen["largest queue"] <= 2 * limit
        print("slow reader: %d bytes exact; %s" % (received.size, seen))
    finally:
        client.close()
        release(channel_map)
