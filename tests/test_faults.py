"""Fault tolerance of ``async_chat`` with fake sockets, the real asynchat as the oracle.

A fake socket scripts every ``recv``/``send`` result: random partial sends,
EAGAIN/EWOULDBLOCK, EINTR, the "peer is gone" errnos, plus producers and
handlers that raise.  Each scenario is a function of an implementation (the
oracle's ``asynchat``/``asyncore``: stdlib's on <= 3.11, pyasynchat and
pyasyncore on 3.12+, see ``oracle.py``; or chatcore on the engine of the
``chat_class`` fixture) returning everything observable: callbacks in order,
bytes sent, ``handle_error``/``handle_close`` calls, what is left queued.
chatcore must give the outcome written in the test; the same scenario runs on
the oracle first and must give it too, so every expectation here is the real
asynchat's (``test_oracle_is_available`` reports when the oracle is missing:
then only the written expectations are checked).

The fake is not a ``socket.socket``, so chatcore takes stdlib's code paths
(``recv()``, ``initiate_send()``/``send()``); its fast paths (``recv_into``
into a shared buffer, gathered ``sendmsg``) are faulted over real sockets in
``test_faults_loopback.py``, with the same faults (helpers/faults.py).
"""

import errno

import oracle
import pytest
from helpers.fakes import FakeSocket, err
from helpers.faults import (
    CLOSED,
    ERROR,
    EXCEPTION_NAMES,
    FAULT_CASES,
    IGNORED,
    RECV_FAULTS,
    SEND_FAULTS,
    ChunkProducer,
    FailingProducer,
    ProducerBug,
)
from helpers.recorders import data_of, merged
from helpers.scenarios import ORACLE, chatcore_impl, check, recorder
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


def test_oracle_is_available():
    if ORACLE is None:
        pytest.skip(oracle.MISSING + ": only the written expectations are checked")
    assert ORACLE.async_chat.__module__ == "asynchat"


# -- random partial sends -------------------------------------------------------------------


_payload = st.binary(max_size=2500)
_operation = st.one_of(
    st.tuples(st.just("push"), st.sampled_from([bytes, bytearray, memoryview]), _payload),
    st.tuples(st.just("simple_producer"), _payload, st.integers(1, 700)),
    st.tuples(
        st.just("producer"),
        st.lists(st.binary(min_size=1, max_size=600), max_size=5),
        st.sampled_from([bytes, bytearray]),
    ),
    st.just(("write",)),
)
_send_step = st.one_of(st.integers(1, 900), st.just("eagain"))


def play_sends(impl, operations, sends, out_buffer_size):
    """Queue *operations*, close_when_done(), then write events until closed."""
    script = [BlockingIOError(errno.EAGAIN, "full") if step == "eagain" else step for step in sends]
    sock = FakeSocket(sends=script)
    channel = recorder(impl.async_chat)(sock)
    channel.ac_out_buffer_size = out_buffer_size
    pushed = bytearray()
    for operation in operations:
        if operation[0] == "push":
            _, kind, data = operation
            channel.push(kind(data))
            pushed += data
        elif operation[0] == "simple_producer":
            channel.push_with_producer(impl.simple_producer(operation[1], operation[2]))
            pushed += operation[1]
        elif operation[0] == "producer":
            chunks = [operation[2](chunk) for chunk in operation[1]]
            channel.push_with_producer(ChunkProducer(chunks))
            pushed += b"".join(operation[1])
        else:
            impl.core.write(channel)
    channel.close_when_done()
    for _ in range(20_000):
        if channel.gone:
            break
        impl.core.write(channel)
    return {
        "pushed": bytes(pushed),
        "sent": bytes(sock.sent),
        "events": channel.events,
        "sent_at_close": sock.sent_at_close,
        "used_after_close": sock.used_after_close,
        "send_sizes": sock.send_sizes,
    }


@settings(deadline=None, max_examples=60, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    operations=st.lists(_operation, max_size=10),
    sends=st.lists(_send_step, max_size=60),
    out_buffer_size=st.one_of(st.sampled_from([1, 512, 65536]), st.integers(1, 3000)),
)
def test_random_partial_sends_deliver_the_pushed_stream_then_close(chat_class, operations, sends, out_buffer_size):
    outcome = play_sends(chatcore_impl(chat_class), operations, sends, out_buffer_size)
    # Everything pushed, in order, once; the close right after the last byte.
    assert outcome["sent"] == outcome["pushed"]
    assert outcome["events"] == [("close",)]
    assert outcome["sent_at_close"] == len(outcome["pushed"])
    assert outcome["used_after_close"] == 0
    if ORACLE is not None:
        reference = play_sends(ORACLE, operations, sends, out_buffer_size)
        assert reference["sent"] == outcome["sent"]
        assert reference["send_sizes"] == outcome["send_sizes"]


# -- recv faults ------------------------------------------------------------------------------


# "tw" is the start of a message when the fault comes; "\r" a partial terminator.
READS_BEFORE = [b"one\r\ntw", b"o\r"]
READS_AFTER = [b"\nthree\r\n"]


def expected_after_recv_fault(code, kind, on_error):
    before = [("data", b"one"), ("term",), ("data", b"tw"), ("data", b"o")]
    rest = [("term",), ("data", b"three"), ("term",)]
    if kind == IGNORED:
        return {"events": before + rest, "pending": b""}
    if kind == CLOSED:
        # The partial terminator is still processed, but is only a prefix.
        return {"events": before + [("close",)], "pending": b"\r"}
    if on_error == "close":
        return {"events": before + [("error", EXCEPTION_NAMES[code]), ("close",)], "pending": b"\r"}
    return {"events": before + [("error", EXCEPTION_NAMES[code])] + rest, "pending": b""}


def play_recv_fault(impl, code, on_error):
    sock = FakeSocket(reads=READS_BEFORE + [err(code)] + READS_AFTER)
    channel = recorder(impl.async_chat)(sock, b"\r\n", on_error=on_error)
    for _ in range(len(sock.reads) + 2):
        if channel.gone:
            break
        impl.core.read(channel)
    return {"events": channel.events, "pending": bytes(channel.ac_in_buffer)}


@pytest.mark.parametrize("fault, on_error", FAULT_CASES)
def test_recv_fault_is_handled_as_stdlib(chat_class, fault, on_error):
    code, kind = RECV_FAULTS[fault]
    check(play_recv_fault, chatcore_impl(chat_class), expected_after_recv_fault(code, kind, on_error), code, on_error)


# -- send faults ------------------------------------------------------------------------------


def play_send_fault(impl, code, on_error):
    sock = FakeSocket(sends=[3, err(code)])
    channel = recorder(impl.async_chat)(sock, on_error=on_error)
    channel.push(b"hello\n")  # "hel" goes at once
    impl.core.write(channel)  # the fault
    channel.push(b"after\n")
    for _ in range(10):
        if channel.gone or not channel.producer_fifo:
            break
        impl.core.write(channel)
    return {
        "events": channel.events,
        "sent": bytes(sock.sent),
        "queued": b"".join(bytes(item) for item in channel.producer_fifo),
        "used_after_close": sock.used_after_close,
    }


def expected_after_send_fault(code, kind, on_error):
    everything = {"sent": b"hello\nafter\n", "queued": b"", "used_after_close": 0}
    if kind == IGNORED:
        return dict(everything, events=[])
    error = [("error", EXCEPTION_NAMES[code])]
    if kind == ERROR and on_error == "keep":
        return dict(everything, events=error)
    # Closed: nothing more leaves, what was queued stays queued.
    return {
        "events": (error if kind == ERROR else []) + [("close",)],
        "sent": b"hel",
        "queued": b"lo\nafter\n",
        "used_after_close": 0,
    }


@pytest.mark.parametrize("fault, on_error", FAULT_CASES)
def test_send_fault_is_handled_as_stdlib(chat_class, fault, on_error):
    code, kind = SEND_FAULTS[fault]
    check(play_send_fault, chatcore_impl(chat_class), expected_after_send_fault(code, kind, on_error), code, on_error)


@pytest.mark.parametrize("fault", ["ECONNRESET", "EPIPE", "EINTR"])
def test_fault_inside_close_when_done_drain(chat_class, fault):
    """A fault while draining towards close_when_done: one close, nothing sent after."""
    code = SEND_FAULTS[fault][0]

    def play(impl):
        sock = FakeSocket(sends=[4, 4, err(code)])
        channel = recorder(impl.async_chat)(sock)
        channel.push(b"0123456789")
        channel.push_with_producer(impl.simple_producer(b"abcdef", 2))
        channel.close_when_done()
        for _ in range(20):
            if channel.gone:
                break
            impl.core.write(channel)
        return {"events": channel.events, "sent": bytes(sock.sent), "used_after_close": sock.used_after_close}

    events = ([("error", EXCEPTION_NAMES[code])] if fault == "EINTR" else []) + [("close",)]
    check(play, chatcore_impl(chat_class), {"events": events, "sent": b"01234567", "used_after_close": 0})


# -- a producer whose more() raises -----------------------------------------------------------


def play_failing_producer(impl, on_error, first_fails):
    sock = FakeSocket(sends=[2])
    channel = recorder(impl.async_chat)(sock, on_error=on_error)
    producer = FailingProducer([] if first_fails else [b"p1|", b"p2|"])
    escaped = []
    channel.push(b"head|")
    for call in (lambda: channel.push_with_producer(producer), lambda: channel.push(b"tail|")):
        try:
            call()
        except ProducerBug:
            escaped.append("raised")  # stdlib lets it out of push*() itself
        else:
            escaped.append("ok")
    for _ in range(6):
        if channel.gone:
            break
        impl.core.write(channel)
    return {
        "events": channel.events,
        "sent": bytes(sock.sent),
        "escaped": escaped,
        "more_calls": producer.calls,
        "used_after_close": sock.used_after_close,
    }


@pytest.mark.parametrize("first_fails", [False, True], ids=["after-chunks", "at-once"])
@pytest.mark.parametrize("on_error", ["close", "keep"])
def test_failing_producer_is_handled_as_stdlib(chat_class, on_error, first_fails):
    # The first send takes 2 bytes of "head|", so push_with_producer() sends
    # the rest and push("tail|") is the first to reach the producer: when
    # more() fails at once, the exception leaves push() itself (no
    # handle_error), as in stdlib.  Bytes before the failure leave exactly
    # once; the producer stays at the head of the queue, so "tail|" is never
    # sent and each write event asks more() again (one handle_error per write
    # event while the channel stays open).
    expected = {
        (False, "close"): {
            "events": [("error", "ProducerBug"), ("close",)],
            "sent": b"head|p1|p2|",
            "escaped": ["ok", "ok"],
            "more_calls": 3,
        },
        (False, "keep"): {
            "events": [("error", "ProducerBug")] * 5,
            "sent": b"head|p1|p2|",
            "escaped": ["ok", "ok"],
            "more_calls": 7,
        },
        (True, "close"): {
            "events": [("error", "ProducerBug"), ("close",)],
            "sent": b"head|",
            "escaped": ["ok", "raised"],
            "more_calls": 2,
        },
        (True, "keep"): {
            "events": [("error", "ProducerBug")] * 6,
            "sent": b"head|",
            "escaped": ["ok", "raised"],
            "more_calls": 7,
        },
    }[first_fails, on_error]
    expected["used_after_close"] = 0
    check(play_failing_producer, chatcore_impl(chat_class), expected, on_error, first_fails)


# -- a handler that raises --------------------------------------------------------------------

HANDLER_READS = [b"a\nb\nc\nd", b"\ne\n"]


def play_raising_handler(impl, where, on_error):
    sock = FakeSocket(reads=list(HANDLER_READS))
    options = {"on_error": on_error}
    if where == "found_terminator":
        options["fail_found"] = lambda message: message == b"b"
    else:
        options["fail_collect"] = lambda data: data == b"b"
    channel = recorder(impl.async_chat)(sock, b"\n", **options)
    for _ in range(len(HANDLER_READS)):
        if channel.gone:
            break
        impl.core.read(channel)
    return {"events": channel.events, "pending": bytes(channel.ac_in_buffer)}


def test_raising_found_terminator_loses_nothing(chat_class):
    """The rest of the read stays in ac_in_buffer and is processed with the next
    read: every message is delivered once, in order, as in stdlib."""
    front = [("data", b"a"), ("term",), ("data", b"b"), ("term",), ("error", "HandlerBug")]
    check(
        play_raising_handler,
        chatcore_impl(chat_class),
        {"events": front + [("close",)], "pending": b"c\nd"},
        "found_terminator",
        "close",
    )
    rest = [("data", b"c"), ("term",), ("data", b"d"), ("term",), ("data", b"e"), ("term",)]
    check(
        play_raising_handler,
        chatcore_impl(chat_class),
        {"events": front + rest, "pending": b""},
        "found_terminator",
        "keep",
    )


def test_raising_collect_incoming_data_delivers_each_byte_once(chat_class):
    """docs/migrating.rst, "differs on purpose": a piece whose collect_incoming_data() raised
    counts as consumed, where stdlib hands it over again with the next read
    (and, with a handle_error that keeps the channel open, fails on it again)."""
    front = [("data", b"a"), ("term",), ("data", b"b"), ("error", "HandlerBug")]
    impl = chatcore_impl(chat_class)
    closed = play_raising_handler(impl, "collect_incoming_data", "close")
    assert closed["events"] == front + [("close",)]
    assert closed["pending"] == b"\nc\nd"  # "b" is not kept for re-delivery, its "\n" is
    kept = play_raising_handler(impl, "collect_incoming_data", "keep")
    assert kept["events"][:4] == front and kept["pending"] == b""
    assert data_of(kept["events"]) == b"abcde"  # every byte once, in order
    if ORACLE is not None:
        reference = play_raising_handler(ORACLE, "collect_incoming_data", "close")
        assert reference == {"events": front + [("close",)], "pending": b"b\nc\nd"}
        reference = play_raising_handler(ORACLE, "collect_incoming_data", "keep")
        assert reference["events"] == front + [("data", b"b"), ("error", "HandlerBug")]


def test_raising_collect_incoming_data_keeps_the_message_boundary(chat_class):
    """The piece's terminator is consumed only once collect_incoming_data() has
    returned: found_terminator() still ends that message with the next read, so
    it does not merge with the following one."""
    kept = play_raising_handler(chatcore_impl(chat_class), "collect_incoming_data", "keep")
    assert merged(kept["events"]) == [
        ("data", b"a"),
        ("term",),
        ("data", b"b"),
        ("error", "HandlerBug"),
        ("term",),
        ("data", b"c"),
        ("term",),
        ("data", b"d"),
        ("term",),
        ("data", b"e"),
        ("term",),
    ]
