"""The framing engine without sockets, on both implementations.

A ``CollectRecorder`` (helpers/recorders.py) stands in for a channel: it logs
every callback, and can change its terminator (or do something nastier) from
inside ``found_terminator``.
"""

import array
import sys
from collections import deque

import pytest
from helpers.engines import ENGINES
from helpers.recorders import CollectRecorder, Gatherer, Sender, chunked, cut_at, drain, feed_collect
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


@pytest.mark.parametrize("terminator", [b"\n", b"\r\n", b"\r\n.\r\n", b"qqq", b"ab" * 20])
@pytest.mark.parametrize("read_size", [1, 2, 3, 7, 4096])
def test_lines_are_split_whatever_the_read_size(engine, terminator, read_size):
    lines = [b"hello", b"", b"world " * 30, b"x"]
    stream = b"".join(line + terminator for line in lines) + b"tail"
    recorder = CollectRecorder(terminator)
    framer = feed_collect(engine, recorder, chunked(stream, read_size))
    expected = []
    for line in lines:
        if line:
            expected.append(("data", line))
        expected.append(("found", terminator))
    expected.append(("data", b"tail"))
    assert recorder.events == expected
    assert framer.pending == b""


def test_partial_terminator_is_kept_until_the_next_read(engine):
    recorder = CollectRecorder(b"\r\n.\r\n")
    framer = engine.Framer()
    framer.feed(recorder, b"body\r\n.")
    assert recorder.events == [("data", b"body")]
    assert framer.pending == b"\r\n."
    framer.feed(recorder, b"\r")
    assert framer.pending == b"\r\n.\r"
    framer.feed(recorder, b"\nnext")
    assert recorder.events == [("data", b"body"), ("found", b"\r\n.\r\n"), ("data", b"next")]
    assert framer.pending == b""


def test_a_read_that_is_all_prefix_delivers_nothing(engine):
    recorder = CollectRecorder(b"\r\n")
    framer = engine.Framer()
    framer.feed(recorder, b"\r")
    assert recorder.events == [] and framer.pending == b"\r"
    framer.feed(recorder, b"x")
    assert recorder.events == [("data", b"\rx")] and framer.pending == b""


def test_integer_terminator_counts_down_and_is_zero_when_found(engine):
    recorder = CollectRecorder(10)
    framer = engine.Framer()
    framer.feed(recorder, b"abcd")
    assert recorder.terminator == 6
    framer.feed(recorder, b"efghijKL")
    assert recorder.events == [("data", b"abcdefghij"), ("found", 0), ("data", b"KL")]
    assert recorder.terminator == 0


def test_huge_integer_terminator(engine):
    recorder = CollectRecorder(10**30)
    feed_collect(engine, recorder, [b"abc", b"de"])
    assert recorder.terminator == 10**30 - 5
    assert recorder.events == [("data", b"abcde")]


@pytest.mark.parametrize("terminator", [None, 0, b"", False])
def test_falsy_terminator_collects_everything(engine, terminator):
    recorder = CollectRecorder(terminator)
    framer = feed_collect(engine, recorder, [b"a\r\nb", b"\r\n"])
    assert recorder.events == [("data", b"a\r\nb\r\n")]
    assert framer.pending == b""


def test_terminator_changed_in_found_terminator_applies_to_the_rest(engine):
    # A header line, then a 5-byte body, then None: everything else.
    recorder = CollectRecorder(b"\r\n", script=[5, b"|", None])
    feed_collect(engine, recorder, [b"LEN 5\r\n12345ab|rest\r\nmore"])
    assert recorder.events == [
        ("data", b"LEN 5"),
        ("found", b"\r\n"),
        ("data", b"12345"),
        ("found", 0),
        ("data", b"ab"),
        ("found", b"|"),
        ("data", b"rest\r\nmore"),
    ]


def test_pending_prefix_is_searched_with_a_changed_terminator(engine):
    recorder = CollectRecorder(b"\r\n")
    framer = engine.Framer()
    framer.feed(recorder, b"abc\r")
    recorder.terminator = b"\rX"
    framer.feed(recorder, b"Xdef")
    assert recorder.events == [("data", b"abc"), ("found", b"\rX"), ("data", b"def")]


def test_empty_feed_reprocesses_pending_bytes(engine):
    recorder = CollectRecorder(b"\r\n")
    framer = engine.Framer()
    framer.feed(recorder, b"abc\r")
    recorder.terminator = None
    framer.feed(recorder, b"")
    assert recorder.events == [("data", b"abc\r")]  # the recorder merges pieces
    assert framer.pending == b""


def test_pending_is_the_unprocessed_rest_inside_a_callback(engine):
    seen = []
    framer = engine.Framer()
    recorder = CollectRecorder(b"\n", on_found=lambda r: seen.append(framer.pending))
    framer.feed(recorder, b"a\nb\nc")
    assert seen == [b"b\nc", b"c"]


def test_clearing_pending_inside_a_callback_drops_the_rest(engine):
    framer = engine.Framer()

    def discard(recorder):
        framer.pending = b""

    recorder = CollectRecorder(b"\n", on_found=discard)
    framer.feed(recorder, b"first\nsecond\nthird")
    assert recorder.events == [("data", b"first"), ("found", b"\n")]
    assert framer.pending == b""


def test_replacing_pending_inside_a_callback_is_processed_next(engine):
    framer = engine.Framer()
    calls = []

    def replace(recorder):
        if not calls:
            framer.pending = b"injected\nrest"
        calls.append(1)

    recorder = CollectRecorder(b"\n", on_found=replace)
    framer.feed(recorder, b"one\ntwo\n")
    assert recorder.events == [
        ("data", b"one"),
        ("found", b"\n"),
        ("data", b"injected"),
        ("found", b"\n"),
        ("data", b"rest"),
    ]


def test_reentrant_feed_from_a_callback(engine):
    framer = engine.Framer()
    fed = []

    def feed_more(recorder):
        if not fed:
            fed.append(1)
            framer.feed(recorder, b"X\n")

    recorder = CollectRecorder(b"\n", on_found=feed_more)
    framer.feed(recorder, b"a\nb\n")
    # The nested call sees the outer rest first, as stdlib's ac_in_buffer would.
    assert recorder.events == [
        ("data", b"a"),
        ("found", b"\n"),
        ("data", b"b"),
        ("found", b"\n"),
        ("data", b"X"),
        ("found", b"\n"),
    ]
    assert framer.pending == b""
    assert not framer.feeding


def test_callback_exception_consumes_the_delivered_bytes(engine):
    class Exploding(CollectRecorder):
        def found_terminator(self):
            super().found_terminator()
            if len(self.events) == 2:
                raise RuntimeError("handler bug")

    recorder = Exploding(b"\n")
    framer = engine.Framer()
    with pytest.raises(RuntimeError):
        framer.feed(recorder, b"a\nb\nc")
    assert framer.pending == b"b\nc"
    assert not framer.feeding
    framer.feed(recorder, b"\n")
    assert recorder.events == [
        ("data", b"a"),
        ("found", b"\n"),
        ("data", b"b"),
        ("found", b"\n"),
        ("data", b"c"),
        ("found", b"\n"),
    ]


def test_get_terminator_override_is_consulted(engine):
    class Dynamic(CollectRecorder):
        def get_terminator(self):
            return b";"

    recorder = Dynamic(b"\n")
    engine.Framer().feed(recorder, b"a;b\n", True)
    assert recorder.events == [("data", b"a"), ("found", b"\n"), ("data", b"b\n")]
    plain = Dynamic(b"\n")
    engine.Framer().feed(plain, b"a;b\n", False)
    assert plain.events == [("data", b"a;b"), ("found", b"\n")]


@pytest.mark.parametrize("terminator", ["\n", ["\n"], 1.5, object()])
def test_unusable_terminator_is_a_type_error(engine, terminator):
    with pytest.raises(TypeError):
        engine.Framer().feed(CollectRecorder(terminator), b"abc\n")


def test_negative_terminator_is_a_value_error(engine):
    with pytest.raises(ValueError):
        engine.Framer().feed(CollectRecorder(-2), b"abc\n")


def test_str_data_is_a_type_error(engine):
    with pytest.raises(TypeError):
        engine.Framer().feed(CollectRecorder(b"\n"), "abc\n")


def test_buffer_types_are_accepted(engine):
    recorder = CollectRecorder(bytearray(b"\r\n"))
    framer = engine.Framer()
    framer.feed(recorder, bytearray(b"ab\r"))
    framer.feed(recorder, memoryview(b"x\ncd\r\n")[1:])
    wide = array.array("H", [0x0A0D])  # two bytes "\r\n" on either endianness
    framer.feed(recorder, memoryview(b"ef"))
    framer.feed(recorder, memoryview(wide).cast("B") if wide.tobytes() == b"\r\n" else b"\r\n")
    assert recorder.events == [
        ("data", b"ab"),
        ("found", bytearray(b"\r\n")),
        ("data", b"cd"),
        ("found", bytearray(b"\r\n")),
        ("data", b"ef"),
        ("found", bytearray(b"\r\n")),
    ]
    non_contiguous = memoryview(b"a-\r-\n-")[::2]
    framer.feed(recorder, non_contiguous)
    assert recorder.events[-2:] == [("data", b"a"), ("found", bytearray(b"\r\n"))]


def test_fed_buffer_is_released_when_feed_returns(engine):
    received = bytearray(b"line\npartial\r")
    recorder = CollectRecorder(b"\r\n")
    framer = engine.Framer()
    with memoryview(received) as view:
        framer.feed(recorder, view[: len(received)])
    received.extend(b"more")  # BufferError if the framer still held an export
    received[:] = b"overwritten!!"
    assert framer.pending == b"\r"


def test_pending_setter(engine):
    framer = engine.Framer()
    framer.pending = bytearray(b"abc")
    assert framer.pending == b"abc" and type(framer.pending) is bytes
    with pytest.raises(TypeError):
        framer.pending = "text"


# -- the two engines agree on arbitrary input ------------------------------------

terminators = st.one_of(
    st.none(),
    st.integers(min_value=0, max_value=300),
    st.binary(min_size=1, max_size=6).map(lambda b: b.replace(b"\x00", b"\r")),
    st.sampled_from([b"\n", b"\r\n", b"\r\n.\r\n"]),
)
streams = st.lists(st.sampled_from([b"\r", b"\n", b".", b"a", b"\r\n", b"xyz"]), max_size=300).map(b"".join)


@pytest.mark.skipif(ENGINES["c"] is None, reason="compiled engine not built")
@settings(max_examples=300, deadline=None)
@given(
    stream=streams,
    cuts=st.lists(st.integers(min_value=0, max_value=400), max_size=20),
    first=terminators,
    script=st.lists(terminators, max_size=40),
    max_size=st.one_of(st.none(), st.integers(min_value=0, max_value=40)),
)
def test_compiled_engine_matches_its_twin(stream, cuts, first, script, max_size):
    chunks = cut_at(stream, cuts)
    results = []
    for engine in (ENGINES["c"], ENGINES["py"]):
        recorder = CollectRecorder(first, script)
        framer = feed_collect(engine, recorder, chunks, max_size=max_size)
        results.append((recorder.events, recorder.terminator, framer.pending))
    assert results[0] == results[1]


# -- outgoing queue ----------------------------------------------------------------


@pytest.mark.parametrize(
    "data", [b"0123456789abcdefghij", bytearray(b"0123456789abcdefghij"), memoryview(b"0123456789abcdefghij")]
)
def test_push_splits_by_out_buffer_size(engine, data):
    sender = Sender()
    engine.push(sender, data)
    assert [bytes(piece) for piece in sender.producer_fifo] == [b"01234567", b"89abcdef", b"ghij"]
    assert all(type(piece) is type(data) for piece in sender.producer_fifo)


@pytest.mark.parametrize("data", ["text", 10, None, [1, 2]])
def test_push_rejects_non_bytes(engine, data):
    with pytest.raises(TypeError):
        engine.push(Sender(), data)


@pytest.mark.parametrize("zero_copy", [False, True])
def test_partial_sends_keep_order(engine, zero_copy):
    sender = Sender(accept=3)
    engine.push(sender, b"abcdefghijklmnopqrstuvwxyz")
    engine.push(sender, bytearray(b"0123456789"))
    assert drain(engine, sender, zero_copy) == b"abcdefghijklmnopqrstuvwxyz0123456789"
    assert all(len(call) <= 8 for call in sender.offered)


def test_zero_copy_slices_immutable_heads_without_copying(engine):
    sender = Sender(accept=2)
    sender.ac_out_buffer_size = 1 << 20
    sender.producer_fifo.append(b"x" * 100)
    engine.initiate_send(sender, True)
    head = sender.producer_fifo[0]
    assert type(head) is memoryview and len(head) == 98
    plain = Sender(accept=2)
    plain.ac_out_buffer_size = 1 << 20
    plain.producer_fifo.append(b"x" * 100)
    engine.initiate_send(plain, False)
    assert type(plain.producer_fifo[0]) is bytes and len(plain.producer_fifo[0]) == 98


def test_none_closes_after_the_data_before_it(engine):
    sender = Sender()
    engine.push(sender, b"bye")
    sender.producer_fifo.append(None)
    engine.push(sender, b"never")
    assert drain(engine, sender) == b"bye"
    assert sender.closed == 1


def test_empty_buffer_ends_the_call_with_an_empty_send(engine):
    # stdlib quirk kept: an empty entry is dropped and then sent (as b"").
    sender = Sender()
    engine.push(sender, b"")
    engine.push(sender, b"data")
    engine.initiate_send(sender)
    assert sender.offered == [b""]
    assert list(sender.producer_fifo) == [b"data"]


def test_producers_are_drained_in_order(engine):
    class Producer:
        def __init__(self, chunks):
            self.chunks = list(chunks)

        def more(self):
            return self.chunks.pop(0) if self.chunks else b""

    sender = Sender(accept=5)
    engine.push(sender, b"<")
    sender.producer_fifo.append(Producer([b"one", b"two" * 5, b"", b"never"]))
    sender.producer_fifo.append(b"plain buffer as producer")
    engine.push(sender, b">")
    assert drain(engine, sender) == b"<onetwotwotwotwotwoplain buffer as producer>"


def test_str_from_a_producer_is_encoded_only_with_use_encoding(engine):
    class TextProducer:
        def __init__(self):
            self.done = False

        def more(self):
            if self.done:
                return ""
            self.done = True
            return "caf\xe9"

    sender = Sender()
    sender.use_encoding = 1
    sender.producer_fifo.append(TextProducer())
    assert drain(engine, sender) == b"caf\xe9"


def test_send_oserror_goes_to_handle_error(engine):
    class Broken(Sender):
        def send(self, data):
            raise OSError(5, "I/O error")

    sender = Broken()
    engine.push(sender, b"abc")
    engine.initiate_send(sender)
    assert sender.errors == 1
    assert list(sender.producer_fifo) == [b"abc"]


def test_nothing_is_sent_when_not_connected(engine):
    sender = Sender()
    sender.connected = False
    engine.push(sender, b"abc")
    engine.initiate_send(sender)
    assert sender.offered == []


@pytest.mark.skipif(ENGINES["c"] is None, reason="compiled engine not built")
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pushes=st.lists(st.binary(max_size=40), max_size=12),
    accepts=st.lists(st.integers(min_value=0, max_value=20), min_size=1, max_size=8),
    size=st.integers(min_value=1, max_value=16),
    zero_copy=st.booleans(),
)
def test_outgoing_engines_agree(pushes, accepts, size, zero_copy):
    results = []
    for engine in (ENGINES["c"], ENGINES["py"]):

        class Scripted(Sender):
            ac_out_buffer_size = size
            script: "list[int]"

            def send(self, data):
                self.offered.append(bytes(data))
                script = self.script
                count = min(script.pop(0) if len(script) > 1 else script[0], len(data))
                self.data += bytes(data[:count])
                return count

        Scripted.script = list(accepts)
        sender = Scripted()
        for data in pushes:
            engine.push(sender, data)
        sender.producer_fifo.append(None)
        drain(engine, sender, zero_copy, turns=200)
        results.append((sender.offered, sender.closed, [bytes(p) for p in sender.producer_fifo if p is not None]))
    assert results[0] == results[1]


# -- gathered sends ------------------------------------------------------------------


def test_send_gathered_takes_buffers_up_to_a_producer_or_none(engine):
    fifo = deque([b"ab", bytearray(b"cd"), memoryview(b"ef"), b"", None, b"after"])
    send = Gatherer()
    assert engine.send_gathered(fifo, send, 1 << 20) == 0
    assert send.calls == [[b"ab", b"cd", b"ef", b""]]
    assert list(fifo) == [None, b"after"]


def test_send_gathered_partial_send_keeps_the_rest_in_order(engine):
    fifo = deque([b"abc", bytearray(b"defg"), b"hij"])
    send = Gatherer(accept=5)
    assert engine.send_gathered(fifo, send, 1 << 20) == 5
    head = fifo[0]
    assert type(head) is bytearray and head == bytearray(b"fg")  # a copy, not a view
    assert [bytes(x) for x in fifo] == [b"fg", b"hij"]
    send.accept = 1
    assert engine.send_gathered(fifo, send, 1 << 20) == 4  # sends "f"
    assert engine.send_gathered(fifo, send, 1 << 20) == 3  # sends "g"
    assert engine.send_gathered(fifo, send, 1 << 20) == 2  # sends "h"
    remainder = fifo[0]
    assert type(remainder) is memoryview and bytes(remainder) == b"ij"
    send.accept = None
    assert engine.send_gathered(fifo, send, 1 << 20) == 0
    assert send.data == b"abcdefghij" and not fifo


def test_send_gathered_limits(engine):
    fifo = deque([b"x"] * (engine.GATHER_LIMIT + 10))
    send = Gatherer()
    engine.send_gathered(fifo, send, 1 << 20)
    assert len(send.calls[0]) == engine.GATHER_LIMIT and len(fifo) == 10
    fifo = deque([b"12345", b"67890", b"abc"])
    engine.send_gathered(fifo, send, 6)
    assert send.calls[-1] == [b"12345", b"67890"]


def test_send_gathered_error_leaves_the_queue_alone(engine):
    def refuse(buffers):
        raise BlockingIOError(11, "would block")

    fifo = deque([b"abc", b"def"])
    with pytest.raises(BlockingIOError):
        engine.send_gathered(fifo, refuse, 1 << 20)
    assert list(fifo) == [b"abc", b"def"]


def test_send_gathered_with_nothing_to_gather(engine):
    for fifo in (deque(), deque([None]), deque([object()])):
        send = Gatherer()
        assert engine.send_gathered(fifo, send, 100) == 0 and send.calls == []


def test_a_stale_compiled_engine_is_replaced_by_the_twin_with_a_warning(monkeypatch):
    import types

    import chatcore
    from chatcore import _framing, _framing_py

    stale = types.ModuleType("chatcore._framing_c")
    stale.Framer = object
    monkeypatch.setattr(chatcore, "_framing_c", stale, raising=False)
    monkeypatch.setitem(sys.modules, "chatcore._framing_c", stale)
    monkeypatch.delenv("CHATCORE_NO_EXTENSIONS", raising=False)
    with pytest.warns(RuntimeWarning, match="out of date.*push"):
        engine, implementation = _framing._load()
    assert engine is _framing_py and implementation == "python"
