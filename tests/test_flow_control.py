"""Idle timeouts, output backpressure, read pauses and half-close on one channel (both engines).

The scenario-sized versions (hundreds of slow clients, a never-reading
client against a server process) are in test_hostile_load.py; these pin
down the semantics with one socketpair and a loop turned by the test.
"""

import logging
import socket

import pytest
from helpers.serving import TURN, release, serve_and_receive, serve_until
from helpers.sockets import Peer

import chatcore
from chatcore import chat
from chatcore.compat import asynchat as compat_asynchat

# Short enough to keep the tests quick, long enough for a loaded machine to
# turn the loop many times within it.
IDLE = 0.3


def echo_class(chat_class, channel_map, **attributes):
    """*chat_class* echoing every line back; counts handle_close calls."""

    class Echo(chat_class):
        def __init__(self, sock):
            super().__init__(sock, map=channel_map)
            self.set_terminator(b"\n")
            self.data = []
            self.closes = 0
            self.timeouts = 0

        def collect_incoming_data(self, data):
            self.data.append(data)

        def found_terminator(self):
            self.push(b"".join(self.data) + b"\n")
            self.data = []

        def handle_close(self):
            self.closes += 1
            self.close()

    for name, value in attributes.items():
        setattr(Echo, name, value)
    return Echo


@pytest.fixture
def channel_map():
    served = {}
    yield served
    release(served)


# The settings.


def test_defaults_differ_between_chatcore_and_compat():
    assert chatcore.async_chat.ac_idle_timeout is None
    assert chatcore.async_chat.ac_max_output_buffer == 1 << 20
    assert compat_asynchat.async_chat.ac_idle_timeout is None
    assert compat_asynchat.async_chat.ac_max_output_buffer is None
    assert chatcore.async_chat._drain_on_peer_close
    assert not compat_asynchat.async_chat._drain_on_peer_close


@pytest.mark.parametrize(
    ("value", "error"),
    [
        (0, ValueError),
        (-1, ValueError),
        (float("nan"), ValueError),
        (float("inf"), ValueError),
        (True, TypeError),
        ("5", TypeError),
    ],
)
def test_a_bad_idle_timeout_fails_where_it_is_set(chat_class, socket_pair, channel_map, value, error):
    channel = chat_class(socket_pair[0], map=channel_map)
    with pytest.raises(error, match="ac_idle_timeout"):
        channel.ac_idle_timeout = value
    with pytest.raises(error, match="ac_idle_timeout"):
        type("Bad", (chat_class,), {"ac_idle_timeout": value})


@pytest.mark.parametrize(("value", "error"), [(-1, ValueError), (1.5, TypeError), (False, TypeError)])
def test_a_bad_output_limit_fails_where_it_is_set(chat_class, socket_pair, channel_map, value, error):
    channel = chat_class(socket_pair[0], map=channel_map)
    with pytest.raises(error, match="ac_max_output_buffer"):
        channel.ac_max_output_buffer = value
    with pytest.raises(error, match="ac_max_output_buffer"):
        type("Bad", (chat_class,), {"ac_max_output_buffer": value})


def test_a_class_body_value_is_what_instances_read_and_del_goes_back_to_it(chat_class, socket_pair, channel_map):
    cls = type("Timed", (chat_class,), {"ac_idle_timeout": 5, "ac_max_output_buffer": None})
    channel = cls(socket_pair[0], map=channel_map)
    assert channel.ac_idle_timeout == 5.0 and channel.ac_max_output_buffer is None
    channel.ac_idle_timeout = 2
    assert channel.ac_idle_timeout == 2.0
    del channel.ac_idle_timeout
    assert channel.ac_idle_timeout == 5.0
    channel.close()
    assert channel._idle_timer is None


def test_compat_channels_are_not_watched_and_their_dict_stays_stdlib_s(socket_pair, channel_map):
    class Legacy(compat_asynchat.async_chat):
        def collect_incoming_data(self, data):
            pass

        def found_terminator(self):
            pass

    channel = Legacy(socket_pair[0], map=channel_map)
    channel.set_terminator(b"\n")
    channel.push(b"x\n")
    socket_pair[1].sendall(b"line\n")
    serve_until(channel_map, lambda: not channel.ac_in_buffer and channel.incoming == [], turns=20)
    assert not channel._io_watched
    assert not {"_activity", "_idle_timer", "_read_pauses"} & set(vars(channel))


# Idle timeout.


def test_a_silent_channel_times_out_once_and_is_closed(chat_class, socket_pair, channel_map, caplog):
    channel = echo_class(chat_class, channel_map, ac_idle_timeout=IDLE)(socket_pair[0])
    peer = Peer(socket_pair[1])
    caplog.set_level(logging.INFO, logger="chatcore")
    serve_until(channel_map, lambda: channel._fileno is None, what="the idle close", peers=[peer], turns=500)
    peer.pump()
    assert peer.eof
    # Closed by the timeout itself, not through handle_close.
    assert channel.closes == 0
    assert [r.getMessage() for r in caplog.records if "for 0.3 s" in r.getMessage()]


def test_a_channel_that_keeps_talking_is_not_timed_out(chat_class, socket_pair, channel_map):
    channel = echo_class(chat_class, channel_map, ac_idle_timeout=IDLE)(socket_pair[0])
    peer = Peer(socket_pair[1])
    # A line every few turns, for several timeouts' worth of turns.
    for turn in range(int(4 * IDLE / TURN)):
        if turn % 5 == 0:
            socket_pair[1].send(b"ping\n")
        chatcore.loop(timeout=TURN, map=channel_map, count=1)
        peer.pump()
        assert channel._fileno is not None, "timed out while talking (turn %d)" % turn
    assert peer.received.count(b"ping\n") >= 2


def test_sending_alone_is_activity(chat_class, socket_pair, channel_map):
    # A server that only pushes (a feed) to a peer that reads is not idle.
    channel = echo_class(chat_class, channel_map, ac_idle_timeout=IDLE)(socket_pair[0])
    peer = Peer(socket_pair[1])
    ticks = []

    def tick():
        if channel._fileno is not None and len(ticks) < 60:
            channel.push(b"tick\n")
            ticks.append(chatcore.call_later(IDLE / 6, tick, map=channel_map))

    tick()
    serve_until(channel_map, lambda: len(ticks) >= 25 or channel._fileno is None, peers=[peer], turns=1000)
    assert channel._fileno is not None
    ticks[-1].cancel()


def test_an_override_decides_and_is_called_again_next_period(chat_class, socket_pair, channel_map):
    class Patient(echo_class(chat_class, channel_map, ac_idle_timeout=IDLE)):
        def handle_idle_timeout(self):
            self.timeouts += 1
            self.push(b"still there?\n")
            if self.timeouts == 2:
                self.close()

    channel = Patient(socket_pair[0])
    peer = Peer(socket_pair[1])
    serve_until(channel_map, lambda: channel._fileno is None, peers=[peer], turns=1000)
    peer.pump()
    assert channel.timeouts == 2
    assert bytes(peer.received) == b"still there?\n" * 2


def test_an_error_in_the_idle_handler_goes_to_handle_error(chat_class, socket_pair, channel_map):
    class Faulty(echo_class(chat_class, channel_map, ac_idle_timeout=IDLE)):
        errors = 0

        def handle_idle_timeout(self):
            raise RuntimeError("handler bug")

        def handle_error(self):
            self.errors += 1
            self.close()

    channel = Faulty(socket_pair[0])
    serve_until(channel_map, lambda: channel._fileno is None, turns=500)
    assert channel.errors == 1


def test_setting_and_clearing_the_timeout_on_a_served_channel(chat_class, socket_pair, channel_map):
    channel = echo_class(chat_class, channel_map)(socket_pair[0])
    assert channel._idle_timer is None
    channel.ac_idle_timeout = IDLE
    assert channel._idle_timer is not None
    channel.ac_idle_timeout = None
    assert channel._idle_timer is None
    # Switched off: several timeouts pass and the channel stays.
    for _ in range(int(3 * IDLE / TURN)):
        chatcore.loop(timeout=TURN, map=channel_map, count=1)
    assert channel._fileno is not None


def test_the_watch_follows_a_socket_swap(chat_class, sockets, channel_map):
    # STARTTLS-style: del_channel, then set_socket with another socket.
    first, _ = sockets.pair()
    second, second_peer = sockets.pair()
    channel = echo_class(chat_class, channel_map, ac_idle_timeout=IDLE)(first)
    channel.del_channel()
    channel.set_socket(second)
    serve_until(channel_map, lambda: channel._fileno is None, turns=500)
    second_peer.settimeout(5)
    assert second_peer.recv(10) == b""


# Read pauses and output backpressure.


def test_pause_reading_leaves_data_unread_until_resumed(chat_class, socket_pair, channel_map):
    channel = echo_class(chat_class, channel_map)(socket_pair[0])
    channel.pause_reading()
    assert channel.reading_paused
    socket_pair[1].sendall(b"held\n")
    for _ in range(10):
        chatcore.loop(timeout=TURN, map=channel_map, count=1)
    assert channel.data == [] and channel.output_buffer_size == 0
    channel.resume_reading()
    assert not channel.reading_paused
    assert serve_and_receive(channel_map, socket_pair[1], 5) == b"held\n"


def test_output_buffer_size_counts_bytes_not_items(chat_class, socket_pair, channel_map):
    channel = echo_class(chat_class, channel_map)(socket_pair[0])
    channel.producer_fifo.append(memoryview(bytes(12)).cast("i"))
    channel.producer_fifo.append(bytearray(5))
    channel.producer_fifo.append(chat.simple_producer(b"not yet produced"))
    assert channel.output_buffer_size == 17
    channel.discard_buffers()


@pytest.mark.parametrize("coalesce", [True, False], ids=["coalescing", "immediate"])
def test_a_peer_that_does_not_read_stops_the_reading_then_gets_everything(chat_class, sockets, channel_map, coalesce):
    server_end, client = sockets.pair()
    for sock in (server_end, client):
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 1 << 16)
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 1 << 16)
    limit = 256 * 1024
    channel = echo_class(chat_class, channel_map, ac_max_output_buffer=limit, ac_coalesce_sends=coalesce)(server_end)
    client.setblocking(False)
    line = b"y" * 99 + b"\n"
    total = 8 << 20
    sent = 0
    most_queued = 0
    paused_seen = False
    # Send as much as the sockets take without reading; the channel must stop reading.
    for _ in range(3000):
        try:
            while sent < total:
                sent += client.send(line * 200)
        except BlockingIOError:
            pass
        chatcore.loop(timeout=TURN, map=channel_map, count=1)
        most_queued = max(most_queued, channel.output_buffer_size)
        paused_seen = paused_seen or channel.reading_paused
        if paused_seen and channel.reading_paused and sent < total:
            # Blocked both ways: the client's sends no longer go anywhere.
            try:
                client.send(line * 200)
            except BlockingIOError:
                break
            else:
                sent += len(line) * 200
    assert paused_seen
    # One read's worth of lines past the limit at most (what a 64 KiB read echoes).
    assert most_queued <= limit + chatcore.async_chat.ac_in_buffer_size + 2 * len(line)
    # Now read: everything comes back, and reading resumed on the way.
    peer = Peer(client)
    serve_until(
        channel_map,
        lambda: len(peer.received) >= sent or (not channel.reading_paused and len(peer.received) > limit),
        peers=[peer],
        turns=5000,
    )
    assert not channel.reading_paused or len(peer.received) >= sent
    client.shutdown(socket.SHUT_WR)
    serve_until(channel_map, lambda: peer.eof, peers=[peer], turns=5000, what="the whole echo")
    assert len(peer.received) == sent
    assert bytes(peer.received) == line * (sent // len(line))


def test_tiny_pushes_count_their_entries_toward_the_limit(chat_class, socket_pair, channel_map):
    channel = echo_class(chat_class, channel_map, ac_max_output_buffer=64 * 1024)(socket_pair[0])
    socket_pair[1].setblocking(False)
    # Fill the socket first so that pushes queue up.
    channel.push(b"z" * (8 << 20))
    chatcore.loop(timeout=TURN, map=channel_map, count=1)
    queued = len(channel.producer_fifo)
    for _ in range(2000):
        channel.producer_fifo.append(b"a")
    channel._update_output_pause()
    assert channel.reading_paused
    assert len(channel.producer_fifo) == queued + 2000
    channel.discard_buffers()
    assert not channel.reading_paused


def test_no_limit_never_pauses(chat_class, socket_pair, channel_map):
    channel = echo_class(chat_class, channel_map, ac_max_output_buffer=None)(socket_pair[0])
    channel.push(b"q" * (4 << 20))
    for _ in range(5):
        chatcore.loop(timeout=TURN, map=channel_map, count=1)
    assert not channel.reading_paused
    channel.discard_buffers()


def test_the_user_pause_and_the_output_pause_are_independent(chat_class, socket_pair, channel_map):
    channel = echo_class(chat_class, channel_map, ac_max_output_buffer=1024)(socket_pair[0])
    channel.pause_reading()
    channel.push(b"w" * (8 << 20))
    chatcore.loop(timeout=TURN, map=channel_map, count=1)
    channel.discard_buffers()
    # The output pause is gone with the queue; the user's stays.
    assert channel.reading_paused
    channel.resume_reading()
    assert not channel.reading_paused


# Half-close.


@pytest.mark.timeout(60)
def test_a_peer_that_shuts_down_its_side_still_gets_every_reply(chat_class, sockets, channel_map):
    server_end, client = sockets.pair()
    # No output limit: a client that sends megabytes without reading is
    # what backpressure stops (above); this is about the end of its data.
    channel = echo_class(chat_class, channel_map, ac_max_output_buffer=None)(server_end)
    line = b"0123456789abcdef" * 4 + b"\n"
    count = (4 << 20) // len(line)
    client.setblocking(False)
    sent = 0
    request = line * count
    while sent < len(request):
        try:
            sent += client.send(request[sent : sent + 65536])
        except BlockingIOError:
            chatcore.loop(timeout=TURN, map=channel_map, count=1)
    client.shutdown(socket.SHUT_WR)
    # The loop sees the end of the request with most of the echo still queued.
    received = serve_and_receive(channel_map, client, turns=20000)
    assert len(received) == len(request)
    assert received == request
    assert channel.closes == 1


def test_compat_closes_at_once_at_the_peer_s_end_of_data(sockets, channel_map):
    server_end, client = sockets.pair()
    channel = echo_class(compat_asynchat.async_chat, channel_map)(server_end)
    client.sendall(b"one\n")
    client.shutdown(socket.SHUT_WR)
    serve_until(channel_map, lambda: channel._fileno is None, turns=200)
    assert channel.closes == 1


def test_half_close_with_nothing_queued_closes_at_once(chat_class, socket_pair, channel_map):
    channel = echo_class(chat_class, channel_map)(socket_pair[0])
    socket_pair[1].shutdown(socket.SHUT_WR)
    serve_until(channel_map, lambda: channel._fileno is None, turns=200)
    assert channel.closes == 1


def test_a_peer_that_half_closes_and_never_reads_is_bounded_by_the_idle_timeout(chat_class, sockets, channel_map):
    server_end, client = sockets.pair()
    channel = echo_class(chat_class, channel_map, ac_idle_timeout=IDLE)(server_end)
    channel.push(b"p" * (8 << 20))
    client.shutdown(socket.SHUT_WR)
    serve_until(channel_map, lambda: channel._fileno is None, turns=1000, what="the idle close of a drain")
    assert channel.closes == 0  # timed out, not drained


def test_a_timeout_set_before_the_socket_starts_with_it(chat_class, socket_pair, channel_map):
    class Early(chat_class):
        def __init__(self, sock):
            self.ac_idle_timeout = IDLE
            super().__init__(sock, map=channel_map)

    channel = Early(socket_pair[0])
    assert channel._idle_timer is not None
    serve_until(channel_map, lambda: channel._fileno is None, turns=500)


def test_a_class_attribute_assigned_after_the_class_was_made_is_honoured(chat_class, sockets, channel_map):
    # As a command line sets a handler class's limits before serving.
    class Handler(chat_class):
        pass

    Handler.ac_idle_timeout = IDLE
    Handler.ac_max_output_buffer = 1024
    channel = Handler(sockets.pair()[0], map=channel_map)
    assert channel._io_watched == chat._WATCH_ACTIVITY | chat._WATCH_OUTPUT
    serve_until(channel_map, lambda: channel._fileno is None, turns=500)
    Handler.ac_idle_timeout = "soon"
    with pytest.raises(TypeError, match="ac_idle_timeout"):
        Handler(sockets.pair()[0], map=channel_map)
