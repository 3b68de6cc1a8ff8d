"""A listener out of descriptors pauses and tries again later: it neither spins nor closes.

When ``accept()`` fails with EMFILE, ENFILE, ENOBUFS or ENOMEM the waiting
connection stays in the kernel's backlog, so the listener stays readable.
stdlib lets the error reach ``handle_error``, which closes the listener for
good; chatcore (and its compat ``asyncore``) returns None, stops watching the
listener for 50 ms, twice as long after each failure up to 1 s, and logs the
episode once.  The unit tests script the failures on a real listening
socket (so the loop sees it readable, as a server out of descriptors does)
and move a fake clock; the last test is the real thing, a server in a child
process limited to 1,024 descriptors.
"""

import errno
import os
import select
import socket
import subprocess
import sys
import textwrap
import time
from contextlib import contextmanager
from types import SimpleNamespace

import pytest
from helpers.channels import line_channel_class
from helpers.cpython import engine_env
from helpers.engines import engine_id
from helpers.fakes import ScriptedListener, err
from helpers.processes import CHILD_TIMEOUT, assert_process_gone, stop_server
from helpers.serving import release, serve_and_receive
from helpers.sockets import TIMEOUT

import chatcore
from chatcore import dispatch, eventloop, timers
from chatcore.compat import asynchat as compat_asynchat
from chatcore.compat import asyncore as compat_asyncore

#: Whole-server scenarios: CI runs them on one interpreter (see .ci/run).
pytestmark = pytest.mark.scenario

#: Each pause of an episode of consecutive failures, in seconds.
PAUSES = [0.05, 0.1, 0.2, 0.4, 0.8, 1.0, 1.0]

FAMILIES = {
    "chatcore": SimpleNamespace(core=chatcore, dispatcher=chatcore.dispatcher, async_chat=chatcore.async_chat),
    "compat": SimpleNamespace(
        core=compat_asyncore, dispatcher=compat_asyncore.dispatcher, async_chat=compat_asynchat.async_chat
    ),
}


class FakeClock:
    """The timers' clock, moved only by the test."""

    def __init__(self):
        self.now = 1000.0

    def __call__(self):
        return self.now


@pytest.fixture
def clock(monkeypatch):
    fake = FakeClock()
    monkeypatch.setattr(timers, "monotonic", fake)
    return fake


@pytest.fixture(autouse=True)
def fresh_limit():
    """Earlier tests' episodes must not have used up the message's rate limit."""
    dispatch._ACCEPT_BACKOFF.reset()


@pytest.fixture(params=sorted(FAMILIES))
def family(request):
    """chatcore's own classes and loop, or chatcore.compat's asyncore/asynchat."""
    return FAMILIES[request.param]


@pytest.fixture
def channel_map(family):
    served = {}
    yield served
    release(served, family.core)


@pytest.fixture
def server(family, engine, channel_map, sockets):
    """A listener on a ScriptedListener whose accepted connections echo lines (on the engine under test)."""
    chat_class = type("async_chat", (family.async_chat,), {"_engine": engine})

    class Echo(line_channel_class(chat_class, channel_map)):
        def line(self, line):
            self.push(line + b"\n")

    class Listener(family.dispatcher):
        def handle_accepted(self, sock, addr):
            Echo(sock)

    real = sockets.listener()
    real.setblocking(False)
    listener = Listener(map=channel_map)
    listener.set_socket(ScriptedListener(real))
    listener.listen(5)
    return listener


def connect(sockets, listener):
    """A client connection waiting in *listener*'s backlog (loopback connects at once)."""
    return sockets.track(socket.create_connection(listener.socket.getsockname(), timeout=TIMEOUT))


def turn(family, channel_map, turns=3):
    """A few loop turns that do not wait: the fake clock stands still meanwhile."""
    family.core.loop(timeout=0, map=channel_map, count=turns)


def paused(listener):
    return bool(listener._read_pauses & dispatch.PAUSED_BY_ACCEPT_BACKOFF)


def backoff_records(caplog):
    return [record for record in caplog.records if record.getMessage().startswith("accept() failed")]


def pending_timers(channel_map):
    scheduled = eventloop._schedules.get(id(channel_map))
    return 0 if scheduled is None else scheduled[1].pending()


@pytest.mark.parametrize("code", ["EMFILE", "ENFILE", "ENOBUFS", "ENOMEM"])
def test_running_out_of_descriptors_or_memory_returns_none_and_pauses_the_listener(
    server, code, clock, channel_map, caplog, capsys
):
    server.socket.failures.append(err(getattr(errno, code)))
    assert server.accept() is None
    assert paused(server)
    assert server.accepting and server.socket.fileno() >= 0 and channel_map[server.socket.fileno()] is server
    assert pending_timers(channel_map) == 1
    [record] = backoff_records(caplog)
    assert record.name == "chatcore" and record.levelname == "WARNING"
    assert record.getMessage() == (
        "accept() failed on %r: %s (%s); pausing accepts for 0.05 s, then for up to 1 s between tries"
        % (server.socket.getsockname(), code, os.strerror(getattr(errno, code)))
    )
    assert capsys.readouterr() == ("", "")  # compat included: the library's own message is never printed


@pytest.mark.parametrize("code", ["EAGAIN", "EWOULDBLOCK", "ECONNABORTED"])
def test_nobody_waiting_still_returns_none_without_a_pause(server, code, channel_map, caplog):
    server.socket.failures.append(err(getattr(errno, code)))
    assert server.accept() is None
    assert not paused(server) and pending_timers(channel_map) == 0
    assert backoff_records(caplog) == []


@pytest.mark.parametrize("code", ["EINVAL", "EPERM", "EBADF"])
def test_other_errors_still_raise_as_in_stdlib(server, code, channel_map):
    server.socket.failures.append(err(getattr(errno, code)))
    with pytest.raises(OSError) as raised:
        server.accept()
    assert raised.value.errno == getattr(errno, code)
    assert not paused(server) and pending_timers(channel_map) == 0


def test_pauses_double_up_to_a_second_and_an_accepted_connection_ends_the_episode(
    server, family, clock, channel_map, sockets, poller_kind, caplog, capsys
):
    server.socket.failures.extend(err(errno.EMFILE) for _ in PAUSES)
    client = connect(sockets, server)
    turn(family, channel_map)
    assert server.socket.accepts == 1 and paused(server)
    for number, pause in enumerate(PAUSES, start=2):
        deadline = clock.now + pause
        # The connection waits all along, yet the loop does not try again
        # before the pause is over.
        clock.now = deadline - 0.001
        turn(family, channel_map, turns=5)
        assert server.socket.accepts == number - 1
        clock.now = deadline
        turn(family, channel_map)
        assert server.socket.accepts == number
    # The last try succeeded: the connection is served, the listener watched again.
    assert not paused(server) and pending_timers(channel_map) == 0
    client.sendall(b"ping\n")
    assert serve_and_receive(channel_map, client, 5) == b"ping\n"
    assert len(backoff_records(caplog)) == 1
    assert capsys.readouterr() == ("", "")

    # A failure after that is a new episode: the first pause again, logged again.
    server.socket.failures.append(err(errno.ENFILE))
    connect(sockets, server)
    turn(family, channel_map)
    accepts = server.socket.accepts
    assert paused(server)
    clock.now += PAUSES[0] - 0.001
    turn(family, channel_map, turns=5)
    assert server.socket.accepts == accepts
    clock.now += 0.001
    turn(family, channel_map)
    assert server.socket.accepts == accepts + 1 and not paused(server)
    assert [record.getMessage().split(": ")[1] for record in backoff_records(caplog)] == [
        "%s (%s); pausing accepts for 0.05 s, then for up to 1 s between tries"
        % (code, os.strerror(getattr(errno, code)))
        for code in ("EMFILE", "ENFILE")
    ]


def test_accept_called_again_during_a_pause_keeps_the_pause_as_planned(server, clock, channel_map, caplog):
    # A handler that accepts in a batch calls accept() until it answers None.
    server.socket.failures.extend([err(errno.EMFILE), err(errno.EMFILE)])
    assert server.accept() is None
    assert server.accept() is None
    assert pending_timers(channel_map) == 1 and server._accept_resume.when == clock.now + PAUSES[0]
    assert len(backoff_records(caplog)) == 1


def test_a_listener_closed_during_a_pause_stays_closed_and_can_listen_afresh(
    server, family, clock, channel_map, sockets, poller_kind
):
    server.socket.failures.append(err(errno.EMFILE))
    assert server.accept() is None
    server.close()
    assert pending_timers(channel_map) == 0 and channel_map == {}
    clock.now += 10.0
    family.core.poll(0, channel_map)
    assert channel_map == {} and not paused(server) and not server.accepting
    # The same object listening again starts with no pause and no backoff left.
    server.create_socket()
    sockets.track(server.socket)
    server.bind(("127.0.0.1", 0))
    server.listen(5)
    client = connect(sockets, server)
    client.sendall(b"again\n")
    assert serve_and_receive(channel_map, client, 6) == b"again\n"


# The real thing: a server limited to 1,024 descriptors, 1,100 clients.

CLIENTS = 1100
SERVER_DESCRIPTORS = 1024
#: How long the clients stay connected: the server fails to accept several times meanwhile.
HOLD = 2.0
#: The done-when bounds: a new client served within this many seconds of the
#: others leaving, with the server's CPU time under this share of the time
#: the episode took.
SERVE_WITHIN = 3.0
CPU_SHARE = 0.20
#: The server exits by itself after this long, should the test be killed before it stops it.
SERVER_LIFETIME = 120

SERVER = """
    import logging, resource, sys, time

    resource.setrlimit(resource.RLIMIT_NOFILE, (%(descriptors)d, resource.getrlimit(resource.RLIMIT_NOFILE)[1]))
    if sys.argv[1] == "compat":
        from chatcore.compat import asynchat, asyncore
        async_chat, dispatcher, loop = asynchat.async_chat, asyncore.dispatcher, asyncore.loop
    else:
        import chatcore
        async_chat, dispatcher, loop = chatcore.async_chat, chatcore.dispatcher, chatcore.loop
    import chatcore
    logging.basicConfig(level=logging.WARNING, format="%%(levelname)s:%%(name)s:%%(message)s")

    class Echo(async_chat):
        # Echoes lines; "cpu" answers the server's CPU seconds and its clock.
        def __init__(self, sock):
            async_chat.__init__(self, sock)
            self.set_terminator(b"\\n")
            self.pieces = []

        def collect_incoming_data(self, data):
            self.pieces.append(data)

        def found_terminator(self):
            line, self.pieces = b"".join(self.pieces), []
            if line == b"cpu":
                usage = resource.getrusage(resource.RUSAGE_SELF)
                line = b"%%r %%r" %% (usage.ru_utime + usage.ru_stime, time.monotonic())
            self.push(line + b"\\n")

    class Listener(dispatcher):
        def handle_accepted(self, sock, addr):
            Echo(sock)

    listener = Listener()
    listener.create_socket()
    listener.bind(("127.0.0.1", 0))
    # Deep enough for the connections the server has no descriptor for.
    listener.listen(2048)
    print(listener.socket.getsockname()[1], chatcore.implementation, flush=True)
    stop = time.monotonic() + %(lifetime)d
    while time.monotonic() < stop:
        loop(timeout=1.0, count=1)
"""


@contextmanager
def descriptor_limit_at_least(wanted):
    """This process's soft RLIMIT_NOFILE raised to *wanted* meanwhile, if it is lower."""
    resource = pytest.importorskip("resource", reason="no resource module on this platform")
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard != resource.RLIM_INFINITY and hard < wanted:
        pytest.skip("hard descriptor limit %d is below %d" % (hard, wanted))
    raise_it = soft != resource.RLIM_INFINITY and soft < wanted
    if raise_it:
        resource.setrlimit(resource.RLIMIT_NOFILE, (wanted, hard))
    try:
        yield
    finally:
        if raise_it:
            resource.setrlimit(resource.RLIMIT_NOFILE, (soft, hard))


def ask_cpu(port):
    """The server's (CPU seconds, clock), asked over a connection of its own."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as control:
        control.sendall(b"cpu\n")
        return tuple(float(word) for word in _read_line(control).split())


def _read_line(sock):
    received = b""
    while not received.endswith(b"\n"):
        piece = sock.recv(100)
        if not piece:
            break
        received += piece
    return received


def _first_line(process):
    """The server's first line of output, waited for within CHILD_TIMEOUT."""
    ready, _, _ = select.select([process.stdout], [], [], CHILD_TIMEOUT)
    assert ready, "the server did not start"
    return process.stdout.readline().decode()


@pytest.mark.skipif(os.name != "posix", reason="descriptor limits (RLIMIT_NOFILE) are POSIX")
@pytest.mark.timeout(300)
@pytest.mark.parametrize("family_name", sorted(FAMILIES))
def test_a_server_out_of_descriptors_serves_again_once_the_clients_leave(engine, family_name):
    clients = []
    with descriptor_limit_at_least(CLIENTS + 200):
        server = subprocess.Popen(
            [
                sys.executable,
                "-c",
                textwrap.dedent(SERVER % {"descriptors": SERVER_DESCRIPTORS, "lifetime": SERVER_LIFETIME}),
                family_name,
            ],
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            env=engine_env(engine_id(engine)),
        )
        try:
            port, implementation = _first_line(server).split()
            port = int(port)
            assert implementation == {"c": "cython", "py": "python"}[engine_id(engine)]
            cpu_before, clock_before = ask_cpu(port)
            for _ in range(CLIENTS):
                clients.append(socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT))
            time.sleep(HOLD)
            for client in clients:
                client.close()
            left = time.monotonic()
            with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as newcomer:
                newcomer.sendall(b"still there?\n")
                echoed = _read_line(newcomer)
                served_after = time.monotonic() - left
                newcomer.sendall(b"cpu\n")
                cpu_after, clock_after = (float(word) for word in _read_line(newcomer).split())
        finally:
            for client in clients:
                client.close()
            out, errors = stop_server(server)
    assert_process_gone(server)
    cpu_share = (cpu_after - cpu_before) / (clock_after - clock_before)
    print(
        "%s on %s: new client served %.2f s after the others left; server CPU %.1f %% of %.2f s"
        % (family_name, implementation, served_after, 100 * cpu_share, clock_after - clock_before)
    )
    assert echoed == b"still there?\n"
    assert served_after < SERVE_WITHIN
    assert cpu_share < CPU_SHARE
    # The server did run out, and said so once; nothing else was written.
    lines = errors.decode().splitlines()
    assert len(lines) == 1 and lines[0].startswith(
        "WARNING:chatcore:accept() failed on ('127.0.0.1', %d): EMFILE (Too many open files); pausing accepts" % port
    ), errors
    assert out == b""
