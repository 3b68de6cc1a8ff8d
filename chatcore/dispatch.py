"""The socket wrapper side of asyncore: ``dispatcher`` and its relatives.

Everything here behaves like CPython 3.11's ``asyncore`` (the event loop itself
lives in ``chatcore.eventloop``): the same methods, attributes, defaults, log lines
and error handling, because legacy servers override and call them directly.
Except where the lines go: ``log_info()`` and ``log()`` write to the ``chatcore``
logger (``chatcore.log``), and the messages a peer can provoke are rate-limited
there; ``chatcore.compat.asyncore`` prints them as stdlib did.  And except
where asyncore gave up: ``accept()`` answers running out of descriptors or
memory by returning None and pausing the listener for a while, where asyncore
raised (and so closed it).  The loop's read pauses (``pause_reading``) start here.
"""

import errno
import os
import socket
import sys
import warnings
from errno import (
    EAGAIN,
    EALREADY,
    EBADF,
    ECONNABORTED,
    EINPROGRESS,
    EINVAL,
    EISCONN,
    EMFILE,
    ENFILE,
    ENOBUFS,
    ENOMEM,
    ENOTCONN,
    EWOULDBLOCK,
    errorcode,
)
from typing import TYPE_CHECKING, Any, Optional, cast

from .eventloop import (
    ChannelMap,
    call_later,
    forget_channel,
    note_interest_change,
    release_pollers,
    socket_map,
    track_predicates,
)
from .events import (
    _RERAISED,
    DISCONNECTED,
    ExitNow,
    read,
    readwrite,
    write,
)
from .log import MessageKind, log_message, logger

if TYPE_CHECKING:
    from _typeshed import ReadableBuffer

__all__ = [
    "ExitNow",
    "close_all",
    "compact_traceback",
    "dispatcher",
    "dispatcher_with_send",
    "read",
    "readwrite",
    "socket_map",
    "write",
]


#: ``pause_reading()`` reasons (bits): the application's own, and the library's.
PAUSED_BY_USER = 1
PAUSED_BY_OUTPUT = 2  # more queued to send than ac_max_output_buffer
PAUSED_BY_PEER_CLOSE = 4  # the peer has sent everything; what is queued still goes
PAUSED_BY_ACCEPT_BACKOFF = 8  # accept() ran out of descriptors or memory


def pause_reading(channel: Any, reason: int) -> None:
    """Stop the loop watching *channel* for reading, for *reason* (a PAUSED_BY_* bit).

    The library's own pauses go through here, never through a method a
    legacy subclass might define under the same name.  ``readable()`` is
    still asked (and obeyed when it says False); pauses for different
    reasons are independent, and reading resumes when none is left.
    """
    if not channel._read_pauses & reason:
        channel._read_pauses |= reason
        note_interest_change(channel._map, channel._fileno)


def resume_reading(channel: Any, reason: int) -> None:
    """Lift *channel*'s pause for *reason*."""
    if channel._read_pauses & reason:
        channel._read_pauses &= ~reason
        note_interest_change(channel._map, channel._fileno)


def inherits(obj: Any, name: str, original: Any) -> bool:
    """Whether *obj*'s method *name* is *original*: overridden neither by its
    class nor on the instance, so a fast path may stand in for calling it."""
    # Through the bound method, never obj.__dict__: on Python 3.11 an object
    # whose __dict__ has been asked for is slower at every attribute access.
    method = getattr(obj, name, None)
    return getattr(method, "__func__", None) is original and getattr(method, "__self__", None) is obj


# The stdlib messages a peer can provoke, each rate-limited on its own (see
# dispatcher._may_report): an exception per request, events a class does not
# handle (a close, out-of-band data, a connection to a listener).
_UNCAPTURED = MessageKind("uncaptured python exception", "error")
_UNHANDLED = {
    event: MessageKind("unhandled %s event" % event, "warning")
    for event in ("incoming priority", "read", "write", "connect", "accepted", "close")
}


# accept() failing for want of descriptors or memory (Windows' socket errors
# too, where it has them): reasons to pause the listener, not to close it.
_EXHAUSTED = frozenset(
    {EMFILE, ENFILE, ENOBUFS, ENOMEM, getattr(errno, "WSAEMFILE", EMFILE), getattr(errno, "WSAENOBUFS", ENOBUFS)}
)
#: The first pause of an episode, and the longest, in seconds.
_ACCEPT_BACKOFF_FIRST = 0.05
_ACCEPT_BACKOFF_MAX = 1.0
_ACCEPT_BACKOFF = MessageKind("accept backoff", "warning")


def _strerror(err: int) -> str:
    try:
        return os.strerror(err)
    except (ValueError, OverflowError, NameError):
        return errorcode.get(err, "Unknown error %s" % err)


def compact_traceback() -> tuple[tuple[str, str, str], Any, Any, str]:
    """The exception being handled as ((file, function, line), type, value, one-line trace)."""
    exc_type, exc_value, tb = sys.exc_info()
    if not tb:
        raise AssertionError("traceback does not exist")
    frames = []
    while tb is not None:
        code = tb.tb_frame.f_code
        frames.append((code.co_filename, code.co_name, str(tb.tb_lineno)))
        tb = tb.tb_next
    info = " ".join("[%s|%s|%s]" % frame for frame in frames)
    return frames[-1], exc_type, exc_value, info


def close_all(map: Optional[ChannelMap] = None, ignore_all: bool = False) -> None:
    """Close every object in *map* (default: ``socket_map``) and empty it."""
    if map is None:
        map = socket_map
    for obj in list(map.values()):
        try:
            obj.close()
        except OSError as err:
            if err.errno != EBADF and not ignore_all:
                raise
        except _RERAISED:
            raise
        except BaseException:
            if not ignore_all:
                raise
    map.clear()
    # Nothing is left to watch: the map's kernel poller goes now, not when
    # the map is next looped (which may be never).
    release_pollers(map)


class dispatcher:
    """A non-blocking socket plus the event handlers the loop calls on it."""

    debug: bool = False
    connected: bool = False
    accepting: bool = False
    connecting: bool = False
    closing: bool = False
    addr: Any = None
    #: ``log_info()`` types not logged.  None by default: the logger's level
    #: decides (``chatcore.compat.asyncore`` keeps stdlib's ``{"warning"}``).
    ignore_log_types: frozenset[str] = frozenset()

    #: The module whose ``socket``, ``os`` and ``sys`` globals the methods
    #: read when they run, as asyncore's read its own: ``chatcore.compat.asyncore``
    #: names itself, so a test that replaces ``asyncore.socket`` is honoured.
    _namespace: Any = sys.modules[__name__]

    def __init__(self, sock: Optional[socket.socket] = None, map: Optional[ChannelMap] = None):
        self._map = self._default_map() if map is None else map
        self._fileno: Optional[int] = None
        if not sock:
            #: The socket: whatever was given or made (an ``ssl.SSLSocket``, a
            #: ``file_wrapper``, a test's fake), None before that.  Any, so
            #: handlers call its methods without narrowing it first.
            self.socket: Any = None
            return
        # The socket may come from a blocking source (accept(), a factory).
        sock.setblocking(False)
        self.set_socket(sock, map)
        self.connected = True
        try:
            self.addr = sock.getpeername()
        except OSError as err:
            if err.errno not in (ENOTCONN, EINVAL):
                # Broken in an unknown way: keep it out of the loop.
                self.del_channel(map)
                raise
            self.connected = False

    @staticmethod
    def _default_map() -> ChannelMap:
        """The map used when none is given; the compat module reads its own global."""
        return socket_map

    def __repr__(self) -> str:
        cls = type(self)
        status = [cls.__module__ + "." + cls.__qualname__]
        if self.accepting and self.addr:
            status.append("listening")
        elif self.connected:
            status.append("connected")
        if self.addr is not None:
            try:
                status.append("%s:%d" % self.addr)
            except TypeError:
                status.append(repr(self.addr))
        return "<%s at %#x>" % (" ".join(status), id(self))

    def add_channel(self, map: Optional[ChannelMap] = None) -> None:
        if map is None:
            map = self._map
        # Under None before a socket is set, as in asyncore.
        map[self._fileno] = self  # type: ignore[index]
        note_interest_change(map, self._fileno)

    def del_channel(self, map: Optional[ChannelMap] = None) -> None:
        if map is None:
            map = self._map
        fd = self._fileno
        # Before the socket can be closed: see forget_channel().
        forget_channel(map, fd, self)
        map.pop(fd, None)  # type: ignore[arg-type]
        note_interest_change(map, fd)
        self._fileno = None

    def create_socket(self, family: int = socket.AF_INET, type: int = socket.SOCK_STREAM) -> None:
        self.family_and_type: tuple[int, int] = family, type
        sock = self._namespace.socket.socket(family, type)
        sock.setblocking(False)
        self.set_socket(sock)

    def set_socket(self, sock: Any, map: Optional[ChannelMap] = None) -> None:
        self.socket = sock
        self._fileno = sock.fileno()
        self.add_channel(map)

    def set_reuse_addr(self) -> None:
        socket = self._namespace.socket
        try:
            flag = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR)
            self.socket.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, flag | 1)
        except OSError:
            pass

    # The socket's number while in a map (set_socket()); None before and after.
    _fileno: Optional[int] = None

    # Why the loop is not to watch this channel for reading, as PAUSED_BY_*
    # bits (pause_reading() below); 0 when nothing pauses it.
    _read_pauses: int = 0

    # Predicates the loop asks every turn.

    def readable(self) -> bool:
        return True

    def writable(self) -> bool:
        return True

    # Socket methods.

    def listen(self, num: int) -> None:
        self.accepting = True
        # A listening socket is not watched for writing (see the loop).
        note_interest_change(self._map, self._fileno)
        if self._namespace.os.name == "nt" and num > 5:
            num = 5
        # What the socket object answers, as asyncore returned it.
        return self.socket.listen(num)  # type: ignore[no-any-return]

    def bind(self, addr: Any) -> None:
        self.addr = addr
        return self.socket.bind(addr)  # type: ignore[no-any-return]

    def connect(self, address: Any) -> None:
        self.connected = False
        self.connecting = True
        err = self.socket.connect_ex(address)
        if err in (EINPROGRESS, EALREADY, EWOULDBLOCK) or (err == EINVAL and self._namespace.os.name == "nt"):
            self.addr = address
            return
        if err in (0, EISCONN):
            self.addr = address
            self.handle_connect_event()
        else:
            raise OSError(err, errorcode[err])

    # Accepting when the process has run out of descriptors or memory: the
    # connection stays in the kernel's backlog, so the listener stays readable
    # and asking again at once would spin.  accept() pauses reading on the
    # listener instead and a timer ends the pause, for twice as long after
    # each consecutive failure; a connection accepted ends the episode.

    #: The pause after the next failed accept(), in seconds; 0.0 while accepting works.
    _accept_backoff: float = 0.0
    #: The timer that ends the current pause; None when there is none.
    _accept_resume: Any = None  # a chatcore.timers.TimerHandle

    def accept(self) -> Optional[tuple[socket.socket, Any]]:
        """A (socket, address) pair, or None when nobody is waiting.

        None too when the process is out of descriptors or memory (EMFILE,
        ENFILE, ENOBUFS, ENOMEM): the listener then stops being watched for a
        while (50 ms, doubling per consecutive failure up to 1 s) and the
        episode is logged once, as a warning of the "chatcore" logger.
        """
        try:
            conn, addr = self.socket.accept()
        except TypeError:
            return None
        except OSError as err:
            if err.errno in (EWOULDBLOCK, ECONNABORTED, EAGAIN):
                return None
            if err.errno in _EXHAUSTED:
                self._back_off_accepting(err)
                return None
            raise
        if self._accept_backoff:
            self._end_accept_backoff()
        return conn, addr

    def _back_off_accepting(self, err: OSError) -> None:
        """Pause accepting after *err*, for longer than last time in this episode."""
        if self._accept_resume is not None:
            return  # accept() called again during the pause: it goes on as planned
        delay = self._accept_backoff
        if not delay:
            delay = _ACCEPT_BACKOFF_FIRST
            try:
                # Where it listens: addr may say port 0.
                address = self.socket.getsockname()
            except (AttributeError, OSError):
                address = self.addr
            _ACCEPT_BACKOFF.log(
                "accept() failed on %r: %s (%s); pausing accepts for %.2f s, then for up to %g s between tries",
                address,
                errorcode.get(cast(int, err.errno), err.errno),  # one of _EXHAUSTED, so a number
                err.strerror,
                delay,
                _ACCEPT_BACKOFF_MAX,
            )
        self._accept_backoff = min(delay * 2, _ACCEPT_BACKOFF_MAX)
        pause_reading(self, PAUSED_BY_ACCEPT_BACKOFF)
        self._accept_resume = call_later(delay, self._resume_accepting, map=self._map)

    def _resume_accepting(self) -> None:
        # The pause's timer: watch the listener again (it has not been closed,
        # or close() would have cancelled this).
        self._accept_resume = None
        resume_reading(self, PAUSED_BY_ACCEPT_BACKOFF)

    def _end_accept_backoff(self) -> None:
        """Forget the episode: a connection was accepted, or the listener is closing."""
        self._accept_backoff = 0.0
        timer = self._accept_resume
        if timer is not None:
            self._accept_resume = None
            timer.cancel()
        resume_reading(self, PAUSED_BY_ACCEPT_BACKOFF)

    def send(self, data: "ReadableBuffer") -> int:
        try:
            return self.socket.send(data)  # type: ignore[no-any-return]
        except OSError as err:
            if err.errno == EWOULDBLOCK:
                return 0
            if err.errno in DISCONNECTED:
                self.handle_close()
                return 0
            raise

    def recv(self, buffer_size: int) -> bytes:
        data: bytes
        try:
            data = self.socket.recv(buffer_size)
        except OSError as err:
            # Windows sometimes reports a dead peer as ENOTCONN.
            if err.errno in DISCONNECTED:
                self.handle_close()
                return b""
            raise
        if not data:
            # The peer closed: a read event that yields no bytes.
            self.handle_close()
            return b""
        return data

    def close(self) -> None:
        if self._accept_backoff:
            # No timer may resume watching a listener that is gone.
            self._end_accept_backoff()
        self.connected = False
        self.accepting = False
        self.connecting = False
        self.del_channel()
        if self.socket is not None:
            try:
                self.socket.close()
            except OSError as err:
                if err.errno not in (ENOTCONN, EBADF):
                    raise

    # Logging: log() is for hits, log_info() for information and errors.
    # Both go to the "chatcore" logger, never to a stream that could block.

    def log(self, message: Any) -> None:
        logger.info("%s", message, stacklevel=2)

    def log_info(self, message: Any, type: str = "info") -> None:
        """Log *message* at the level *type* names (info, warning, error …) unless *type* is ignored."""
        if type not in self.ignore_log_types:
            log_message(type, message)

    def _may_report(self, kind: MessageKind) -> bool:
        """Whether one of stdlib's own messages, of *kind*, is to be passed to ``log_info()`` now.

        Rate-limited when it would go to the logger: a peer decides how often
        there is something to report.  An overridden ``log_info()`` (the
        compat classes' print, an application's own) gets every one, as in stdlib.
        """
        if not inherits(self, "log_info", dispatcher.log_info):
            return True
        return kind.message_type not in self.ignore_log_types and kind.admit()

    def _report_unhandled(self, event: str) -> None:
        kind = _UNHANDLED[event]
        if self._may_report(kind):
            self.log_info(kind.name, kind.message_type)

    # Events as the loop delivers them.

    def handle_read_event(self) -> None:
        if self.accepting:
            # A listening socket is never connected; readable means "accept".
            self.handle_accept()
        elif not self.connected:
            if self.connecting:
                self.handle_connect_event()
            self.handle_read()
        else:
            self.handle_read()

    def handle_connect_event(self) -> None:
        socket = self._namespace.socket
        err = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err != 0:
            raise OSError(err, _strerror(err))
        self.handle_connect()
        self.connected = True
        self.connecting = False

    def handle_write_event(self) -> None:
        if self.accepting:
            # Listening sockets get no write events; ignore a spurious one.
            return
        if not self.connected and self.connecting:
            self.handle_connect_event()
        self.handle_write()

    def handle_expt_event(self) -> None:
        # Either a socket error or out-of-band data: look at the error first.
        socket = self._namespace.socket
        err = self.socket.getsockopt(socket.SOL_SOCKET, socket.SO_ERROR)
        if err != 0:
            self.handle_close()
        else:
            self.handle_expt()

    def handle_error(self) -> None:
        if self._may_report(_UNCAPTURED):
            _, exc_type, exc_value, info = compact_traceback()
            try:
                self_repr = repr(self)
            except BaseException:
                self_repr = "<__repr__(self) failed for object at %0x>" % id(self)
            self.log_info(
                "uncaptured python exception, closing channel %s (%s:%s %s)" % (self_repr, exc_type, exc_value, info),
                "error",
            )
        self.handle_close()

    def handle_expt(self) -> None:
        self._report_unhandled("incoming priority")

    def handle_read(self) -> None:
        self._report_unhandled("read")

    def handle_write(self) -> None:
        self._report_unhandled("write")

    def handle_connect(self) -> None:
        self._report_unhandled("connect")

    def handle_accept(self) -> None:
        pair = self.accept()
        if pair is not None:
            self.handle_accepted(*pair)

    def handle_accepted(self, sock: socket.socket, addr: Any) -> None:
        sock.close()
        self._report_unhandled("accepted")

    def handle_close(self) -> None:
        self._report_unhandled("close")
        self.close()


# dispatcher's readable()/writable() answer True whatever happens, so the
# loop need not ask a plain dispatcher (a listener, typically) every turn.
track_predicates(dispatcher.readable, dispatcher.writable)


class dispatcher_with_send(dispatcher):
    """A dispatcher whose send() buffers, for simple clients."""

    def __init__(self, sock: Optional[socket.socket] = None, map: Optional[ChannelMap] = None):
        dispatcher.__init__(self, sock, map)
        self.out_buffer: bytes = b""

    def initiate_send(self) -> None:
        sent = dispatcher.send(self, self.out_buffer[:65536])
        self.out_buffer = self.out_buffer[sent:]

    def handle_write(self) -> None:
        self.initiate_send()

    def writable(self) -> bool:
        # Truthy rather than bool, as in asyncore: the length of what is left to send.
        return (not self.connected) or len(self.out_buffer)  # type: ignore[return-value]

    # Returns None, not a count: asyncore's dispatcher_with_send.send does.
    def send(self, data: "ReadableBuffer") -> None:  # type: ignore[override]
        if self.debug:
            self.log_info("sending %s" % repr(data))
        self.out_buffer = self.out_buffer + data
        self.initiate_send()


if os.name == "posix":
    __all__ += ["file_dispatcher", "file_wrapper"]

    class file_wrapper:
        """Just enough of a socket around a file descriptor (which it dup()s)."""

        # As dispatcher._namespace: where ``os`` is read at call time.
        _namespace: Any = sys.modules[__name__]

        def __init__(self, fd: int):
            self.fd: int = self._namespace.os.dup(fd)

        def __del__(self) -> None:
            if self.fd >= 0:
                warnings.warn("unclosed file %r" % self, ResourceWarning, source=self)  # noqa: B028 (as asyncore)
            self.close()

        # What the namespace's os.read()/os.write() answer, as asyncore's did.
        def recv(self, *args: Any) -> bytes:
            return self._namespace.os.read(self.fd, *args)  # type: ignore[no-any-return]

        def send(self, *args: Any) -> int:
            return self._namespace.os.write(self.fd, *args)  # type: ignore[no-any-return]

        def getsockopt(self, level: int, optname: int, buflen: Optional[int] = None) -> int:
            socket = self._namespace.socket
            if level == socket.SOL_SOCKET and optname == socket.SO_ERROR and not buflen:
                return 0
            raise NotImplementedError("Only asyncore specific behaviour implemented.")

        read = recv
        write = send

        def close(self) -> None:
            if self.fd < 0:
                return
            fd, self.fd = self.fd, -1
            self._namespace.os.close(fd)

        def fileno(self) -> int:
            return self.fd

    class file_dispatcher(dispatcher):
        """A dispatcher over a pipe or file descriptor instead of a socket."""

        def __init__(self, fd: Any, map: Optional[ChannelMap] = None):
            dispatcher.__init__(self, None, map)
            self.connected = True
            try:
                fd = fd.fileno()
            except AttributeError:
                pass
            self.set_file(fd)
            self._namespace.os.set_blocking(fd, False)

        def set_file(self, fd: int) -> None:
            self.socket: Any = self._namespace.file_wrapper(fd)
            self._fileno = self.socket.fileno()
            self.add_channel()
