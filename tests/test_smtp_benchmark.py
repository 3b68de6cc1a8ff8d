"""The request/response benchmark harness: the legacy SMTP server, its in-process and loopback runs.

These tests check that the harness measures what it claims: the legacy
server module behaves the same on the oracle and on chatcore (both APIs,
both engines), every reply is checked (a server that answers wrongly or not
at all fails the run), runs are bounded and leave no process or socket
behind.  They assert no speeds.
"""

import ast
import os
import subprocess
import sys
import time
import types

import oracle
import pytest
from helpers.processes import STOP_ALLOWANCE, assert_process_gone

import chatcore
import chatcore.compat.asynchat
import chatcore.compat.asyncore
from chatcore.benchmark import echo, framing, inprocess, smtp
from chatcore.benchmark.serverproc import BenchmarkError, BenchmarkTimeoutError, VerificationError

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
GATE_CHILD = os.path.join(ROOT, "benchmarks", "gate_child.py")


def on_engine(modules, engine):
    """*modules* (asynchat, asyncore) with ``async_chat`` bound to *engine*."""
    asynchat, asyncore = modules
    bound = types.ModuleType("asynchat")
    bound.__dict__.update({name: value for name, value in vars(asynchat).items() if not name.startswith("__")})
    bound.async_chat = type("async_chat", (asynchat.async_chat,), {"_engine": engine})
    return bound, asyncore


def compat_modules():
    return chatcore.compat.asynchat, chatcore.compat.asyncore


API_MODULES = {"compat": compat_modules, "chatcore": inprocess.chatcore_under_legacy_names}


# --- The legacy server module ----------------------------------------------------------


def test_the_server_module_is_legacy_code_only():
    with open(inprocess.SERVER_FILE) as source:
        tree = ast.parse(source.read())
    imported = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            imported.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            imported.add(node.module)
    assert imported == {"asynchat", "asyncore", "socket", "zlib"}
    names = {node.id for node in ast.walk(tree) if isinstance(node, ast.Name)}
    assert not any("chatcore" in name for name in names)


def test_loading_the_server_module_leaves_sys_modules_as_found():
    before = {name: sys.modules.get(name) for name in ("asynchat", "asyncore")}
    module = inprocess.load_server_module(*compat_modules())
    assert module.asynchat is chatcore.compat.asynchat and module.asyncore is chatcore.compat.asyncore
    assert {name: sys.modules.get(name) for name in ("asynchat", "asyncore")} == before
    shim = inprocess.load_server_module(*inprocess.chatcore_under_legacy_names())
    assert shim.SMTPChannel.__mro__[1] is chatcore.async_chat
    assert shim.SMTPServer.__mro__[1] is chatcore.dispatcher


ODD_SESSION = [
    b"NOOP\r\n",
    b"MAIL FROM:<a@b>\r\n",  # before HELO
    b"HELO\r\n",  # no host name
    b"HELO there\r\n",
    b"HELO again\r\n",
    b"VRFY someone\r\n",
    b"\r\n",
    b"RCPT TO:<c@d>\r\n",  # before MAIL
    b"MAIL FROM:a@b\r\n",  # no angle brackets
    b"mail from:<a@b>\r\n",
    b"MAIL FROM:<e@f>\r\n",  # nested
    b"DATA\r\n",  # before RCPT
    b"RCPT TO:<c@d>\r\n",
    b"DATA now\r\n",
    b"DATA\r\n",
    b"line one\r\n..dotted\r\n.\r\n",
    b"RSET x\r\n",
    b"RSET\r\n",
    b"NOOP\r\n",
    b"QUIT\r\n",
]


@pytest.mark.parametrize("api", sorted(API_MODULES))
def test_the_server_answers_like_on_the_oracle(api, engine):
    oracle.require()
    expected = inprocess.smtp_transcript(oracle.asynchat, oracle.asyncore, ODD_SESSION)
    assert expected[0] == b"220 localhost SMTP ready\r\n"
    assert b"250 OK: message 1, 17 bytes, crc32 " in expected[-5]  # "line one\r\n.dotted"
    got = inprocess.smtp_transcript(*on_engine(API_MODULES[api](), engine), ODD_SESSION)
    assert got == expected


@pytest.mark.parametrize("workload", sorted(inprocess.WORKLOADS))
@pytest.mark.parametrize("api", sorted(API_MODULES))
def test_in_process_workloads_run_and_check_on_each_engine(workload, api, engine):
    seconds = inprocess.run_once(workload, api, 0.005, modules=on_engine(API_MODULES[api](), engine))
    assert seconds > 0


@pytest.mark.parametrize("workload", sorted(inprocess.WORKLOADS))
def test_in_process_workloads_run_on_the_oracle(workload):
    oracle.require()
    assert inprocess.run_once(workload, "legacy", 0.005, modules=(oracle.asynchat, oracle.asyncore)) > 0


def test_in_process_run_fails_on_a_wrong_reply(monkeypatch):
    real = inprocess.smtp_session

    def one_reply_off(connection, transactions, body_size=1024):
        steps = real(connection, transactions, body_size)
        steps[3] = steps[3]._replace(reply=steps[3].reply.replace(b"250", b"251"))
        return steps

    monkeypatch.setattr(inprocess, "smtp_session", one_reply_off)
    with pytest.raises(inprocess.InProcessError, match="expected b'251 OK"):
        inprocess.run_once("smtp", "compat", 0.005)


def test_in_process_apis_are_the_two_send_timings():
    with pytest.raises(ValueError):
        inprocess.api_modules("stdlib")
    compat_chat = inprocess.api_modules("compat")[0].async_chat
    own_chat = inprocess.api_modules("chatcore")[0].async_chat
    assert compat_chat.ac_coalesce_sends is False and own_chat.ac_coalesce_sends is True


def test_smtp_session_script_is_distinct_per_message():
    steps = inprocess.smtp_session(1, 3)
    assert [step.command for step in steps] == (
        ["greeting", "HELO"] + ["MAIL", "RCPT", "DATA", "body", "RSET"] * 3 + ["QUIT"]
    )
    bodies = [step for step in steps if step.command == "body"]
    assert len({step.reply for step in bodies}) == 3
    assert all(step.request.endswith(b"\r\n.\r\n") and b"\r\n..Lorem" in step.request for step in bodies)
    body = inprocess.message_body(1, 0)
    assert 1000 <= len(body) <= 1100 and inprocess.message_body(2, 0) != body


# --- The loopback runs -------------------------------------------------------------------


def test_available_servers_are_chatcores_and_this_pythons_legacy_row():
    servers = smtp.available_servers()
    assert servers[:2] == ["chatcore", "chatcore-compat"]
    origin = framing.legacy_origin()
    assert servers[2:] == ([] if origin is None else [echo.LEGACY_SERVERS[origin]])


def test_every_server_answers_every_command_and_reports_its_send_timing():
    started = []
    results = smtp.run_smtp_servers(
        smtp.available_servers(), 2, 3, passes=2, timeout=60, on_server_started=started.append
    )
    assert list(results) == smtp.available_servers()
    for server, result in results.items():
        assert (result.connections, result.transactions, result.commands) == (2, 6, 2 * (2 + 5 * 3))
        assert result.passes == 2 and result.seconds > 0
        assert 0 < result.p50_us <= result.p99_us
        assert "legacy_smtpd.py unchanged" in result.server_detail
        if server in echo.CHATCORE_SEND_MODES:
            coalesce = echo.CHATCORE_SEND_MODES[server]
            assert result.ac_coalesce_sends is coalesce and result.implementation == chatcore.implementation
            assert result.send_timing == (echo.SENT_AT_TURN_END if coalesce else echo.SENT_AT_ONCE)
        else:
            assert result.send_timing == echo.SENT_AT_ONCE and result.implementation is None
    assert "chatcore.compat.install()" in results["chatcore-compat"].server_detail
    for process in started:
        assert_process_gone(process.process)


def test_a_wrong_reply_fails_the_run():
    started = []
    with pytest.raises(VerificationError, match=r"body .* got reply b'250 OK: message 2"):
        smtp.run_smtp("fault:wrong-reply", 1, 3, timeout=30, on_server_started=started.append)
    assert_process_gone(started[0].process)


def test_a_server_that_stops_answering_fails_within_the_timeout():
    began = time.monotonic()
    with pytest.raises(BenchmarkTimeoutError, match="connection 0: 5 of"):
        smtp.run_smtp("fault:silent", 1, 2, timeout=3)
    assert time.monotonic() - began < 3 + STOP_ALLOWANCE


def test_servers_are_refused_before_anything_starts():
    with pytest.raises(ValueError, match="unknown SMTP server"):
        smtp.run_smtp("postfix", 1, 1)
    with pytest.raises(ValueError):
        smtp.run_smtp("chatcore", 0, 1)
    other = "stdlib" if sys.version_info >= (3, 12) else "pyasynchat"
    with pytest.raises(ValueError, match="cannot run on this Python"):
        smtp.run_smtp(other, 1, 1)


def test_the_client_closes_its_sockets_after_a_failure():
    with smtp.SMTPServerProcess("fault:wrong-reply") as server:
        client = smtp.SMTPClient(server.port, 2, 3)
        with pytest.raises(BenchmarkError):
            client.run(timeout=30)
        assert all(session.sock.fileno() == -1 for session in client.sessions)
    assert_process_gone(server.process)


# --- The handler floor and the gate ------------------------------------------------------


@pytest.mark.parametrize("workload", [name for name, w in sorted(framing.WORKLOADS.items()) if w.has_floor])
def test_the_floor_gives_the_handler_every_message_whole(workload):
    reads, factory, messages, payload, _ = framing.prepared_reads(workload, 0.001, 4096)
    pieces = framing._split_messages(b"".join(reads), factory())
    assert sum(map(len, pieces)) >= payload and len(pieces) >= messages
    result = framing.run_once(workload, framing.FLOOR, 4096, 0.001)
    assert (result.messages, result.payload_bytes) == (messages, payload)


def test_the_floor_skips_large_bodies():
    assert not framing.runs_on(framing.FLOOR, "body64m") and not framing.runs_on(framing.FLOOR, "smtp64k")
    assert framing.runs_on(framing.FLOOR, "lines16") and framing.runs_on("chatcore-cython", "body64m")
    assert framing.FLOOR in framing.chatcore_implementations()


@pytest.mark.timeout(180)  # past the child's own 120 s bound, which reports its output
def test_the_gate_measures_every_kind_of_workload_in_its_child():
    pytest.importorskip("chatcore._framing_c")
    keys = ["lines16@4096"] + ["%s/%s" % (name, api) for name in inprocess.WORKLOADS for api in inprocess.APIS]
    command = [sys.executable, GATE_CHILD, os.path.dirname(inprocess.__file__), "0.002", "1"] + keys
    env = dict(os.environ)
    env.pop("CHATCORE_NO_EXTENSIONS", None)
    proc = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert proc.returncode == 0, proc.stderr
    import json

    result = json.loads(proc.stdout)  # what gate.py reads
    assert sorted(result["seconds"]) == sorted(keys)
    assert result["chatcore"] == os.path.realpath(chatcore.__file__)
