"""Stateful differential tests (hypothesis rule-based state machines).

1. ``TestFramerTwins``: the compiled ``Framer`` against its pure-Python twin,
   through the oracle in tests/fuzz/oracle.py (the one the fuzz target uses).
   Rules feed chunks (bytes, bytearray, memoryview, slices, strided views,
   arrays; empty ones too), change the terminator (bytes of 1-4 bytes drawn
   from a small alphabet so they occur, ints including 0 and huge, None,
   b"", bytearray), change ``max_size``, set ``pending`` from outside, and
   schedule what the next ``found_terminator``/``handle_message``,
   ``collect_incoming_data`` or ``handle_message_overflow`` call does: change
   the terminator, replace ``pending``, raise, feed more bytes re-entrantly.
   A machine runs in collect mode (``feed``, with ``max_size`` None or small)
   or message mode (``feed_messages`` with a small ``max_size``).  After every
   step both engines must have made the same calls with the same arguments,
   seen the same ``pending`` inside each, raised the same, and hold the same
   ``pending`` and terminator.

2. ``test_async_chat_matches_oracle``: chatcore's ``async_chat`` (both engines)
   against the real ``asynchat.async_chat`` (stdlib's on <= 3.11, pyasynchat
   on 3.12+: tests/oracle.py), reads through ``handle_read`` from the
   scripted fake socket of tests/helpers/fakes.py, with terminator changes,
   ``ac_in_buffer`` edits, ``discard_buffers()``, pushes and exceptions from
   inside the callbacks, and writes against a scripted ``send()``.  Skipped,
   with the reason, only where the oracle is not installed.

Bounded for CI (about 10 s here): at most 300 and 60 examples, or the loaded
hypothesis profile's ``max_examples`` if lower.  Raise the numbers in
``_bounded(...)`` locally for a longer search.
"""

import functools

import oracle
import pytest
from fuzz.oracle import ALPHABET, WHERES, WRAPS, Boom, Scheduled, TwinDriver, compiled
from helpers.fakes import FakeSocket, send_step
from hypothesis import HealthCheck, settings
from hypothesis import strategies as st
from hypothesis.stateful import (
    RuleBasedStateMachine,
    initialize,
    invariant,
    precondition,
    rule,
    run_state_machine_as_test,
)

# -- strategies ------------------------------------------------------------------

_alphabet_bytes = st.sampled_from(list(ALPHABET))
# Terminators of 1-4 bytes: a few that overlap themselves or each other, and
# random ones from the alphabet the chunks are made of.
_term_bytes = st.one_of(
    st.sampled_from([b"\n", b"\r\n", b"aba", b"\r\n.\r", b"..", b"a\na", b"\r\r\n"]),
    st.lists(_alphabet_bytes, min_size=1, max_size=4).map(bytes),
)

terminators = st.one_of(
    _term_bytes,
    _term_bytes,
    _term_bytes,
    st.integers(0, 12),
    st.just(0),
    st.none(),
    st.just(b""),
    st.sampled_from([1 << 70, 4096]),
    _term_bytes.map(bytearray),
    st.just(-1),  # both raise ValueError on the next feed
)

# Chunks made of tokens that build terminators, so they occur and are cut.
_tokens = st.sampled_from([b"\r", b"\n", b".", b"a", b"b", b"\r\n", b"ab", b"xyz"])
chunks = st.one_of(
    st.lists(_tokens, max_size=16).map(b"".join),
    st.lists(_tokens, max_size=16).map(b"".join),
    st.binary(max_size=8),
    st.integers(10, 300).map(lambda n: b"x" * n),  # past small limits, across reads
)

wraps = st.sampled_from(WRAPS)

actions = st.one_of(
    st.tuples(st.just("terminator"), terminators),
    st.tuples(st.just("pending"), chunks, wraps),
    st.just(("raise",)),
    st.tuples(st.just("feed"), chunks, wraps),
)

collect_limits = st.one_of(st.none(), st.integers(0, 12), st.integers(13, 200))
message_limits = st.integers(0, 40)


# -- 1. compiled engine against its twin -------------------------------------------


class FramerTwins(RuleBasedStateMachine):
    """One pair of framers (compiled, twin) driven by the same random steps."""

    driver = None

    @initialize(
        mode=st.sampled_from(["collect", "collect", "messages"]),
        terminator=terminators,
        data=st.data(),
        call_get_terminator=st.booleans(),
    )
    def start(self, mode, terminator, data, call_get_terminator):
        limits = message_limits if mode == "messages" else collect_limits
        self.driver = TwinDriver(mode, terminator, data.draw(limits), call_get_terminator)

    @rule(reads=st.lists(st.tuples(chunks, wraps), min_size=1, max_size=4))
    def feed(self, reads):
        for data, how in reads:
            self.driver.feed(data, how)

    @rule(
        bodies=st.lists(st.one_of(chunks, st.integers(0, 14).map(lambda n: b"y" * n)), min_size=1, max_size=6),
        cuts=st.lists(st.integers(0, 200), max_size=6),
        how=wraps,
    )
    def feed_framed(self, bodies, cuts, how):
        """Bodies joined by the current terminator (so it is found), in random reads."""
        terminator = self.driver.channels[0].terminator
        if isinstance(terminator, (bytes, bytearray)):
            stream = bytes(terminator).join(bodies) + bytes(terminator)
        else:
            stream = b"".join(bodies)
        bounds = sorted({cut for cut in cuts if cut < len(stream)} | {0, len(stream)})
        for start, end in zip(bounds, bounds[1:]):
            self.driver.feed(stream[start:end], how)

    @rule(value=terminators)
    def set_terminator(self, value):
        self.driver.set_terminator(value)

    @rule(where=st.sampled_from(WHERES), action=actions)
    def schedule(self, where, action):
        self.driver.schedule(where, action)

    @rule(data=chunks, how=wraps)
    def set_pending(self, data, how):
        self.driver.set_pending(data, how)

    @rule(data=st.data())
    def set_max_size(self, data):
        limits = message_limits if self.driver.mode == "messages" else collect_limits
        self.driver.set_max_size(data.draw(limits))

    @rule(offset=st.integers(-1, 1))
    def set_max_size_at_the_count(self, offset):
        """A limit at, just under or just over an integer terminator's count."""
        terminator = self.driver.channels[0].terminator
        if type(terminator) is int and 0 < terminator < 1 << 20:
            self.driver.set_max_size(max(0, terminator + offset))

    @invariant()
    def engines_agree(self):
        if self.driver is not None:
            self.driver.check()


def _bounded(examples, steps):
    """At most *examples* examples (fewer if the loaded hypothesis profile says so)."""
    return settings(
        max_examples=min(examples, settings.default.max_examples),
        stateful_step_count=steps,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow],
    )


FramerTwins.TestCase.settings = _bounded(300, 40)
TestFramerTwins = pytest.mark.skipif(
    compiled is None, reason="compiled engine not built (CHATCORE_NO_EXTENSIONS=1 build)"
)(FramerTwins.TestCase)


# -- 2. async_chat against the oracle's asynchat -----------------------------------------

# Terminators set_terminator() accepts on both (str needs use_encoding: covered
# by test_differential.py).
chat_terminators = st.one_of(_term_bytes, _term_bytes, st.integers(0, 12), st.none())
chat_chunks = st.one_of(
    st.lists(st.sampled_from(list(ALPHABET + b"xy")), min_size=1, max_size=24).map(bytes),
    st.binary(min_size=1, max_size=8),
)
# What found_terminator() may do.  Stdlib's ac_in_buffer is the same as
# chatcore's there (it differs inside collect_incoming_data, on purpose).
found_actions = st.one_of(
    st.tuples(st.just("terminator"), chat_terminators),
    st.tuples(st.just("skip"), st.integers(0, 6)),
    st.tuples(st.just("replace"), chat_chunks),
    st.just(("discard_buffers",)),
    st.just(("raise",)),
    st.tuples(st.just("push"), st.binary(max_size=40)),
    st.just(("close_when_done",)),
)
# What collect_incoming_data() may do: no ac_in_buffer edits, no raise (both
# differ from stdlib on purpose there, see docs/migrating.rst), and no int terminator:
# the count-down that follows (terminator - received) can go negative, which
# chatcore refuses with ValueError where stdlib slices from the end (docs/migrating.rst).
collect_actions = st.one_of(
    st.tuples(st.just("terminator"), st.one_of(_term_bytes, st.none())),
    st.tuples(st.just("push"), st.binary(max_size=40)),
)
send_behaviours = st.one_of(
    st.just(("all",)),
    st.tuples(st.just("part"), st.integers(0, 1000)),
    st.just(("eagain",)),
    st.just(("reset",)),
)


@functools.cache
def recording_class(base):
    """*base* with callbacks that record what they see and run scheduled actions."""

    class Recording(base):
        ac_max_message_size = None  # stdlib's unbounded input (chatcore's limit: elsewhere)

        def __init__(self, sock, terminator, out_buffer_size):
            self.events = []
            self.actions = Scheduled(("found", "collect"))
            base.__init__(self, sock, map={})
            self.ac_out_buffer_size = out_buffer_size
            self.set_terminator(terminator)

        def collect_incoming_data(self, data):
            self.events.append(("data", bytes(data)))
            self._act("collect")

        def found_terminator(self):
            self.events.append(("found", self.get_terminator(), bytes(self.ac_in_buffer)))
            self._act("found")

        def handle_close(self):
            self.events.append(("close",))
            base.handle_close(self)

        def _act(self, where):
            action = self.actions.take(where)
            if action is None:
                return
            kind = action[0]
            if kind == "terminator":
                self.set_terminator(action[1])
            elif kind == "skip":
                self.ac_in_buffer = self.ac_in_buffer[action[1] :]
            elif kind == "replace":
                self.ac_in_buffer = action[1]
            elif kind == "discard_buffers":
                self.discard_buffers()
            elif kind == "raise":
                raise Boom(where)
            elif kind == "push":
                self.push(action[1])
            elif kind == "close_when_done":
                self.close_when_done()

    return Recording


def _snapshot(fifo):
    return [entry if entry is None else bytes(entry) for entry in fifo]


class ChatVsOracle(RuleBasedStateMachine):
    """The oracle's async_chat (first) and chatcore's (second) driven by the same steps.

    ``bases`` is filled in per engine by the test below.
    """

    bases = ()

    def __init__(self):
        super().__init__()
        self.socks = []
        self.channels = []

    @initialize(terminator=chat_terminators, out_buffer_size=st.integers(1, 64))
    def start(self, terminator, out_buffer_size):
        for base in self.bases:
            sock = FakeSocket()
            self.socks.append(sock)
            self.channels.append(recording_class(base)(sock, terminator, out_buffer_size))

    def _both(self, method, *args):
        outcomes = []
        for channel in self.channels:
            try:
                getattr(channel, method)(*args)
            except (Boom, TypeError) as exc:
                # TypeError: collect_incoming_data() replaced an integer
                # terminator that was counting down (terminator - received).
                outcomes.append((type(exc).__name__, str(exc)))
            else:
                outcomes.append(None)
        assert outcomes[1] == outcomes[0], "oracle %r, chatcore %r" % tuple(outcomes)

    def connected(self):
        return all(channel.connected for channel in self.channels)

    @precondition(connected)
    @rule(data=chat_chunks)
    def read(self, data):
        for sock in self.socks:
            sock.reads.append(data)
        self._both("handle_read")

    @precondition(connected)
    @rule()
    def read_eof(self):
        for sock in self.socks:
            sock.reads.append(b"")
        self._both("handle_read")

    @rule(value=chat_terminators)
    def set_terminator(self, value):
        for channel in self.channels:
            channel.set_terminator(value)

    @rule(action=found_actions)
    def schedule_in_found_terminator(self, action):
        for channel in self.channels:
            channel.actions.add("found", action)

    @rule(action=collect_actions)
    def schedule_in_collect_incoming_data(self, action):
        for channel in self.channels:
            channel.actions.add("collect", action)

    @precondition(connected)
    @rule(data=st.binary(max_size=100))
    def push(self, data):
        self._both("push", data)

    @precondition(connected)
    @rule(behaviour=send_behaviours)
    def write(self, behaviour):
        for sock in self.socks:
            # The next send() behaves so; later ones accept everything.
            sock.sends.clear()
            sock.sends.append(send_step(behaviour))
        self._both("handle_write")

    @invariant()
    def same_observable_state(self):
        if not self.channels:
            return
        expected, actual = (
            (
                channel.events,
                bytes(channel.ac_in_buffer),
                channel.get_terminator(),
                channel.connected,
                _snapshot(channel.producer_fifo),
                bytes(sock.sent),
                sock.send_sizes,
            )
            for channel, sock in zip(self.channels, self.socks)
        )
        names = ("events", "ac_in_buffer", "terminator", "connected", "producer_fifo", "bytes sent", "send() lengths")
        for name, left, right in zip(names, expected, actual):
            assert right == left, "%s differ:\n  oracle:   %r\n  chatcore: %r" % (name, left, right)

    def teardown(self):
        for channel in self.channels:
            channel.close()


def test_async_chat_matches_oracle(chat_class):
    oracle.require()  # skips, with its reason, where the oracle is not installed
    machine = type("ChatVsOracle", (ChatVsOracle,), {"bases": (oracle.asynchat.async_chat, chat_class)})
    run_state_machine_as_test(machine, settings=_bounded(60, 25))
