"""async_chat over real sockets (socketpair), on both engines.

Covers what the sans-IO engine tests cannot: the reused receive buffer,
end of stream, overridden recv/send/get_terminator, and reentrancy.
"""

import errno
import socket
import threading
from unittest import mock

import pytest
from helpers.channels import line_channel_class
from helpers.serving import serve_and_receive, serve_until

import chatcore


def make_line_channel(chat_class, sock, channel_map, terminator=b"\n"):
    return line_channel_class(chat_class, channel_map, terminator)(sock)


def test_lines_over_a_socket(chat_class, socket_pair):
    left, right = socket_pair
    channel_map = {}
    channel = make_line_channel(chat_class, left, channel_map, b"\r\n")
    try:
        pieces = [b"hel", b"lo\r", b"\nwor", b"ld\r\n\r\n", b"x" * 100000 + b"\r\n"]
        for piece in pieces:
            right.sendall(piece)
        serve_until(channel_map, lambda: len(channel.lines) == 4)
        assert channel.lines == [b"hello", b"world", b"", b"x" * 100000]
    finally:
        chatcore.close_all(channel_map)


def test_end_of_stream_closes_and_processes_pending(chat_class, socket_pair):
    left, right = socket_pair
    channel_map = {}
    channel = make_line_channel(chat_class, left, channel_map, b"\r\n")
    try:
        right.sendall(b"last\r")
        serve_until(channel_map, lambda: channel.ac_in_buffer == b"\r")
        assert channel.incoming == [b"last"]
        channel.set_terminator(None)  # pending bytes now count as data
        right.close()
        serve_until(channel_map, lambda: channel.closed_count)
        assert channel.incoming == [b"last", b"\r"]
        assert channel_map == {}
    finally:
        chatcore.close_all(channel_map)


def test_overridden_recv_is_called(chat_class, socket_pair):
    left, right = socket_pair
    channel_map = {}

    class Shouting(line_channel_class(chat_class, channel_map)):
        recv_calls = 0

        def recv(self, buffer_size):
            Shouting.recv_calls += 1
            return super().recv(buffer_size).upper()

    channel = Shouting(left)
    try:
        right.sendall(b"quiet\n")
        serve_until(channel_map, lambda: channel.lines)
        assert channel.lines == [b"QUIET"]
        assert Shouting.recv_calls >= 1
    finally:
        chatcore.close_all(channel_map)


def test_overridden_send_gets_bytes_as_stdlib_passes_them(chat_class, socket_pair):
    left, right = socket_pair
    channel_map = {}
    seen = []

    class Logged(chat_class):
        ac_out_buffer_size = 4

        def send(self, data):
            seen.append(type(data))
            return super().send(data[:3])  # a short send each time

    channel = Logged(left, map=channel_map)
    try:
        channel.push(b"abcdefghij")
        serve_until(channel_map, lambda: not channel.producer_fifo)
        assert right.recv(100) == b"abcdefghij"
        assert set(seen) == {bytes}
    finally:
        chatcore.close_all(channel_map)


def test_close_when_done_sends_everything_then_closes(chat_class, socket_pair):
    left, right = socket_pair
    channel_map = {}
    channel = chat_class(left, map=channel_map)
    payload = bytes(range(256)) * 4096  # 1 MiB: needs many partial sends
    try:
        channel.push(payload)
        channel.close_when_done()
        received = serve_and_receive(channel_map, right)
        assert received == payload
        assert not channel.connected and channel_map == {}
    finally:
        chatcore.close_all(channel_map)


def test_discard_buffers_inside_found_terminator(chat_class, socket_pair):
    left, right = socket_pair
    channel_map = {}

    class Discarding(chat_class):
        def collect_incoming_data(self, data):
            self._collect_incoming_data(data)

        def found_terminator(self):
            self.got = self._get_data()
            self.discard_buffers()

    channel = Discarding(left, map=channel_map)
    channel.set_terminator(b"\n")
    try:
        right.sendall(b"keep\ndrop\nthis\n")
        serve_until(channel_map, lambda: getattr(channel, "got", None))
        chatcore.loop(timeout=0.01, map=channel_map, count=3)
        assert channel.got == b"keep"
        assert channel.incoming == [] and channel.ac_in_buffer == b""
    finally:
        chatcore.close_all(channel_map)


def test_reentrant_handle_read_does_not_corrupt_data(chat_class, socket_pair):
    left, right = socket_pair
    channel_map = {}

    class Greedy(chat_class):
        ac_in_buffer_size = 8

        def __init__(self, sock):
            super().__init__(sock, map=channel_map)
            self.set_terminator(b"\n")
            self.lines = []

        def collect_incoming_data(self, data):
            self._collect_incoming_data(data)

        def found_terminator(self):
            self.lines.append(self._get_data())
            if len(self.lines) == 1:
                self.handle_read()  # legacy code that drains eagerly

    channel = Greedy(left)
    try:
        expected = [b"line%03d" % i for i in range(60)]
        right.sendall(b"".join(line + b"\n" for line in expected))
        serve_until(channel_map, lambda: len(channel.lines) == len(expected))
        assert channel.lines == expected
    finally:
        chatcore.close_all(channel_map)


def test_overridden_get_terminator_is_used(chat_class, socket_pair):
    left, right = socket_pair
    channel_map = {}

    class Semicolons(chat_class):
        def get_terminator(self):
            return b";"

        def collect_incoming_data(self, data):
            self._collect_incoming_data(data)

        def found_terminator(self):
            self.pieces.append(self._get_data())

    channel = Semicolons(left, map=channel_map)
    channel.pieces = []
    channel.set_terminator(b"\n")
    try:
        right.sendall(b"a;b\n;")
        serve_until(channel_map, lambda: len(channel.pieces) == 2)
        assert channel.pieces == [b"a", b"b\n"]
    finally:
        chatcore.close_all(channel_map)


def test_blocking_io_error_on_recv_is_ignored(chat_class):
    sock = mock.Mock()
    sock.recv.side_effect = BlockingIOError(errno.EAGAIN)
    channel = chat_class(map={})
    channel.set_socket(sock, {})
    with mock.patch.object(channel, "handle_error") as handle_error:
        channel.handle_read()
    assert not handle_error.called


def test_large_receive_buffer(chat_class, socket_pair):
    left, right = socket_pair
    channel_map = {}

    class Big(chat_class):
        ac_in_buffer_size = 1 << 20

        def collect_incoming_data(self, data):
            self.total += len(data)

        def found_terminator(self):
            self.done = True

    channel = Big(left, map=channel_map)
    channel.total, channel.done = 0, False
    channel.set_terminator(3 << 20)
    sender = threading.Thread(target=right.sendall, args=(b"z" * (3 << 20),))
    sender.start()
    try:
        serve_until(channel_map, lambda: channel.done)
        assert channel.total == 3 << 20 and channel.terminator == 0
    finally:
        sender.join(10)
        chatcore.close_all(channel_map)


def test_argument_errors(chat_class):
    channel = chat_class(map={})
    with pytest.raises(TypeError):
        channel.push("text")
    with pytest.raises(TypeError):
        channel.push(10)
    with pytest.raises(ValueError):
        channel.set_terminator(-1)
    channel.set_terminator("\r\n")
    assert channel.get_terminator() == "\r\n"  # stored as given without use_encoding
    channel.use_encoding = 1
    channel.set_terminator("\r\n")
    assert channel.get_terminator() == b"\r\n"


def test_hot_helpers_come_from_the_engine_under_test(engine, chat_class):
    assert chat_class.set_terminator is engine.set_terminator
    assert chat_class._collect_incoming_data is engine.collect_incoming_piece
    assert chat_class._get_data is engine.join_incoming
    channel = chat_class(map={})
    channel._collect_incoming_data(b"ab")
    channel._collect_incoming_data(b"")
    channel._collect_incoming_data(b"c")
    assert channel._get_data() == b"abc"
    assert channel.incoming == [] and channel._get_data() == b""
    for terminator in (b"\r\n", 0, 7, None, b""):
        channel.set_terminator(terminator)
        assert channel.get_terminator() == terminator


def test_naming_an_engine_keeps_overridden_helpers(engine):
    class Legacy(chatcore.async_chat):
        def set_terminator(self, term):
            self.terminator = b"<" + term + b">"

    on_engine = type("on_engine", (Legacy,), {"_engine": engine})
    channel = on_engine(map={})
    channel.set_terminator(b"x")
    assert channel.terminator == b"<x>"
    assert on_engine._get_data is engine.join_incoming


def test_ac_in_buffer_property(chat_class):
    channel = chat_class(map={})
    assert channel.ac_in_buffer == b""
    channel.ac_in_buffer = b"abc"
    assert channel.ac_in_buffer == b"abc"
    channel.discard_buffers()
    assert channel.ac_in_buffer == b""


def test_find_prefix_at_end_accepts_str_and_bytes():
    assert chatcore.find_prefix_at_end("qwerty\r", "\r\n") == 1
    assert chatcore.find_prefix_at_end(b"qwertydkjf", b"\r\n") == 0
    assert chatcore.find_prefix_at_end(b"body\r\n.\r", b"\r\n.\r\n") == 4


def test_simple_producer():
    producer = chatcore.simple_producer(b"abcdefg", buffer_size=3)
    assert [producer.more() for _ in range(4)] == [b"abc", b"def", b"g", b""]


# -- pushes made inside the loop's event handling leave together ----------------------


def _echo_class(chat_class, channel_map, lines_per_message=1):
    class Echo(line_channel_class(chat_class, channel_map)):
        def line(self, line):
            for _ in range(lines_per_message):
                self.push(line + b"\n")
            if line == b"bye":
                self.close_when_done()

    return Echo


def test_pushes_in_a_turn_leave_in_few_gathered_sends(chat_class, socket_pair, monkeypatch):
    from chatcore import chat as chat_module

    calls = []
    real = chat_module._gathering_send

    def counting(sock):
        send = real(sock)

        def wrapper(buffers):
            calls.append(len(buffers))
            return send(buffers)

        return wrapper

    monkeypatch.setattr(chat_module, "_gathering_send", counting)
    left, right = socket_pair
    channel_map = {}
    _echo_class(chat_class, channel_map)(left)
    try:
        lines = [b"line %04d" % i for i in range(400)] + [b"bye"]
        right.sendall(b"".join(line + b"\n" for line in lines))
        assert serve_and_receive(channel_map, right) == b"".join(line + b"\n" for line in lines)
        assert sum(calls) == len(lines)  # every line went through a gathered send
        assert len(calls) < len(lines) / 10
    finally:
        chatcore.close_all(channel_map)


def test_large_pushes_in_a_handler_arrive_whole_through_a_full_socket(chat_class, socket_pair):
    left, right = socket_pair
    channel_map = {}
    left.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4096)
    _echo_class(chat_class, channel_map, lines_per_message=2000)(left)
    try:
        right.sendall(b"x" * 1000 + b"\nbye\n")
        expected = (b"x" * 1000 + b"\n") * 2000 + b"bye\n" * 2000
        # 2 MiB through a 4 KiB send buffer: many turns.
        assert serve_and_receive(channel_map, right, turns=20_000) == expected
    finally:
        chatcore.close_all(channel_map)


def test_push_outside_the_loop_is_sent_at_once(chat_class, socket_pair):
    left, right = socket_pair
    channel_map = {}
    channel = chat_class(left, map=channel_map)
    try:
        channel.push(b"now")
        assert right.recv(10) == b"now"
    finally:
        chatcore.close_all(channel_map)


def test_overridden_send_keeps_stdlib_timing_inside_the_loop(chat_class, socket_pair):
    left, right = socket_pair
    channel_map = {}
    sends_during_push = []

    class Recording(_echo_class(chat_class, channel_map)):
        pushing = False

        def push(self, data):
            self.pushing = True
            try:
                super().push(data)
            finally:
                self.pushing = False

        def send(self, data):
            sends_during_push.append(self.pushing)
            return super().send(data)

    Recording(left)
    try:
        right.sendall(b"a\nb\nbye\n")
        assert serve_and_receive(channel_map, right) == b"a\nb\nbye\n"
        assert sends_during_push[:3] == [True, True, True]
    finally:
        chatcore.close_all(channel_map)


def test_producers_and_pushes_keep_their_order_inside_the_loop(chat_class, socket_pair):
    left, right = socket_pair
    channel_map = {}

    class Mixed(_echo_class(chat_class, channel_map)):
        def found_terminator(self):
            line = self._get_data()
            self.push(b"<" + line)
            self.push_with_producer(chatcore.simple_producer(b"-produced-" * 50, buffer_size=7))
            self.push(b">\n")
            if line == b"bye":
                self.close_when_done()

    Mixed(left)
    try:
        right.sendall(b"one\ntwo\nbye\n")
        body = b"-produced-" * 50
        expected = b"".join(b"<" + word + body + b">\n" for word in (b"one", b"two", b"bye"))
        assert serve_and_receive(channel_map, right) == expected
    finally:
        chatcore.close_all(channel_map)


def test_recv_replaced_on_the_instance_is_called(chat_class, socket_pair):
    left, right = socket_pair
    channel_map = {}
    channel = make_line_channel(chat_class, left, channel_map)
    calls = []

    def recv(buffer_size):
        calls.append(buffer_size)
        return chatcore.async_chat.recv(channel, buffer_size).upper()

    channel.recv = recv  # stdlib would call this instead of the fast path
    try:
        right.sendall(b"quiet\n")
        serve_until(channel_map, lambda: channel.lines)
        assert channel.lines == [b"QUIET"] and calls
    finally:
        chatcore.close_all(channel_map)


# -- TCP_NODELAY: chatcore's own channels set it, compat's leave sockets as stdlib did ---------


def _nodelay(sock):
    return sock.getsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY) != 0


@pytest.mark.parametrize("compat", [False, True], ids=["chatcore", "compat"])
def test_tcp_nodelay_is_set_on_chatcores_channels_only(chat_class, compat, sockets):
    import chatcore.compat.asynchat

    base = chatcore.compat.asynchat.async_chat if compat else chat_class
    server, _ = sockets.tcp_pair()
    channel_map = {}
    try:
        assert not _nodelay(server)
        channel = base(server, map=channel_map)
        assert _nodelay(server) is (not compat)
        # A socket created by the channel (a client) gets the same treatment.
        outgoing = base(map=channel_map)
        outgoing.create_socket(socket.AF_INET, socket.SOCK_STREAM)
        assert _nodelay(outgoing.socket) is (not compat)
        # A subclass may opt out (or in, on compat).
        opted = type("Opted", (base,), {"ac_tcp_nodelay": compat})
        other_server, _ = sockets.tcp_pair()
        opted(other_server, map=channel_map)
        assert _nodelay(other_server) is compat
        # Not TCP: nothing to set, nothing fails.
        left, right = sockets.pair()
        right.close()
        base(left, map=channel_map)
        assert channel in channel_map.values()
    finally:
        chatcore.close_all(channel_map)
