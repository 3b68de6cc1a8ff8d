"""Typed memoryviews leave as exactly their bytes, on both engines.

``len()`` and slices of a memoryview count items: a view over ``array('i')``
has itemsize 4, a 2-D view's ``len()`` is its first dimension.  stdlib's
asynchat counts with them in ``push()`` (splitting), ``initiate_send()``
(``num_sent < len(data)``, ``first[num_sent:]``), so a partial send of a
typed view loses or repeats bytes there.  chatcore normalises every
memoryview to its bytes where it enters the outgoing queue (``push``), where
one reaches its head by another route (a producer's ``more()``, a direct
``producer_fifo.append``) and in gathered sends: every byte of the view, in
C order (``view.tobytes()``), is sent exactly once (docs/migrating.rst,
"Where chatcore differs from stdlib, on purpose").  Plain byte views and bytes are still queued without a
copy.

The fakes count bytes as a real socket does (``send`` of a non-contiguous
buffer fails as it does on a socket); the loopback tests run the same views
through ``async_chat`` over socketpairs, on both send timings.
"""

import array
import ctypes
import struct
from collections import deque

import oracle
import pytest
from helpers.engines import ENGINES
from helpers.fakes import FakeSocket, sent_bytes
from helpers.recorders import Gatherer, Sender, drain
from helpers.serving import serve_and_receive
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import chatcore
from chatcore.compat import asynchat as compat_asynchat

try:
    import _testbuffer  # CPython's own test exporter: strided N-d, Fortran, PIL-style views
except ImportError:
    _testbuffer = None


class _Point(ctypes.Structure):
    _fields_ = [("x", ctypes.c_int16), ("y", ctypes.c_double)]


def _ctypes_grid():
    grid = ((ctypes.c_int32 * 7) * 9)()
    for row in range(9):
        for column in range(7):
            grid[row][column] = row * 1000 + column - 3
    return memoryview(grid)


def _points():
    points = (_Point * 40)()
    for index, point in enumerate(points):
        point.x, point.y = index - 20, index / 3
    return memoryview(points)


def _testbuffer_view(flags=0, step=None):
    items = [(7 * i) % 251 for i in range(12 * 20)]
    exporter = _testbuffer.ndarray(items, shape=[12, 20], format="i", flags=flags)
    if step:
        exporter = exporter[::2, 1::3]
    return memoryview(exporter)


# name -> a fresh view: every format, shape and layout push() may be given.
VIEWS = {
    "bytes": lambda: memoryview(bytes(range(256)) * 3),
    "bytearray": lambda: memoryview(bytearray(range(256)) * 3),
    "int32": lambda: memoryview(array.array("i", range(-300, 300))),
    "double": lambda: memoryview(array.array("d", [i / 7 for i in range(150)])),
    "uint16-strided": lambda: memoryview(array.array("H", range(900)))[::3],
    "bytes-strided": lambda: memoryview(bytes(range(256)) * 3)[1::2],
    "int32-reversed": lambda: memoryview(array.array("i", range(300)))[::-1],
    "int32-2d": lambda: memoryview(array.array("i", range(600))).cast("B").cast("i", shape=[20, 30]),
    "bytes-3d": lambda: memoryview(bytes(range(120))).cast("B", shape=[4, 5, 6]),
    "char": lambda: memoryview(b"characters " * 40).cast("c"),
    "signed": lambda: memoryview(bytes(range(256))).cast("b"),
    "ctypes-2d": _ctypes_grid,
    "ctypes-struct": _points,
    "zero-dim": lambda: memoryview(struct.pack("q", 0x0102030405060708)).cast("q", shape=[]),
    "empty-int32": lambda: memoryview(array.array("i")),
    # cast("B") refuses a shape with zeros: copied (to b"").
    "zeros-in-shape": lambda: VIEWS["int32-2d"]()[0:0],
}
if _testbuffer is not None:
    VIEWS["nd-strided"] = lambda: _testbuffer_view(step=True)
    VIEWS["nd-fortran"] = lambda: _testbuffer_view(_testbuffer.ND_FORTRAN)
    VIEWS["nd-pil"] = lambda: _testbuffer_view(_testbuffer.ND_PIL)

#: Views whose bytes are contiguous in memory: queued without a copy.
ZERO_COPY = {
    "bytes",
    "bytearray",
    "int32",
    "double",
    "int32-2d",
    "bytes-3d",
    "char",
    "signed",
    "ctypes-2d",
    "ctypes-struct",
    "zero-dim",
    "empty-int32",
}


def nbytes(item):
    with memoryview(item) as view:
        return view.nbytes


def gather_all(engine, fifo, sendmsg, max_bytes=64, turns=20000):
    for _ in range(turns):
        if not fifo:
            return sendmsg.data
        before = sum(map(nbytes, fifo))
        unsent = engine.send_gathered(fifo, sendmsg, max_bytes)
        after = sum(map(nbytes, fifo))
        sent = before - after
        # What it reports unsent is in bytes too: what it gathered minus what went.
        assert unsent == sum(map(len, sendmsg.calls[-1])) - sent
    raise AssertionError("the queue did not drain")


# -- push and initiate_send --------------------------------------------------------------


@pytest.mark.parametrize("kind", sorted(VIEWS))
@pytest.mark.parametrize("zero_copy", [False, True], ids=["copy", "zero-copy"])
@pytest.mark.parametrize("accept", [None, (5, 1, 3)], ids=["whole", "partial"])
def test_a_pushed_view_is_sent_as_exactly_its_bytes(engine, kind, zero_copy, accept):
    view = VIEWS[kind]()
    expected = view.tobytes()
    sender = Sender(out_buffer_size=7, accept=accept)
    engine.push(sender, b"<")
    engine.push(sender, view)
    engine.push(sender, b">")
    sender.producer_fifo.append(None)
    assert drain(engine, sender, zero_copy) == b"<" + expected + b">"
    assert sender.closed == 1
    # Split by bytes: no send() is offered more than ac_out_buffer_size bytes.
    assert max(map(len, sender.offered)) <= 7


@pytest.mark.parametrize("kind", sorted(VIEWS))
def test_push_queues_byte_views_without_copying_contiguous_ones(engine, kind):
    view = VIEWS[kind]()
    sender = Sender(out_buffer_size=50)
    engine.push(sender, view)
    queued = list(sender.producer_fifo)
    assert b"".join(sent_bytes(piece) for piece in queued) == view.tobytes()
    for piece in queued:
        # len() of what is queued counts bytes, and every piece fits a send.
        assert len(piece) == len(sent_bytes(piece)) <= 50
    if kind in ZERO_COPY:
        assert all(type(piece) is memoryview and piece.obj is view.obj for piece in queued)
    else:
        assert all(type(piece) is bytes for piece in queued)  # one copy, in C order


def test_plain_buffers_are_queued_as_they_are(engine):
    sender = Sender(out_buffer_size=64)
    data, view, buffer = b"bytes", memoryview(b"a byte view"), bytearray(b"mutable")
    for item in (data, view, buffer):
        engine.push(sender, item)
    assert [a is b for a, b in zip(sender.producer_fifo, (data, view, buffer))] == [True] * 3
    engine.push(sender, b"x" * 150)
    assert [type(piece) for piece in list(sender.producer_fifo)[3:]] == [bytes] * 3


def test_a_released_view_is_refused_on_push(engine):
    view = memoryview(array.array("i", [1, 2]))
    view.release()
    with pytest.raises(ValueError, match="released"):
        engine.push(Sender(), view)


@pytest.mark.parametrize("kind", ["int32", "int32-2d", "uint16-strided", "ctypes-struct"])
def test_views_appended_directly_or_produced_are_sent_as_their_bytes(engine, kind):
    class Producer:
        def __init__(self, views):
            self.views = list(views)

        def more(self):
            return self.views.pop(0) if self.views else b""

    produced = [VIEWS[kind](), VIEWS["double"](), VIEWS[kind]()]
    appended = VIEWS[kind]()
    sender = Sender(out_buffer_size=9, accept=(4, 13, 2))
    sender.producer_fifo.append(appended)  # as a relay does, bypassing push()
    sender.producer_fifo.append(Producer(produced))
    sender.producer_fifo.append(VIEWS[kind]())
    expected = b"".join(view.tobytes() for view in [appended] + produced + [VIEWS[kind]()])
    assert drain(engine, sender, True) == expected


def test_a_normalised_head_replaces_the_original(engine):
    view = memoryview(array.array("i", range(10)))
    sender = Sender(out_buffer_size=1 << 16, accept=(6,))
    sender.producer_fifo.append(view)
    engine.initiate_send(sender, True)
    head = sender.producer_fifo[0]
    assert head.format == "B" and head.obj is view.obj and len(head) == 40 - 6
    strided = memoryview(array.array("i", range(10)))[::2]
    stalled = Sender(accept=(0,))
    stalled.producer_fifo.append(strided)
    engine.initiate_send(stalled, True)
    # Copied once, kept: the next attempt does not copy again.
    assert type(stalled.producer_fifo[0]) is bytes
    assert stalled.producer_fifo[0] == strided.tobytes()


# -- gathered sends ----------------------------------------------------------------------


@pytest.mark.parametrize("accept", [None, (5, 17, 1)], ids=["whole", "partial"])
def test_gathered_sends_count_bytes(engine, accept):
    items = [VIEWS[kind]() for kind in sorted(VIEWS)] + [b"bytes", bytearray(b"array")]
    expected = b"".join(memoryview(item).tobytes() for item in items)
    fifo = deque(items)
    sendmsg = Gatherer(accept)
    assert gather_all(engine, fifo, sendmsg, max_bytes=64) == expected
    # Gathering stops once max_bytes bytes (not items) are gathered.
    largest = max(map(nbytes, items))
    assert all(sum(map(len, call)) < 64 + largest for call in sendmsg.calls)


def test_gathered_normalised_views_stay_queued_normalised(engine):
    strided = memoryview(array.array("i", range(20)))[::2]
    typed = memoryview(array.array("i", range(20)))
    fifo = deque([b"head", typed, strided])
    sendmsg = Gatherer(accept=(6,))
    assert engine.send_gathered(fifo, sendmsg, 1 << 20) == 4 + 80 + 40 - 6
    assert [type(item) for item in fifo] == [memoryview, bytes]
    assert fifo[0].format == "B" and fifo[0].obj is typed.obj and len(fifo[0]) == 78
    assert fifo[1] == strided.tobytes()


def test_gathered_send_error_leaves_typed_views_queued(engine):
    typed = memoryview(array.array("i", range(4)))

    def refuse(buffers):
        raise BlockingIOError(11, "would block")

    fifo = deque([typed])
    with pytest.raises(BlockingIOError):
        engine.send_gathered(fifo, refuse, 1 << 20)
    assert list(fifo) == [typed] and fifo[0] is typed


# -- the two engines agree -----------------------------------------------------------------

_items = st.one_of(
    st.sampled_from(sorted(VIEWS)),
    st.binary(max_size=30),
    st.binary(max_size=30).map(bytearray),
)


@pytest.mark.skipif(ENGINES["c"] is None, reason="compiled engine not built")
@settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(
    items=st.lists(st.tuples(_items, st.booleans()), max_size=8),
    accepts=st.lists(st.integers(0, 40), min_size=1, max_size=6),
    size=st.integers(1, 64),
    zero_copy=st.booleans(),
    gathered=st.booleans(),
)
def test_outgoing_engines_agree_on_views(items, accepts, size, zero_copy, gathered):
    if all(accept == 0 for accept in accepts):
        accepts = accepts + [1]
    results = []
    for engine in (ENGINES["c"], ENGINES["py"]):
        sender = Sender(out_buffer_size=size, accept=accepts)
        expected = b""
        for item, direct in items:
            data = VIEWS[item]() if isinstance(item, str) else item
            expected += data.tobytes() if isinstance(data, memoryview) else bytes(data)
            if direct:
                sender.producer_fifo.append(data)
            else:
                engine.push(sender, data)
        # At worst one byte (or one empty item) per cycle of the accepted counts.
        turns = (len(expected) + len(items) + 1) * len(accepts)
        if gathered:
            sendmsg = Gatherer(accepts)
            assert gather_all(engine, sender.producer_fifo, sendmsg, max_bytes=size, turns=turns) == expected
            results.append(sendmsg.calls)
        else:
            assert drain(engine, sender, zero_copy, turns) == expected
            results.append(sender.offered)
    assert results[0] == results[1]


# -- async_chat over sockets -----------------------------------------------------------------


def _payload():
    # Large enough that the socket takes it in several partial sends.
    big = memoryview(array.array("i", range(200_000)))
    return [
        big,
        VIEWS["uint16-strided"](),
        b"|bytes|",
        VIEWS["int32-2d"](),
        VIEWS["ctypes-struct"](),
        VIEWS["nd-strided"]() if "nd-strided" in VIEWS else VIEWS["bytes-strided"](),
    ]


@pytest.mark.parametrize("timing", ["coalesced", "stdlib", "send-overridden"])
def test_views_pushed_by_a_handler_arrive_exactly(chat_class, sockets, timing):
    """A handler pushes views in reply to a line; the peer gets exactly their bytes."""
    channel_map = {}
    payload = _payload()
    expected = b"".join(item.tobytes() if isinstance(item, memoryview) else item for item in payload)

    class Replier(chat_class):
        ac_coalesce_sends = timing == "coalesced"
        ac_out_buffer_size = 4096

        def __init__(self, sock):
            super().__init__(sock, map=channel_map)
            self.set_terminator(b"\n")

        def collect_incoming_data(self, data):
            pass

        def found_terminator(self):
            for item in payload:
                self.push(item)
            self.push_with_producer(chatcore.simple_producer(b"<end>", 2))
            self.close_when_done()

        if timing == "send-overridden":

            def send(self, data):  # stdlib's path: initiate_send() without zero-copy
                return chat_class.send(self, data)

    server, peer = sockets.pair(send_buffer=8192)
    channel = Replier(server)
    try:
        peer.sendall(b"go\n")
        received = serve_and_receive(channel_map, peer)
        assert received == expected + b"<end>"
        assert not channel.connected
    finally:
        chatcore.close_all(channel_map)


def test_a_relay_appending_views_to_another_channel_sends_their_bytes(chat_class, sockets):
    channel_map = {}
    payload = [VIEWS["int32"](), VIEWS["bytes-strided"](), VIEWS["zero-dim"]()]
    expected = b"".join(view.tobytes() for view in payload)

    class Sink(chat_class):
        def collect_incoming_data(self, data):
            pass

    server, peer = sockets.pair()
    sink = Sink(server, map=channel_map)
    try:
        sink.producer_fifo.extend(payload)  # a legacy relay's direct append
        assert serve_and_receive(channel_map, peer, len(expected)) == expected
    finally:
        chatcore.close_all(channel_map)


# -- against the oracle ------------------------------------------------------------------------


def play_pushes(async_chat_class, items, write):
    class Channel(async_chat_class):
        ac_out_buffer_size = 11

        def collect_incoming_data(self, data):
            pass

    sock = FakeSocket(sends=[7, 3, 20] * 700)  # more than the turns below
    channel = Channel(sock, map={})
    for item in items:
        channel.push(item)
    for _ in range(2000):
        if not channel.producer_fifo:
            break
        write(channel)
    return bytes(sock.sent), sock.send_sizes


@pytest.mark.parametrize("kind", ["bytes", "bytearray", "bytes-3d", "char", "int32", "ctypes-2d"])
def test_compat_matches_the_oracle_on_byte_views_and_sends_typed_ones_exactly(engine, kind):
    """Byte views (format 'B', 1-D): the same send() calls as the oracle.  Any
    other view: exactly its bytes, where the oracle's item counting loses or
    repeats some on partial sends (docs/migrating.rst, "differs on purpose")."""
    compat_class = type("async_chat", (compat_asynchat.async_chat,), {"_engine": engine})
    items = [b"head", VIEWS[kind](), b"tail"]
    expected = b"head" + VIEWS[kind]().tobytes() + b"tail"
    sent, offered = play_pushes(compat_class, items, lambda channel: channel.handle_write())
    assert sent == expected and max(offered) <= 11
    if kind in ("bytes", "bytearray") and oracle.asynchat is not None:
        reference = play_pushes(oracle.asynchat.async_chat, items, lambda channel: oracle.asyncore.write(channel))
        assert (sent, offered) == reference
