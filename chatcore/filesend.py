"""A file queued by ``async_chat.push_file()``: a producer that can also be sent zero-copy.

The queue entry is a real producer: its ``more()`` reads the next chunk of
the file, so every send path that drains producers (the engines'
``initiate_send``, an overridden ``initiate_send``, a TLS channel, code that
reaches into ``producer_fifo``) sends the file correctly, one chunk at a
time — the read + send fallback.  Where the channel allows it
(``async_chat._send_gathered``: chatcore's own ``send`` on a plain stream
socket, no TLS), ``send_to()`` hands the file to the socket with
``os.sendfile`` instead, from the same position, so the two ways may take
turns on one entry without a byte lost or sent twice.

The file is read with positional reads (``os.pread``) from ``offset``:
its own position is neither used nor moved.  A file that cannot seek (a
pipe) is read from where it is, sequentially.  How much there is to send is
found by reading until the end (or ``count`` bytes): the size ``fstat``
reports is never trusted (files under /proc report 0).
"""

import errno
import os
import stat
import weakref
from typing import TYPE_CHECKING, Any, Optional

from .log import MessageKind

if TYPE_CHECKING:
    from _typeshed import HasFileno


__all__ = ["FileProducer"]

#: A read or send of a queued file failed: the channel is closed.
FILE_ERROR = MessageKind("file send error", "error")

# sendfile's answers that mean "not with these two descriptors": the entry
# goes on with reads and sends, from where sendfile stopped.
_CANNOT_SENDFILE = frozenset(
    code
    for code in (
        getattr(errno, name, None)
        for name in ("EINVAL", "ENOTSOCK", "EOPNOTSUPP", "ENOTSUP", "ENOSYS", "ESPIPE", "EXDEV", "EOVERFLOW")
    )
    if code is not None
)

# errno values for "the peer is gone" (events.DISCONNECTED, less EBADF: a
# file closed under the entry is the application's error, not the peer's).
_PEER_GONE = frozenset({errno.ECONNRESET, errno.ENOTCONN, errno.ESHUTDOWN, errno.ECONNABORTED, errno.EPIPE})

# The most one sendfile call is asked for (Linux sends at most 0x7ffff000).
_MOST_PER_SENDFILE = 0x7FFFF000

_sendfile_exists = hasattr(os, "sendfile")
_pread_exists = hasattr(os, "pread")


class FileProducer:
    """``producer_fifo``'s entry for a file: ``more()`` reads, ``send_to()`` sends zero-copy.

    *offset* is where the next byte comes from (absolute), *remaining* how
    many bytes are left to send (None: up to the end of the file).  Truthy
    and not sliceable, so stdlib's ``initiate_send`` treats it as any producer.
    """

    __slots__ = (
        "file",
        "fd",
        "offset",
        "remaining",
        "chunk_size",
        "close_file",
        "positional",
        "zero_copy",
        "finished",
        "size_hint",
        "_channel",
    )

    def __init__(
        self, channel: Any, file: "HasFileno", offset: int, count: Optional[int], close_file: bool, chunk_size: int
    ) -> None:
        fd = file.fileno()
        status = os.fstat(fd)
        regular = stat.S_ISREG(status.st_mode)
        positional = regular or _can_seek(fd)
        if offset and not positional:
            raise ValueError("offset must be 0 for a file that cannot seek (a pipe, a socket)")
        self.file: HasFileno = file
        self.fd: int = fd
        #: Where the next byte comes from.
        self.offset: int = offset
        #: Bytes left to send; None: up to the end of the file.
        self.remaining: Optional[int] = count
        #: The most one ``more()`` reads.
        self.chunk_size: int = max(1, chunk_size)
        #: Whether ``finish()`` closes the file (push_file's *close*).
        self.close_file: bool = close_file
        #: Read with positional reads (False: a pipe, read from where it is).
        self.positional: bool = positional
        #: Whether ``os.sendfile`` may still be tried: it reads regular
        #: files only (the socket side is checked at each send).
        self.zero_copy: bool = _sendfile_exists and regular
        self.finished: bool = count == 0
        #: Where the file probably ends: only to save a call, never to stop reading.
        self.size_hint: int = status.st_size if regular else 0
        self._channel = weakref.ref(channel)

    def __repr__(self) -> str:
        return "<FileProducer fd=%d offset=%d remaining=%r>" % (self.fd, self.offset, self.remaining)

    def more(self) -> bytes:
        """The next chunk (at most ``chunk_size`` bytes); b"" once the file is sent."""
        if self.finished:
            return b""
        size = self.chunk_size if self.remaining is None else min(self.chunk_size, self.remaining)
        try:
            if self.positional:
                data = _read_at(self.fd, size, self.offset)
            else:
                data = os.read(self.fd, size)
        except OSError as err:
            self._fail("reading", err)
            return b""
        if not data:
            # The end of the file (before count, if it is shorter: the entry ends there).
            self.finish()
            return b""
        self._advance(len(data))
        return data

    def send_to(self, socket_fd: int) -> bool:
        """Send from the file to *socket_fd* with ``os.sendfile``; True when the socket is full.

        Otherwise the entry has ``finished``, has switched to reads
        (``zero_copy`` false: sendfile cannot serve these two descriptors), or
        has failed (logged, the channel closed).  BlockingIOError and the
        errors that mean the peer is gone propagate, as from a send.
        """
        while not self.finished:
            size = _MOST_PER_SENDFILE if self.remaining is None else min(_MOST_PER_SENDFILE, self.remaining)
            try:
                sent = os.sendfile(socket_fd, self.fd, self.offset, size)
            except BlockingIOError:
                raise
            except OSError as err:
                if err.errno in _PEER_GONE:
                    raise
                if err.errno in _CANNOT_SENDFILE:
                    self.zero_copy = False
                else:
                    self._fail("sending", err)
                return False
            if not sent:
                # The end of the file, says sendfile; a file whose pages are
                # not the page cache's (/proc) may have more for a read.
                self.zero_copy = False
                return False
            self._advance(sent)
            if sent < size and (self.remaining is not None or self.offset < self.size_hint):
                # The socket took what it had room for (short of the end the
                # file's size suggests: at that end, sendfile is asked again
                # to tell the end from a full socket).
                return True
        return False

    def _advance(self, size: int) -> None:
        self.offset += size
        if self.remaining is not None:
            self.remaining -= size
            if not self.remaining:
                self.finish()

    def finish(self) -> None:
        """The entry is done (sent, or dropped): nothing more is read; the file closed if asked."""
        self.finished = True
        if self.close_file:
            self.close_file = False
            try:
                close = getattr(self.file, "close", None)
                if close is None:
                    os.close(self.fd)
                else:
                    close()
            except OSError as err:
                self._fail("closing", err)

    def _fail(self, doing: str, err: OSError) -> None:
        """A file error: log it, and close the channel (the peer would get a truncated file)."""
        channel = self._channel()
        FILE_ERROR.log(
            "error %s file %r for %r at offset %d: %s: closing",
            doing,
            self.file,
            None if channel is None else channel.addr,
            self.offset,
            err,
        )
        self.finish()
        if channel is not None and channel._fileno is not None:
            channel.handle_close()
            if channel._fileno is not None:
                # A handle_close() that keeps the channel open would send
                # what follows the file as if it were the file's.
                channel.close()


def _can_seek(fd: int) -> bool:
    try:
        os.lseek(fd, 0, os.SEEK_CUR)
    except OSError:
        return False
    return True


if _pread_exists:
    _read_at = os.pread
else:  # Windows: no positional reads; the file's position is moved

    def _read_at(fd: int, size: int, offset: int) -> bytes:
        os.lseek(fd, offset, os.SEEK_SET)
        return os.read(fd, size)
