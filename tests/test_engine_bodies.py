"""Message bodies built across reads, and the joined collect-mode message, on both engines.

Message mode keeps the body of a message that spans reads until it is
complete and hands it over as one bytes object: the compiled engine fills a
bytes object only it references (allocated whole when an integer terminator
announces the size, grown by doubling otherwise) and hands that very object
over; the twin keeps the pieces and joins them once.  These tests pin what
either must keep true whatever the mechanism: a delivered message never
changes afterwards, whatever comes next; terminators may change kind in the
middle of a body; overflow, a handler replacing ``pending`` or feeding
re-entrantly, and messages larger than the reservation and huge-page sizes
behave as with small ones.  ``join_incoming`` (``_get_data``) is
``b"".join(channel.incoming)`` exactly, for any pieces.
"""

import gc
import sys
import tracemalloc

import pytest
from helpers.engines import ENGINES
from helpers.recorders import MessageRecorder, chunked, feed_messages
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


def pattern(size, seed=0):
    """*size* bytes that differ from one position to the next (no terminator in them)."""
    block = bytes((seed + 7 * i) % 251 for i in range(251)).replace(b"\n", b"m").replace(b"\r", b"n")
    return (block * (size // len(block) + 1))[:size]


@pytest.mark.parametrize("read_size", [1, 3, 100, 4096])
def test_integer_framed_bodies_spanning_reads(engine, read_size):
    sizes = [1, 250, 4096, 5000, 3]
    bodies = [pattern(size, seed) for seed, size in enumerate(sizes)]
    channel = MessageRecorder(sizes[0], script=sizes[1:] + [8])
    framer = feed_messages(engine, channel, chunked(b"".join(bodies) + b"partial", read_size))
    assert channel.messages == bodies
    assert channel.terminator == 8 and framer.pending == b""


@pytest.mark.parametrize("read_size", [1, 2, 5, 999, 4096])
def test_delivered_messages_never_change_afterwards(engine, read_size):
    # Every message is kept (with a copy made on arrival); later messages of
    # every kind, built in the same framer, must not touch the kept ones.
    kept = []

    def keep(channel, message):
        kept.append((message, bytes(bytearray(message))))
        if channel.script:
            channel.terminator = channel.script.pop(0)

    stream = (
        pattern(3000, 1) + pattern(2000, 2) + b"\r\n" + pattern(100, 3) + b"\r\n" + pattern(7000, 4) + pattern(10, 5)
    )
    channel = MessageRecorder(3000, script=[b"\r\n", b"\r\n", 7000, 10], on_message=keep)
    feed_messages(engine, channel, chunked(stream, read_size))
    assert [message for message, _ in kept] == [
        pattern(3000, 1),
        pattern(2000, 2),
        pattern(100, 3),
        pattern(7000, 4),
        pattern(10, 5),
    ]
    for message, copy in kept:
        assert message == copy


def test_a_partial_body_continues_under_an_integer_terminator(engine):
    # A bytes-framed body is under way when something other than
    # handle_message switches to an integer: the count frames the rest, and
    # the message is what was held plus that many bytes (both engines alike).
    channel = MessageRecorder(b"\n")
    framer = engine.Framer()
    framer.feed_messages(channel, b"abc", None)
    channel.terminator = 4
    framer.feed_messages(channel, b"defgh", None)
    assert channel.messages == [b"abcdefg"]
    assert framer.pending == b""
    framer.feed_messages(channel, b"ijk", None)
    assert channel.messages == [b"abcdefg", b"hijk"]


def test_a_partial_integer_body_ends_at_a_bytes_terminator_set_meanwhile(engine):
    # An integer-framed body is under way when something other than
    # handle_message makes the terminator bytes: the body held so far is the
    # start of the message that the bytes terminator ends.
    channel = MessageRecorder(6)
    framer = engine.Framer()
    framer.feed_messages(channel, b"abc", None)
    channel.terminator = b"\n"
    framer.feed_messages(channel, b"de\nxy\n", None)
    assert channel.messages == [b"abcde", b"xy"]


def test_overflow_in_the_middle_of_a_reserved_body(engine):
    # The limit is checked before the body is reserved: the oversized message
    # is skipped and the next one is built from nothing.
    channel = MessageRecorder(10)
    framer = feed_messages(engine, channel, chunked(b"x" * 10 + b"y" * 10, 3), max_size=8)
    assert channel.events == [("overflow",), ("overflow",)] and channel.messages == []
    channel.terminator = 4
    framer.feed_messages(channel, b"zz", 8)
    framer.feed_messages(channel, b"zzw", 8)
    assert channel.messages == [b"zzzz"]
    assert framer.pending == b""


def test_overflow_of_a_grown_body_then_the_next_message(engine):
    channel = MessageRecorder(b"\n")
    framer = feed_messages(engine, channel, [b"a" * 5, b"b" * 5, b"c" * 5, b"\nok", b"\n"], max_size=12)
    assert channel.events == [("overflow",), ("message", b"ok")]
    assert framer.pending == b""


def test_pending_replaced_from_a_callback_keeps_the_body_apart(engine):
    # handle_message of one message replaces pending while the next
    # message's body is half built in another framer state: the body held so
    # far stays the body (pending is the unframed input, not the body).
    framer = engine.Framer()

    def replace(channel, message):
        if message == b"first":
            framer.pending = b"second-"
            channel.terminator = 10

    channel = MessageRecorder(b"\n", on_message=replace)
    framer.feed_messages(channel, b"first\nignored", None)
    assert channel.messages == [b"first"]
    assert framer.pending == b""  # "second-" (7 bytes) is held as a body now
    framer.feed_messages(channel, b"abcdef", None)
    assert channel.messages == [b"first", b"second-abc"]
    assert framer.pending == b""


def test_handle_message_feeding_the_framer_again(engine):
    # A re-entrant feed from handle_message sees no half-built body of the
    # message being delivered (it was handed over first).
    framer = engine.Framer()
    seen = []

    def reenter(channel, message):
        seen.append(message)
        if message == pattern(300, 9):
            framer.feed_messages(channel, b"inner\n", None)

    channel = MessageRecorder(b"\n", on_message=reenter)
    for chunk in chunked(pattern(300, 9) + b"\nafter\n", 64):
        framer.feed_messages(channel, chunk, None)
    # The inner feed appends to what the outer one had not framed yet.
    assert seen == [pattern(300, 9), b"after", b"inner"]
    assert framer.pending == b""


def test_a_delivered_body_belongs_to_the_handler_alone(engine):
    # Once handed over, the framer holds no reference to the message: the
    # handler's is the only one (a leaked one would keep 1000 bytes alive).
    class Keep(MessageRecorder):
        def handle_message(self, message):
            self.last = message

    channel = Keep(1000)
    feed_messages(engine, channel, chunked(pattern(1000), 100))
    assert channel.last == pattern(1000)
    references = sys.getrefcount(channel.last)
    assert references == 2  # the attribute, and getrefcount's argument


def test_a_framer_dropped_mid_body_frees_the_body(engine):
    tracemalloc.start()
    try:
        before = tracemalloc.get_traced_memory()[0]
        for terminator in (1 << 22, b"\n"):
            channel = MessageRecorder(terminator)
            framer = engine.Framer()
            framer.feed_messages(channel, b"q" * (1 << 21), None)
            assert channel.messages == []
            del framer
        gc.collect()
        after = tracemalloc.get_traced_memory()[0]
    finally:
        tracemalloc.stop()
    assert after - before < 1 << 16, after - before


@pytest.mark.parametrize("size", [(4 << 20) + 1, (64 << 20) + 12345])
def test_bodies_past_the_huge_page_and_reservation_sizes(engine, size):
    # Above 4 MiB bodies get huge-page advice; above 64 MiB an announced size
    # is not reserved ahead and the body grows instead.  Same bytes either way.
    body = pattern(size, 3)
    channel = MessageRecorder(size, script=[b"\n"])
    framer = feed_messages(engine, channel, chunked(body, 1 << 20) + [b"tail\n"])
    assert len(channel.messages) == 2
    assert channel.messages[0] == body and channel.messages[1] == b"tail"
    assert framer.pending == b""
    channel.messages.clear()
    del body
    # The same through a bytes terminator: the body grows by doubling.
    body = pattern(5 << 20, 4)
    channel = MessageRecorder(b"\r\n")
    feed_messages(engine, channel, chunked(body + b"\r\n", 1 << 20), framer=framer)
    assert channel.messages == [body]


class Snapshots(MessageRecorder):
    """Also copies each message as it arrives, to check later that it never changed."""

    def __init__(self, terminator, script):
        super().__init__(terminator, script)
        self.copies = []

    def handle_message(self, message):
        self.copies.append(bytes(bytearray(message)))
        super().handle_message(message)


@pytest.mark.skipif(ENGINES["c"] is None, reason="compiled engine not built")
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    pieces=st.lists(st.one_of(st.integers(1, 2000), st.sampled_from([b"\n", b"\r\n", b"ab"])), min_size=1, max_size=10),
    read_size=st.integers(16, 700),
    max_size=st.one_of(st.none(), st.integers(0, 3000)),
    outside=st.dictionaries(
        st.integers(0, 20), st.one_of(st.integers(1, 2000), st.sampled_from([b"\n", b"xy"])), max_size=3
    ),
)
def test_engines_agree_on_long_bodies(pieces, read_size, max_size, outside):
    # Long messages (up to a few KiB, many reads each) with the terminator
    # switched between messages, and at some reads from outside handle_message.
    stream = b"".join(
        pattern(piece, index) if isinstance(piece, int) else b"x" * (index * 97 % 500) + piece
        for index, piece in enumerate(pieces)
    )
    results = []
    for engine in (ENGINES["c"], ENGINES["py"]):
        channel = Snapshots(pieces[0], pieces[1:])
        framer = engine.Framer()
        for number, chunk in enumerate(chunked(stream, read_size)):
            if number in outside:
                channel.terminator = outside[number]
            framer.feed_messages(channel, chunk, max_size)
        assert channel.messages == channel.copies
        results.append((channel.events, channel.terminator, framer.pending))
    assert results[0] == results[1]


# -- join_incoming (_get_data) ---------------------------------------------------------


class Incoming:
    def __init__(self, pieces):
        self.incoming = pieces


@pytest.mark.parametrize(
    "pieces",
    [
        [],
        [b"one"],
        [b"a", b"", b"bc"],
        [bytearray(b"ab"), b"cd", memoryview(b"ef")],
        [b"x" * (3 << 20), b"y" * (2 << 20)],  # large: the huge-page path
        [b"x" * (3 << 20), bytearray(b"y" * (2 << 20))],  # large, not all bytes
    ],
    ids=["empty", "one", "several", "buffers", "large", "large-mixed"],
)
def test_join_incoming_is_bytes_join(engine, pieces):
    expected = b"".join(pieces)
    channel = Incoming(list(pieces))
    data = engine.join_incoming(channel)
    assert type(data) is bytes and data == expected
    assert channel.incoming == []


def test_join_incoming_gives_a_lone_piece_itself(engine):
    for piece in (b"small", b"z" * (5 << 20)):
        assert engine.join_incoming(Incoming([piece])) is piece


def test_join_incoming_refuses_what_join_refuses(engine):
    channel = Incoming([b"x" * (5 << 20), "text"])
    with pytest.raises(TypeError):
        engine.join_incoming(channel)
    assert len(channel.incoming) == 2  # not cleared, as stdlib's _get_data


def test_join_incoming_with_another_list_type(engine):
    class Pieces(list):
        pass

    channel = Incoming(Pieces([b"a", b"b" * (5 << 20)]))
    assert engine.join_incoming(channel) == b"a" + b"b" * (5 << 20)
    assert channel.incoming == [] and type(channel.incoming) is Pieces
