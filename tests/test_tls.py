"""TLS on async_chat channels (``start_tls()``), on both engines, over loopback TCP.

* implicit TLS: a byte-exact 64 MiB echo with writes of random sizes, in
  TLS 1.2 and TLS 1.3;
* STARTTLS: what a client pipelines in the clear after the command is
  never delivered; what the server pushed before ``start_tls()`` leaves in
  the clear and what it pushes after leaves encrypted, in order;
* a chatcore client channel verifying the server, and failing (one log
  line, closed, no traceback) with an authority or a host name that does
  not match;
* failures (garbage or an alert instead of a ClientHello, a handshake cut
  short, stalled handshakes and the CPU they cost, a connection cut
  mid-record, a close_notify) each close their channel with one log line
  and leave a healthy TLS channel in the same map alone;
* ``ssl_object``, ``handle_tls_established()``, ``start_tls()`` twice, and
  ``close()`` sending close_notify;
* backpressure, half-close, idle timeouts, producers and
  ``close_when_done()`` over TLS.

The certificates are made at test time and the far end is the test's own
TLS client (``helpers/tls.py``), driven between loop turns.
"""

import logging
import random
import socket
import ssl
import struct
import time

import pytest
from helpers.channels import line_channel_class
from helpers.serving import release, serve_until
from helpers.sockets import Peer
from helpers.tls import HOST_NAME, PKI, TLSPeer, client_hello, random_piece_sizes

import chatcore
from chatcore import log

MIB = 1 << 20
VERSIONS = [
    pytest.param(ssl.TLSVersion.TLSv1_2, id="tls1.2"),
    pytest.param(ssl.TLSVersion.TLSv1_3, id="tls1.3"),
]
VERSION_NAMES = {ssl.TLSVersion.TLSv1_2: "TLSv1.2", ssl.TLSVersion.TLSv1_3: "TLSv1.3"}
# Short enough to keep the tests quick, long enough for a loaded machine to
# turn the loop many times within it.
SHORT_TIMEOUT = 0.3


@pytest.fixture(scope="module")
def pki():
    return PKI()


@pytest.fixture
def channel_map():
    served = {}
    yield served
    release(served)


@pytest.fixture(autouse=True)
def fresh_limits():
    """The failures logged here must not use up the rate limit of later tests (nor earlier ones of these)."""
    for kind in log.KINDS.values():
        kind.reset()
    yield
    for kind in log.KINDS.values():
        kind.reset()


# Servers and clients.


def tls_echo_class(chat_class, channel_map, context, *, implicit=True, **attributes):
    """*chat_class* echoing every byte, serving implicit TLS (``start_tls()`` when made) unless told not to."""

    class TLSEcho(chat_class):
        def __init__(self, sock):
            super().__init__(sock, map=channel_map)
            self.set_terminator(None)
            self.established_count = 0
            self.closes = 0
            if implicit:
                self.start_tls(context, server_side=True)

        def collect_incoming_data(self, data):
            self.push(data)

        def found_terminator(self):
            pass

        def handle_tls_established(self):
            self.established_count += 1

        def handle_close(self):
            self.closes += 1
            self.close()

    for name, value in attributes.items():
        setattr(TLSEcho, name, value)
    return TLSEcho


def client_channel_class(chat_class, channel_map):
    """*chat_class* as a TLS client: ``start_tls(context, server_hostname=...)`` when made; keeps what arrives."""

    class Client(chat_class):
        def __init__(self, sock, context, server_hostname=HOST_NAME):
            super().__init__(sock, map=channel_map)
            self.set_terminator(None)
            self.received = bytearray()
            self.established_count = 0
            self.start_tls(context, server_hostname=server_hostname)

        def collect_incoming_data(self, data):
            self.received += data

        def found_terminator(self):
            pass

        def handle_tls_established(self):
            self.established_count += 1

    return Client


def starttls_class(chat_class, channel_map, context, before=b""):
    """A line server: ``STARTTLS`` gets ``220 ready for TLS`` (after *before*), then TLS; other lines an echo.

    Two replies are pushed in the same handler right after ``start_tls()``.
    *before* may be bytes (pushed) or a callable returning a producer (queued
    with ``push_with_producer``).
    """
    Lines = line_channel_class(chat_class, channel_map, b"\r\n")

    class StartTLS(Lines):
        established_count = 0

        def line(self, line):
            if line != b"STARTTLS":
                self.push(b"250 " + line + b"\r\n")
                return
            if callable(before):
                self.push_with_producer(before())
            elif before:
                self.push(before)
            self.push(b"220 ready for TLS\r\n")
            self.start_tls(context, server_side=True)
            self.push(b"250 first over TLS\r\n")
            self.push(b"250 second over TLS\r\n")

        def handle_tls_established(self):
            self.established_count += 1

    return StartTLS


def tls_connection(sockets, channel_class, client_context, **peer_options):
    """A channel of *channel_class* on the server end of a loopback TCP pair, and a ``TLSPeer`` on the other."""
    server_end, client_end = sockets.tcp_pair()
    channel = channel_class(server_end)
    return channel, TLSPeer(client_end, client_context, **peer_options)


def is_closed(channel, channel_map):
    return channel._fileno is None and channel not in channel_map.values()


def exchange(channel_map, peer, data, *, what="the echo", turns=2000):
    """Send *data* from *peer* and serve until it has come back (returns what came back)."""
    start = len(peer.received)
    peer.send(data)
    serve_until(
        channel_map,
        lambda: len(peer.received) - start >= len(data) or peer.eof or peer.error,
        what=what,
        peers=[peer],
        turns=turns,
    )
    return bytes(peer.received[start:])


def first_difference(got, expected):
    """Where *got* and *expected* first differ (None when they are equal), without a huge diff."""
    if got == expected:
        return None
    size = min(len(got), len(expected))
    step = 1 << 16
    for start in range(0, size, step):
        mine, theirs = got[start : start + step], expected[start : start + step]
        if mine != theirs:
            return start + next(i for i in range(min(len(mine), len(theirs))) if mine[i] != theirs[i])
    return size


def library_records(caplog):
    return [record for record in caplog.records if record.name.split(".")[0] == "chatcore"]


def about(records, channel):
    """The records naming *channel*'s peer."""
    return [record for record in records if repr(channel.addr) in record.getMessage()]


def assert_no_traceback(records):
    assert not [record for record in records if record.exc_info or record.levelno >= logging.ERROR]


# Implicit TLS.


@pytest.mark.timeout(300)
@pytest.mark.parametrize("version", VERSIONS)
def test_64_mib_echo_is_byte_exact_with_writes_of_random_sizes(chat_class, sockets, channel_map, pki, version):
    seed = random.randrange(1 << 32)
    rng = random.Random(seed)
    data = rng.randbytes(64 * MIB)
    Echo = tls_echo_class(chat_class, channel_map, pki.server_context(version))
    channel, peer = tls_connection(sockets, Echo, pki.client_context(), piece_size=random_piece_sizes(rng))

    echoed = exchange(channel_map, peer, data, what="the 64 MiB echo", turns=200_000)

    assert peer.error is None and peer.eof is False
    assert len(echoed) == len(data), "seed %d" % seed
    assert first_difference(echoed, data) is None, "seed %d" % seed
    assert channel.ssl_object.version() == peer.ssl_object.version() == VERSION_NAMES[version]
    assert channel.established_count == 1
    assert not channel.closes


@pytest.mark.parametrize("version", VERSIONS)
def test_a_chatcore_client_echoes_through_a_chatcore_server(chat_class, sockets, channel_map, pki, version):
    rng = random.Random(1414)
    pieces = [rng.randbytes(rng.randint(1, 70_000)) for _ in range(64)]
    expected = b"".join(pieces)
    server_end, client_end = sockets.tcp_pair()
    server = tls_echo_class(chat_class, channel_map, pki.server_context(version))(server_end)
    client = client_channel_class(chat_class, channel_map)(client_end, pki.client_context())
    for piece in pieces[:8]:  # before the handshake: they wait for it
        client.push(piece)
    serve_until(channel_map, lambda: client.established_count or client._fileno is None)
    for piece in pieces[8:]:
        client.push(piece)

    serve_until(channel_map, lambda: len(client.received) >= len(expected) or client._fileno is None)

    assert first_difference(client.received, expected) is None
    assert client.ssl_object.version() == server.ssl_object.version() == VERSION_NAMES[version]
    assert client.established_count == server.established_count == 1


@pytest.mark.parametrize("version", VERSIONS)
@pytest.mark.parametrize("side", ["client", "server"])
def test_pushes_beyond_the_output_limit_before_the_handshake_do_not_stall_it(
    chat_class, sockets, channel_map, pki, side, version
):
    """Reading must go on during the handshake: the queued output cannot leave before it is done."""
    greeting = random.Random(2).randbytes(3 * MIB)
    Echo = tls_echo_class(chat_class, channel_map, pki.server_context(version))
    server_end, client_end = sockets.tcp_pair()
    if side == "client":
        server = Echo(server_end)
        client = client_channel_class(chat_class, channel_map)(client_end, pki.client_context())
        client.push(greeting)  # 3 MiB > ac_max_output_buffer (1 MiB), queued until the handshake is done
        serve_until(channel_map, lambda: client.established_count, what="the handshake completing", turns=500)
        serve_until(channel_map, lambda: len(client.received) >= len(greeting) or client._fileno is None)
        assert first_difference(client.received, greeting) is None
    else:

        class Greeting(Echo):
            def __init__(self, sock):
                super().__init__(sock)
                self.push(greeting)  # right after start_tls(), before the handshake

        server = Greeting(server_end)
        peer = TLSPeer(client_end, pki.client_context())
        serve_until(
            channel_map, lambda: server.established_count, what="the handshake completing", peers=[peer], turns=500
        )
        serve_until(channel_map, lambda: len(peer.received) >= len(greeting) or peer.eof or peer.error, peers=[peer])
        assert first_difference(peer.received, greeting) is None
    assert server.established_count == 1


# STARTTLS.


@pytest.mark.parametrize("version", VERSIONS)
def test_starttls_never_delivers_what_was_pipelined_in_the_clear(chat_class, sockets, channel_map, pki, version):
    StartTLS = starttls_class(chat_class, channel_map, pki.server_context(version))
    server_end, client_end = sockets.tcp_pair()
    # In the kernel before the channel's first read: one read brings both lines.
    client_end.sendall(b"STARTTLS\r\nINJECTED\r\n")
    channel = StartTLS(server_end)
    clear = Peer(client_end)
    serve_until(channel_map, lambda: b"\r\n" in clear.received, peers=[clear])
    for _ in range(20):  # a few more turns: nothing else may come in the clear
        chatcore.loop(timeout=0.01, map=channel_map, count=1)
        clear.pump()
    assert clear.received == b"220 ready for TLS\r\n"

    peer = TLSPeer(client_end, pki.client_context())
    peer.send(b"NOOP\r\n")
    expected = b"250 first over TLS\r\n250 second over TLS\r\n250 NOOP\r\n"
    serve_until(channel_map, lambda: len(peer.received) >= len(expected) or peer.eof or peer.error, peers=[peer])

    assert bytes(peer.received) == expected
    assert channel.lines == [b"STARTTLS", b"NOOP"]
    assert channel.ssl_object.version() == VERSION_NAMES[version]
    assert channel.established_count == 1


def test_plaintext_sent_after_starttls_in_a_later_packet_is_taken_as_a_bad_handshake(
    chat_class, sockets, channel_map, pki, caplog
):
    StartTLS = starttls_class(chat_class, channel_map, pki.server_context())
    server_end, client_end = sockets.tcp_pair()
    channel = StartTLS(server_end)
    client_end.sendall(b"STARTTLS\r\n")
    clear = Peer(client_end)
    serve_until(channel_map, lambda: b"\r\n" in clear.received, peers=[clear])
    client_end.sendall(b"INJECTED\r\n")

    serve_until(channel_map, lambda: is_closed(channel, channel_map), what="the channel closing", peers=[clear])

    assert channel.lines == [b"STARTTLS"]
    records = library_records(caplog)
    [record] = about(records, channel)
    assert record.levelno == logging.WARNING and "handshake failed" in record.getMessage()
    assert_no_traceback(records)


@pytest.mark.parametrize("queued", ["pushed", "producer"])
def test_what_was_queued_before_starttls_leaves_in_the_clear_first_however_long(
    chat_class, sockets, channel_map, pki, queued
):
    cleartext = random.Random(7).randbytes(8 * MIB)
    before = cleartext if queued == "pushed" else (lambda: chatcore.simple_producer(cleartext, 100_000))
    StartTLS = starttls_class(chat_class, channel_map, pki.server_context(), before=before)
    server_end, client_end = sockets.tcp_pair()
    channel = StartTLS(server_end)
    client_end.sendall(b"STARTTLS\r\n")
    clear = Peer(client_end)
    expected_clear = cleartext + b"220 ready for TLS\r\n"
    serve_until(channel_map, lambda: len(clear.received) >= len(expected_clear), peers=[clear])
    for _ in range(20):
        chatcore.loop(timeout=0.01, map=channel_map, count=1)
        clear.pump()
    assert first_difference(clear.received, expected_clear) is None

    peer = TLSPeer(client_end, pki.client_context())
    serve_until(channel_map, lambda: peer.received.count(b"\r\n") >= 2 or peer.eof or peer.error, peers=[peer])
    assert bytes(peer.received) == b"250 first over TLS\r\n250 second over TLS\r\n"
    assert channel.lines == [b"STARTTLS"]


# A client channel verifying the server.


def test_a_client_channel_verifies_the_server_it_asked_for(chat_class, sockets, channel_map, pki):
    server_end, client_end = sockets.tcp_pair()
    server = tls_echo_class(chat_class, channel_map, pki.server_context())(server_end)
    client = client_channel_class(chat_class, channel_map)(client_end, pki.client_context())
    client.push(b"hello over TLS\n")

    serve_until(channel_map, lambda: client.received == b"hello over TLS\n" or client._fileno is None)

    assert client.received == b"hello over TLS\n"
    certificate = client.ssl_object.getpeercert()
    assert ("DNS", HOST_NAME) in certificate["subjectAltName"]
    assert client.ssl_object.server_hostname == HOST_NAME
    assert client.ssl_object.cipher() is not None
    assert server.ssl_object.getpeercert() is None  # no client certificate asked for


@pytest.mark.parametrize(
    ("trusted", "server_hostname", "reason"),
    [
        pytest.param(False, HOST_NAME, "unable to get local issuer certificate", id="untrusted-authority"),
        pytest.param(True, "not-this-host.example", "Hostname mismatch", id="wrong-host-name"),
    ],
)
def test_a_client_channel_that_cannot_verify_closes_with_one_line(
    chat_class, sockets, channel_map, pki, caplog, trusted, server_hostname, reason
):
    Echo = tls_echo_class(chat_class, channel_map, pki.server_context())
    healthy, healthy_peer = tls_connection(sockets, Echo, pki.client_context())
    server_end, client_end = sockets.tcp_pair()
    server = Echo(server_end)
    client = client_channel_class(chat_class, channel_map)(
        client_end, pki.client_context(trusted=trusted), server_hostname=server_hostname
    )
    client.push(b"never sent\n")

    serve_until(
        channel_map,
        lambda: is_closed(client, channel_map) and is_closed(server, channel_map),
        what="both ends closing",
        peers=[healthy_peer],
    )

    assert client.received == b"" and server.established_count == 0
    records = library_records(caplog)
    [client_record] = about(records, client)
    assert client_record.levelno == logging.WARNING
    assert reason in client_record.getMessage()
    assert len(about(records, server)) == 1
    assert_no_traceback(records)
    assert exchange(channel_map, healthy_peer, b"still here\n") == b"still here\n"
    assert not healthy.closes and not about(records, healthy)


def test_a_client_channel_that_cannot_verify_tells_the_server_why(chat_class, sockets, channel_map, pki, caplog):
    """The alert OpenSSL makes for the failure is sent (best effort) before closing: the server learns the cause."""
    server_end, client_end = sockets.tcp_pair()
    server = tls_echo_class(chat_class, channel_map, pki.server_context())(server_end)
    client = client_channel_class(chat_class, channel_map)(client_end, pki.client_context(trusted=False))

    serve_until(
        channel_map,
        lambda: is_closed(client, channel_map) and is_closed(server, channel_map),
        what="both ends closing",
    )

    [record] = about(library_records(caplog), server)
    assert "alert unknown ca" in record.getMessage()


# Failures: one line each, the channel closed, the others left alone.


def healthy_pair(sockets, chat_class, channel_map, pki, **attributes):
    """An established TLS echo channel and its peer, to see that a failure elsewhere leaves it alone."""
    Echo = tls_echo_class(chat_class, channel_map, pki.server_context(), **attributes)
    channel, peer = tls_connection(sockets, Echo, pki.client_context())
    assert exchange(channel_map, peer, b"first\n") == b"first\n"
    return channel, peer


def assert_still_healthy(channel_map, channel, peer, records):
    assert exchange(channel_map, peer, b"still here\n") == b"still here\n"
    assert not channel.closes and not about(records, channel)
    assert channel.established_count == 1


@pytest.mark.parametrize(
    "garbage",
    [
        pytest.param(b"GET / HTTP/1.1\r\nHost: localhost\r\n\r\n", id="http-request"),
        pytest.param(b"\x15\x03\x03\x00\x02\x02\x28", id="fatal-alert"),
        pytest.param(b"\x00" * 300, id="zeros"),
    ],
)
def test_garbage_instead_of_a_client_hello_closes_with_one_line(chat_class, sockets, channel_map, pki, caplog, garbage):
    healthy, healthy_peer = healthy_pair(sockets, chat_class, channel_map, pki)
    server_end, client_end = sockets.tcp_pair()
    channel = tls_echo_class(chat_class, channel_map, pki.server_context())(server_end)
    client_end.sendall(garbage)
    raw = Peer(client_end)

    serve_until(channel_map, lambda: is_closed(channel, channel_map), what="the channel closing", peers=[raw])

    records = library_records(caplog)
    [record] = about(records, channel)
    assert record.levelno == logging.WARNING and "handshake" in record.getMessage()
    assert_no_traceback(records)
    assert channel.established_count == 0
    assert_still_healthy(channel_map, healthy, healthy_peer, records)


def test_a_peer_closing_mid_handshake_closes_with_one_line(chat_class, sockets, channel_map, pki, caplog):
    healthy, healthy_peer = healthy_pair(sockets, chat_class, channel_map, pki)
    server_end, client_end = sockets.tcp_pair()
    channel = tls_echo_class(chat_class, channel_map, pki.server_context())(server_end)
    hello = client_hello(pki.client_context())
    client_end.sendall(hello[: len(hello) // 2])
    for _ in range(5):
        chatcore.loop(timeout=0.01, map=channel_map, count=1)
    assert not is_closed(channel, channel_map)  # half a ClientHello: waiting for the rest
    client_end.close()

    serve_until(channel_map, lambda: is_closed(channel, channel_map), what="the channel closing")

    records = library_records(caplog)
    [record] = about(records, channel)
    assert record.levelno == logging.WARNING and "closed during the handshake" in record.getMessage()
    assert_no_traceback(records)
    assert_still_healthy(channel_map, healthy, healthy_peer, records)


def test_a_stalled_handshake_is_closed_after_the_handshake_timeout(chat_class, sockets, channel_map, pki, caplog):
    caplog.set_level(logging.INFO, logger="chatcore")
    healthy, healthy_peer = healthy_pair(sockets, chat_class, channel_map, pki)
    Stalling = tls_echo_class(chat_class, channel_map, pki.server_context(), ac_tls_handshake_timeout=SHORT_TIMEOUT)
    server_end, client_end = sockets.tcp_pair()
    channel = Stalling(server_end)
    raw = Peer(client_end)

    serve_until(channel_map, lambda: is_closed(channel, channel_map), what="the timeout closing it", peers=[raw])
    serve_until(channel_map, lambda: raw.eof, what="the peer seeing the end", peers=[raw])

    assert raw.received == b""
    records = library_records(caplog)
    [record] = about(records, channel)
    assert record.levelno == logging.INFO and "not done in time" in record.getMessage()
    assert_still_healthy(channel_map, healthy, healthy_peer, records)


def test_the_handshake_timeout_is_checked_and_none_means_no_limit(chat_class, sockets, channel_map, pki):
    server_end, _ = sockets.tcp_pair()
    Bad = tls_echo_class(chat_class, channel_map, pki.server_context(), ac_tls_handshake_timeout=0)
    with pytest.raises(ValueError, match="ac_tls_handshake_timeout"):
        Bad(server_end)
    Unlimited = tls_echo_class(chat_class, channel_map, pki.server_context(), ac_tls_handshake_timeout=None)
    channel = Unlimited(sockets.tcp_pair()[0])
    assert channel._tls._timer is None


STALLED = 50
STALL_SECONDS = 5.0
# Far more turns than an idle loop makes in STALL_SECONDS, far fewer than a spinning one.
STALL_TURNS = 1000


@pytest.mark.timeout(120)
def test_50_stalled_handshakes_cost_little_cpu_and_are_all_closed(chat_class, sockets, channel_map, pki, caplog):
    """Stalled at each step a client can stop at: before a byte, mid-ClientHello, after it."""
    caplog.set_level(logging.INFO, logger="chatcore")
    healthy, healthy_peer = healthy_pair(sockets, chat_class, channel_map, pki)
    Stalling = tls_echo_class(chat_class, channel_map, pki.server_context(), ac_tls_handshake_timeout=STALL_SECONDS)
    hello = client_hello(pki.client_context())
    stalled, peers = [], []
    for index in range(STALLED):
        server_end, client_end = sockets.tcp_pair()
        stalled.append(Stalling(server_end))
        if index % 3 == 1:
            client_end.sendall(hello[: len(hello) // 2])
        elif index % 3 == 2:
            client_end.sendall(hello)
        peers.append(Peer(client_end))  # never answers

    # The loop alone, in turns that wait up to half a second: an idle loop
    # makes a few turns, one spinning on a stalled handshake thousands.
    def all_closed():
        return all(is_closed(channel, channel_map) for channel in stalled)

    turns = 0
    wall_start, cpu_start = time.monotonic(), time.process_time()
    while not all_closed() and turns < STALL_TURNS:
        chatcore.loop(timeout=0.5, map=channel_map, count=1)
        turns += 1
    cpu, wall = time.process_time() - cpu_start, time.monotonic() - wall_start

    print(
        "\n%d stalled handshakes over %.2f s (timeout %.1f s): %.3f s of CPU (%.2f %% of one core), %d loop turns"
        % (STALLED, wall, STALL_SECONDS, cpu, 100 * cpu / wall, turns)
    )
    assert all_closed(), "%d stalled handshakes still open after %d turns" % (
        sum(not is_closed(channel, channel_map) for channel in stalled),
        turns,
    )
    assert cpu < 0.5 * wall  # a spinning loop would take all of it
    records = library_records(caplog)
    timeouts = [record for record in records if "not done in time" in record.getMessage()]
    assert len(timeouts) == min(STALLED, log.KINDS["tls handshake timeout"].burst)
    assert_no_traceback(records)
    serve_until(channel_map, lambda: all(peer.eof for peer in peers), what="every peer seeing the end", peers=peers)
    assert_still_healthy(channel_map, healthy, healthy_peer, records)


def test_a_connection_cut_mid_record_closes_with_one_line(chat_class, sockets, channel_map, pki, caplog):
    healthy, healthy_peer = healthy_pair(sockets, chat_class, channel_map, pki)
    Echo = tls_echo_class(chat_class, channel_map, pki.server_context())
    channel, peer = tls_connection(sockets, Echo, pki.client_context())
    assert exchange(channel_map, peer, b"whole\n") == b"whole\n"
    records_made = peer.encrypt_now(b"x" * 5000)
    peer.sock.setblocking(True)
    peer.sock.sendall(records_made[: len(records_made) // 2])
    peer.close()

    serve_until(channel_map, lambda: is_closed(channel, channel_map), what="the channel closing")

    records = library_records(caplog)
    assert len(about(records, channel)) == 1
    assert about(records, channel)[0].levelno == logging.WARNING
    assert_no_traceback(records)
    assert_still_healthy(channel_map, healthy, healthy_peer, records)


def test_a_close_notify_from_the_peer_closes_after_what_came_before_it(chat_class, sockets, channel_map, pki, caplog):
    healthy, healthy_peer = healthy_pair(sockets, chat_class, channel_map, pki)
    Echo = tls_echo_class(chat_class, channel_map, pki.server_context())
    channel, peer = tls_connection(sockets, Echo, pki.client_context())
    assert exchange(channel_map, peer, b"whole\n") == b"whole\n"
    peer.send(b"last words\n")
    peer.close_notify()  # the TCP connection stays open: the channel must not wait for its end

    serve_until(
        channel_map, lambda: is_closed(channel, channel_map) and peer.eof, what="both closing", peers=[peer], turns=500
    )

    assert bytes(peer.received) == b"whole\nlast words\n"
    assert peer.eof == "close_notify" and peer.error is None
    records = library_records(caplog)
    # An orderly close is not a failure: at most a line, and no warning or traceback.
    assert len(about(records, channel)) <= 1
    assert not [record for record in records if record.levelno >= logging.WARNING]
    assert_still_healthy(channel_map, healthy, healthy_peer, records)


# The channel's TLS surface.


def test_ssl_object_is_none_before_start_tls_and_an_sslobject_after(chat_class, sockets, channel_map, pki):
    server_end, client_end = sockets.tcp_pair()
    channel = tls_echo_class(chat_class, channel_map, pki.server_context(), implicit=False)(server_end)
    assert channel.ssl_object is None

    channel.start_tls(pki.server_context(), server_side=True)
    assert isinstance(channel.ssl_object, ssl.SSLObject)
    assert channel.ssl_object.server_side
    with pytest.raises(ValueError):
        channel.start_tls(pki.server_context(), server_side=True)

    peer = TLSPeer(client_end, pki.client_context())
    assert exchange(channel_map, peer, b"ping\n") == b"ping\n"
    assert channel.ssl_object.version() in ("TLSv1.2", "TLSv1.3")
    assert channel.established_count == 1
    with pytest.raises(ValueError):
        channel.start_tls(pki.server_context(), server_side=True)


@pytest.mark.skipif(not hasattr(ssl, "OP_NO_RENEGOTIATION"), reason="this ssl module cannot refuse renegotiation")
def test_start_tls_refuses_renegotiation_on_the_context(chat_class, sockets, channel_map, pki):
    # Python's ssl cannot start a renegotiation to try it; the option is what OpenSSL obeys.
    context = pki.server_context(ssl.TLSVersion.TLSv1_2)
    context.options &= ~ssl.OP_NO_RENEGOTIATION  # whatever this OpenSSL's default
    server_end, _ = sockets.tcp_pair()
    channel = tls_echo_class(chat_class, channel_map, context, implicit=False)(server_end)
    channel.start_tls(context, server_side=True)
    assert context.options & ssl.OP_NO_RENEGOTIATION


def test_handle_tls_established_runs_once_and_close_sends_close_notify(chat_class, sockets, channel_map, pki):
    Echo = tls_echo_class(chat_class, channel_map, pki.server_context())
    channel, peer = tls_connection(sockets, Echo, pki.client_context())
    for round_trip in range(20):
        assert exchange(channel_map, peer, b"round %d\n" % round_trip) == b"round %d\n" % round_trip
    assert channel.established_count == 1

    channel.close()
    serve_until(channel_map, lambda: peer.eof or peer.error, what="the peer seeing the end", peers=[peer])

    assert peer.eof == "close_notify" and peer.error is None


# Flow control over TLS.


def test_a_tls_peer_that_never_reads_pauses_reading_within_the_output_limit(chat_class, sockets, channel_map, pki):
    reply = b"y" * (64 * 1024 - 1) + b"\n"
    request = b"r" * (16 * 1024 - 1) + b"\n"
    requests = 200
    limit = 256 * 1024
    Lines = line_channel_class(chat_class, channel_map)

    class Generous(Lines):
        ac_max_output_buffer = limit

        def __init__(self, sock):
            super().__init__(sock)
            self.start_tls(pki.server_context(), server_side=True)

        def line(self, line):
            self.push(reply)

    channel, peer = tls_connection(sockets, Generous, pki.client_context())
    serve_until(channel_map, lambda: peer.established, peers=[peer])
    peer.reading = False
    peer.send(request * requests)
    highest = [0]

    def paused():
        highest[0] = max(highest[0], channel.output_buffer_size)
        return channel.reading_paused

    serve_until(channel_map, paused, what="reading pausing", peers=[peer])
    for _ in range(50):
        paused()
        chatcore.loop(timeout=0.01, map=channel_map, count=1)
        peer.pump()
    assert channel.reading_paused
    # At most the limit, plus the replies to what one read of 64 KiB brought.
    assert highest[0] <= limit + 5 * len(reply)
    answered = len(channel.lines)
    assert answered < requests

    def replied():
        paused()
        return len(peer.received) >= requests * len(reply) or peer.eof

    peer.reading = True
    serve_until(channel_map, replied, what="every reply", peers=[peer], turns=20_000)
    assert first_difference(peer.received, reply * requests) is None
    assert highest[0] <= limit + 5 * len(reply)
    assert not channel.reading_paused and len(channel.lines) == requests


@pytest.mark.parametrize("close_notify_first", [False, True], ids=["tcp-only", "close-notify-then-tcp"])
def test_a_peer_that_shuts_down_its_side_gets_its_whole_echo(
    chat_class, sockets, channel_map, pki, caplog, close_notify_first
):
    data = random.Random(3).randbytes(8 * MIB)
    Echo = tls_echo_class(chat_class, channel_map, pki.server_context())
    channel, peer = tls_connection(sockets, Echo, pki.client_context(), piece_size=random_piece_sizes(random.Random(5)))
    peer.send(data)
    if close_notify_first:
        serve_until(channel_map, lambda: peer.established, peers=[peer])
        peer.close_notify()
    peer.shut_down_sending()

    serve_until(channel_map, lambda: peer.eof or peer.error, what="the end of the echo", peers=[peer], turns=20_000)

    assert peer.error is None
    assert first_difference(peer.received, data) is None
    assert peer.eof == "close_notify"
    assert is_closed(channel, channel_map) and channel.closes == 1
    assert not [record for record in library_records(caplog) if record.levelno >= logging.WARNING]


def test_the_idle_timeout_closes_a_quiet_tls_channel(chat_class, sockets, channel_map, pki, caplog):
    caplog.set_level(logging.INFO, logger="chatcore")
    Echo = tls_echo_class(chat_class, channel_map, pki.server_context(), ac_idle_timeout=SHORT_TIMEOUT)
    channel, peer = tls_connection(sockets, Echo, pki.client_context())
    assert exchange(channel_map, peer, b"hello\n") == b"hello\n"

    serve_until(channel_map, lambda: peer.eof or peer.error, what="the idle timeout", peers=[peer])

    assert is_closed(channel, channel_map)
    assert peer.eof == "close_notify"
    [record] = about(library_records(caplog), channel)
    assert record.levelno == logging.INFO and "for 0.3 s" in record.getMessage()


def test_producers_and_close_when_done_work_over_tls(chat_class, sockets, channel_map, pki):
    payload = random.Random(11).randbytes(3 * MIB)
    Lines = line_channel_class(chat_class, channel_map)

    class Serving(Lines):
        def __init__(self, sock):
            super().__init__(sock)
            self.start_tls(pki.server_context(), server_side=True)

        def line(self, line):
            self.push(b"begin\n")
            self.push_with_producer(chatcore.simple_producer(payload, 7000))
            self.push(b"end\n")
            self.close_when_done()
            self.push(b"never sent\n")

    channel, peer = tls_connection(sockets, Serving, pki.client_context())
    peer.send(b"GET\n")

    serve_until(channel_map, lambda: peer.eof or peer.error, what="the end of the reply", peers=[peer], turns=20_000)

    assert first_difference(peer.received, b"begin\n" + payload + b"end\n") is None
    assert peer.eof == "close_notify"
    assert is_closed(channel, channel_map)


def test_a_socket_error_on_a_tls_channel_is_a_plain_close(chat_class, sockets, channel_map, pki, caplog):
    healthy, healthy_peer = healthy_pair(sockets, chat_class, channel_map, pki)
    Echo = tls_echo_class(chat_class, channel_map, pki.server_context())
    channel, peer = tls_connection(sockets, Echo, pki.client_context())
    assert exchange(channel_map, peer, b"whole\n") == b"whole\n"
    # A reset: SO_LINGER 0 makes close() send RST instead of FIN.
    peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
    peer.close()

    serve_until(channel_map, lambda: is_closed(channel, channel_map), what="the channel closing")

    records = library_records(caplog)
    assert_no_traceback(records)
    assert_still_healthy(channel_map, healthy, healthy_peer, records)


@pytest.mark.parametrize("how", ["close", "reset"])
def test_a_peer_gone_while_the_channel_is_sending_is_a_plain_close(chat_class, sockets, channel_map, pki, caplog, how):
    """No "cannot encrypt" warning: a send that finds the connection gone closes, and nothing is encrypted after."""
    piece = b"z" * (256 * 1024)
    Lines = line_channel_class(chat_class, channel_map)

    class Talkative(Lines):
        def __init__(self, sock):
            super().__init__(sock)
            self.start_tls(pki.server_context(), server_side=True)

        def line(self, line):
            for _ in range(64):
                self.push(piece)

    for _ in range(10):
        channel, peer = tls_connection(sockets, Talkative, pki.client_context())
        peer.send(b"talk\n")
        serve_until(channel_map, lambda: len(peer.received) >= 4 * MIB or peer.eof, peers=[peer])  # noqa: B023
        if how == "reset":  # SO_LINGER 0: close() sends RST instead of FIN
            peer.sock.setsockopt(socket.SOL_SOCKET, socket.SO_LINGER, struct.pack("ii", 1, 0))
        peer.close()
        serve_until(channel_map, lambda: is_closed(channel, channel_map), what="the channel closing")  # noqa: B023
        assert channel.closed_count == 1  # handle_close(), as for a plain channel

    assert not [record for record in library_records(caplog) if record.levelno >= logging.WARNING]
