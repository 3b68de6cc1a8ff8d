"""Input limits: ``ac_max_message_size`` and ``handle_message_overflow``.

The engine-level tests drive ``Framer.feed(..., max_size)`` directly (both
engines); the channel-level ones run ``async_chat`` over socketpairs and check
that a hostile peer costs at most the limit, that its channel alone is closed,
and that the compat module keeps stdlib's unbounded input.
"""

import inspect
import re
import sys

import pytest
from helpers.channels import line_channel_class
from helpers.engines import ENGINES
from helpers.recorders import CollectRecorder, MessageRecorder, chunked, feed_collect
from helpers.serving import serve_until
from helpers.sockets import receive_exactly
from hypothesis import given, settings
from hypothesis import strategies as st

import chatcore
from chatcore.compat import asynchat as compat_asynchat

TERMINATOR = b"\r\n"


def framed(events):
    """Per message: ("message", bytes) or ("overflow", bytes delivered before it)."""
    messages, collected = [], b""
    for kind, value in events:
        if kind == "data":
            collected += value
        elif kind == "found":
            messages.append(("message", collected))
            collected = b""
        else:
            messages.append(("overflow", collected))
            collected = b""
    return messages, collected


@settings(max_examples=200, deadline=None)
@given(
    sizes=st.lists(st.integers(min_value=0, max_value=40), max_size=20),
    limit=st.integers(min_value=0, max_value=30),
    read_size=st.integers(min_value=1, max_value=50),
    tail=st.integers(min_value=0, max_value=40),
)
def test_each_message_is_delivered_or_reported_once(engine, sizes, limit, read_size, tail):
    messages = [bytes([65 + i % 26]) * size for i, size in enumerate(sizes)]
    stream = b"".join(message + TERMINATOR for message in messages) + b"z" * tail
    recorder = CollectRecorder(TERMINATOR)
    framer = feed_collect(engine, recorder, chunked(stream, read_size), max_size=limit)
    outcome, unfinished = framed(recorder.events)
    if tail > limit:
        # The unterminated tail outgrew the limit: reported once, at the end.
        kind, delivered = outcome.pop()
        assert kind == "overflow" and len(delivered) <= limit and unfinished == b""
    assert len(outcome) == len(messages)
    for message, (kind, delivered) in zip(messages, outcome):
        if len(message) <= limit:
            assert (kind, delivered) == ("message", message)
        else:
            # Reported once, and never more than the limit handed over first.
            assert kind == "overflow"
            assert len(delivered) <= limit and message.startswith(delivered)
    # A tail within the limit is simply being collected.
    assert len(unfinished) <= limit and len(framer.pending) <= 1


def test_limit_boundaries(engine):
    recorder = CollectRecorder(b"\n")
    feed_collect(engine, recorder, [b"12345\n123456\nabc\n"], max_size=5)
    assert recorder.events == [
        ("data", b"12345"),
        ("found", b"\n"),
        ("overflow", b"\n"),
        ("data", b"abc"),
        ("found", b"\n"),
    ]


def test_overflow_skips_to_a_terminator_split_across_reads(engine):
    recorder = CollectRecorder(b"\r\n.\r\n")
    reads = [b"x" * 10, b"y" * 10 + b"\r\n", b".\r", b"\nnext\r\n.\r\n"]
    feed_collect(engine, recorder, reads, max_size=8)
    assert recorder.events == [
        ("overflow", b"\r\n.\r\n"),
        ("data", b"next"),
        ("found", b"\r\n.\r\n"),
    ]


def test_counted_and_collect_all_terminators_are_not_limited(engine):
    recorder = CollectRecorder(100, script=[None])
    feed_collect(engine, recorder, chunked(b"a" * 150, 7), max_size=10)
    assert recorder.events == [("data", b"a" * 100), ("found", 0), ("data", b"a" * 50)]


def test_no_limit_by_default(engine):
    recorder = CollectRecorder(b"\n")
    feed_collect(engine, recorder, chunked(b"q" * 5000 + b"\n", 100))
    assert recorder.events == [("data", b"q" * 5000), ("found", b"\n")]


@pytest.mark.parametrize("bad, error", [(-1, ValueError), (1.5, TypeError), ("10", TypeError)])
def test_bad_limits_are_rejected(engine, bad, error):
    with pytest.raises(error):
        engine.Framer().feed(CollectRecorder(b"\n"), b"abc\n", True, bad)


def test_a_huge_limit_means_no_limit(engine):
    recorder = CollectRecorder(b"\n")
    feed_collect(engine, recorder, [b"abc\n"], max_size=1 << 80)
    assert recorder.events == [("data", b"abc"), ("found", b"\n")]


# -- async_chat over sockets ---------------------------------------------------------


def line_collector(chat_class, channel_map, limit):
    """A line channel under *limit* that echoes each line and records the most it held of one."""

    class Lines(line_channel_class(chat_class, channel_map, TERMINATOR)):
        ac_max_message_size = limit
        largest_held = 0

        def collect_incoming_data(self, data):
            super().collect_incoming_data(data)
            self.largest_held = max(self.largest_held, sum(map(len, self.incoming)))

        def line(self, line):
            self.push(line + TERMINATOR)

    return Lines


def send_while_serving(peer, data, channel_map):
    """Send all of *data* from *peer*, turning the loop whenever the peer's buffer is full."""
    peer.setblocking(False)
    unsent = memoryview(data)

    def sent_all():
        nonlocal unsent
        try:
            unsent = unsent[peer.send(unsent) :]
        except BlockingIOError:
            pass
        return not unsent

    serve_until(channel_map, sent_all, what="the peer sending %d bytes" % len(data))


def test_a_hostile_peer_is_closed_alone_and_costs_at_most_the_limit(chat_class, sockets, caplog):
    chatcore.log.KINDS["message overflow"].reset()  # earlier tests' overflows must not have used its rate limit
    channel_map = {}
    limit = 64 * 1024
    Lines = line_collector(chat_class, channel_map, limit)
    hostile_server, hostile_peer = sockets.pair()
    honest_server, honest_peer = sockets.pair()
    hostile = Lines(hostile_server)
    honest = Lines(honest_server)
    try:
        honest_peer.sendall(b"before\r\n")
        # 4 MiB without a terminator, written while the loop reads it.
        flood = b"A" * (1 << 16)
        hostile_peer.setblocking(False)
        sent = 0
        while sent < (4 << 20) and hostile.connected:
            try:
                sent += hostile_peer.send(flood)
            except BlockingIOError:
                chatcore.loop(timeout=0.01, map=channel_map, count=1)
            except OSError:
                break  # the server closed the hostile connection
        serve_until(channel_map, lambda: not hostile.connected)
        honest_peer.sendall(b"after\r\n")
        serve_until(channel_map, lambda: honest.lines == [b"before", b"after"])
        assert receive_exactly(honest_peer, 15) == b"before\r\nafter\r\n"
        assert hostile.lines == [] and hostile.largest_held <= limit
        assert honest.connected and hostile_server.fileno() == -1
        assert "longer than ac_max_message_size (65536 bytes)" in caplog.text
    finally:
        chatcore.close_all(channel_map)


def test_the_default_limit_is_one_mebibyte(chat_class):
    assert chatcore.async_chat.ac_max_message_size == 1 << 20
    assert chat_class.ac_max_message_size == 1 << 20


def test_an_override_can_keep_the_channel_open(chat_class, sockets):
    channel_map = {}

    class Forgiving(line_collector(chat_class, channel_map, 10)):
        overflows = 0

        def handle_message_overflow(self):
            self.overflows += 1
            self._get_data()  # drop what was collected of the long line

    server, peer = sockets.pair()
    channel = Forgiving(server)
    try:
        peer.sendall(b"short\r\n" + b"L" * 50 + b"\r\nok\r\n")
        serve_until(channel_map, lambda: channel.lines == [b"short", b"ok"])
        assert channel.overflows == 1 and channel.connected
        assert receive_exactly(peer, 11) == b"short\r\nok\r\n"
    finally:
        chatcore.close_all(channel_map)


def test_compat_asynchat_keeps_stdlib_unbounded_input(sockets):
    assert compat_asynchat.async_chat.ac_max_message_size is None
    channel_map = {}

    class Legacy(compat_asynchat.async_chat):
        def __init__(self, sock):
            super().__init__(sock, map=channel_map)
            self.set_terminator(TERMINATOR)
            self.lines = []

        def collect_incoming_data(self, data):
            self._collect_incoming_data(data)

        def found_terminator(self):
            self.lines.append(len(self._get_data()))

    server, peer = sockets.pair()
    channel = Legacy(server)
    try:
        send_while_serving(peer, b"B" * (3 << 20) + TERMINATOR, channel_map)
        serve_until(channel_map, lambda: channel.lines == [3 << 20])
        assert channel.connected
    finally:
        chatcore.close_all(channel_map)


# -- one rule for limit values, checked when they are set (chatcore.limits) ------------


class Index:
    """Not an int, but usable as one (as a numpy integer is)."""

    def __init__(self, value):
        self.value = value

    def __index__(self):
        return self.value


BAD_LIMITS = [
    (1e6, TypeError, "not float"),
    ("10", TypeError, "not str"),
    (True, TypeError, "not bool"),
    (False, TypeError, "not bool"),
    ([1], TypeError, "not list"),
    (-1, ValueError, "must not be negative, got -1"),
    (Index(-5), ValueError, "must not be negative, got -5"),
]


@pytest.mark.parametrize("bad, error, words", BAD_LIMITS)
def test_framer_arguments_follow_the_one_rule(engine, bad, error, words):
    for call in (
        lambda f: f.feed(CollectRecorder(b"\n"), b"abc\n", True, bad),
        lambda f: f.feed(CollectRecorder(b"\n"), b"abc\n", max_size=bad),
        lambda f: f.feed_messages(MessageRecorder(b"\n"), b"abc\n", bad),
    ):
        with pytest.raises(error, match="^max_size .*" + re.escape(words)) as caught:
            call(engine.Framer())
        assert str(caught.value) == str(_rule_error(bad, "max_size"))


def _rule_error(value, name):
    from chatcore.limits import check_limit

    try:
        check_limit(value, name)
    except (TypeError, ValueError) as exc:
        return exc
    raise AssertionError("the rule accepted %r" % (value,))


@pytest.mark.skipif(ENGINES["c"] is None, reason="compiled engine not built")
@pytest.mark.parametrize("bad, error, words", BAD_LIMITS)
def test_both_engines_word_the_error_alike(bad, error, words):
    messages = []
    for engine in (ENGINES["c"], ENGINES["py"]):
        for attempt in (
            lambda engine=engine: engine.Framer().feed(CollectRecorder(b"\n"), b"a\n", True, bad),
            lambda engine=engine: engine.Framer().feed_messages(MessageRecorder(b"\n"), b"a\n", bad),
            lambda engine=engine: engine.SizeLimit("some_limit", bad),
        ):
            with pytest.raises(error) as caught:
                attempt()
            messages.append(str(caught.value))
    assert messages[:3] == messages[3:]
    assert messages[2].startswith("some_limit ")


@pytest.mark.parametrize("good", [0, 5, Index(5), 1 << 80])
def test_framer_accepts_ints_and_index_objects(engine, good):
    recorder = CollectRecorder(b"\n")
    engine.Framer().feed(recorder, b"abcde\nabcdef\n", True, good)
    limit = good.value if isinstance(good, Index) else good
    expected = [("data", b"abcde"), ("found", b"\n")] if limit >= 5 else [("overflow", b"\n")]
    assert recorder.events[: len(expected)] == expected


def test_feed_messages_takes_none_as_no_limit(engine):
    channel = MessageRecorder(b"\n")
    framer = engine.Framer()
    body = b"m" * (3 << 20)
    for start in range(0, len(body), 1 << 16):
        framer.feed_messages(channel, body[start : start + (1 << 16)], None)
    framer.feed_messages(channel, b"\nshort\n", None)
    assert channel.events == [("message", body), ("message", b"short")]
    channel.terminator = 4
    framer.feed_messages(channel, b"abcdefgh", None)
    assert channel.events[-2:] == [("message", b"abcd"), ("message", b"efgh")]


def message_class(engine):
    return type("message_chat", (chatcore.message_chat,), {"_engine": engine})


def chat_classes(chat_class):
    """(class, limit attribute) for async_chat and message_chat on the fixture's engine."""
    return [(chat_class, "ac_max_message_size"), (message_class(chat_class._engine), "max_message_size")]


@pytest.mark.parametrize("bad, error, words", BAD_LIMITS)
def test_a_bad_limit_in_a_class_body_fails_when_the_class_is_created(chat_class, bad, error, words):
    for base, name in chat_classes(chat_class):
        with pytest.raises(error, match=r"^%s .*%s" % (name, re.escape(words))):
            type("Channel", (base,), {name: bad})
    with pytest.raises(TypeError, match=r"^max_message_size must be None or an int >= 0, not float"):

        class Channel(chatcore.message_chat):
            max_message_size = 1e6

    with pytest.raises(TypeError, match=r"^ac_max_message_size .* not float"):

        class Legacy(compat_asynchat.async_chat):
            ac_max_message_size = 1e6


@pytest.mark.parametrize("bad, error, words", BAD_LIMITS)
def test_a_bad_limit_set_on_an_instance_fails_at_the_assignment(chat_class, bad, error, words):
    for base, name in chat_classes(chat_class):
        channel = base(None, map={})
        with pytest.raises(error, match="^%s .*%s" % (name, re.escape(words))):
            setattr(channel, name, bad)
        assert getattr(channel, name) == 1 << 20  # unchanged
        channel.close()


def test_limit_attributes_read_set_and_reset(chat_class):
    for base, name in chat_classes(chat_class):
        # The engine under test provides the descriptor.
        assert type(inspect.getattr_static(base, name)) is chat_class._engine.SizeLimit
        Small = type("Small", (base,), {name: Index(64)})
        assert type(vars(Small)[name]) is chat_class._engine.SizeLimit
        assert getattr(Small, name) == 64 and type(getattr(Small, name)) is int
        channel = Small(None, map={})
        assert getattr(channel, name) == 64
        setattr(channel, name, None)
        assert getattr(channel, name) is None and getattr(Small, name) == 64
        setattr(channel, name, Index(7))
        # Kept as a plain attribute, beside the class's default.
        key = inspect.getattr_static(Small, name).key
        assert getattr(channel, name) == 7 and vars(channel)[key] == 7 and getattr(Small, key) == 64
        delattr(channel, name)
        assert getattr(channel, name) == 64
        with pytest.raises(AttributeError):
            delattr(channel, name)
        assert getattr(Small(None, map={}), name) == 64
        channel.close()


def test_none_in_a_class_body_means_no_limit(chat_class):
    for base, name in chat_classes(chat_class):
        assert getattr(type("Unbounded", (base,), {name: None}), name) is None
    assert compat_asynchat.async_chat.ac_max_message_size is None
    assert chatcore.message_chat.max_message_size == 1 << 20


def test_other_attributes_of_the_same_name_are_left_alone(chat_class):
    """A legacy async_chat subclass may have its own ``max_message_size``: only
    message_chat's is chatcore's.  A property computing the limit is left alone
    too (the framer checks what it returns, on every read)."""

    class Legacy(compat_asynchat.async_chat):
        max_message_size = 1e6

    assert Legacy.max_message_size == 1e6

    class Computed(chat_class):
        @property
        def ac_max_message_size(self):
            return self.configured

    channel = Computed(None, map={})
    channel.configured = 10
    assert channel.ac_max_message_size == 10
    channel.close()


def test_a_limit_set_on_an_instance_applies_to_its_next_read(chat_class, sockets):
    channel_map = {}
    server, peer = sockets.pair()
    channel = line_collector(chat_class, channel_map, None)(server)
    overflows = []
    channel.handle_message_overflow = lambda: overflows.append(bytes(channel._get_data()))
    try:
        peer.sendall(b"x" * 100 + b"\r\n")
        serve_until(channel_map, lambda: channel.lines == [b"x" * 100])
        channel.ac_max_message_size = 50
        peer.sendall(b"y" * 100 + b"\r\nok\r\n")
        serve_until(channel_map, lambda: channel.lines[-1:] == [b"ok"])
        assert overflows == [b""] and channel.lines == [b"x" * 100, b"ok"]
    finally:
        chatcore.close_all(channel_map)


def test_message_chat_with_no_limit_takes_any_size(chat_class, sockets):
    channel_map = {}

    class Unbounded(message_class(chat_class._engine)):
        max_message_size = None

        def __init__(self, sock):
            super().__init__(sock, map=channel_map)
            self.set_terminator(b"\n")
            self.sizes = []

        def handle_message(self, message):
            self.sizes.append(len(message))

    server, peer = sockets.pair()
    channel = Unbounded(server)
    try:
        send_while_serving(peer, b"M" * (2 << 20) + b"\n", channel_map)
        serve_until(channel_map, lambda: channel.sizes == [2 << 20])
        assert channel.connected
    finally:
        chatcore.close_all(channel_map)


def test_size_limit_descriptor(engine):
    limit = engine.SizeLimit("cap", 10)
    assert (limit.name, limit.default) == ("cap", 10)
    assert repr(limit) == "SizeLimit('cap', 10)"
    assert engine.SizeLimit("cap").default is None
    with pytest.raises(TypeError, match="name must be a str"):
        engine.SizeLimit(b"cap", 10)
    with pytest.raises(AttributeError):
        limit.default = 5
    assert limit.key == "_limit_cap"


@pytest.mark.skipif(sys.version_info < (3, 11), reason="before 3.11 every instance has its __dict__ from the start")
def test_size_limits_leave_the_instance_dict_unasked(engine):
    # On 3.11 an object whose __dict__ has been asked for is slower at every
    # attribute access afterwards; reading, setting and deleting a limit must
    # not ask.  (gc.get_referents shows a materialised dict without making one.)
    class Holder:
        cap = engine.SizeLimit("cap", 5)

        def __init__(self):
            self.other = "value"

    holder = Holder()
    assert holder.cap == 5 and Holder.cap == 5
    holder.cap = 7
    assert holder.cap == 7
    del holder.cap
    assert holder.cap == 5
    with pytest.raises(AttributeError, match="cap"):
        del holder.cap
    import gc

    assert not any(type(ref) is dict and "other" in ref for ref in gc.get_referents(holder))
    # And the class reads its default where instances find it.
    assert Holder._limit_cap == 5
