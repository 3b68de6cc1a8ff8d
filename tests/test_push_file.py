"""``async_chat.push_file()`` on both engines, over loopback sockets.

* byte-exact (SHA-256) files of several sizes, one of 24 MiB, between
  pushes, sent with ``os.sendfile``; offset/count combinations; a file
  shorter than *count* ends at its end;
* files whose size is not known: a /proc file (size 0) and a pipe;
* the read + send fallback, from the byte sendfile stopped at: sendfile
  refusing after sending part (EINVAL), refusing at once (ENOTSOCK), a TLS
  channel, an overridden ``send()`` (which is called), an overridden
  ``initiate_send()``, a legacy producer loop draining ``producer_fifo``;
* ``close_when_done()``, backpressure with a peer that does not read
  (bounded memory), the peer going away mid-file, ``close=`` honoured, a
  file that cannot be read (one log line, the channel closed).
"""

import errno
import hashlib
import logging
import os
import random
import socket
import struct
import threading

import pytest
from helpers.serving import release, serve_and_receive, serve_until
from helpers.sockets import Peer
from helpers.tls import PKI, TLSPeer

import chatcore
from chatcore import filesend, log

MIB = 1 << 20
_real_sendfile = getattr(os, "sendfile", None)
needs_sendfile = pytest.mark.skipif(_real_sendfile is None, reason="no os.sendfile on this platform")


@pytest.fixture
def channel_map():
    served = {}
    yield served
    release(served)


@pytest.fixture
def sendfile_calls(monkeypatch):
    """How many times os.sendfile was called (through a counting wrapper)."""
    calls = []
    if _real_sendfile is not None:

        def counting(*args):
            calls.append(args[3])
            return _real_sendfile(*args)

        monkeypatch.setattr(os, "sendfile", counting)
    return calls


def data_file(tmp_path, size, name="data.bin", seed=7):
    """A file of *size* random bytes under *tmp_path*: (path, contents)."""
    contents = random.Random(seed + size).randbytes(size)
    path = tmp_path / name
    path.write_bytes(contents)
    return path, contents


def sender_class(chat_class, channel_map, **members):
    """*chat_class* serving on *channel_map*, ignoring input; *members* go into the class body."""

    def __init__(self, sock):
        chat_class.__init__(self, sock, map=channel_map)
        self.set_terminator(b"\n")
        self.closes = 0

    def handle_close(self):
        self.closes += 1
        self.close()

    body = {
        "__init__": __init__,
        "collect_incoming_data": lambda self, data: None,
        "found_terminator": lambda self: None,
        "handle_close": handle_close,
    }
    body.update(members)
    return type("Sender", (chat_class,), body)


def digest(data):
    return hashlib.sha256(data).hexdigest()


def serve_file(chat_class, channel_map, server_end, client_end, path, *, offset=0, count=None, **members):
    """Answer a request line with "head", the file, "tail" and close when done; what the client receives."""
    with open(path, "rb") as file:

        def found_terminator(self):
            self.push(b"head")
            self.push_file(file, offset, count)
            self.push(b"tail")
            self.close_when_done()

        sender_class(chat_class, channel_map, found_terminator=found_terminator, **members)(server_end)
        client_end.sendall(b"GET\n")
        received = serve_and_receive(channel_map, client_end, turns=20_000)
    return received


# Byte-exact, zero-copy.


@needs_sendfile
@pytest.mark.parametrize("size", [0, 1, 65535, 65537, 3 * MIB + 7])
def test_a_file_arrives_byte_exact_between_pushes_with_sendfile(
    chat_class, sockets, channel_map, tmp_path, sendfile_calls, size
):
    path, contents = data_file(tmp_path, size)
    received = serve_file(chat_class, channel_map, *sockets.tcp_pair(), path)
    assert digest(received) == digest(b"head" + contents + b"tail")
    assert sendfile_calls or not size


@needs_sendfile
def test_a_24_mib_file_is_byte_exact_and_never_in_the_queue(chat_class, sockets, channel_map, tmp_path, sendfile_calls):
    path, contents = data_file(tmp_path, 24 * MIB)
    server_end, client_end = sockets.tcp_pair()
    channel = sender_class(chat_class, channel_map)(server_end)
    peer = Peer(client_end)
    most_queued = 0

    def received_all():
        nonlocal most_queued
        most_queued = max(most_queued, channel.output_buffer_size)
        return len(peer.received) >= len(contents) + 8

    with open(path, "rb") as file:
        channel.push(b"head")
        channel.push_file(file)
        channel.push(b"tail")
        serve_until(channel_map, received_all, what="the whole file", peers=[peer], turns=50_000)
        assert file.tell() == 0  # positional reads: the file's position is not moved
    assert digest(bytes(peer.received)) == digest(b"head" + contents + b"tail")
    assert most_queued <= 8  # the file's bytes go from the page cache to the socket
    assert not channel.producer_fifo


@pytest.mark.parametrize(
    "offset, count",
    [(0, None), (10, None), (10, 100), (0, 0), (99_995, None), (100_000, None), (200_000, None), (5, 99_995)],
)
def test_offset_is_absolute_and_count_bounds_the_bytes(chat_class, sockets, channel_map, tmp_path, offset, count):
    path, contents = data_file(tmp_path, 100_000)
    received = serve_file(chat_class, channel_map, *sockets.tcp_pair(), path, offset=offset, count=count)
    end = None if count is None else offset + count
    assert received == b"head" + contents[offset:end] + b"tail"


def test_a_file_shorter_than_count_ends_at_its_end_and_the_queue_goes_on(chat_class, sockets, channel_map, tmp_path):
    path, contents = data_file(tmp_path, 5000)
    received = serve_file(chat_class, channel_map, *sockets.tcp_pair(), path, offset=1000, count=10_000)
    assert received == b"head" + contents[1000:] + b"tail"


def test_the_file_s_own_position_is_neither_used_nor_moved(chat_class, sockets, channel_map, tmp_path):
    path, contents = data_file(tmp_path, 70_000)
    channel = sender_class(chat_class, channel_map)(sockets.tcp_pair()[0])
    server_end, client_end = sockets.tcp_pair()
    channel = sender_class(chat_class, channel_map)(server_end)
    with open(path, "rb") as file:
        file.seek(1234)
        channel.push_file(file, 10)
        channel.close_when_done()
        assert serve_and_receive(channel_map, client_end) == contents[10:]
        assert file.tell() == 1234


def test_files_and_pushes_keep_their_order_without_coalescing(chat_class, sockets, channel_map, tmp_path):
    # Each push is handed to the socket at once (compat's timing): the file
    # at the head is then read a chunk at a time, and sendfile goes on from there.
    paths = [data_file(tmp_path, size, "f%d" % size) for size in (70_000, 3, 200_001)]
    server_end, client_end = sockets.tcp_pair()
    channel = sender_class(chat_class, channel_map, ac_coalesce_sends=False)(server_end)
    expected = b""
    files = [open(path, "rb") for path, _ in paths]
    for index, (file, (_, contents)) in enumerate(zip(files, paths)):
        channel.push(b"<%d>" % index)
        channel.push_file(file, close=True)
        channel.push(b"</%d>" % index)
        expected += b"<%d>" % index + contents + b"</%d>" % index
    channel.close_when_done()
    assert digest(serve_and_receive(channel_map, client_end)) == digest(expected)
    assert all(file.closed for file in files)


# Files whose size is not known before reading them.


@pytest.mark.skipif(not os.path.exists("/proc/self/environ"), reason="needs Linux's /proc")
def test_count_none_reads_a_proc_file_that_reports_size_0_to_its_end(chat_class, sockets, channel_map):
    path = "/proc/self/environ"
    with open(path, "rb") as file:
        expected = file.read()
    assert os.stat(path).st_size == 0 and expected
    assert serve_file(chat_class, channel_map, *sockets.tcp_pair(), path) == b"head" + expected + b"tail"


def test_count_none_reads_a_pipe_to_its_end(chat_class, sockets, channel_map):
    contents = random.Random(3).randbytes(300_000)
    read_end, write_end = os.pipe()
    writer = threading.Thread(target=lambda: (os.write(write_end, contents), os.close(write_end)))
    writer.start()
    try:
        server_end, client_end = sockets.tcp_pair()
        channel = sender_class(chat_class, channel_map)(server_end)
        with open(read_end, "rb") as pipe:
            with pytest.raises(ValueError, match="cannot seek"):
                channel.push_file(pipe, 1)
            channel.push(b"head")
            channel.push_file(pipe)
            channel.push(b"tail")
            channel.close_when_done()
            received = serve_and_receive(channel_map, client_end)
    finally:
        writer.join(10)
    assert digest(received) == digest(b"head" + contents + b"tail")


# The read + send fallback.


@needs_sendfile
def test_sendfile_refusing_after_sending_part_goes_on_with_reads_from_that_byte(
    chat_class, sockets, channel_map, tmp_path, monkeypatch
):
    path, contents = data_file(tmp_path, 2 * MIB + 11)
    calls = []

    def refuses_after_a_while(out_fd, in_fd, offset, count):
        calls.append(offset)
        if len(calls) > 2:
            raise OSError(errno.EINVAL, "refused")
        return _real_sendfile(out_fd, in_fd, offset, min(count, 100_003))

    monkeypatch.setattr(os, "sendfile", refuses_after_a_while)
    received = serve_file(chat_class, channel_map, *sockets.tcp_pair(), path, offset=7)
    assert digest(received) == digest(b"head" + contents[7:] + b"tail")
    assert len(calls) == 3  # refused once: the entry does not ask again


@needs_sendfile
@pytest.mark.parametrize("code", ["ENOTSOCK", "EOPNOTSUPP", "ENOSYS"])
def test_sendfile_refusing_at_once_falls_back_to_reads(chat_class, sockets, channel_map, tmp_path, monkeypatch, code):
    path, contents = data_file(tmp_path, 300_000)

    def refuses(*args):
        raise OSError(getattr(errno, code), "refused")

    monkeypatch.setattr(os, "sendfile", refuses)
    assert serve_file(chat_class, channel_map, *sockets.tcp_pair(), path) == b"head" + contents + b"tail"


def test_a_unix_socketpair_gets_the_file(chat_class, sockets, channel_map, tmp_path):
    path, contents = data_file(tmp_path, MIB + 1)
    assert digest(serve_file(chat_class, channel_map, *sockets.pair(), path)) == digest(b"head" + contents + b"tail")


def test_an_overridden_send_is_called_for_every_byte_and_sendfile_is_not(
    chat_class, sockets, channel_map, tmp_path, sendfile_calls
):
    path, contents = data_file(tmp_path, 200_000)
    sent = []

    def send(self, data):
        count = chat_class.send(self, data)
        sent.append(count)
        return count

    received = serve_file(chat_class, channel_map, *sockets.tcp_pair(), path, send=send)
    assert received == b"head" + contents + b"tail"
    assert sum(sent) == len(received) and not sendfile_calls


def test_an_overridden_initiate_send_drains_the_file_as_a_producer(
    chat_class, sockets, channel_map, tmp_path, sendfile_calls
):
    path, contents = data_file(tmp_path, 150_000)
    steps = []

    def initiate_send(self):
        steps.append(len(self.producer_fifo))
        chat_class.initiate_send(self)

    received = serve_file(chat_class, channel_map, *sockets.tcp_pair(), path, initiate_send=initiate_send)
    assert received == b"head" + contents + b"tail"
    assert steps and not sendfile_calls


def test_a_compat_channel_sends_files_in_order_with_stdlib_s_send_timing(sockets, channel_map, tmp_path):
    from chatcore.compat import asynchat

    path, contents = data_file(tmp_path, 300_000)

    class Legacy(asynchat.async_chat):
        def collect_incoming_data(self, data):
            pass

        def found_terminator(self):
            self.push(b"head")
            self.push_file(open(path, "rb"), 5, 250_000, close=True)
            # Handed to the socket at once, as stdlib does: the file's next
            # chunk is read and sent first; the rest leaves at write events.
            self.push(b"tail")
            self.close_when_done()

    server_end, client_end = sockets.tcp_pair()
    channel = Legacy(server_end, map=channel_map)
    channel.set_terminator(b"\n")
    client_end.sendall(b"GET\n")
    received = serve_and_receive(channel_map, client_end)
    assert digest(received) == digest(b"head" + contents[5:250_005] + b"tail")


def test_the_queued_entry_is_a_producer_legacy_code_can_drain(chat_class, tmp_path):
    path, _ = data_file(tmp_path, 10_000)
    channel = sender_class(chat_class, {})(None)
    channel.ac_out_buffer_size = 4096
    with open(path, "rb") as file:
        channel.push_file(file, 100, close=True)
        [producer] = channel.producer_fifo
        pieces = iter(producer.more, b"")
        assert [len(piece) for piece in pieces] == [4096, 4096, 1708]
        assert file.closed
    channel.close()


def test_a_tls_channel_sends_the_file_encrypted_without_sendfile(
    chat_class, sockets, channel_map, tmp_path, sendfile_calls
):
    pki = PKI()
    path, contents = data_file(tmp_path, MIB + 5)

    class Serving(sender_class(chat_class, channel_map)):
        def __init__(self, sock):
            super().__init__(sock)
            self.start_tls(pki.server_context(), server_side=True)

    server_end, client_end = sockets.tcp_pair()
    channel = Serving(server_end)
    peer = TLSPeer(client_end, pki.client_context())
    with open(path, "rb") as file:
        channel.push(b"head")
        channel.push_file(file)
        channel.push(b"tail")
        channel.close_when_done()
        serve_until(channel_map, lambda: peer.eof or peer.error, what="the end", peers=[peer], turns=20_000)
    assert peer.error is None and peer.eof == "close_notify"
    assert digest(bytes(peer.received)) == digest(b"head" + contents + b"tail")
    assert not sendfile_calls


# Closing, backpressure, failures.


def test_close_when_done_closes_after_the_file_and_nothing_after_it_is_sent(chat_class, sockets, channel_map, tmp_path):
    path, contents = data_file(tmp_path, 500_000)
    server_end, client_end = sockets.tcp_pair()
    channel = sender_class(chat_class, channel_map)(server_end)
    with open(path, "rb") as file:
        channel.push_file(file)
        channel.close_when_done()
        channel.push(b"never sent")
        assert serve_and_receive(channel_map, client_end) == contents
        assert not file.closed
    assert channel._fileno is None


@pytest.mark.parametrize("zero_copy", [True, False], ids=["sendfile", "fallback"])
def test_a_peer_that_does_not_read_holds_at_most_one_chunk_in_memory(
    chat_class, sockets, channel_map, tmp_path, monkeypatch, zero_copy
):
    if not zero_copy or _real_sendfile is None:
        monkeypatch.setattr(os, "sendfile", lambda *args: (_ for _ in ()).throw(OSError(errno.EINVAL, "no")))
    path, contents = data_file(tmp_path, 8 * MIB)
    server_end, client_end = sockets.tcp_pair()
    channel = sender_class(chat_class, channel_map, ac_max_output_buffer=256 * 1024)(server_end)
    with open(path, "rb") as file:
        channel.push_file(file)
        channel.push(b"tail")
        for _ in range(30):
            chatcore.loop(timeout=0.01, map=channel_map, count=1)
            assert channel.output_buffer_size <= channel.ac_out_buffer_size + 4
        # Still queued, still writable, reading not paused by a file alone.
        assert channel.writable() and not channel.reading_paused
        assert digest(serve_and_receive(channel_map, client_end, len(contents) + 4)) == digest(contents + b"tail")


@pytest.mark.parametrize("how", ["close", "reset"])
def test_the_peer_going_away_mid_file_is_a_plain_close(chat_class, sockets, channel_map, tmp_path, caplog, how):
    path, _ = data_file(tmp_path, 16 * MIB)
    server_end, client_end = sockets.tcp_pair()
    channel = sender_class(chat_class, channel_map)(server_end)
    file = open(path, "rb")
    channel.push_file(file, close=True)
    peer = Peer(client_end)
    serve_until(channel_map, lambda: len(peer.received) > 100_000, what="part of the file", peers=[peer])
    if how == "reset":
        client_end.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    client_end.close()
    serve_until(channel_map, lambda: channel._fileno is None, what="the channel closing")
    assert channel.closes == 1 and file.closed
    assert not [record for record in caplog.records if record.levelno >= logging.WARNING]


@pytest.mark.parametrize("close", [True, False])
def test_close_is_honoured_once_sent_and_when_the_channel_closes_first(
    chat_class, sockets, channel_map, tmp_path, close
):
    path, contents = data_file(tmp_path, 1000)
    server_end, client_end = sockets.tcp_pair()
    channel = sender_class(chat_class, channel_map)(server_end)
    sent, dropped = open(path, "rb"), open(path, "rb")
    try:
        channel.push_file(sent, close=close)
        peer = Peer(client_end)
        serve_until(channel_map, lambda: not channel.producer_fifo, what="the file sent", peers=[peer])
        assert peer.received == contents
        assert sent.closed is close
        channel.push_file(dropped, close=close)
        channel.close()
        assert dropped.closed is close
    finally:
        sent.close()
        dropped.close()


def test_discard_buffers_closes_the_files_it_drops_if_asked(chat_class, tmp_path):
    path, _ = data_file(tmp_path, 10)
    channel = sender_class(chat_class, {})(None)
    with open(path, "rb") as mine, open(path, "rb") as given:
        channel.push_file(mine)
        channel.push_file(given, close=True)
        channel.discard_buffers()
        assert not mine.closed and given.closed and not channel.producer_fifo
    channel.close()


def test_a_file_that_cannot_be_read_is_one_log_line_and_a_closed_channel(
    chat_class, sockets, channel_map, tmp_path, caplog
):
    server_end, client_end = sockets.tcp_pair()
    channel = sender_class(chat_class, channel_map)(server_end)
    directory = os.open(tmp_path, os.O_RDONLY)
    try:
        channel.push(b"head")
        channel.push_file(_Descriptor(directory))
        channel.push(b"never sent")
        assert serve_and_receive(channel_map, client_end) == b"head"
    finally:
        os.close(directory)
    assert channel.closes == 1 and channel._fileno is None
    [record] = [record for record in caplog.records if record.name == "chatcore"]
    assert record.levelno == logging.ERROR and "error reading file" in record.getMessage()
    assert record.exc_info is None


@needs_sendfile
def test_a_file_error_from_sendfile_is_one_log_line_and_a_closed_channel(
    chat_class, sockets, channel_map, tmp_path, caplog, monkeypatch
):
    path, _ = data_file(tmp_path, 1000)

    def fails(*args):
        raise OSError(errno.EIO, "Input/output error")

    monkeypatch.setattr(os, "sendfile", fails)
    assert serve_file(chat_class, channel_map, *sockets.tcp_pair(), path) == b"head"
    [record] = [record for record in caplog.records if record.name == "chatcore"]
    assert "error sending file" in record.getMessage() and "Input/output error" in record.getMessage()


def test_bad_arguments_are_refused_before_anything_is_queued(chat_class, tmp_path):
    path, _ = data_file(tmp_path, 10)
    channel = sender_class(chat_class, {})(None)
    with open(path, "rb") as file:
        for offset, count, error in [(-1, None, ValueError), (0, -1, ValueError), (1.5, None, TypeError)]:
            with pytest.raises(error):
                channel.push_file(file, offset, count, close=True)
        with pytest.raises(AttributeError):
            channel.push_file(b"not a file")
        assert not channel.producer_fifo and not file.closed
    channel.close()


def test_the_file_error_kind_is_the_library_s():
    assert log.KINDS["file send error"] is filesend.FILE_ERROR


class _Descriptor:
    """An object with only ``fileno()``."""

    def __init__(self, fd):
        self._fd = fd

    def fileno(self):
        return self._fd

    def __repr__(self):
        return "<descriptor %d>" % self._fd
