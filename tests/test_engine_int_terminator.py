"""An integer terminator keeps its count when ``collect_incoming_data`` raises.

The bytes-terminator rule (docs/migrating.rst, "Where chatcore differs from
stdlib, on purpose"): a
piece handed to a raising ``collect_incoming_data`` counts as consumed and
the message boundary stays, so ``found_terminator()`` still runs for that
message with the next read.  For an integer terminator the same guarantee
means: a partial piece that raises still counts the terminator down by its
length; the completing piece that raises leaves the terminator at 0 and
``found_terminator()`` runs first thing in the next feed; no byte is lost or
delivered twice.  Inside ``collect_incoming_data`` the terminator reads what
stdlib shows there, the count before the piece.

Framer-level tests run on both engines; the channel-level ones run
``async_chat`` (both engines) over a socketpair, and compare what a
non-raising handler sees with the oracle (stdlib/pyasynchat).
"""

import oracle
import pytest
from helpers.engines import ENGINES
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st


class Boom(Exception):
    """What the test handlers raise."""


class Counting:
    """The slice of async_chat the engine talks to, for integer terminators.

    ``events``: ("data", bytes, terminator seen inside the call) and
    ("found", terminator seen inside found_terminator).  ``fail``: indices of
    collect_incoming_data calls that raise (after recording their data).
    ``script``: terminators found_terminator sets, in turn.
    """

    def __init__(self, terminator, fail=(), script=()):
        self.terminator = terminator
        self.events = []
        self.fail = set(fail)
        self.script = list(script)
        self.collect_calls = 0

    def get_terminator(self):
        return self.terminator

    def collect_incoming_data(self, data):
        self.events.append(("data", bytes(data), self.terminator))
        self.collect_calls += 1
        if self.collect_calls - 1 in self.fail:
            raise Boom(self.collect_calls - 1)

    def found_terminator(self):
        self.events.append(("found", self.terminator))
        if self.script:
            self.terminator = self.script.pop(0)

    def handle_message_overflow(self):
        raise AssertionError("integer terminators are not limited")


def feed(framer, channel, data):
    """Feed; return the exception it raised (a Boom), or None."""
    try:
        framer.feed(channel, data)
    except Boom as exc:
        return exc
    return None


def test_a_raising_partial_piece_still_counts_down(engine):
    channel = Counting(10, fail={0})
    framer = engine.Framer()
    assert feed(framer, channel, b"abcd") is not None
    # Inside the call the count was 10 (stdlib's view); the 4 bytes are counted.
    assert channel.events == [("data", b"abcd", 10)]
    assert channel.terminator == 6 and framer.pending == b""
    assert feed(framer, channel, b"efghijKL") is None
    assert channel.events == [
        ("data", b"abcd", 10),
        ("data", b"efghij", 6),
        ("found", 0),
        ("data", b"KL", 0),
    ]


def test_a_raising_completing_piece_runs_found_terminator_on_the_next_feed(engine):
    channel = Counting(5, fail={0}, script=[b"\n"])
    framer = engine.Framer()
    assert feed(framer, channel, b"abcdeXY\nZ") is not None
    assert channel.events == [("data", b"abcde", 5)]
    assert channel.terminator == 0 and framer.pending == b"XY\nZ"
    assert not framer.feeding
    # found_terminator() comes first, before the rest is framed by what it set.
    assert feed(framer, channel, b"") is None
    assert channel.events == [
        ("data", b"abcde", 5),
        ("found", 0),
        ("data", b"XY", b"\n"),
        ("found", b"\n"),
        ("data", b"Z", b"\n"),
    ]


def test_the_owed_found_terminator_runs_even_with_nothing_pending(engine):
    channel = Counting(3, fail={0})
    framer = engine.Framer()
    assert feed(framer, channel, b"abc") is not None
    assert framer.pending == b"" and channel.terminator == 0
    assert feed(framer, channel, b"") is None
    assert channel.events == [("data", b"abc", 3), ("found", 0)]
    assert feed(framer, channel, b"") is None
    assert channel.events == [("data", b"abc", 3), ("found", 0)]  # once


def test_the_owed_found_terminator_runs_before_new_data(engine):
    channel = Counting(3, fail={0}, script=[2])
    framer = engine.Framer()
    feed(framer, channel, b"abc")
    assert feed(framer, channel, b"defg") is None
    assert channel.events == [
        ("data", b"abc", 3),
        ("found", 0),
        ("data", b"de", 2),
        ("found", 0),
        ("data", b"fg", 0),
    ]


def test_replacing_pending_drops_the_owed_found_terminator(engine):
    """As it drops a bytes terminator kept in ``pending`` (``discard_buffers()``)."""
    channel = Counting(3, fail={0})
    framer = engine.Framer()
    feed(framer, channel, b"abcrest")
    framer.pending = b""
    channel.terminator = b"\n"
    assert feed(framer, channel, b"x\n") is None
    assert channel.events == [("data", b"abc", 3), ("data", b"x", b"\n"), ("found", b"\n")]


def test_an_owed_found_terminator_that_raises_is_not_owed_again(engine):
    class FoundBoom(Counting):
        def found_terminator(self):
            super().found_terminator()
            raise Boom("found")

    channel = FoundBoom(2, fail={0})
    framer = engine.Framer()
    feed(framer, channel, b"ab")
    assert feed(framer, channel, b"") is not None
    assert feed(framer, channel, b"") is None
    assert channel.events == [("data", b"ab", 2), ("found", 0)]


def flattened(events):
    """The callbacks with adjacent data merged: what a handler assembles."""
    merged = []
    for event in events:
        if event[0] == "data" and merged and merged[-1][0] == "data":
            merged[-1] = ("data", merged[-1][1] + event[1])
        else:
            merged.append(event[:2])
    return merged


# Integer counts (and, now and then, a bytes terminator or None) set by found_terminator.
_scripts = st.lists(
    st.one_of(st.integers(1, 9), st.integers(1, 9), st.sampled_from([b"\n", b"ab", None])),
    max_size=12,
)


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    stream=st.lists(st.sampled_from([b"a", b"b", b"\n", b"xyz"]), max_size=60).map(b"".join),
    cuts=st.lists(st.integers(0, 200), max_size=12),
    first=st.integers(1, 9),
    script=_scripts,
    fail=st.sets(st.integers(0, 30), max_size=10),
)
def test_raising_handlers_lose_and_repeat_nothing(engine, stream, cuts, first, script, fail):
    """With some collect_incoming_data calls raising, the pieces and boundaries a
    handler sees are exactly those of a run where none raises."""
    bounds = sorted({cut for cut in cuts if cut <= len(stream)})
    chunks = [stream[a:b] for a, b in zip([0] + bounds, bounds + [len(stream)])] + [b""]
    runs = []
    for failing in (set(), fail):
        channel = Counting(first, fail=failing, script=script)
        framer = engine.Framer()
        for chunk in chunks:
            feed(framer, channel, chunk)
        # Each raise leaves at most one owed found_terminator: flush them.
        for _ in range(len(failing) + 1):
            feed(framer, channel, b"")
        runs.append((flattened(channel.events), channel.terminator, framer.pending))
    assert runs[1] == runs[0]


@pytest.mark.skipif(ENGINES["c"] is None, reason="compiled engine not built")
@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    chunks=st.lists(st.binary(max_size=12), max_size=10),
    first=st.integers(0, 9),
    script=_scripts,
    fail=st.sets(st.integers(0, 20), max_size=8),
)
def test_the_engines_agree_when_handlers_raise(chunks, first, script, fail):
    results = []
    for engine in (ENGINES["c"], ENGINES["py"]):
        channel = Counting(first, fail=fail, script=script)
        framer = engine.Framer()
        steps = []
        for chunk in chunks:
            steps.append((repr(feed(framer, channel, chunk)), framer.pending, channel.terminator))
        results.append((channel.events, steps))
    assert results[0] == results[1]


# -- async_chat over a socketpair ---------------------------------------------------------


def counted_channel(base, sock, fail_on):
    """*base* reading length-prefixed records: a 1-byte length, then that many bytes."""

    class Records(base):
        ac_max_message_size = None

        def __init__(self, sock):
            self.records = []
            self.seen = []  # terminator inside each collect_incoming_data
            self.collected = b""
            base.__init__(self, sock, map={})
            self.set_terminator(1)
            self.header = True

        def collect_incoming_data(self, data):
            self.seen.append(self.get_terminator())
            self.collected += data
            if fail_on(data):
                raise Boom(data)

        def found_terminator(self):
            body, self.collected = self.collected, b""
            if self.header:
                self.set_terminator(body[0])
            else:
                self.records.append(body)
                self.set_terminator(1)
            self.header = not self.header

    return Records(sock)


def read_once(channel, peer, data):
    """Send *data*, then one handle_read(); returns what it raised (a Boom) or None."""
    peer.sendall(data)
    try:
        channel.handle_read()
    except Boom as exc:
        return exc
    return None


def test_a_channel_whose_handler_raised_frames_the_next_read_right(chat_class, socket_pair):
    server, peer = socket_pair
    channel = counted_channel(chat_class, server, lambda data: data == b"hello")
    assert read_once(channel, peer, b"\x05hello") is not None
    assert channel.get_terminator() == 0 and channel.records == []
    assert read_once(channel, peer, b"\x03abc\x02de") is None
    assert channel.records == [b"hello", b"abc", b"de"]
    channel.close()


def test_a_raising_partial_read_keeps_the_count(chat_class, socket_pair):
    server, peer = socket_pair
    channel = counted_channel(chat_class, server, lambda data: data == b"hel")
    assert read_once(channel, peer, b"\x08hel") is not None
    assert channel.get_terminator() == 5
    assert read_once(channel, peer, b"lo, w\x01!") is None
    assert channel.records == [b"hello, w", b"!"]
    channel.close()


def test_the_count_inside_collect_incoming_data_is_stdlib_s(chat_class, sockets):
    """What a handler sees as the terminator inside each call, against the oracle."""
    oracle.require()
    reads = [b"\x06ab", b"cd", b"ef\x02", b"gh\x09", b"123456789"]
    outcomes = []
    for base in (oracle.asynchat.async_chat, chat_class):
        server, peer = sockets.pair()
        channel = counted_channel(base, server, lambda data: False)
        for data in reads:
            assert read_once(channel, peer, data) is None
        outcomes.append((channel.records, channel.seen, channel.get_terminator()))
        channel.close()
    assert outcomes[1] == outcomes[0]
    assert outcomes[0][1][:3] == [1, 6, 4]
