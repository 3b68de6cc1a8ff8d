"""Message mode (``message_chat`` / ``Framer.feed_messages``) on both engines.

One bytes object per message, a bounded buffer, and the documented overflow
behaviour: the handler runs once, the oversized message is skipped to its end,
framing goes on with the next message.
"""

import pytest
from helpers.engines import ENGINES
from helpers.recorders import MessageRecorder, chunked, cut_at, feed_messages
from helpers.serving import serve_and_receive, serve_until
from hypothesis import given, settings
from hypothesis import strategies as st

import chatcore

#: A limit no message here comes near: message mode runs with a limit set, as message_chat's default.
ROOMY = 1 << 20


@pytest.mark.parametrize("read_size", [1, 2, 5, 4096])
@pytest.mark.parametrize("terminator", [b"\n", b"\r\n", b"\r\n.\r\n"])
def test_messages_match_a_split_of_the_stream(engine, read_size, terminator):
    bodies = [b"alpha", b"", b"beta" * 100, b"\r", b"gamma"]
    stream = b"".join(body + terminator for body in bodies) + b"unfinished"
    channel = MessageRecorder(terminator)
    framer = feed_messages(engine, channel, chunked(stream, read_size), max_size=ROOMY)
    assert channel.messages == bodies
    assert channel.overflows == 0
    assert framer.pending in (b"",)  # no partial terminator at the end


def test_integer_terminator_frames_fixed_size_messages(engine):
    channel = MessageRecorder(4)
    feed_messages(engine, channel, chunked(b"abcdefghij", 3), max_size=ROOMY)
    assert channel.messages == [b"abcd", b"efgh"]
    assert channel.terminator == 4  # not counted down in message mode


def test_length_prefixed_records(engine):
    records = [b"x" * n for n in (1, 7, 300, 2)]
    stream = b"".join(len(r).to_bytes(2, "big") + r for r in records)

    class Records(MessageRecorder):
        in_header = True

        def handle_message(self, message):
            if self.in_header:
                self.terminator = int.from_bytes(message, "big")
            else:
                self.messages.append(message)
                self.terminator = 2
            self.in_header = not self.in_header

    channel = Records(2)
    feed_messages(engine, channel, chunked(stream, 5), max_size=ROOMY)
    assert channel.messages == records


@pytest.mark.parametrize("terminator", [None, 0, b""])
def test_no_terminator_makes_each_read_a_message(engine, terminator):
    channel = MessageRecorder(terminator)
    feed_messages(engine, channel, [b"one", b"two\n", b"three"], max_size=ROOMY)
    assert channel.messages == [b"one", b"two\n", b"three"]


@pytest.mark.parametrize("read_size", [1, 3, 64])
def test_overflow_skips_to_the_end_of_the_message_and_goes_on(engine, read_size):
    stream = b"ok\n" + b"x" * 50 + b"\nfine\n" + b"y" * 9 + b"\nlast\n"
    channel = MessageRecorder(b"\n")
    feed_messages(engine, channel, chunked(stream, read_size), max_size=8)
    assert channel.messages == [b"ok", b"fine", b"last"]
    assert channel.events == [
        ("message", b"ok"),
        ("overflow",),
        ("message", b"fine"),
        ("overflow",),
        ("message", b"last"),
    ]


def test_overflow_with_an_integer_terminator(engine):
    channel = MessageRecorder(20)
    feed_messages(engine, channel, chunked(b"z" * 20 + b"abc" * 2, 6), max_size=8)
    # 20 > 8: the first message is dropped, and the next 20-byte one has begun
    # (and overflowed) with "abcabc"; the terminator stays 20.
    assert channel.overflows == 2 and channel.messages == [] and channel.terminator == 20
    channel2 = MessageRecorder(3)
    feed_messages(engine, channel2, [b"abcdef"], max_size=8)
    assert channel2.messages == [b"abc", b"def"]


def test_a_message_of_exactly_the_limit_is_delivered(engine):
    channel = MessageRecorder(b"\n")
    feed_messages(engine, channel, chunked(b"12345678\n123456789\n", 4), max_size=8)
    assert channel.messages == [b"12345678"] and channel.overflows == 1


def test_buffered_bytes_never_exceed_the_limit(engine):
    # An endless line: the framer drops it instead of growing.
    import tracemalloc

    channel = MessageRecorder(b"\n")
    framer = engine.Framer()
    read = b"a" * 1024
    tracemalloc.start()
    try:
        for _ in range(2000):  # 2 MB of one line against a 4 KiB limit
            framer.feed_messages(channel, read, 4096)
            assert framer.pending == b""
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 64 * 1024, peak
    assert channel.overflows == 1 and channel.messages == []
    framer.feed_messages(channel, b"\nafter\n", 4096)
    assert channel.messages == [b"after"]


messages_st = st.lists(st.binary(max_size=40).map(lambda b: b.replace(b"\n", b"")), max_size=30)


@pytest.mark.skipif(ENGINES["c"] is None, reason="compiled engine not built")
@settings(max_examples=300, deadline=None)
@given(
    stream=st.lists(st.sampled_from([b"\r", b"\n", b"ab", b"x" * 30, b"\r\n"]), max_size=80).map(b"".join),
    cuts=st.lists(st.integers(min_value=0, max_value=600), max_size=15),
    first=st.one_of(
        st.none(), st.integers(min_value=0, max_value=50), st.sampled_from([b"\n", b"\r\n", b"\r\n\r\n", b"x"])
    ),
    script=st.lists(
        st.one_of(st.none(), st.integers(min_value=1, max_value=50), st.sampled_from([b"\n", b"\r\n", b"ab"])),
        max_size=20,
    ),
    max_size=st.integers(min_value=1, max_value=120),
)
def test_message_mode_engines_agree(stream, cuts, first, script, max_size):
    chunks = cut_at(stream, cuts)
    results = []
    for engine in (ENGINES["c"], ENGINES["py"]):
        channel = MessageRecorder(first, script)
        framer = feed_messages(engine, channel, chunks, max_size)
        results.append((channel.events, channel.terminator, framer.pending))
    assert results[0] == results[1]


@settings(max_examples=200, deadline=None)
@given(bodies=messages_st, read_size=st.integers(min_value=1, max_value=50))
def test_message_mode_matches_split_for_any_chunking(bodies, read_size):
    stream = b"".join(body + b"\n" for body in bodies)
    for engine in [e for e in ENGINES.values() if e is not None]:
        channel = MessageRecorder(b"\n")
        feed_messages(engine, channel, chunked(stream, read_size), max_size=40)
        assert channel.messages == bodies


def test_message_chat_over_a_socket_and_default_overflow(engine, socket_pair, caplog):
    chatcore.log.KINDS["message overflow"].reset()  # earlier tests' overflows must not have used its rate limit

    class Lines(chatcore.message_chat):
        _engine = engine
        max_message_size = 16

        def __init__(self, sock, channel_map):
            super().__init__(sock, map=channel_map)
            self.set_terminator(b"\r\n")
            self.received = []

        def handle_message(self, message):
            self.received.append(message)
            self.push(message.upper() + b"\r\n")

    left, right = socket_pair
    channel_map = {}
    channel = Lines(left, channel_map)
    try:
        right.sendall(b"hello\r\nworld\r\n")
        assert serve_and_receive(channel_map, right, 14) == b"HELLO\r\nWORLD\r\n"
        right.sendall(b"x" * 100 + b"\r\n")
        serve_until(channel_map, lambda: not channel_map, what="the channel closing")
        assert not channel.connected
        assert channel.received == [b"hello", b"world"]
        assert "longer than max_message_size (16 bytes)" in caplog.text
    finally:
        chatcore.close_all(channel_map)
