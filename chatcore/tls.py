"""TLS under an ``async_chat`` channel: ``ssl.SSLObject`` over two memory BIOs.

``async_chat.start_tls()`` puts a ``TLSLayer`` between the channel and its
socket.  The socket stays the plain non-blocking one the loop watches; the
layer turns what it receives into plaintext for the framing engine, and what
the channel sends into TLS records, with OpenSSL never touching the socket
(the approach of asyncio's sslproto and Twisted's TLS protocol: the loop's
readiness events drive the handshake, so nothing blocks and nothing spins).

Order and safety, in the terms a STARTTLS server cares about:

* what was pushed before ``start_tls()`` leaves in the clear, first: a
  boundary marker queued behind it starts the encrypted output when the
  sender reaches it (``TLSBoundary``);
* what was received in the clear after the command that led to
  ``start_tls()`` (the rest of that read) is discarded, never delivered as if
  it had come over TLS, and everything read from then on goes through the
  layer;
* everything the layer decrypts from a read is delivered from that read:
  nothing waits inside OpenSSL for a socket event that may never come.

The layer reports through the channel: ``handle_tls_established()`` when the
handshake completes, and the library's rate-limited log (one line per
failure: a garbage or truncated handshake, an alert, a stalled handshake)
followed by ``close()``, never a traceback per peer.
"""

import ssl
from typing import TYPE_CHECKING, Any, Optional

from .eventloop import call_later, note_interest_change
from .events import DISCONNECTED
from .log import MessageKind

if TYPE_CHECKING:
    from .timers import TimerHandle

__all__ = ["TLSBoundary", "TLSLayer"]

_FAILED = MessageKind("tls failure", "warning")
_STALLED = MessageKind("tls handshake timeout", "info")

# How much plaintext one SSLObject.read() asks for: a TLS record holds at most 16 KiB.
_READ_SIZE = 65536


class TLSLayer:
    """One channel's TLS session: handshake, decryption, encryption, close_notify."""

    def __init__(
        self,
        channel: Any,
        context: ssl.SSLContext,
        server_side: bool,
        server_hostname: Optional[str],
        handshake_timeout: Optional[float],
    ) -> None:
        self.channel: Any = channel
        self._incoming = ssl.MemoryBIO()
        self._outgoing = ssl.MemoryBIO()
        #: The ``ssl.SSLObject``: peer certificate, version, cipher once established.
        self.ssl_object: ssl.SSLObject = context.wrap_bio(
            self._incoming, self._outgoing, server_side=server_side, server_hostname=server_hostname
        )
        #: Whether the handshake has completed.
        self.established: bool = False
        #: Whether the encrypted output has started (everything pushed before
        #: ``start_tls()`` has left in the clear).
        self.output_started: bool = False
        #: Whether the peer has sent its close_notify.
        self.peer_closed: bool = False
        # Whether the end of the peer's data has been acted on.
        self._ended = False
        # Records (and handshake flights) the socket has not taken yet.
        self._ciphertext = bytearray()
        # Where the peer's stream is in its records (5-byte header, then the
        # length it gives), to tell a cut record from a close between records.
        self._header = bytearray()
        self._record_left = 0
        self._timer: Optional[TimerHandle] = None
        if handshake_timeout is not None:
            self._timer = call_later(handshake_timeout, self._handshake_stalled, map=channel._map)

    # Reading.

    def recv(self, buffer_size: int) -> bytes:
        """The channel's ``recv()`` while TLS is on: plaintext, possibly empty.

        Receives once from the socket and returns all the plaintext that the
        bytes received complete.  The end of the peer's data (with or
        without a close_notify first) goes to the channel as a plain end of
        data would; a failure closes the channel after one log line.
        """
        channel = self.channel
        try:
            raw = channel.socket.recv(buffer_size)
        except OSError as err:
            if err.errno in DISCONNECTED:
                channel.handle_close()
                return b""
            raise
        if not raw:
            self._peer_gone()
            return b""
        if self.peer_closed:
            return b""  # after its close_notify, nothing the peer sends counts
        self._track_records(raw)
        self._incoming.write(raw)
        return self._decrypt()

    def _track_records(self, raw: bytes) -> None:
        size = len(raw)
        position = 0
        while position < size:
            if self._record_left:
                taken = min(self._record_left, size - position)
                self._record_left -= taken
                position += taken
                continue
            wanted = min(5 - len(self._header), size - position)
            self._header += raw[position : position + wanted]
            position += wanted
            if len(self._header) == 5:
                self._record_left = (self._header[3] << 8) | self._header[4]
                del self._header[:]

    def _decrypt(self) -> bytes:
        ssl_object = self.ssl_object
        if not self.established:
            try:
                ssl_object.do_handshake()
            except ssl.SSLWantReadError:
                self.flush()
                return b""
            except (ssl.SSLError, ssl.CertificateError) as err:
                self.fail("handshake failed", err)
                return b""
            self._handshake_done()
        pieces = []
        while True:
            try:
                piece = ssl_object.read(_READ_SIZE)
            except ssl.SSLWantReadError:
                break
            except ssl.SSLZeroReturnError:
                piece = b""
            except ssl.SSLError as err:
                self.fail("bad record", err)
                return b""
            if not piece:
                # The peer's close_notify (read() answers it with b"").
                self.peer_closed = True
                break
            pieces.append(piece)
        # A read may write too (a TLS 1.3 key update answered, an alert).
        self.flush()
        data = b"".join(pieces)
        if self.peer_closed:
            channel = self.channel
            if data:
                # What came before it is delivered first, from this read.
                call_later(0, self._peer_gone, map=channel._map)
            else:
                self._peer_gone()
        return data

    def _handshake_done(self) -> None:
        self.established = True
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        self.flush()
        channel = self.channel
        # Pushes made during the handshake can go now.
        note_interest_change(channel._map, channel._fileno)
        channel.handle_tls_established()

    def _peer_gone(self) -> None:
        """The peer's end of data, mid-handshake, after a close_notify, or abruptly."""
        channel = self.channel
        if channel._fileno is None or self._ended:
            return  # closed meanwhile, or already on its way out
        self._ended = True
        if not self.established:
            self.fail("connection closed during the handshake", None)
            return
        if not self.peer_closed and (self._header or self._record_left):
            self.fail("connection closed in the middle of a record", None)
            return
        channel._finish_after_peer_close()

    # Writing.

    def start_output(self) -> None:
        """What was pushed before ``start_tls()`` has been sent: TLS output begins."""
        self.output_started = True
        if not self.established:
            try:
                self.ssl_object.do_handshake()  # a client's ClientHello
            except ssl.SSLWantReadError:
                pass
            except ssl.SSLError as err:
                self.fail("handshake failed", err)
                return
            else:
                self._handshake_done()
                return
        self.flush()

    def send(self, data: Any) -> int:
        """The channel's ``send()`` while TLS is on: how much of *data* was taken."""
        if not self.output_started:
            # Pushed before start_tls(): in the clear, as it was queued.
            sent: int = self.channel._send_in_clear(data)
            return sent
        if not self.channel.connected or not self.established or not self.flush():
            return 0  # the handshake, or the records already made, come first
        try:
            taken = self.ssl_object.write(data)
        except ssl.SSLError as err:
            self.fail("cannot encrypt", err)
            return 0
        self.flush()
        return taken

    def send_buffers(self, buffers: list[Any]) -> int:
        """Gathered sends while TLS is on: one write (so few records) for all *buffers*."""
        if not self.output_started:
            sent_in_clear: int = self.channel._send_in_clear(b"".join(buffers))
            return sent_in_clear
        if not self.channel.connected or not self.established or not self.flush():
            raise BlockingIOError  # the caller waits for the next write event
        data = b"".join(buffers)
        try:
            taken = self.ssl_object.write(data)
        except ssl.SSLError as err:
            self.fail("cannot encrypt", err)
            raise BlockingIOError from None
        self.flush()
        return taken

    def flush(self) -> bool:
        """Hand the socket what OpenSSL has written; True when nothing is left over."""
        produced = self._outgoing.read()
        if produced:
            was_empty = not self._ciphertext
            self._ciphertext += produced
            if was_empty:
                channel = self.channel
                note_interest_change(channel._map, channel._fileno)
        channel = self.channel
        # Held until the boundary, and until a client's connection is up
        # (start_tls() from handle_connect()): a write event sends it then.
        if not (self._ciphertext and self.output_started and channel.connected):
            return not self._ciphertext
        pending = self._ciphertext
        try:
            while pending:
                sent = channel.socket.send(pending)
                if not sent:
                    break
                del pending[:sent]
        except BlockingIOError:
            pass
        except OSError as err:
            if err.errno in DISCONNECTED:
                del pending[:]
                channel.handle_close()  # as dispatcher.send does
                return False
            raise
        if not pending:
            note_interest_change(channel._map, channel._fileno)
        return not pending

    @property
    def pending_output(self) -> bool:
        """Whether records are waiting for the socket (the channel stays writable for them)."""
        return bool(self._ciphertext) and self.output_started

    def writable(self, queued: bool) -> bool:
        """The channel's ``writable()`` answer, *queued* telling whether it has pushes waiting."""
        if self.pending_output:
            return True
        if not self.output_started:
            return queued  # in the clear, up to the boundary
        return queued and self.established

    # Ending.

    def close_notify(self) -> None:
        """Say goodbye in TLS (best effort: one non-blocking send), before the socket closes."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not (self.established and self.output_started):
            return
        try:
            self.ssl_object.unwrap()
        except ssl.SSLError:
            pass  # SSLWantReadError: ours is written, the peer's has not come (nor need it)
        produced = self._outgoing.read()
        if produced:
            self._ciphertext += produced
        if self._ciphertext:
            try:
                self.channel.socket.send(self._ciphertext)
            except OSError:
                pass
            del self._ciphertext[:]

    def fail(self, what: str, err: Optional[BaseException]) -> None:
        """Log one line about the peer and close the channel."""
        channel = self.channel
        _FAILED.log("TLS with %r: %s%s; closing", channel.addr, what, "" if err is None else " (%s)" % (err,))
        # The alert OpenSSL wrote says why to the peer (one try, never waited for).
        alert = bytes(self._ciphertext) + self._outgoing.read()
        del self._ciphertext[:]
        if alert and self.output_started and channel.connected:
            try:
                channel.socket.send(alert)
            except OSError:
                pass
        channel.close()

    def _handshake_stalled(self) -> None:
        self._timer = None
        if self.established:
            return
        channel = self.channel
        if channel._fileno is None:
            return
        _STALLED.log("TLS handshake with %r not done in time: closing", channel.addr)
        del self._ciphertext[:]
        channel.close()


class TLSBoundary:
    """Queued by ``start_tls()`` behind what was pushed before it; starts the TLS output.

    A producer to the send path (stdlib's steps ask it ``more()``, and it
    answers empty, so it leaves the queue), which is how it is sent in order
    with the pushes around it on both engines.
    """

    __slots__ = ("_layer",)

    def __init__(self, layer: TLSLayer) -> None:
        self._layer = layer

    def more(self) -> bytes:
        self._layer.start_output()
        return b""
