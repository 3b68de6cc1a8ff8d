"""Serve one channel map from several processes: ``prefork()`` forks workers that each run the loop.

The caller creates its listening dispatchers, then calls ``prefork()``.  It
forks the workers itself with ``os.fork()`` (never ``multiprocessing``: the
interpreter's default start method does not matter and nothing is pickled),
so every worker is a direct child holding a copy of the map.  A worker serves
it with ``loop()`` on a poller of its own: the event loop's fork hook drops
the pollers and wakers inherited from the parent (an inherited epoll
descriptor is the parent's kernel object), so the first ``loop()`` in the
worker makes new ones.

Where the platform has ``SO_REUSEPORT`` each worker gets a listening socket
of its own on each listener's address, so the kernel spreads new connections
between the workers: the listener the caller made joins the group (Linux
accepts the option on a socket that already listens, and a socket bound
after it with the option joins it), and the worker's socket takes the
listener's descriptor number (``dup2``), so the dispatcher and the map do
not change.  The parent keeps every socket open and never accepts, so a
worker started again after a crash gets the same socket back, with the
connections queued on it meanwhile.  Without ``SO_REUSEPORT`` (or when the
kernel refuses the group) the workers share the inherited listener: each
accepts when woken, and the one that finds nothing gets ``EAGAIN``, which
``dispatcher.accept()`` answers with None.

The parent supervises: a worker that dies (non-zero exit status, or killed by
a signal) is started again, after a pause that doubles with each quick death
so a worker that crashes at once cannot make the parent fork without end; a
worker that exits with status 0 (its map ran empty) is done.  SIGTERM and
SIGINT sent to the parent are passed on to the workers, and no worker is
started again after that.  ``prefork()`` returns in the parent once every
worker has exited, with their exit statuses; in a worker it never returns.
"""

import errno
import logging
import os
import select
import signal
import socket
import sys
import threading
import time
import traceback
from types import FrameType
from typing import Any, Callable, Optional, Union

from .eventloop import loop, socket_map
from .log import MessageKind, logger

__all__ = ["default_workers", "prefork"]

ChannelMap = dict[int, Any]

#: A worker that lived at least this long before dying is started again at once.
STEADY_SECONDS = 10.0
#: The pause before starting again a worker that died sooner: it doubles for
#: each such death in a row, up to MAX_RESTART_DELAY.
FIRST_RESTART_DELAY = 0.1
MAX_RESTART_DELAY = 10.0
#: How often the parent looks at its workers where it cannot wait on them
#: with a pidfd.
_POLL_SECONDS = 0.1

#: The exit status of a worker interrupted by SIGINT (KeyboardInterrupt), as a shell reports it.
INTERRUPTED_STATUS = 128 + signal.SIGINT
#: The exit status of a worker whose loop raised an exception.
FAILED_STATUS = 1

#: One line per worker started again: a worker that keeps dying must not flood the log.
_WORKER_RESTARTED = MessageKind("worker restarted", "warning")

_FORWARDED: tuple[int, ...] = (signal.SIGTERM, signal.SIGINT)


def default_workers() -> int:
    """The number of workers ``prefork()`` starts by default: the CPUs this process may run on."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def _describe(status: int) -> str:
    if status < 0:
        try:
            return "killed by %s" % signal.Signals(-status).name
        except ValueError:
            return "killed by signal %d" % -status
    return "exit status %d" % status


def _listeners(channel_map: ChannelMap) -> list[socket.socket]:
    """The listening TCP sockets of *channel_map* (dispatchers that called ``listen()``)."""
    found = []
    for channel in channel_map.values():
        sock = getattr(channel, "socket", None)
        if (
            getattr(channel, "accepting", False)
            and isinstance(sock, socket.socket)
            and sock.family in (socket.AF_INET, socket.AF_INET6)
            and sock.type == socket.SOCK_STREAM
        ):
            found.append(sock)
    return found


def _reuseport_sockets(listener: socket.socket, extra: int) -> list[socket.socket]:
    """*extra* more listening sockets in *listener*'s SO_REUSEPORT group ([] where there can be none)."""
    if extra <= 0 or not hasattr(socket, "SO_REUSEPORT"):
        return []
    made: list[socket.socket] = []
    try:
        listener.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
        address = listener.getsockname()
        backlog = max(socket.SOMAXCONN, 128)
        for _ in range(extra):
            sock = socket.socket(listener.family, socket.SOCK_STREAM)
            made.append(sock)
            sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEPORT, 1)
            if listener.getsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR):
                sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
            sock.bind(address)
            sock.listen(backlog)
            sock.setblocking(False)
    except OSError:
        # This kernel does not let an already listening socket lead a group
        # (EADDRINUSE on the bind): the workers share the listener instead.
        for sock in made:
            sock.close()
        return []
    return made


class _Worker:
    """One worker slot: the process serving it now, and how often it died young."""

    def __init__(self, index: int):
        self.index = index
        self.pid: Optional[int] = None
        self.last_pid = -1
        self.pidfd = -1
        self.started = 0.0
        self.quick_deaths = 0
        self.restart_at: Optional[float] = None
        self.status: Optional[int] = None


class _Supervisor:
    """The parent's side of ``prefork()``: forks, waits, starts again, passes signals on."""

    def __init__(self, count: int, channel_map: ChannelMap, serve: Callable[[], object]):
        self.channel_map = channel_map
        self.serve = serve
        self.slots = [_Worker(index) for index in range(count)]
        self.parent_pid = os.getpid()
        self.stopping = False
        # listener's descriptor -> (listener, the sockets of workers 1, 2 …):
        # worker 0 keeps the listener.
        self.own_sockets: dict[int, tuple[socket.socket, list[socket.socket]]] = {}
        for listener in _listeners(channel_map):
            extra = _reuseport_sockets(listener, count - 1)
            if extra:
                self.own_sockets[listener.fileno()] = (listener, extra)
        self.saved_handlers: dict[int, Any] = {}
        # The signal passed on to the workers, once one was.
        self.forwarded: Optional[int] = None

    # --- the parent
    def run(self) -> list[int]:
        for signum in _FORWARDED:
            self.saved_handlers[signum] = signal.signal(signum, self._forward)
        try:
            for slot in self.slots:
                self._start(slot)
            while any(slot.pid is not None or slot.restart_at is not None for slot in self.slots):
                self._wait_for_news()
        finally:
            # Whatever went wrong here, no worker is left running or unreaped.
            self.stopping = True
            self._signal_workers(signal.SIGTERM)
            for slot in self.slots:
                if slot.pid is not None:
                    self._reap(slot, os.waitpid(slot.pid, 0)[1])
            self._put_back_handlers()
            for _, sockets in self.own_sockets.values():
                for sock in sockets:
                    sock.close()
        return [slot.status if slot.status is not None else 0 for slot in self.slots]

    def _put_back_handlers(self) -> None:
        for signum, handler in self.saved_handlers.items():
            # None: a handler not set from Python, which cannot be put back.
            signal.signal(signum, signal.SIG_DFL if handler is None else handler)

    def _forward(self, signum: int, frame: Optional[FrameType]) -> None:
        if os.getpid() != self.parent_pid:
            # Inherited by a worker that has not put its own handlers back
            # yet: the signal is the worker's, with the caller's handler.
            self._put_back_handlers()
            os.kill(os.getpid(), signum)
            return
        self.stopping = True
        self.forwarded = signum
        for slot in self.slots:
            slot.restart_at = None
        self._signal_workers(signum)

    def _signal_workers(self, signum: int) -> None:
        for slot in self.slots:
            if slot.pid is not None:
                try:
                    os.kill(slot.pid, signum)
                except ProcessLookupError:
                    pass  # exited, not reaped yet

    def _start(self, slot: _Worker) -> None:
        slot.restart_at = None
        for stream in (sys.stdout, sys.stderr):
            if stream is not None:
                stream.flush()
        pid = os.fork()
        if pid == 0:
            self._work(slot)  # never returns
        slot.pid = slot.last_pid = pid
        slot.started = time.monotonic()
        if self.forwarded is not None:
            # The signal came between the fork and now: this one missed it.
            os.kill(pid, self.forwarded)
        slot.pidfd = -1
        if hasattr(os, "pidfd_open"):
            try:
                slot.pidfd = os.pidfd_open(pid)
            except OSError:
                pass  # an older kernel: polled instead

    def _wait_for_news(self) -> None:
        now = time.monotonic()
        deadlines = [slot.restart_at for slot in self.slots if slot.restart_at is not None]
        timeout = max(0.0, min(deadlines) - now) if deadlines else None
        running = [slot for slot in self.slots if slot.pid is not None]
        if running and all(slot.pidfd >= 0 for slot in running):
            try:
                select.select([slot.pidfd for slot in running], [], [], timeout)
            except OSError as error:  # pragma: no cover - select retries EINTR itself
                if error.errno != errno.EINTR:
                    raise
        elif running or timeout:
            time.sleep(_POLL_SECONDS if timeout is None else min(timeout, _POLL_SECONDS))
        for slot in running:
            if slot.pid is None:
                continue
            pid, status = os.waitpid(slot.pid, os.WNOHANG)
            if pid:
                self._reap(slot, status)
                self._decide(slot)
        now = time.monotonic()
        for slot in self.slots:
            if slot.restart_at is not None and slot.restart_at <= now and not self.stopping:
                self._start(slot)

    def _reap(self, slot: _Worker, wait_status: int) -> None:
        slot.status = os.waitstatus_to_exitcode(wait_status)
        slot.pid = None
        if slot.pidfd >= 0:
            os.close(slot.pidfd)
            slot.pidfd = -1

    def _decide(self, slot: _Worker) -> None:
        assert slot.status is not None
        if slot.status == 0 or self.stopping:
            self._retire(slot)
            return
        lived = time.monotonic() - slot.started
        slot.quick_deaths = 0 if lived >= STEADY_SECONDS else slot.quick_deaths + 1
        delay = 0.0 if not slot.quick_deaths else FIRST_RESTART_DELAY * 2 ** (slot.quick_deaths - 1)
        delay = min(delay, MAX_RESTART_DELAY)
        slot.restart_at = time.monotonic() + delay
        if _WORKER_RESTARTED.admit():
            logger.warning(
                "prefork worker %d (pid %d) died (%s); starting it again in %.1f s",
                slot.index,
                slot.last_pid,
                _describe(slot.status),
                delay,
            )

    def _retire(self, slot: _Worker) -> None:
        # A worker done for good: the connections the kernel would queue on
        # its own socket would wait for ever, so that socket leaves the group.
        for listener, sockets in self.own_sockets.values():
            if slot.index > 0:
                sockets[slot.index - 1].close()
            else:
                # The caller's listener, which the caller closes: on Linux
                # shutting down a listening socket stops it listening.
                try:
                    listener.shutdown(socket.SHUT_RD)
                except OSError:
                    pass

    # --- the worker
    def _work(self, slot: _Worker) -> None:
        status = FAILED_STATUS
        try:
            self._put_back_handlers()
            self._take_own_sockets(slot)
            for other in self.slots:
                if other.pidfd >= 0:
                    os.close(other.pidfd)
            self.serve()
            status = 0
        except SystemExit as exit:
            status = _exit_status(exit.code)
            if isinstance(exit.code, str):
                print(exit.code, file=sys.stderr)  # as the interpreter does at exit
        except KeyboardInterrupt:
            status = INTERRUPTED_STATUS
        except BaseException:
            try:
                logger.error("prefork worker %d (pid %d) failed", slot.index, os.getpid(), exc_info=True)
            except BaseException:
                traceback.print_exc()
        finally:
            try:
                logging.shutdown()
                for stream in (sys.stdout, sys.stderr):
                    if stream is not None:
                        stream.flush()
            finally:
                os._exit(status)

    def _take_own_sockets(self, slot: _Worker) -> None:
        for listener_fd, (_, sockets) in self.own_sockets.items():
            if slot.index > 0:
                own = sockets[slot.index - 1]
                # The listener's descriptor number now names this worker's
                # socket: the dispatcher and the map stay as they are.
                os.dup2(own.fileno(), listener_fd, inheritable=False)
            for sock in sockets:
                sock.close()


def _exit_status(code: Union[int, str, None]) -> int:
    if code is None:
        return 0
    if isinstance(code, int):
        return code & 0xFF
    return FAILED_STATUS


def prefork(
    workers: Optional[int] = None,
    *,
    map: Optional[ChannelMap] = None,
    serve: Optional[Callable[[], object]] = None,
) -> list[int]:
    """Serve *map* from *workers* forked processes; in the parent, return their exit statuses.

    Call it once the listening dispatchers of *map* (default: the default
    channel map) exist and before any connection is accepted: every worker
    gets a copy of the whole map.  *workers* defaults to ``default_workers()``
    (the CPUs this process may run on).  Each worker runs *serve* (default:
    ``loop(map=map)``) on a poller of its own and exits: status 0 when
    *serve* returned (the map ran empty), the code of a ``SystemExit``,
    ``INTERRUPTED_STATUS`` (130) on ``KeyboardInterrupt``, and ``FAILED_STATUS``
    (1) after any other exception, whose traceback is logged to the
    "chatcore" logger.  In a worker the call never returns.

    In the parent the call returns once every worker has exited: a list with
    the last exit status of each worker, as ``subprocess`` reports them
    (``-N`` for a worker killed by signal N).  A worker that dies (a status
    other than 0) is started again meanwhile, one logged line per restart,
    after a pause that grows while it keeps dying soon after starting;
    SIGTERM and SIGINT sent to the parent go to every worker, and none is
    started again after that.  The parent's signal handlers are put back on
    return; the parent never serves connections itself.

    Raises ``RuntimeError`` when other threads are running (a forked child
    inherits their locks but not the threads that would release them) or
    when not called from the main thread, and ``NotImplementedError`` where
    the platform has no ``os.fork()``.
    """
    if not hasattr(os, "fork"):
        raise NotImplementedError("prefork() needs os.fork(), which this platform does not have")
    count = default_workers() if workers is None else workers
    if count < 1:
        raise ValueError("workers must be at least 1, not %r" % (workers,))
    if threading.current_thread() is not threading.main_thread():
        raise RuntimeError("prefork() must be called from the main thread")
    others = [thread.name for thread in threading.enumerate() if thread is not threading.current_thread()]
    if others:
        raise RuntimeError("prefork() cannot fork safely while other threads run: %s" % ", ".join(others))
    channel_map = socket_map if map is None else map
    if serve is None:

        def serve() -> None:
            loop(map=channel_map)

    return _Supervisor(count, channel_map, serve).run()
