"""TLS for the socket tests: certificates made at test time, and a TLS peer the test drives.

``PKI`` makes a throwaway certificate authority with ``trustme`` and a
server certificate it signed for "localhost" and 127.0.0.1, and hands out
fresh ``ssl.SSLContext`` objects for either side (a TLS version pinned if
asked; a client context trusting some other authority, to see verification
fail).  Nothing is read from or written to the system's trust store.

``TLSPeer`` is the far end of a channel speaking TLS: a client built on the
standard library's ``ssl.SSLObject`` over memory BIOs and a non-blocking
socket, so that one thread can drive both it and the loop and a test can
take it where a real client goes wrong (stop reading, stop half-way through
a record, send a close_notify and keep the connection open).  Like
``sockets.Peer`` it does its work in ``pump()``, which
``serving.serve_until(..., peers=[peer])`` calls before every loop turn.
``client_hello()`` is the first flight of a fresh client, for the tests
that cut a handshake short.
"""

import random
import socket
import ssl
from typing import Callable, Optional, Union

import trustme

#: The host name the server certificate is issued for (and clients ask for).
HOST_NAME = "localhost"

#: How much ciphertext a peer keeps made but unsent before it encrypts more.
_CIPHERTEXT_AHEAD = 1 << 20
#: What one raw ``recv`` asks the socket for.
_RECV_SIZE = 1 << 18


class PKI:
    """A certificate authority and one server certificate it signed, made at test time."""

    def __init__(self) -> None:
        self.authority = trustme.CA()
        self.server_certificate = self.authority.issue_cert(HOST_NAME, "127.0.0.1")

    def server_context(self, version: Optional[ssl.TLSVersion] = None) -> ssl.SSLContext:
        """A context serving the certificate; *version*, when given, is the only one it speaks."""
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        self.server_certificate.configure_cert(context)
        _pin(context, version)
        return context

    def client_context(self, version: Optional[ssl.TLSVersion] = None, *, trusted: bool = True) -> ssl.SSLContext:
        """A verifying client context (certificate and host name) trusting this authority.

        With *trusted* false it trusts another authority, which did not sign
        the server's certificate: verification fails.
        """
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)  # verifies, and checks the host name
        (self.authority if trusted else trustme.CA()).configure_trust(context)
        _pin(context, version)
        return context


def _pin(context: ssl.SSLContext, version: Optional[ssl.TLSVersion]) -> None:
    if version is not None:
        context.minimum_version = version
        context.maximum_version = version


def client_hello(context: ssl.SSLContext, server_hostname: str = HOST_NAME) -> bytes:
    """The bytes a fresh client sends first (its ClientHello), made without a socket."""
    incoming, outgoing = ssl.MemoryBIO(), ssl.MemoryBIO()
    client = context.wrap_bio(incoming, outgoing, server_hostname=server_hostname)
    try:
        client.do_handshake()
    except ssl.SSLWantReadError:
        pass
    return outgoing.read()


def random_piece_sizes(rng: random.Random) -> Callable[[], int]:
    """Sizes of writes from a few bytes to a few hundred KiB, drawn from *rng*.

    Mostly around and below a TLS record (16 KiB) and a socket buffer, so
    that records and reads end at every kind of place in the stream.
    """
    ceilings = (16, 1500, 16384, 65536, 300_000)

    def size() -> int:
        return rng.randint(1, rng.choice(ceilings))

    return size


class TLSPeer:
    """A TLS client on the far end of a channel's socket, non-blocking, driven by ``pump()``.

    ``send()`` queues plaintext; each ``pump()`` receives what has arrived,
    runs the handshake, decrypts into ``received``, encrypts queued
    plaintext in writes of ``piece_size()`` bytes and sends what the socket
    takes.  ``eof`` tells how the stream from the channel ended:
    "close_notify" (a clean TLS close), "ragged" (the connection ended
    without one), "reset"; ``error`` holds the ``ssl.SSLError`` that ended
    the session otherwise (a failed handshake, an alert).  With ``reading``
    false nothing is received once the handshake is done (a peer that never
    reads).
    """

    def __init__(
        self,
        sock: socket.socket,
        context: ssl.SSLContext,
        server_hostname: Optional[str] = HOST_NAME,
        *,
        piece_size: Optional[Callable[[], int]] = None,
    ) -> None:
        sock.setblocking(False)
        self.sock = sock
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        self.ssl_object = context.wrap_bio(self._incoming, self._outgoing, server_hostname=server_hostname)
        self.piece_size = piece_size or (lambda: 65536)
        self.reading = True
        self.established = False
        self.received = bytearray()
        self.eof: Union[bool, str] = False
        self.error: Optional[ssl.SSLError] = None
        #: Whether the socket said the connection ended (end of stream or reset).
        self.connection_ended = False
        self._plaintext = bytearray()
        self._ciphertext = bytearray()
        self._shut_down_after_sending = False
        self._handshake()

    # Driving.

    def pump(self) -> None:
        """Receive, decrypt, encrypt and send as far as the socket allows now."""
        if self.sock.fileno() < 0:
            return
        if self.reading or not self.established:
            self._receive()
        if not self.established and self.error is None:
            self._handshake()
        if self.established and self.eof is False and self.error is None:
            self._decrypt()
        self._encrypt()
        self._send()

    def send(self, data: bytes) -> None:
        """Queue *data* to be encrypted and sent by the following pumps."""
        self._plaintext += data

    @property
    def all_sent(self) -> bool:
        """Whether everything queued has been encrypted and handed to the socket."""
        return not self._plaintext and not self._ciphertext and not self._outgoing.pending

    # Ending, politely or not.

    def close_notify(self) -> None:
        """Send a TLS close_notify (after what is queued); the connection stays open."""
        self._encrypt(everything=True)
        try:
            self.ssl_object.unwrap()
        except ssl.SSLWantReadError:
            pass  # ours is made; the channel's answer is read by later pumps
        self._ciphertext += self._outgoing.read()
        self._send()

    def shut_down_sending(self) -> None:
        """End the TCP stream towards the channel once everything queued has been sent."""
        self._shut_down_after_sending = True
        self._send()

    def encrypt_now(self, data: bytes) -> bytes:
        """The records carrying *data*, made but not sent (nothing else must be queued)."""
        assert self.all_sent, "records made now would overtake what is queued"
        self.ssl_object.write(data)
        return self._outgoing.read()

    def close(self) -> None:
        """Close the socket at once (no close_notify)."""
        self.sock.close()

    # The steps of a pump.

    def _receive(self) -> None:
        while not self.connection_ended:
            try:
                chunk = self.sock.recv(_RECV_SIZE)
            except BlockingIOError:
                return
            except ConnectionResetError:
                self.connection_ended = True
                self.eof = "reset"
                return
            if not chunk:
                self.connection_ended = True
                self._incoming.write_eof()
                return
            self._incoming.write(chunk)

    def _handshake(self) -> None:
        try:
            self.ssl_object.do_handshake()
        except ssl.SSLWantReadError:
            pass
        except ssl.SSLError as err:
            self.error = err
        else:
            self.established = True
        self._ciphertext += self._outgoing.read()

    def _decrypt(self) -> None:
        while True:
            try:
                piece = self.ssl_object.read(_RECV_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                self.eof = "close_notify"
                break
            except ssl.SSLEOFError:
                self.eof = "ragged"
                break
            except ssl.SSLError as err:
                self.error = err
                break
            if not piece:
                self.eof = "close_notify"
                break
            self.received += piece
        # A read may answer (a key update, the close_notify of a shutdown).
        self._ciphertext += self._outgoing.read()

    def _encrypt(self, everything: bool = False) -> None:
        if not self.established or self.error is not None:
            return
        plaintext = self._plaintext
        while plaintext and (everything or len(self._ciphertext) < _CIPHERTEXT_AHEAD):
            size = self.piece_size()
            self.ssl_object.write(bytes(plaintext[:size]))
            del plaintext[:size]
            self._ciphertext += self._outgoing.read()

    def _send(self) -> None:
        pending = self._ciphertext
        try:
            while pending:
                sent = self.sock.send(pending)
                del pending[:sent]
        except (BlockingIOError, InterruptedError):
            return
        except (BrokenPipeError, ConnectionResetError):
            del pending[:]
            self.connection_ended = True
            return
        if self._shut_down_after_sending and self.all_sent:
            self._shut_down_after_sending = False
            self.sock.shutdown(socket.SHUT_WR)
