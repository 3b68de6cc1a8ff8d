"""Behaviour of the loopback echo benchmark harness (chatcore.benchmark.echo), at tiny sizes.

These tests check that the harness measures what it claims: the right message
counts, echoes really verified (deliberately broken servers must fail the
run), bounded runs, and no server process or socket left behind.  They assert
no speeds.
"""

import importlib.metadata
import os
import subprocess
import sys
import time

import pytest
from helpers.processes import STOP_ALLOWANCE, assert_process_gone

import chatcore
from chatcore.benchmark import echo
from chatcore.benchmark.echo import (
    SENT_AT_ONCE,
    SENT_AT_TURN_END,
    EchoBenchmarkError,
    EchoServerProcess,
    EchoStreamCheck,
    EchoTimeoutError,
    EchoVerificationError,
    PingPongClient,
    PipelinedClient,
    available_servers,
    expected_stream,
    line_echo_handler_class,
    probe_send_timing,
    run_echo,
    send_mode,
)


def distribution_installed(name: str) -> bool:
    try:
        importlib.metadata.distribution(name)
    except importlib.metadata.PackageNotFoundError:
        return False
    return True


def run_echo_keeping_server(*args, **kwargs):
    """run_echo, also returning the EchoServerProcess it started."""
    started = []
    result = run_echo(*args, on_server_started=started.append, **kwargs)
    return result, started[0]


# --- Pure functions ------------------------------------------------------------


def test_available_servers_lists_real_servers_only():
    servers = available_servers()
    assert servers[:2] == ["chatcore", "chatcore-compat"]
    assert "asyncio" in servers
    assert ("stdlib" in servers) == (sys.version_info < (3, 12))
    # On 3.11 stdlib's modules come first on the path, so PyPI's copies never serve.
    has_pyasynchat = all(map(distribution_installed, ("pyasynchat", "pyasyncore")))
    assert ("pyasynchat" in servers) == (sys.version_info >= (3, 12) and has_pyasynchat)
    assert not any(name.startswith("fault:") for name in servers)
    assert set(servers) <= set(echo.SERVERS)


@pytest.mark.parametrize("line_size", [1, 2, 3, 5, 16, 100])
def test_expected_stream_has_lines_of_the_asked_size(line_size):
    stream = expected_stream(2, 300, line_size)
    assert len(stream) == 300 * line_size
    lines = [stream[start : start + line_size] for start in range(0, len(stream), line_size)]
    assert all(line.endswith(b"\n") and line.count(b"\n") == 1 for line in lines)


def test_expected_stream_differs_per_line_and_per_connection():
    first = expected_stream(0, 1000, 16)
    lines = [first[start : start + 16] for start in range(0, len(first), 16)]
    assert len(set(lines)) == len(lines)
    assert expected_stream(1, 1000, 16) != first


def test_expected_stream_rejects_a_line_without_room_for_its_terminator():
    with pytest.raises(ValueError):
        expected_stream(0, 10, 0)


def feed_in_pieces(check: EchoStreamCheck, data: bytes, piece: int = 7) -> None:
    for start in range(0, len(data), piece):
        check.feed(memoryview(data)[start : start + piece])


def test_stream_check_accepts_the_exact_stream_in_any_chunking():
    stream = expected_stream(0, 50, 16)
    for piece in (1, 7, 16, 1000):
        check = EchoStreamCheck("c", stream)
        feed_in_pieces(check, stream, piece)
        check.verify()


def test_stream_check_rejects_one_changed_byte():
    stream = expected_stream(0, 50, 16)
    corrupted = stream[:100] + b"!" + stream[101:]
    check = EchoStreamCheck("connection 7", stream)
    feed_in_pieces(check, corrupted)
    with pytest.raises(EchoVerificationError, match="connection 7: the echoed bytes differ"):
        check.verify()


def test_stream_check_rejects_reordered_lines():
    stream = expected_stream(0, 50, 16)
    swapped = stream[16:32] + stream[:16] + stream[32:]
    check = EchoStreamCheck("c", stream)
    feed_in_pieces(check, swapped)
    with pytest.raises(EchoVerificationError):
        check.verify()


def test_stream_check_rejects_a_short_stream():
    stream = expected_stream(0, 50, 16)
    check = EchoStreamCheck("c", stream)
    feed_in_pieces(check, stream[:-16])
    with pytest.raises(EchoVerificationError, match="received 784 of the 800 bytes"):
        check.verify()


def test_stream_check_rejects_surplus_bytes_as_they_arrive():
    stream = expected_stream(0, 3, 16)
    check = EchoStreamCheck("c", stream)
    assert check.feed(stream) is True
    with pytest.raises(EchoVerificationError, match="more than the 48 it sent"):
        check.feed(b"x")


# --- Send timing: what each server measures before it listens ------------------


class _WithSwitch:
    ac_coalesce_sends = True


class _WithoutSwitch:
    pass


def test_send_mode_is_unknown_on_a_chatcore_without_the_switch():
    assert send_mode(_WithoutSwitch, True, SENT_AT_TURN_END) == "unknown"
    assert send_mode(_WithoutSwitch, False, SENT_AT_TURN_END) == "unknown"


def test_send_mode_accepts_a_timing_that_matches_the_switch():
    assert send_mode(_WithSwitch, True, SENT_AT_TURN_END) is True
    assert send_mode(_WithSwitch, False, SENT_AT_ONCE) is False


@pytest.mark.parametrize("expected, measured", [(False, SENT_AT_TURN_END), (True, SENT_AT_ONCE)])
def test_send_mode_refuses_a_timing_that_contradicts_the_switch(expected, measured):
    with pytest.raises(EchoBenchmarkError, match="would measure the other mode"):
        send_mode(_WithSwitch, expected, measured)


def test_send_mode_is_none_for_servers_without_a_switch():
    assert send_mode(_WithoutSwitch, None, SENT_AT_ONCE) is None


def test_probe_sees_a_reply_written_before_the_handler_returns():
    # Whatever chatcore's push does, a handler that writes to its socket
    # itself has sent at once: the probe must say so (and get the echo).
    base = line_echo_handler_class(chatcore.async_chat)

    class WritesItself(base):
        def push(self, data):
            self.socket.sendall(data)

    assert probe_send_timing(WritesItself, chatcore.loop) == SENT_AT_ONCE


def test_probe_sees_coalesced_pushes_arrive_at_the_end_of_the_turn():
    handler = line_echo_handler_class(chatcore.async_chat, coalesce_sends=True)
    assert handler.ac_coalesce_sends is True
    assert probe_send_timing(handler, chatcore.loop) == SENT_AT_TURN_END


def test_probe_fails_when_no_echo_comes_back():
    base = line_echo_handler_class(chatcore.async_chat)

    class Silent(base):
        def push(self, data):
            pass

    with pytest.raises(EchoBenchmarkError, match="no echo within"):
        probe_send_timing(Silent, chatcore.loop, timeout=0.5)


@pytest.mark.parametrize("server", sorted(echo.CHATCORE_SEND_MODES))
def test_chatcore_servers_report_the_send_mode_they_run(server):
    coalesce = echo.CHATCORE_SEND_MODES[server]
    result = run_echo(server, "ping-pong", 1, 5, timeout=30)
    assert result.ac_coalesce_sends in (coalesce, "unknown")
    assert "ac_coalesce_sends=%s" % result.ac_coalesce_sends in result.server_detail
    assert result.send_timing in (SENT_AT_ONCE, SENT_AT_TURN_END)
    assert "pushes sent %s" % result.send_timing in result.server_detail
    if result.ac_coalesce_sends != "unknown":
        assert result.send_timing == (SENT_AT_TURN_END if coalesce else SENT_AT_ONCE)
    base = "chatcore.compat.asynchat.async_chat" if server == "chatcore-compat" else "chatcore.async_chat"
    assert base in result.server_detail


@pytest.mark.parametrize("server", sorted(echo.CHATCORE_SEND_MODES))
def test_chatcore_servers_measure_the_mode_their_row_names(server):
    # compat hands each push to the socket at once, like stdlib;
    # chatcore.async_chat coalesces (docs/migrating.rst, "When pushed data
    # reaches the kernel").
    coalesce = echo.CHATCORE_SEND_MODES[server]
    result = run_echo(server, "ping-pong", 1, 5, timeout=30)
    assert result.ac_coalesce_sends is coalesce
    assert result.send_timing == (SENT_AT_TURN_END if coalesce else SENT_AT_ONCE)


@pytest.mark.parametrize("server", [name for name in available_servers() if name in echo.LEGACY_SERVERS.values()])
def test_legacy_servers_send_at_once(server):
    # The oracle's own timing, measured by the same probe: a check of the probe.
    result = run_echo(server, "ping-pong", 1, 5, timeout=30)
    assert result.send_timing == SENT_AT_ONCE
    assert result.ac_coalesce_sends is None and result.implementation is None
    assert server in result.server_detail


# --- Whole runs ----------------------------------------------------------------


def test_pipelined_run_counts_every_line_of_every_connection():
    result, server = run_echo_keeping_server("chatcore", "pipelined", 3, 250, line_size=16, timeout=30)
    assert (result.server, result.mode, result.connections) == ("chatcore", "pipelined", 3)
    assert result.messages == 3 * 250
    assert result.bytes == 3 * 250 * 16
    assert result.seconds > 0
    assert result.messages_per_s == pytest.approx(result.messages / result.seconds)
    assert result.mb_per_s == pytest.approx(result.bytes / result.seconds / 1e6)
    assert result.p50_us is None and result.p99_us is None
    assert_process_gone(server.process)
    assert result.server_returncode == server.process.returncode


def test_ping_pong_run_counts_round_trips_and_reports_latency():
    result, server = run_echo_keeping_server("chatcore", "ping-pong", 1, 60, timeout=30)
    assert (result.mode, result.connections, result.messages, result.bytes) == ("ping-pong", 1, 60, 60 * 16)
    assert 0 < result.p50_us <= result.p99_us
    assert_process_gone(server.process)


def test_result_reports_the_servers_chatcore_engine_and_serialises():
    result = run_echo("chatcore", "pipelined", 1, 20, timeout=30)
    assert result.implementation == chatcore.implementation
    assert "chatcore" in result.server_detail
    as_dict = result.to_dict()
    assert as_dict["messages"] == 20 and as_dict["implementation"] == chatcore.implementation
    assert set(as_dict) >= {
        "server",
        "mode",
        "connections",
        "messages",
        "bytes",
        "seconds",
        "messages_per_s",
        "mb_per_s",
        "p50_us",
        "p99_us",
    }


def test_server_engine_follows_the_environment(monkeypatch):
    # The child inherits the environment: the run-time switch reaches it.
    monkeypatch.setenv("CHATCORE_NO_EXTENSIONS", "1")
    result = run_echo("chatcore", "ping-pong", 1, 5, timeout=30)
    assert result.implementation == "python"


@pytest.mark.parametrize("server", available_servers())
@pytest.mark.parametrize("mode, connections", [("pipelined", 2), ("ping-pong", 1)])
def test_every_available_server_echoes_correctly(server, mode, connections):
    result, process = run_echo_keeping_server(server, mode, connections, 40, line_size=24, timeout=30)
    assert result.messages == connections * 40
    assert result.server_detail
    assert_process_gone(process.process)


@pytest.mark.parametrize("mode, connections", [("pipelined", 2), ("ping-pong", 1)])
def test_a_corrupted_echo_fails_the_run(mode, connections):
    started = []
    with pytest.raises(EchoVerificationError):
        run_echo("fault:corrupt-echo", mode, connections, 20, timeout=30, on_server_started=started.append)
    assert_process_gone(started[0].process)


def test_a_server_that_never_listens_fails_within_the_timeout():
    started = []
    began = time.monotonic()
    with pytest.raises(EchoTimeoutError, match="did not start listening within 1 s"):
        run_echo("fault:never-ready", "pipelined", 1, 10, timeout=1.0, on_server_started=started.append)
    assert time.monotonic() - began < 1.0 + STOP_ALLOWANCE
    assert_process_gone(started[0].process)


def test_a_server_that_dies_at_start_fails_at_once_with_its_error():
    started = []
    with pytest.raises(EchoBenchmarkError, match=r"exited with status 1 before listening(.|\n)*refuses to start"):
        run_echo("fault:exit-early", "pipelined", 1, 10, timeout=30, on_server_started=started.append)
    assert_process_gone(started[0].process)


def test_a_server_that_never_echoes_fails_within_the_timeout():
    began = time.monotonic()
    with pytest.raises(EchoTimeoutError, match="pipelined echo run on server 'fault:silent' exceeded its 2 s"):
        run_echo("fault:silent", "pipelined", 1, 10, timeout=2)
    assert time.monotonic() - began < 2 + STOP_ALLOWANCE


def test_clients_give_up_at_their_deadline():
    with EchoServerProcess("fault:silent") as server:
        pipelined = PipelinedClient(server.port, 2, 10)
        with pytest.raises(EchoTimeoutError, match=r"did not finish within 0\.5 s.*echoed 0 of 160 bytes"):
            pipelined.run(timeout=0.5)
        ping = PingPongClient(server.port, 10)
        with pytest.raises(EchoTimeoutError, match=r"did not finish within 0\.5 s: 0 of 10 round trips"):
            ping.run(timeout=0.5)
    assert_process_gone(server.process)


def test_the_child_must_import_the_same_chatcore(monkeypatch, tmp_path):
    # Pretend this process's chatcore lives elsewhere: the child cannot import
    # that copy (it does not exist), falls back to the installed one, and the
    # check must notice.
    monkeypatch.setattr(chatcore, "__file__", str(tmp_path / "chatcore" / "__init__.py"))
    with pytest.raises(EchoBenchmarkError, match="imported chatcore from"):
        run_echo("chatcore", "pipelined", 1, 5, timeout=30)


def test_invalid_arguments_are_refused_before_anything_starts():
    with pytest.raises(ValueError, match="exactly one connection"):
        run_echo("chatcore", "ping-pong", 2, 10)
    with pytest.raises(ValueError, match="mode"):
        run_echo("chatcore", "flood", 1, 10)
    with pytest.raises(ValueError, match="unknown echo server"):
        run_echo("twisted", "pipelined", 1, 10)
    with pytest.raises(ValueError):
        run_echo("chatcore", "pipelined", 0, 10)


@pytest.mark.skipif(sys.version_info < (3, 12), reason="stdlib asynchat exists here")
def test_stdlib_server_is_refused_where_stdlib_asynchat_is_gone():
    with pytest.raises(ValueError, match="cannot run on this Python"):
        run_echo("stdlib", "pipelined", 1, 10)


@pytest.mark.skipif(sys.version_info >= (3, 12), reason="PyPI's copies may serve here")
def test_pyasynchat_server_is_refused_where_stdlib_asynchat_is_what_imports():
    with pytest.raises(ValueError, match="cannot run on this Python"):
        run_echo("pyasynchat", "pipelined", 1, 10)


# --- The pieces run_echo is made of ----------------------------------------------


@pytest.mark.timeout(240)  # three runs and two servers, each with its own bound
def test_clients_close_their_sockets_after_a_run_and_after_a_failure():
    with EchoServerProcess("chatcore") as server:
        client = PipelinedClient(server.port, 2, 30)
        client.run(timeout=30)
        assert all(connection.sock.fileno() == -1 for connection in client.connections)
        ping = PingPongClient(server.port, 5)
        ping.run(timeout=30)
        assert ping.sock.fileno() == -1
    with EchoServerProcess("fault:corrupt-echo") as server:
        client = PipelinedClient(server.port, 2, 30)
        with pytest.raises(EchoVerificationError):
            client.run(timeout=30)
        assert all(connection.sock.fileno() == -1 for connection in client.connections)
    assert_process_gone(server.process)


def test_server_process_exits_by_itself_when_its_stdin_closes():
    server = EchoServerProcess("chatcore").start(startup_timeout=30)
    try:
        server.process.stdin.close()
        assert server.process.wait(timeout=30) == 0
    finally:
        server.stop()
    assert_process_gone(server.process)


def test_server_process_exits_by_itself_after_max_seconds(tmp_path):
    port_file = str(tmp_path / "port.json")
    command = [
        sys.executable,
        "-m",
        "chatcore.benchmark.echo",
        "serve",
        "--server",
        "chatcore",
        "--port-file",
        port_file,
        "--max-seconds",
        "0.5",
        "--ignore-stdin",
    ]
    process = subprocess.Popen(command, stdin=subprocess.PIPE, stderr=subprocess.PIPE)
    try:
        _, stderr = process.communicate(timeout=30)
    finally:
        if process.poll() is None:
            process.kill()
            process.communicate()
    assert process.returncode == 3
    assert b"max lifetime" in stderr
    assert os.path.exists(port_file)  # it did listen before giving up


def test_stop_is_safe_before_start_and_twice():
    server = EchoServerProcess("chatcore")
    server.stop()
    server.start(startup_timeout=30)
    server.stop()
    server.stop()
    assert_process_gone(server.process)


def test_ping_pong_with_idle_connections():
    from chatcore.benchmark.echo import run_echo

    result = run_echo("chatcore", "ping-pong", 1, 50, idle_connections=300, timeout=60)
    assert result.messages == 50 and result.idle_connections == 300
    if sys.platform.startswith("linux"):
        assert result.rss_per_idle_connection is not None


def test_select_bound_servers_refuse_idle_connections():
    from chatcore.benchmark.echo import run_echo

    with pytest.raises(ValueError):
        run_echo("stdlib", "ping-pong", 1, 5, idle_connections=2000)
