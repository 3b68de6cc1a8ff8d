"""Several terminators: ``set_terminator((b"\\r\\n", b"\\n"))``, on both engines.

The rule: the earliest match in the stream ends the message, and of the
matches starting there the longest; ``matched_terminator`` is the element
that matched.  A match is taken only once no terminator that could still
complete in a later read starts at or before it, so the messages do not
depend on how the stream is cut into reads.  ``reference_split`` is that
rule written out by brute force over the whole stream; hypothesis compares
both engines, in both modes, with it over random streams, terminator sets
(overlapping ones, prefixes of each other, single bytes), terminator
changes between messages and cuts into reads down to single bytes.  The
search stays linear: ``searched_bytes`` (what the searches covered) is
counted by both engines and compared with the stream's length.
"""

import pytest
from helpers.engines import ENGINES
from helpers.recorders import CollectRecorder, MessageRecorder, chunked, cut_at, merged
from helpers.serving import serve_until
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import chatcore
from chatcore.compat import asynchat as compat_asynchat

LINE_ENDINGS = (b"\r\n", b"\n")


def reference_split(stream, script):
    """The messages of *stream* by brute force: ([(body, matched or None)], unfinished body, held bytes).

    *script* gives the terminator of each message in turn (cycled): bytes,
    a tuple of bytes, or an int >= 1 (a message of that many bytes).
    ``matched`` is the tuple element that ended a message, None for the
    other kinds.  The unfinished body is what collect mode has handed over
    of the message still open; the held bytes are those that may start a
    terminator, kept for the next read.
    """
    messages = []
    pos = 0
    size = len(stream)
    while True:
        terminator = script[len(messages) % len(script)]
        if isinstance(terminator, int):
            if size - pos < terminator:
                return messages, stream[pos:], b""
            messages.append((stream[pos : pos + terminator], None))
            pos += terminator
            continue
        choices = terminator if isinstance(terminator, tuple) else (terminator,)
        # The earliest position where a terminator may still start: the
        # stream ends inside it.
        held_from = next(
            (
                start
                for start in range(pos, size)
                if any(len(choice) > size - start and choice.startswith(stream[start:]) for choice in choices)
            ),
            size,
        )
        match = None
        for start in range(pos, held_from):
            hits = [choice for choice in choices if stream.startswith(choice, start)]
            if hits:
                match = start, max(hits, key=len)
                break
        if match is None:
            return messages, stream[pos:held_from], stream[held_from:]
        start, choice = match
        messages.append((stream[pos:start], choice if isinstance(terminator, tuple) else None))
        pos = start + len(choice)


class MatchRecorder(CollectRecorder):
    """A CollectRecorder that records ``matched_terminator`` with each found terminator."""

    matched_terminator = None

    def found_terminator(self):
        self.events.append(("found", self.matched_terminator))
        if self.script:
            self.terminator = self.script.pop(0)


class MatchMessageRecorder(MessageRecorder):
    """A MessageRecorder that records ``matched_terminator`` with each message."""

    matched_terminator = None

    def handle_message(self, message):
        assert type(message) is bytes
        self.messages.append((message, self.matched_terminator))
        if self.script:
            self.terminator = self.script.pop(0)


def collect_mode(engine, reads, script, max_size=None):
    """(messages with their matched terminator, unfinished data, pending) from collect mode."""
    count = max(len(reads), 1) * 4 + 64  # never more messages than bytes, plus changes
    recorder = MatchRecorder(script[0], [script[index % len(script)] for index in range(1, count + 1)])
    framer = engine.Framer()
    for data in reads:
        framer.feed(recorder, data, True, max_size)
    messages, body = [], b""
    for kind, value in merged(recorder.events):
        if kind == "data":
            body = value
        elif kind == "found":
            messages.append((body, value))
            body = b""
        else:
            messages.append(("overflow", body))
            body = b""
    return messages, body, framer.pending


def message_mode(engine, reads, script, max_size=None):
    """(messages with their matched terminator, overflows) from message mode."""
    count = max(len(reads), 1) * 4 + 64
    recorder = MatchMessageRecorder(script[0], [script[index % len(script)] for index in range(1, count + 1)])
    framer = engine.Framer()
    for data in reads:
        framer.feed_messages(recorder, data, max_size)
    return recorder.messages, recorder.overflows


# -- examples -------------------------------------------------------------------------


@pytest.mark.parametrize("read_size", [1, 2, 3, 1000])
def test_crlf_or_bare_lf(engine, read_size):
    stream = b"GET / HTTP/1.1\r\nHost: x\nAccept: */*\r\n\n"
    messages, body, pending = collect_mode(engine, chunked(stream, read_size), [LINE_ENDINGS])
    assert messages == [
        (b"GET / HTTP/1.1", b"\r\n"),
        (b"Host: x", b"\n"),
        (b"Accept: */*", b"\r\n"),
        (b"", b"\n"),
    ]
    assert (body, pending) == (b"", b"")


def test_a_trailing_cr_waits_for_the_next_read(engine):
    recorder = MatchRecorder(LINE_ENDINGS)
    framer = engine.Framer()
    framer.feed(recorder, b"line\r", False, None)
    assert recorder.events == [("data", b"line")] and framer.pending == b"\r"
    framer.feed(recorder, b"\n", False, None)
    assert recorder.events == [("data", b"line"), ("found", b"\r\n")] and framer.pending == b""


def test_a_shorter_match_waits_while_a_longer_one_may_follow(engine):
    # (b"ab", b"abc"): b"ab" ending a read may be the start of b"abc", which
    # starts at the same position and is longer, so it waits for the next byte.
    recorder = MatchMessageRecorder((b"ab", b"abc"))
    framer = engine.Framer()
    framer.feed_messages(recorder, b"1ab", None)
    assert recorder.messages == []
    framer.feed_messages(recorder, b"c2ab", None)
    assert recorder.messages == [(b"1", b"abc")]
    framer.feed_messages(recorder, b"x", None)
    assert recorder.messages == [(b"1", b"abc"), (b"2", b"ab")]
    assert framer.pending == b""


def test_an_earlier_start_wins_over_an_earlier_end(engine):
    # b"b" is complete first, but b"abc" starts before it.
    for reads in ([b"xab", b"cy"], [b"xabcy"], [b"x", b"a", b"b", b"c", b"y"]):
        messages, body, _ = collect_mode(engine, reads, [(b"b", b"abc")])
        assert (messages, body) == ([(b"x", b"abc")], b"y")
    messages, body, _ = collect_mode(engine, [b"xab", b"d"], [(b"b", b"abc")])
    assert (messages, body) == ([(b"xa", b"b")], b"d")


def test_matched_terminator_is_the_element_passed(chat_class):
    carriage_return_line_feed = b"\r\n"
    channel = chat_class()
    channel.set_terminator((carriage_return_line_feed, b"\n"))
    assert channel.get_terminator()[0] is carriage_return_line_feed
    seen = []
    channel.collect_incoming_data = lambda data: None
    channel.found_terminator = lambda: seen.append(channel.matched_terminator)
    channel._deliver_received(b"a\r\nb\n")
    assert seen == [b"\r\n", b"\n"] and seen[0] is carriage_return_line_feed


def test_bytes_like_elements_are_stored_as_bytes(chat_class):
    channel = chat_class()
    channel.set_terminator((bytearray(b"\r\n"), memoryview(b"\n")))
    assert channel.get_terminator() == (b"\r\n", b"\n")
    assert all(type(element) is bytes for element in channel.get_terminator())
    unchanged = (b"x", b"y")
    channel.set_terminator(unchanged)
    assert channel.get_terminator() is unchanged


@pytest.mark.parametrize(
    "value, error",
    [
        ((), ValueError),
        ((b"\r\n", b""), ValueError),
        ((bytearray(),), ValueError),
        (("\n",), TypeError),
        ((10,), TypeError),
        ((b"\n", None), TypeError),
    ],
)
def test_a_bad_tuple_fails_when_set(chat_class, value, error):
    channel = chat_class()
    channel.set_terminator(b"\n")
    with pytest.raises(error, match="terminator"):
        channel.set_terminator(value)
    assert channel.get_terminator() == b"\n"


def test_a_tuple_assigned_directly_is_checked_when_used(engine):
    recorder = MatchRecorder((b"\n", bytearray(b";")))
    engine.Framer().feed(recorder, b"a;b\n", False, None)
    assert merged(recorder.events) == [("data", b"a"), ("found", b";"), ("data", b"b"), ("found", b"\n")]
    with pytest.raises(TypeError, match="bytes-like"):
        engine.Framer().feed(MatchRecorder((b"\n", 3)), b"a\n", False, None)
    with pytest.raises(ValueError, match="empty"):
        engine.Framer().feed_messages(MatchMessageRecorder((b"\n", b"")), b"a\n", None)


def test_matched_terminator_is_none_for_other_kinds(engine):
    # A tuple, then a single terminator, a count, the tuple again.
    script = [LINE_ENDINGS, b";", 2, LINE_ENDINGS]
    stream = b"a\nb;cdx\r\n"
    expected = [(b"a", b"\n"), (b"b", None), (b"cd", None), (b"x", b"\r\n")]
    assert collect_mode(engine, [stream], script)[0] == expected
    assert message_mode(engine, [stream], script)[0] == expected


def test_no_terminator_after_a_tuple_resets_matched(engine):
    recorder = MatchMessageRecorder(LINE_ENDINGS, [None])
    engine.Framer().feed_messages(recorder, b"a\nrest", None)
    assert recorder.messages == [(b"a", b"\n"), (b"rest", None)]


# -- the reference, over random streams ---------------------------------------------

# A small alphabet, so that terminators made of it occur, overlap and nearly match.
ALPHABET = b"ab\r\n"
byte_strings = st.binary(min_size=0, max_size=60).map(lambda raw: bytes(ALPHABET[b % 4] for b in raw))
terminator_bytes = st.binary(min_size=1, max_size=3).map(lambda raw: bytes(ALPHABET[b % 4] for b in raw))
terminator_tuples = st.lists(terminator_bytes, min_size=1, max_size=4).map(tuple)
script_entries = st.one_of(
    terminator_tuples, terminator_tuples, terminator_bytes, st.integers(min_value=1, max_value=5)
)


def cuts_strategy():
    return st.one_of(
        st.just("bytes"),  # 1-byte reads
        st.lists(st.integers(min_value=0, max_value=60), max_size=8),
    )


def reads_of(stream, cuts):
    if cuts == "bytes":
        return chunked(stream, 1)
    return [read for read in cut_at(stream, cuts) if read]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(
    stream=byte_strings,
    script=st.lists(script_entries, min_size=1, max_size=4),
    cuts=cuts_strategy(),
)
def test_both_modes_match_the_reference(engine, stream, script, cuts):
    expected, body, held = reference_split(stream, script)
    reads = reads_of(stream, cuts)
    messages, collected, pending = collect_mode(engine, reads, script)
    assert messages == expected
    if not isinstance(script[len(expected) % len(script)], int):
        # An int terminator counts what it has collected down; its rest is data.
        assert (collected, pending) == (body, held)
    assert message_mode(engine, reads, script) == (expected, 0)


@pytest.mark.skipif(ENGINES["c"] is None, reason="compiled engine not built")
@settings(max_examples=200, deadline=None)
@given(
    stream=byte_strings,
    script=st.lists(script_entries, min_size=1, max_size=3),
    cuts=cuts_strategy(),
    max_size=st.one_of(st.none(), st.integers(min_value=0, max_value=12)),
)
def test_the_engines_agree_with_limits(stream, script, cuts, max_size):
    reads = reads_of(stream, cuts)
    compiled, python = ENGINES["c"], ENGINES["py"]
    assert collect_mode(compiled, reads, script, max_size) == collect_mode(python, reads, script, max_size)
    assert message_mode(compiled, reads, script, max_size) == message_mode(python, reads, script, max_size)


# -- limits ---------------------------------------------------------------------------


@pytest.mark.parametrize("read_size", [1, 3, 100])
def test_a_long_message_overflows_and_framing_goes_on(engine, read_size):
    stream = b"short\n" + b"x" * 30 + b"\r\n" + b"after\r\n"
    reads = chunked(stream, read_size)
    messages, _, _ = collect_mode(engine, reads, [LINE_ENDINGS], max_size=10)
    assert [message for message in messages if message[0] != "overflow"] == [(b"short", b"\n"), (b"after", b"\r\n")]
    assert sum(message[0] == "overflow" for message in messages) == 1
    messages, overflows = message_mode(engine, reads, [LINE_ENDINGS], max_size=10)
    assert (messages, overflows) == ([(b"short", b"\n"), (b"after", b"\r\n")], 1)


def test_a_message_of_the_limit_is_delivered(engine):
    messages, overflows = message_mode(engine, chunked(b"0123456789\r\n", 4), [LINE_ENDINGS], max_size=10)
    assert (messages, overflows) == ([(b"0123456789", b"\r\n")], 0)


# -- linear search ----------------------------------------------------------------------


def searched_bytes(engine, stream, terminators, read_size):
    recorder = MatchMessageRecorder(terminators)
    framer = engine.Framer()
    for data in chunked(stream, read_size):
        framer.feed_messages(recorder, data, None)
    assert len(recorder.messages) == stream.count(b"\n")
    return framer._terminators.searched_bytes


@pytest.mark.parametrize("read_size", [1, 7, 4096, 1 << 20])
@pytest.mark.parametrize("terminators", [(b"X", b"\n"), (b"\n", b"--end--"), LINE_ENDINGS])
def test_the_search_is_linear_in_the_stream(engine, terminators, read_size):
    # A terminator that never occurs is searched for once per buffer, not
    # once per message (which would cover the rest of the buffer every time).
    lines = 4000 if read_size > 1 else 500
    stream = b"0123456789abcd\n" * lines
    work = searched_bytes(engine, stream, terminators, read_size)
    twice = searched_bytes(engine, stream * 2, terminators, read_size)
    bound = len(terminators) * (len(stream) + lines * max(map(len, terminators)))
    assert work <= bound
    assert twice <= 2 * work + 64


# -- channels ---------------------------------------------------------------------------


def test_message_chat_frames_lines_over_a_socket(engine, socket_pair):
    class Lines(chatcore.message_chat):
        _engine = engine

        def __init__(self, sock, channel_map):
            chatcore.message_chat.__init__(self, sock, map=channel_map)
            self.set_terminator(LINE_ENDINGS)
            self.received = []

        def handle_message(self, message):
            self.received.append((message, self.matched_terminator))

    channel_map = {}
    ours, peer = socket_pair
    channel = Lines(ours, channel_map)
    peer.sendall(b"one\r\ntwo\nthree\r")
    serve_until(channel_map, lambda: len(channel.received) == 2)
    peer.sendall(b"\n")
    serve_until(channel_map, lambda: len(channel.received) == 3)
    assert channel.received == [(b"one", b"\r\n"), (b"two", b"\n"), (b"three", b"\r\n")]
    channel.close()


def test_compat_async_chat_takes_a_tuple(socket_pair):
    class Lines(compat_asynchat.async_chat):
        def __init__(self, sock, channel_map):
            compat_asynchat.async_chat.__init__(self, sock, map=channel_map)
            self.set_terminator(LINE_ENDINGS)
            self.data = []
            self.received = []

        def collect_incoming_data(self, data):
            self.data.append(data)

        def found_terminator(self):
            self.received.append((b"".join(self.data), self.matched_terminator))
            self.data = []

    channel_map = {}
    ours, peer = socket_pair
    channel = Lines(ours, channel_map)
    peer.sendall(b"a\nb\r\n")
    serve_until(channel_map, lambda: len(channel.received) == 2)
    assert channel.received == [(b"a", b"\n"), (b"b", b"\r\n")]
    channel.close()
