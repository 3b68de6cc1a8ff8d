"""Hostile clients and the servers they attack, for tests/test_hostile_load.py.

* ``DripClients``: many loopback connections that each send a few bytes now
  and then (a slowloris sends one byte of a line that never ends), driven
  from the test's own thread between loop turns; each notes when the server
  closed it, as the client sees it (end of stream, a reset, a failed send);
* ``echo_channel_class`` and ``Listener``: an in-process line-echo server
  on any channel map, with chatcore's own ``handle_close``;
* ``serve_until_deadline``: turn a channel map's loop until a condition holds
  or a wall-clock bound passes (an idle timeout is about time, not turns);
* ``NeverReader``: a client thread that sends and never reads, until the
  server stops taking bytes;
* ``EchoServerProcess``: a chatcore line-echo server in a child process,
  whose resident memory is read from /proc and whose channels report their
  output queues on request.

Every socket, thread and process made here is closed, joined or reaped by
``close()``/``stop()``, which the tests call in ``finally`` blocks, and every
wait is bounded.
"""

import json
import socket
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from collections.abc import Mapping
from typing import Any, Callable, Optional

import chatcore
from chatcore.benchmark.serverproc import resident_bytes

from .serving import TURN
from .sockets import TIMEOUT


def echo_channel_class(chat_class: type, channel_map: dict[int, Any], **class_attributes: Any) -> type:
    """*chat_class* echoing each newline-terminated line on *channel_map*; *class_attributes* go in its body.

    It keeps nothing but the line being collected, and leaves
    ``handle_close`` (and everything else) to *chat_class*.  The settings
    go in a class body because that is where async_chat checks them.
    """

    class Echo(chat_class):
        def __init__(self, sock: socket.socket) -> None:
            super().__init__(sock, map=channel_map)
            self.set_terminator(b"\n")

        def collect_incoming_data(self, data: bytes) -> None:
            self._collect_incoming_data(data)

        def found_terminator(self) -> None:
            self.push(self._get_data() + b"\n")

    return type("Echo", (Echo,), dict(class_attributes))


class Listener(chatcore.dispatcher):
    """Listens on 127.0.0.1 (a free port) in *channel_map*; each connection becomes ``factory(sock)``."""

    def __init__(self, channel_map: dict[int, Any], factory: Callable[[socket.socket], Any], backlog: int = 256):
        super().__init__(map=channel_map)
        self.factory = factory
        self.channels: list[Any] = []
        self.create_socket(socket.AF_INET, socket.SOCK_STREAM)
        self.bind(("127.0.0.1", 0))
        self.listen(backlog)
        self.address: tuple[str, int] = self.socket.getsockname()

    def handle_accepted(self, sock: socket.socket, addr: Any) -> None:
        self.channels.append(self.factory(sock))


def serve_until_deadline(
    channel_map: dict[int, Any],
    condition: Callable[[], Any],
    seconds: float,
    *,
    what: str = "the condition",
    between_turns: Callable[[], None] = lambda: None,
) -> None:
    """Turn ``chatcore.loop`` over *channel_map* until *condition()* holds; fail after *seconds*.

    *between_turns* runs before each check (the clients' own moves).  A
    bound only a failing test reaches, never a measurement.
    """
    deadline = time.monotonic() + seconds
    while True:
        between_turns()
        if condition():
            return
        if time.monotonic() > deadline:
            raise AssertionError("%s was not reached within %g s" % (what, seconds))
        chatcore.loop(timeout=TURN, map=channel_map, count=1)


class DripClient:
    """One connection of ``DripClients``: what it sent when, what came back, when it was closed."""

    def __init__(self, sock: socket.socket, started: float) -> None:
        self.sock = sock
        self.started = started
        self.next_send = started
        self.first_sent: Optional[float] = None
        self.last_sent: Optional[float] = None
        self.sends = 0
        self.received = bytearray()
        self.closed_at: Optional[float] = None
        self.how = ""

    @property
    def open(self) -> bool:
        return self.closed_at is None

    def closed(self, how: str) -> None:
        self.closed_at = time.monotonic()
        self.how = how


class DripClients:
    """*count* connections to *address*, each sending *payload* every *interval* seconds.

    The first payload goes at once; after *talk_for* seconds (None: never;
    0: at once, a silent client) a client falls silent and only watches for
    the server closing it.  They are connected (blocking) before the
    server's loop turns, so the listener's backlog must hold *count*.
    ``pump()`` makes every due move; call it between loop turns.
    """

    def __init__(
        self,
        address: tuple[str, int],
        count: int,
        payload: bytes,
        interval: float,
        talk_for: Optional[float] = None,
    ) -> None:
        self.payload = payload
        self.interval = interval
        self.talk_for = talk_for
        self.clients: list[DripClient] = []
        try:
            for _ in range(count):
                sock = socket.create_connection(address, timeout=TIMEOUT)
                sock.setblocking(False)
                self.clients.append(DripClient(sock, time.monotonic()))
        except BaseException:
            self.close()
            raise

    def pump(self) -> None:
        now = time.monotonic()
        for client in self.clients:
            if client.open:
                self._watch(client)
            if client.open and now >= client.next_send:
                if self.talk_for is None or now - client.started < self.talk_for:
                    self._send(client, now)

    def _watch(self, client: DripClient) -> None:
        while True:
            try:
                data = client.sock.recv(65536)
            except BlockingIOError:
                return
            except (ConnectionResetError, ConnectionAbortedError):
                client.closed("reset")
                return
            if not data:
                client.closed("end of stream")
                return
            client.received += data

    def _send(self, client: DripClient, now: float) -> None:
        try:
            client.sock.send(self.payload)
        except BlockingIOError:
            return  # a full socket: try again at the next pump
        except (BrokenPipeError, ConnectionResetError, ConnectionAbortedError):
            client.closed("send failed")
            return
        client.sends += 1
        if client.first_sent is None:
            client.first_sent = now
        client.last_sent = now
        client.next_send = now + self.interval

    def still_open(self) -> list[DripClient]:
        return [client for client in self.clients if client.open]

    def close(self) -> None:
        for client in self.clients:
            client.sock.close()


class NeverReader:
    """A client thread that sends *chunk* again and again to *address* and never reads.

    It stops once *total* bytes have gone, or when the server has taken
    nothing for *stall* seconds (it stopped reading: the kernel's buffers on
    both sides are full).  The connection stays open, unread, until
    ``close()``.  *receive_buffer* sets the client's SO_RCVBUF before it
    connects.
    """

    def __init__(
        self,
        address: tuple[str, int],
        chunk: bytes,
        total: int,
        stall: float = 2.0,
        receive_buffer: Optional[int] = None,
    ) -> None:
        self.chunk = chunk
        self.total = total
        self.sent = 0
        self.stalled = False
        self.error: Optional[BaseException] = None
        self.sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
        if receive_buffer:
            self.sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, receive_buffer)
        self.sock.settimeout(TIMEOUT)
        try:
            self.sock.connect(address)
        except BaseException:
            self.sock.close()
            raise
        self.sock.settimeout(stall)
        self._thread = threading.Thread(target=self._send_all, name="never-reader", daemon=True)
        self._thread.start()

    def _send_all(self) -> None:
        view = memoryview(self.chunk)
        try:
            while self.sent < self.total:
                offset = self.sent % len(view)
                self.sent += self.sock.send(view[offset:])
        except socket.timeout:
            self.stalled = True
        except OSError as error:
            self.error = error

    def alive(self) -> bool:
        return self._thread.is_alive()

    def join(self, timeout: float) -> None:
        self._thread.join(timeout)
        assert not self._thread.is_alive(), "the never-reading client was still sending after %g s" % timeout

    def close(self) -> None:
        try:
            self.sock.shutdown(socket.SHUT_RDWR)  # wakes a send blocked on it
        except OSError:
            pass  # the server has reset it already
        self._thread.join(TIMEOUT)
        self.sock.close()


# The child's program: a line echo on chatcore.async_chat with chatcore's
# defaults (whatever the environment picks as engine), which answers "stats"
# on its stdin with its channels' output queues, and exits when its stdin
# closes or its lifetime ends, whatever its loop is doing.  Its address space
# is capped at 1 GiB.
_ECHO_SERVER = """
    import json, os, resource, sys, threading, time
    import chatcore

    # A server that buffers without bound fails with MemoryError, not the machine.
    resource.setrlimit(resource.RLIMIT_AS, (1 << 30, 1 << 30))

    class Echo(chatcore.async_chat):
        def __init__(self, sock):
            super().__init__(sock)
            self.set_terminator(b"\\n")

        def collect_incoming_data(self, data):
            self._collect_incoming_data(data)

        def found_terminator(self):
            self.push(self._get_data() + b"\\n")

    class Listener(chatcore.dispatcher):
        def handle_accepted(self, sock, addr):
            Echo(sock)

    def report():
        channels = [channel for channel in chatcore.socket_map.values() if isinstance(channel, Echo)]
        stats = [
            {"output_buffer_size": channel.output_buffer_size, "reading_paused": channel.reading_paused}
            for channel in channels
        ]
        print(json.dumps(stats), flush=True)

    def commands():
        for line in sys.stdin:
            if line.strip() == "stats":
                chatcore.call_soon_threadsafe(report)
        os._exit(0)

    def lifetime():
        time.sleep(float(sys.argv[1]))
        os._exit(3)

    listener = Listener()
    listener.create_socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    threading.Thread(target=commands, daemon=True).start()
    threading.Thread(target=lifetime, daemon=True).start()
    info = {"port": listener.socket.getsockname()[1], "implementation": chatcore.implementation}
    print(json.dumps(info), flush=True)
    chatcore.loop(timeout=1.0)
"""


class EchoServerProcess:
    """``_ECHO_SERVER`` in a child process with environment *env*; ends after *lifetime* seconds at the latest."""

    def __init__(self, env: Mapping[str, str], lifetime: float = 120.0) -> None:
        self._stderr = tempfile.TemporaryFile()
        self.process = subprocess.Popen(
            [sys.executable, "-c", textwrap.dedent(_ECHO_SERVER), repr(lifetime)],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            stderr=self._stderr,
            env=dict(env),
        )
        try:
            info = json.loads(self._reply("the server's port"))
        except BaseException:
            self.stop()
            raise
        self.address = ("127.0.0.1", info["port"])
        self.implementation = info["implementation"]

    def _reply(self, what: str) -> str:
        """The child's next line of stdout, within TIMEOUT seconds."""
        assert self.process.stdout is not None
        line = readline_within(self.process.stdout, TIMEOUT)
        if not line:
            raise AssertionError("no %s from the server: %s" % (what, self.stderr_tail()))
        return line.decode()

    def rss(self) -> int:
        """The child's resident set size in bytes (Linux /proc)."""
        rss = resident_bytes(self.process.pid)
        assert rss is not None, "the server process is gone: %s" % self.stderr_tail()
        return rss

    def channel_stats(self) -> list[dict[str, Any]]:
        """``output_buffer_size`` and ``reading_paused`` of each of the child's echo channels."""
        assert self.process.stdin is not None
        self.process.stdin.write(b"stats\n")
        self.process.stdin.flush()
        return json.loads(self._reply("channel stats"))

    def stderr_tail(self, limit: int = 2000) -> str:
        self._stderr.seek(0)
        return self._stderr.read().decode("utf-8", "replace")[-limit:]

    def stop(self) -> None:
        """Close the child's stdin (it exits at once), kill it if it lingers, reap it."""
        process = self.process
        if process.stdin is not None:
            try:
                process.stdin.close()
            except BrokenPipeError:
                pass
        try:
            process.wait(timeout=TIMEOUT)
        except subprocess.TimeoutExpired:
            process.kill()
            process.wait()
        if process.stdout is not None:
            process.stdout.close()
        self._stderr.close()


def readline_within(stream: Any, seconds: float) -> bytes:
    """The next line of the pipe *stream*; b"" if none came within *seconds* (or it ended).

    The read runs in a daemon thread, so a child that never writes cannot
    hang the test; the thread ends when the pipe closes.
    """
    result: list[bytes] = []
    reader = threading.Thread(target=lambda: result.append(stream.readline()), name="readline", daemon=True)
    reader.start()
    reader.join(seconds)
    return result[0] if result else b""


def echo_round_trip(address: tuple[str, int], line: bytes) -> bytes:
    """What a fresh connection to *address* gets back for *line* (terminated), as many bytes as sent."""
    with socket.create_connection(address, timeout=TIMEOUT) as client:
        client.sendall(line)
        received = b""
        while len(received) < len(line):
            piece = client.recv(65536)
            if not piece:
                break
            received += piece
        return received


def highest_rss_while(process: EchoServerProcess, busy: Callable[[], bool], seconds: float, ceiling: int) -> int:
    """The highest RSS of *process* seen while *busy()*, polled every 20 ms for at most *seconds*.

    Returns early once it passes *ceiling*: the test has failed, and a server
    that buffers without bound should not be left to eat the machine's memory.
    """
    highest = process.rss()
    deadline = time.monotonic() + seconds
    while busy() and time.monotonic() < deadline and highest <= ceiling:
        highest = max(highest, process.rss())
        time.sleep(0.02)
    return max(highest, process.rss())
