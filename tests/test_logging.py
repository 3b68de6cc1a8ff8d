"""What chatcore writes, where, and how much of it a peer can make it write.

chatcore's own classes log to the ``chatcore`` logger (never print), with a
rate limit per kind of message; the compat classes print stdlib's lines.  The
server in a child process is the hostile case: a peer sending thousands of
over-long lines while nobody reads the server's stdout and stderr.
"""

import importlib
import logging
import os
import pkgutil
import socket
import subprocess
import sys
import textwrap

import pytest
from helpers.channels import line_channel_class
from helpers.cpython import engine_env
from helpers.engines import engine_id
from helpers.processes import CHILD_TIMEOUT, assert_process_gone
from helpers.serving import serve_and_receive, serve_until
from helpers.sockets import TIMEOUT

import chatcore
from chatcore import log
from chatcore.compat import asynchat as compat_asynchat
from chatcore.compat import asyncore as compat_asyncore


@pytest.fixture(autouse=True)
def fresh_limits():
    """Every rate limit starts afresh: earlier tests' messages must not have used it up."""
    for kind in log.KINDS.values():
        kind.reset()


class FakeClock:
    """A clock that moves only when told."""

    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def records_of(caplog):
    return [(record.name, record.levelname, record.getMessage()) for record in caplog.records]


# The rate limit itself.


def test_a_kind_logs_its_burst_then_says_it_suppresses_then_counts_what_it_suppressed(monkeypatch, caplog):
    monkeypatch.setattr(log, "KINDS", {})  # a kind made here is not the library's
    clock = FakeClock()
    kind = log.MessageKind("test kind", "warning", burst=3, interval=10.0, clock=clock)
    for number in range(10):
        kind.log("message %d", number)
    assert records_of(caplog) == [
        ("chatcore", "WARNING", "message 0"),
        ("chatcore", "WARNING", "message 1"),
        ("chatcore", "WARNING", "message 2"),
        ("chatcore", "WARNING", "too many 'test kind' messages: suppressing them for up to 10 s"),
    ]
    caplog.clear()
    clock.now += 9.5  # still the same interval
    kind.log("message %d", 10)
    assert records_of(caplog) == []
    clock.now += 0.5  # the next one passes, after the count of the suppressed
    kind.log("message %d", 11)
    kind.log("message %d", 12)
    assert records_of(caplog) == [
        ("chatcore", "WARNING", "8 more 'test kind' messages were suppressed (at most 3 per 10 s are logged)"),
        ("chatcore", "WARNING", "message 11"),
        ("chatcore", "WARNING", "message 12"),
    ]
    caplog.clear()
    clock.now += 100.0  # a quiet interval: nothing was suppressed, nothing to report
    kind.log("message %d", 13)
    assert records_of(caplog) == [("chatcore", "WARNING", "message 13")]
    assert log.KINDS == {"test kind": kind}


def test_the_library_kinds_are_a_fixed_set_named_in_code():
    # Kinds are made when their module is imported: import every library
    # module (the benchmark tools and the command line are not the library),
    # so the test sees them all, whichever tests ran before it.
    for module in pkgutil.walk_packages(chatcore.__path__, "chatcore."):
        if not module.name.startswith(("chatcore.benchmark", "chatcore.__main__")):
            importlib.import_module(module.name)
    # What a peer sends never becomes a kind: the set is the same whatever has happened.
    assert set(log.KINDS) == {
        "message overflow",
        "uncaptured python exception",
        "unhandled incoming priority event",
        "unhandled read event",
        "unhandled write event",
        "unhandled connect event",
        "unhandled accepted event",
        "unhandled close event",
        "exception in callback",
        "idle timeout",
        "tls failure",
        "tls handshake timeout",
        "accept backoff",
        "worker restarted",
        "file send error",
    }


def test_the_library_logger_has_a_null_handler_so_no_config_writes_nothing():
    # Without it, logging's last-resort handler would write warnings to stderr.
    assert any(isinstance(handler, logging.NullHandler) for handler in log.logger.handlers)
    assert log.logger is logging.getLogger("chatcore")


# chatcore's own classes: records, no output.


def test_log_info_logs_at_the_level_its_type_names(caplog, capsys):
    caplog.set_level(logging.DEBUG, logger="chatcore")
    channel = chatcore.dispatcher(map={})
    channel.log_info("plain")
    channel.log_info("careful", "warning")
    channel.log_info("broken", "error")
    channel.log_info("odd", "audit")  # any string is a type
    channel.log("a hit")
    channel.ignore_log_types = frozenset({"error"})
    channel.log_info("not logged", "error")
    assert records_of(caplog) == [
        ("chatcore", "INFO", "plain"),
        ("chatcore", "WARNING", "careful"),
        ("chatcore", "ERROR", "broken"),
        ("chatcore", "INFO", "audit: odd"),
        ("chatcore", "INFO", "a hit"),
    ]
    # The record names the line that called log_info, not chatcore's.
    assert {record.pathname for record in caplog.records} == {__file__}
    assert capsys.readouterr() == ("", "")


def test_an_error_in_a_handler_is_logged_once_per_channel_and_rate_limited(chat_class, sockets, caplog, capsys):
    channel_map = {}

    class Failing(line_channel_class(chat_class, channel_map)):
        def line(self, line):
            raise ValueError("bad request %r" % line)

    for _ in range(15):
        server, client = sockets.pair()
        Failing(server)
        client.sendall(b"boom\n")
    serve_until(channel_map, lambda: not channel_map, what="every failing channel closing")
    errors = [record for record in caplog.records if record.levelno == logging.ERROR]
    assert [record.name for record in errors] == ["chatcore"] * 11
    assert all(record.getMessage().startswith("uncaptured python exception, closing channel") for record in errors[:10])
    assert "ValueError'>:bad request b'boom' [" in errors[0].getMessage()
    assert errors[10].getMessage() == (
        "too many 'uncaptured python exception' messages: suppressing them for up to 60 s"
    )
    assert capsys.readouterr() == ("", "")


def test_unhandled_events_are_warnings_a_peer_cannot_multiply(sockets, caplog, capsys):
    # A dispatcher without handle_read never reads what arrives: every turn
    # is another read event, and another "unhandled read event".
    class Unread(chatcore.dispatcher):
        def writable(self):
            return False

    server, client = sockets.pair()
    channel_map = {}
    Unread(server, map=channel_map)
    client.sendall(b"unread")
    for _ in range(50):
        chatcore.loop(timeout=0.01, map=channel_map, count=1)
    chatcore.close_all(channel_map)
    assert records_of(caplog) == [("chatcore", "WARNING", "unhandled read event")] * 10 + [
        ("chatcore", "WARNING", "too many 'unhandled read event' messages: suppressing them for up to 60 s")
    ]
    assert capsys.readouterr() == ("", "")


def test_an_overridden_log_info_gets_every_message_as_in_stdlib(sockets):
    # Rate limits guard the logger; an application's own log_info is its business.
    server, client = sockets.pair()
    channel_map = {}
    reported = []

    class Quiet(chatcore.dispatcher):
        def writable(self):
            return False

        def log_info(self, message, type="info"):
            reported.append((type, message))

    Quiet(server, map=channel_map)
    client.sendall(b"unread")
    chatcore.loop(timeout=0.01, map=channel_map, count=30)
    chatcore.close_all(channel_map)
    assert reported == [("warning", "unhandled read event")] * 30


@pytest.mark.parametrize("family", ["chatcore", "compat"])
def test_an_overflow_is_a_warning_of_the_library_logger(engine, family, socket_pair, caplog, capsys):
    # The compat classes' too: stdlib had no limit, so no such line to keep.
    base = {"chatcore": chatcore.async_chat, "compat": compat_asynchat.async_chat}[family]
    channel_map = {}
    Lines = line_channel_class(type("async_chat", (base,), {"_engine": engine}), channel_map)
    Lines.ac_max_message_size = 16
    left, right = socket_pair
    Lines(left)
    right.sendall(b"x" * 100 + b"\n")
    assert serve_and_receive(channel_map, right) == b""
    assert records_of(caplog) == [
        ("chatcore", "WARNING", "message from '' longer than ac_max_message_size (16 bytes): closing")
    ]
    assert caplog.records[0].pathname == chatcore.chat.__file__
    assert capsys.readouterr() == ("", "")


# The compat classes: stdlib's lines, where stdlib wrote them.


def test_compat_log_info_and_log_print_what_stdlib_printed(capsys, caplog):
    channel = compat_asyncore.dispatcher(map={})
    channel.log_info("plain")
    channel.log_info("careful", "warning")  # stdlib ignores warnings
    channel.log_info("broken", "error")
    channel.log("a hit")
    assert capsys.readouterr() == ("info: plain\nerror: broken\n", "log: a hit\n")
    assert caplog.records == []


def test_compat_handle_error_prints_every_time(capsys, caplog):
    channel = compat_asynchat.async_chat(map={})
    channel.handle_close = lambda: None
    for _ in range(15):
        try:
            raise ValueError("again")
        except ValueError:
            channel.handle_error()
    lines = capsys.readouterr().out.splitlines()
    assert len(lines) == 15
    prefix = "error: uncaptured python exception, closing channel <asynchat.async_chat at %#x> (" % id(channel)
    assert all(line.startswith(prefix) and "ValueError'>:again [" in line for line in lines)
    assert caplog.records == []


# The hostile case, in a server of its own.

SERVER = """
    import logging, os, sys
    import chatcore

    class Lines(chatcore.async_chat):
        ac_max_message_size = 16

        def __init__(self, sock):
            super().__init__(sock)
            self.set_terminator(b"\\n")

        def collect_incoming_data(self, data):
            self._collect_incoming_data(data)

        def found_terminator(self):
            self.push(self._get_data().upper() + b"\\n")

    class Listener(chatcore.dispatcher):
        def handle_accepted(self, sock, addr):
            Lines(sock)

    if sys.argv[1] == "basicConfig":
        logging.basicConfig(level=logging.INFO)  # to stderr, which nobody reads
    listener = Listener()
    listener.create_socket()
    listener.bind(("127.0.0.1", 0))
    listener.listen(128)
    print(listener.socket.getsockname()[1], chatcore.implementation, flush=True)
    # Nobody reads these pipes from now on: fill them, so that any write would
    # block (to the last byte: a write of up to PIPE_BUF bytes waits for room
    # for all of them).
    for fd in [1] if sys.argv[1] == "basicConfig" else [1, 2]:
        os.set_blocking(fd, False)
        for size in (4096, 1):
            try:
                while True:
                    os.write(fd, b"." * size)
            except BlockingIOError:
                pass
        os.set_blocking(fd, True)
    chatcore.loop(timeout=1.0)
"""

OVERLONG_LINES = 3000


def _overlong_line(port):
    """Send one over-long line on a new connection; the server closes it."""
    with socket.create_connection(("127.0.0.1", port), timeout=TIMEOUT) as client:
        client.sendall(b"x" * 64 + b"\n")
        try:
            assert client.recv(100) == b""
        except ConnectionResetError:
            pass  # closed, too


@pytest.mark.skipif(os.name == "nt", reason="pipes cannot be made non-blocking to fill them")
@pytest.mark.parametrize("logging_config", ["none", "basicConfig"])
def test_a_server_whose_output_nobody_reads_survives_a_flood_of_overlong_lines(engine, logging_config):
    server = subprocess.Popen(
        [sys.executable, "-c", textwrap.dedent(SERVER), logging_config],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        env=engine_env(engine_id(engine)),
    )
    try:
        port, implementation = server.stdout.readline().split()
        assert implementation.decode() == {"c": "cython", "py": "python"}[engine_id(engine)]
        for _ in range(OVERLONG_LINES):
            _overlong_line(int(port))
        with socket.create_connection(("127.0.0.1", int(port)), timeout=TIMEOUT) as client:
            client.sendall(b"still there?\n")
            assert client.recv(100) == b"STILL THERE?\n"
    finally:
        server.terminate()
        out, err = server.communicate(timeout=CHILD_TIMEOUT)
    assert_process_gone(server)
    assert b"longer than" not in out
    if logging_config == "basicConfig":
        lines = err.decode().splitlines()
        overflows = [line for line in lines if "longer than ac_max_message_size (16 bytes)" in line]
        assert len(overflows) == 10 and all(line.startswith("WARNING:chatcore:message from") for line in overflows)
        assert "WARNING:chatcore:too many 'message overflow' messages: suppressing them for up to 60 s" in lines
        assert len(lines) == 11
    else:
        assert err.strip(b".") == b""
