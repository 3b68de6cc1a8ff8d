"""Fault tolerance over real sockets (socketpair and 127.0.0.1 TCP), served by ``loop()``.

These reach what the fake sockets of ``test_faults.py`` cannot: chatcore's
``recv_into`` fast path (faulted through a ``socket.socket`` subclass), its
gathered ``sendmsg`` path (faulted by wrapping ``chat._gathering_send``), real
EPIPE, RST, FIN and half-close, and the loop's dispatch in select and poll
mode.  Each scenario runs on the oracle (the real asyncore/asynchat, with
its own ``asyncore.loop``: stdlib's on <= 3.11, pyasyncore/pyasynchat on
3.12+, see ``oracle.py``) where it is installed, and on chatcore over both
engines.  Every socket is closed and every wait is bounded by a number of
loop turns (helpers/serving.py).
"""

import errno
import random
import socket
import struct

import oracle
import pytest
from helpers import faults
from helpers.fakes import err
from helpers.recorders import data_of, merged
from helpers.scenarios import ORACLE, chatcore_impl, recorder
from helpers.serving import release, serve_until
from helpers.sockets import Peer, tcp_pair

from chatcore import chat as chat_module


class FaultySocket(socket.socket):
    """A real socket whose next recv/recv_into/send raise what is queued first."""

    def __init__(self, sock):
        super().__init__(fileno=sock.detach())
        self.recv_faults = []
        self.send_faults = []
        self.send_limits = None  # callable giving the most bytes one send takes
        self.calls = {"recv": 0, "recv_into": 0}

    def recv(self, *args):
        self.calls["recv"] += 1
        if self.recv_faults:
            raise self.recv_faults.pop(0)
        return super().recv(*args)

    def recv_into(self, *args):
        self.calls["recv_into"] += 1
        if self.recv_faults:
            raise self.recv_faults.pop(0)
        return super().recv_into(*args)

    def send(self, data, *args):
        if self.send_faults:
            raise self.send_faults.pop(0)
        if self.send_limits is not None:
            data = memoryview(data)[: self.send_limits()]
        return super().send(data, *args)


def rst_close(sock):
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    sock.close()


def echo_class(impl, producer=False):
    """A recorder that answers each message with message + b"\\n" (or via a failing producer)."""
    base = recorder(impl.async_chat)

    class Echo(base):
        def found(self, message):
            if producer:
                self.push_with_producer(faults.FailingProducer([message + b"\n"]))
            else:
                self.push(message + b"\n")

    return Echo


def impls(chat_class):
    return ([ORACLE] if ORACLE is not None else []) + [chatcore_impl(chat_class)]


def same_on_all(chat_class, scenario, *args):
    """The scenario's outcome, the same on the oracle (when present) and chatcore."""
    outcomes = [(impl.name, scenario(impl, *args)) for impl in impls(chat_class)]
    for name, outcome in outcomes[1:]:
        assert outcome == outcomes[0][1], "%s differs from %s" % (name, outcomes[0][0])
    return outcomes[-1][1]


# -- recv faults on chatcore's recv_into path ---------------------------------------------


def play_recv_fault(impl, code, on_error, use_poll):
    left, right = socket.socketpair()
    sock = FaultySocket(left)
    channel_map = {}
    channel = recorder(impl.async_chat)(sock, b"\r\n", channel_map, on_error=on_error)
    try:
        right.sendall(b"one\r\ntw")
        serve_until(channel_map, lambda: data_of(channel.events) == b"onetw", loop=impl.core.loop, use_poll=use_poll)
        sock.recv_faults.append(err(code))
        right.sendall(b"o\r\nthree\r\n")
        serve_until(
            channel_map,
            lambda: channel.gone or (channel.events[-1:] == [("term",)] and b"three" in data_of(channel.events)),
            loop=impl.core.loop,
            use_poll=use_poll,
        )
        impl.core.loop(timeout=0.01, use_poll=use_poll, map=channel_map, count=2)
        if impl is not ORACLE:
            assert sock.calls["recv_into"] and not sock.calls["recv"]  # the fast path
        return {"events": merged(channel.events), "pending": bytes(channel.ac_in_buffer)}
    finally:
        release(channel_map)
        sock.close()
        right.close()


@pytest.mark.parametrize("use_poll", [False, True], ids=["select", "poll"])
@pytest.mark.parametrize("fault, on_error", faults.FAULT_CASES)
def test_recv_fault_on_a_real_socket(chat_class, fault, on_error, use_poll):
    code, kind = faults.RECV_FAULTS[fault]
    head = [("data", b"one"), ("term",), ("data", b"tw")]
    tail = [("data", b"o"), ("term",), ("data", b"three"), ("term",)]
    if kind == faults.IGNORED:
        expected = [("data", b"one"), ("term",), ("data", b"two"), ("term",), ("data", b"three"), ("term",)]
    elif kind == faults.CLOSED:
        expected = head + [("close",)]
    elif on_error == "close":
        expected = head + [("error", faults.EXCEPTION_NAMES[code]), ("close",)]
    else:
        expected = head + [("error", faults.EXCEPTION_NAMES[code])] + tail
    outcome = same_on_all(chat_class, play_recv_fault, code, on_error, use_poll)
    assert outcome == {"events": expected, "pending": b""}


# -- send faults on both send paths --------------------------------------------------------


@pytest.fixture
def gathered_send_faults(monkeypatch):
    """Faults and short sends for chatcore's gathered sendmsg path."""
    pending_faults = []
    state = {"limit": None, "calls": 0}
    real = chat_module._gathering_send

    def faulty(sock):
        send = real(sock)

        def sendmsg(buffers):
            state["calls"] += 1
            if pending_faults:
                raise pending_faults.pop(0)
            limit = state["limit"]
            if limit is not None:
                budget, cut = limit(), []
                for buffer in buffers:
                    if budget <= 0:
                        break
                    cut.append(memoryview(buffer)[:budget])
                    budget -= len(cut[-1])
                buffers = cut
            return send(buffers)

        return sendmsg

    monkeypatch.setattr(chat_module, "_gathering_send", faulty)
    return pending_faults, state


def play_send_fault(impl, code, on_error, use_poll, gathered_faults=None):
    left, right = socket.socketpair()
    sock = left if gathered_faults is not None else FaultySocket(left)
    pending_faults = gathered_faults if gathered_faults is not None else sock.send_faults
    channel_map = {}
    channel = echo_class(impl)(sock, b"\n", channel_map, on_error=on_error)
    peer = Peer(right)
    try:
        pending_faults.append(err(code))
        right.sendall(b"a\n")  # the echo's first send fails
        serve_until(
            channel_map,
            lambda: channel.gone or peer.received == b"a\n",
            loop=impl.core.loop,
            use_poll=use_poll,
            peers=[peer],
        )
        if not channel.gone:
            right.sendall(b"b\n")
        serve_until(
            channel_map,
            lambda: peer.eof or peer.received == b"a\nb\n",
            loop=impl.core.loop,
            use_poll=use_poll,
            peers=[peer],
        )
        return {"events": merged(channel.events), "received": bytes(peer.received), "eof": peer.eof}
    finally:
        release(channel_map)
        sock.close()
        right.close()


def expected_send_fault_outcome(code, kind, on_error):
    requests = [("data", b"a"), ("term",)]
    if kind == faults.IGNORED or (kind == faults.ERROR and on_error == "keep"):
        error = [("error", faults.EXCEPTION_NAMES[code])] if kind == faults.ERROR else []
        return {"events": requests + error + [("data", b"b"), ("term",)], "received": b"a\nb\n", "eof": False}
    error = [("error", faults.EXCEPTION_NAMES[code])] if kind == faults.ERROR else []
    return {"events": requests + error + [("close",)], "received": b"", "eof": True}


@pytest.mark.parametrize("use_poll", [False, True], ids=["select", "poll"])
@pytest.mark.parametrize("fault, on_error", faults.FAULT_CASES)
def test_send_fault_on_a_real_socket(chat_class, fault, on_error, use_poll):
    """Through socket.send (stdlib's path, chatcore's for a subclassed socket)."""
    code, kind = faults.RECV_FAULTS[fault]
    outcome = same_on_all(chat_class, play_send_fault, code, on_error, use_poll)
    assert outcome == expected_send_fault_outcome(code, kind, on_error)


@pytest.mark.parametrize("use_poll", [False, True], ids=["select", "poll"])
@pytest.mark.parametrize("fault, on_error", faults.FAULT_CASES)
def test_send_fault_on_the_gathered_path(chat_class, gathered_send_faults, fault, on_error, use_poll):
    """chatcore's coalesced sendmsg path handles each errno as stdlib's send path."""
    code, kind = faults.RECV_FAULTS[fault]
    pending_faults, state = gathered_send_faults
    outcome = play_send_fault(chatcore_impl(chat_class), code, on_error, use_poll, pending_faults)
    assert state["calls"] and not pending_faults  # the fault was raised on this path
    assert outcome == expected_send_fault_outcome(code, kind, on_error)


# -- random partial sends over a real socket ----------------------------------------------


def play_partial_sends(impl, seed, path, state=None):
    """Echo lines with pushes and producers through sends cut at random, then bye."""
    rng = random.Random(seed)
    limit = lambda: rng.choice([1, 2, 7, 100, 1000, 5000, 1 << 20])  # noqa: E731
    left, right = socket.socketpair()
    left.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 8192)
    if path == "send":
        sock = FaultySocket(left)
        sock.send_limits = limit
    else:
        sock, state["limit"] = left, limit
    channel_map = {}
    base = echo_class(impl)

    class Mixed(base):
        def found(self, message):
            self.push(b"<" + message)
            if rng.random() < 0.3:
                self.push_with_producer(impl.simple_producer(message * 20, rng.choice([37, 700])))
                self.push_with_producer(faults.ChunkProducer([bytearray(b"|"), message]))
            else:
                self.push(bytearray(message * 20))
                self.push(memoryview(b"|" + message))
            if message == b"bye":
                self.close_when_done()

    channel = Mixed(sock, b"\n", channel_map)
    peer = Peer(right)
    words = [b"w%03d-%s" % (index, b"x" * rng.randrange(100)) for index in range(30)]
    try:
        right.sendall(b"".join(word + b"\n" for word in words + [b"bye"]))
        # Stdlib sends one piece per write event: many (fast) turns.
        serve_until(channel_map, lambda: peer.eof, loop=impl.core.loop, peers=[peer], turns=20_000)
        expected = b"".join(b"<" + w + w * 20 + b"|" + w for w in words + [b"bye"])
        return {
            "received": bytes(peer.received),
            "expected": expected,
            "events": [event for event in channel.events if event[0] != "data"],
        }
    finally:
        release(channel_map)
        sock.close()
        right.close()


@pytest.mark.parametrize("seed", range(3))
def test_random_partial_sends_through_socket_send(chat_class, seed):
    for impl in impls(chat_class):
        outcome = play_partial_sends(impl, seed, "send")
        assert outcome["received"] == outcome["expected"], impl.name
        assert outcome["events"].count(("close",)) == 1, impl.name


@pytest.mark.parametrize("seed", range(3))
def test_random_partial_sends_through_gathered_sendmsg(chat_class, gathered_send_faults, seed):
    state = gathered_send_faults[1]
    outcome = play_partial_sends(chatcore_impl(chat_class), seed, "sendmsg", state)
    assert state["calls"] >= 5  # the sends went this way
    assert outcome["received"] == outcome["expected"]
    assert outcome["events"].count(("close",)) == 1


# -- the peer goes away -------------------------------------------------------------------


def make_pair(transport):
    return tcp_pair() if transport == "tcp" else socket.socketpair()


@pytest.mark.parametrize("inside_loop", [True, False], ids=["echo-in-loop", "push-outside"])
@pytest.mark.parametrize("use_poll", [False, True], ids=["select", "poll"])
def test_real_epipe_closes_once_and_sends_nothing(chat_class, use_poll, inside_loop):
    def play(impl):
        left, right = socket.socketpair()
        channel_map = {}
        channel = echo_class(impl)(left, b"\n", channel_map)
        try:
            right.shutdown(socket.SHUT_RD)  # our sends now fail with EPIPE
            if inside_loop:
                right.sendall(b"ping\n")
            else:
                channel.push(b"unsolicited\n")
            serve_until(channel_map, lambda: channel.gone, loop=impl.core.loop, use_poll=use_poll)
            channel.push(b"after the close\n")
            return merged(channel.events)
        finally:
            release(channel_map)
            left.close()
            right.close()

    requests = [("data", b"ping"), ("term",)] if inside_loop else []
    assert same_on_all(chat_class, play) == requests + [("close",)]


def play_peer_leaving(impl, transport, how, use_poll):
    """The peer sends whole messages and the start of one, then leaves by *how*."""
    left, right = make_pair(transport)
    channel_map = {}
    channel = echo_class(impl)(left, b"\r\n", channel_map)
    peer = Peer(right)
    try:
        channel.push(b"welcome\r\n")  # sent at once, before anything happens
        right.sendall(b"m1\r\nm2\r\npart\r")
        serve_until(
            channel_map,
            lambda: peer.received == b"welcome\r\nm1\nm2\n",
            loop=impl.core.loop,
            use_poll=use_poll,
            peers=[peer],
        )
        if how == "half-close":
            right.shutdown(socket.SHUT_WR)
        elif how == "close":
            right.close()
        else:
            rst_close(right)
        serve_until(
            channel_map,
            lambda: channel.gone,
            loop=impl.core.loop,
            use_poll=use_poll,
            peers=[] if how != "half-close" else [peer],
        )
        impl.core.loop(timeout=0.01, use_poll=use_poll, map=channel_map, count=2)
        if how == "half-close":
            serve_until(channel_map, lambda: peer.eof, loop=impl.core.loop, use_poll=use_poll, peers=[peer])
        return {
            "events": merged(channel.events),
            "pending": bytes(channel.ac_in_buffer),
            "received": bytes(peer.received),
            "eof": peer.eof,
        }
    finally:
        release(channel_map)
        left.close()
        right.close()


LEAVING = [("unix", "half-close"), ("tcp", "half-close"), ("unix", "close"), ("tcp", "close"), ("tcp", "reset")]


@pytest.mark.parametrize("use_poll", [False, True], ids=["select", "poll"])
@pytest.mark.parametrize("transport, how", LEAVING)
def test_peer_leaving_mid_message(chat_class, transport, how, use_poll):
    """Everything up to the end reaches collect_incoming_data once, the unfinished
    message gets no found_terminator, a partial terminator stays in ac_in_buffer,
    and what was pushed before reaches a half-closed peer; handle_close runs as
    often as in stdlib (twice in poll mode when the poller also reports POLLHUP)."""
    outcome = same_on_all(chat_class, play_peer_leaving, transport, how, use_poll)
    events = outcome["events"]
    closes = events.count(("close",))
    assert events[: closes and -closes] == [("data", b"m1"), ("term",), ("data", b"m2"), ("term",), ("data", b"part")]
    assert events[-closes:] == [("close",)] * closes
    # poll(): a hang-up (socketpair close, RST) is also reported as POLLHUP.
    assert closes == (2 if use_poll and (transport, how) in (("unix", "close"), ("tcp", "reset")) else 1)
    assert outcome["pending"] == b"\r"
    if how == "half-close":
        assert outcome["received"] == b"welcome\r\nm1\nm2\n" and outcome["eof"] is True


def test_integer_terminator_cut_short_by_the_peer(chat_class):
    def play(impl):
        left, right = socket.socketpair()
        channel_map = {}
        channel = recorder(impl.async_chat)(left, 10, channel_map)
        try:
            right.sendall(b"abcd")
            right.close()
            serve_until(channel_map, lambda: channel.gone, loop=impl.core.loop)
            return merged(channel.events), channel.get_terminator()
        finally:
            release(channel_map)
            left.close()

    assert same_on_all(chat_class, play) == ([("data", b"abcd"), ("close",)], 6)


# -- pushes made just before a failure ----------------------------------------------------


def play_push_then_fail(impl, how):
    left, right = socket.socketpair()
    channel_map = {}
    base = echo_class(impl)

    class Replier(base):
        def found(self, message):
            base.found(self, message)  # push the reply
            if how == "close":
                self.close()
            elif how == "raise":
                raise ValueError("after the push")

    Replier(left, b"\n", channel_map)
    peer = Peer(right)
    try:
        right.sendall(b"request\n")
        serve_until(channel_map, lambda: peer.eof, loop=impl.core.loop, peers=[peer])
        return bytes(peer.received)
    finally:
        release(channel_map)
        left.close()
        right.close()


@pytest.mark.parametrize("how", ["close", "raise"])
def test_reply_pushed_before_close_or_error_reaches_the_peer_on_the_oracle(how):
    oracle.require()
    assert play_push_then_fail(ORACLE, how) == b"request\n"


@pytest.mark.parametrize("how", ["close", "raise"])
def test_reply_pushed_before_close_or_error_reaches_the_peer(chat_class, how):
    assert play_push_then_fail(chatcore_impl(chat_class), how) == b"request\n"


# -- the loop keeps serving every other channel ------------------------------------------

# kind -> (first request, second request or how the peer leaves, what the faulty
# channel records, what its peer receives, whether its peer sees EOF or a reset).  The
# trigger "!" is one byte, so no read can split it.
FAULTY = {
    "found_terminator raises": (
        b"f1\n",
        b"!\nf2\n",
        [("data", b"f1"), ("term",), ("data", b"!"), ("term",), ("error", "HandlerBug"), ("close",)],
        b"f1\n",
        True,
    ),
    "collect_incoming_data raises": (
        b"c1\n",
        b"!\nc2\n",
        [("data", b"c1"), ("term",), ("data", b"!"), ("error", "HandlerBug"), ("close",)],
        b"c1\n",
        True,
    ),
    "producer more() raises": (
        b"p1\n",
        None,
        [("data", b"p1"), ("term",), ("error", "ProducerBug"), ("close",)],
        b"p1\n",
        True,
    ),
    # Closing a socketpair end with unread input resets the peer (Linux).
    "recv EINTR": (b"r1\n", None, [("error", "InterruptedError"), ("close",)], b"", "reset"),
    "send EPIPE": (b"s1\n", None, [("data", b"s1"), ("term",), ("close",)], b"", True),
    "peer RST": (b"t1\npart", "reset", [("data", b"t1"), ("term",), ("data", b"part"), ("close",)], b"t1\n", False),
    "peer closes": (b"u1\npart", "close", [("data", b"u1"), ("term",), ("data", b"part"), ("close",)], b"u1\n", False),
    "peer half-closes": (
        b"h1\npart",
        "half-close",
        [("data", b"h1"), ("term",), ("data", b"part"), ("close",)],
        b"h1\n",
        True,
    ),
}


def play_many(impl, use_poll, healthy=8, lines=40):
    channel_map = {}
    sockets, peers, channels = [], {}, {}
    try:
        for index in range(healthy):
            left, right = socket.socketpair()
            sockets += [left, right]
            channels[index] = echo_class(impl)(left, b"\n", channel_map)
            peers[index] = Peer(right)
        for kind, (first, _, _, _, _) in FAULTY.items():
            left, right = tcp_pair() if kind == "peer RST" else socket.socketpair()
            if kind == "recv EINTR":
                left = FaultySocket(left)
                left.recv_faults.append(err(errno.EINTR))
            sockets += [left, right]
            channel = echo_class(impl, producer=kind.startswith("producer"))(
                left,
                b"\n",
                channel_map,
                fail_found=(lambda message: message == b"!") if kind.startswith("found") else None,
                fail_collect=(lambda data: b"!" in data) if kind.startswith("collect") else None,
            )
            channels[kind] = channel
            peers[kind] = Peer(right)
            if kind == "send EPIPE":
                right.shutdown(socket.SHUT_RD)
            right.sendall(first)
        requests = {
            index: [b"%d:%d:%s" % (index, line, b"y" * (line * 37 % 300)) for line in range(lines)]
            for index in range(healthy)
        }
        half = lines // 2
        for index in range(healthy):
            peers[index].sock.sendall(b"".join(line + b"\n" for line in requests[index][:half]))

        def echoed(index, upto):
            return peers[index].received == b"".join(line + b"\n" for line in requests[index][:upto])

        def first_phase_done():
            # A fault needing no more input has struck; the others have had
            # their first request read.
            return all(echoed(index, half) for index in range(healthy)) and all(
                channels[kind].gone
                if FAULTY[kind][1] is None
                else data_of(channels[kind].events) == FAULTY[kind][0].replace(b"\n", b"")
                for kind in FAULTY
            )

        serve_until(channel_map, first_phase_done, loop=impl.core.loop, use_poll=use_poll, peers=list(peers.values()))
        for index in range(healthy):
            peers[index].sock.sendall(b"".join(line + b"\n" for line in requests[index][half:]))
        for kind, (_, then, _, _, _) in FAULTY.items():
            peer = peers[kind]
            if then == "reset":
                rst_close(peer.sock)
            elif then == "close":
                peer.sock.close()
            elif then == "half-close":
                peer.sock.shutdown(socket.SHUT_WR)
            elif then is not None:
                peer.sock.sendall(then)
        live = [peer for key, peer in peers.items() if peer.sock.fileno() >= 0]
        serve_until(
            channel_map,
            lambda: (
                all(echoed(index, lines) for index in range(healthy)) and all(channels[kind].gone for kind in FAULTY)
            ),
            loop=impl.core.loop,
            use_poll=use_poll,
            peers=live,
        )
        impl.core.loop(timeout=0.01, use_poll=use_poll, map=channel_map, count=3)
        for peer in live:
            peer.pump()
        return {
            "healthy": [
                (
                    merged(channels[index].events).count(("close",)),
                    [event for event in channels[index].events if event[0] == "error"],
                )
                for index in range(healthy)
            ],
            "faulty": {
                kind: (merged(channels[kind].events), bytes(peers[kind].received), peers[kind].eof) for kind in FAULTY
            },
        }
    finally:
        release(channel_map)
        for sock in sockets:
            sock.close()


@pytest.mark.parametrize("use_poll", [False, True], ids=["select", "poll"])
def test_loop_keeps_serving_healthy_channels_next_to_every_fault(chat_class, use_poll):
    outcome = same_on_all(chat_class, play_many, use_poll)
    # Every healthy echo was exact (play_many waits for it), none failed or closed.
    assert outcome["healthy"] == [(0, [])] * 8
    for kind, (events, received, eof) in outcome["faulty"].items():
        expected_events, expected_received, expected_eof = FAULTY[kind][2:]
        closes = events.count(("close",))
        # poll(): POLLHUP after the socketpair close / the RST calls handle_close again.
        assert closes == (2 if use_poll and kind in ("peer RST", "peer closes") else 1), kind
        assert events[: len(events) - closes + 1] == expected_events, kind
        assert (received, eof) == (expected_received, expected_eof), kind
