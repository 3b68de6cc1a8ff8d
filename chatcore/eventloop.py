"""The event loop: asyncore's ``loop``/``poll``/``poll2`` on a kernel poller.

asyncore rebuilt its select()/poll() sets from scratch on every turn, so it
could not pass 1024 descriptors (select) and paid for every idle channel twice.
Here each channel map keeps one kernel poller — epoll on Linux, otherwise what
``selectors.DefaultSelector`` picks (kqueue on macOS and the BSDs, select on
Windows) — across turns and across ``loop()``/``poll()`` calls, so the common
``while ...: loop(count=1)`` pattern does not rebuild it every time.  Every
turn still asks each channel ``readable()`` and ``writable()``, as asyncore
does, but only a changed answer costs a system call.

The dispatching keeps asyncore's two flavours:

* ``use_poll=False`` (select semantics): all read events of the turn first, then
  all write events, then exceptional ones; an error or hang-up shows as
  readable/writable, as select() reports it.
* ``use_poll=True`` (poll semantics): one ``readwrite(obj, flags)`` per channel,
  where a hang-up or error also calls ``handle_close()``.

Descriptors the kernel poller cannot watch keep select()'s answers: a regular
file is always ready, and a closed descriptor is reported ready (select mode)
or POLLNVAL (poll mode) so the channel's own recv/send fails and closes it,
instead of the whole loop failing.
"""

import errno
import os
import select
import selectors
import threading
import time
from time import monotonic as _monotonic
from typing import Any, Callable, Optional, cast

from . import coalesce
from .events import (
    POLLERR,
    POLLHUP,
    POLLIN,
    POLLNVAL,
    POLLOUT,
    POLLPRI,
    _exception,
    read,
    readwrite,
    write,
)
from .timers import Schedule, TimerHandle
from .wakeup import Waker

__all__ = ["call_later", "call_soon_threadsafe", "loop", "poll", "poll2", "poll3", "socket_map"]

ChannelMap = dict[int, Any]
Events = list[tuple[int, int]]

_REPORTED = POLLIN | POLLPRI | POLLOUT | POLLERR | POLLHUP | POLLNVAL

#: The default channel map, shared by every dispatcher created without ``map=``.
socket_map: ChannelMap = {}

#: id(map) -> descriptors whose channel may want other events now, for the
#: loop's poller of that map (present only while one follows the map).
interest_changes: dict[int, list[Any]] = {}


def note_interest_change(channel_map: Any, fd: Any) -> None:
    """Tell the loop following *channel_map* to look at *fd* again next turn."""
    pending = interest_changes.get(id(channel_map))
    # A channel that pushes line after line reports once, not once a line.
    if pending is not None and (not pending or pending[-1] != fd):
        pending.append(fd)


class _Poller:
    """Kernel registrations kept in step with a channel map, turn after turn.

    A registration remembers the channel object and its socket object, not only
    the descriptor number: when a descriptor is closed and its number reused by
    a new socket, the kernel has already forgotten the old registration, so a
    changed object or socket means "register again".
    """

    def __init__(self) -> None:
        #: fd -> (channel, its socket, poll mask) as registered; read-only
        #: outside this class.
        self.registrations: dict[int, tuple[Any, Any, int]] = {}
        # Descriptors the kernel poller refused, answered without it.
        self._always_ready: dict[int, int] = {}
        self._invalid: dict[int, int] = {}
        # What each descriptor of the map wants (fd -> poll mask, 0 included),
        # as of the last look at its channel.
        self.wanted: dict[int, int] = {}
        # Channels whose readable()/writable() are their own: asked every turn.
        self.custom: dict[int, Any] = {}
        # Descriptors whose channel may want something else now: reported by
        # dispatch.note_interest_change (None when this poller is not tracking)
        # and by the events of the last turn.
        self.changes: Optional[list[Any]] = None
        # The (fd, flags) events of the last turn.
        self.touched: Events = []
        self.scanned_at: float = 0.0
        self.scanned_mode: Optional[bool] = None
        # What an empty select-mode turn sleeps with.
        self.sleep: Callable[[float], None] = time.sleep
        # The _PollerCache generation (process) it was made in, and the lock
        # held by the loop()/poll() call using it.
        self.generation: int = 0
        self.claim: threading.Lock = threading.Lock()
        # The timers and handoffs of the map this poller serves, once it has
        # any (attached under the cache's lock, replaced but never removed),
        # and the descriptor other threads wake the wait with, watched by the
        # kernel poller but never part of the map or of ``registrations``.
        self.schedule: Optional[Schedule] = None
        self.waker: Optional[Waker] = None
        # Lent to chatcore.aio for as long as it serves the map: no other
        # loop may serve that map meanwhile (see _PollerCache.take_alone).
        self.alone: bool = False

    # Kernel operations, one subclass per poller kind.
    def _add(self, fd: int, mask: int) -> None:
        raise NotImplementedError

    def _modify(self, fd: int, mask: int) -> None:
        raise NotImplementedError

    def _remove(self, fd: int) -> None:
        raise NotImplementedError

    def _wait(self, timeout: Optional[float]) -> Events:
        raise NotImplementedError

    def _close(self) -> None:
        raise NotImplementedError

    def fileno(self) -> Optional[int]:
        """The kernel poller's own descriptor, readable while an event waits; None if it has none."""
        return None

    def ready_now(self) -> bool:
        """Whether the next wait reports events without the kernel (see ``wait``)."""
        return bool(self._always_ready or self._invalid)

    def watch_waker(self, waker: Waker) -> None:
        """Have the waits end when *waker* is woken (``close()`` closes it)."""
        self._add(waker.fileno(), POLLIN)
        self.waker = waker

    def close(self) -> None:
        """Give the kernel poller and the waker back."""
        if self.waker is not None:
            self.waker.close()
        self._close()

    def update(self, fd: int, obj: Any, mask: int) -> None:
        """Register *obj* on *fd* for *mask*, or change what is registered there."""
        registered = self.registrations
        sock = getattr(obj, "socket", None)
        current = registered.get(fd)
        if current is not None:
            if current[0] is obj and current[1] is sock:
                if current[2] != mask:
                    self._change(fd, mask)
                    registered[fd] = (obj, sock, mask)
                return
            self._forget(fd)
        self._register(fd, mask)
        registered[fd] = (obj, sock, mask)

    def drop_except(self, wanted: dict[int, int]) -> None:
        """Unregister every descriptor that wants nothing or is not in *wanted*."""
        for fd in [fd for fd in self.registrations if not wanted.get(fd)]:
            self._forget(fd)

    def drop(self, fd: int) -> None:
        """Unregister *fd*."""
        self._forget(fd)

    def _register(self, fd: int, mask: int) -> None:
        if self.waker is not None and fd == self.waker.fileno():
            # A channel's descriptor closed behind the map's back, its number
            # now the waker's: answered as closed, the waker left alone.
            self._invalid[fd] = mask
            return
        try:
            self._add(fd, mask)
        except OSError as err:
            if err.errno == errno.EEXIST:
                self._modify(fd, mask)
            elif err.errno == errno.EPERM:
                # epoll refuses regular files; select() calls them always ready.
                self._always_ready[fd] = mask
            elif err.errno in (errno.EBADF, errno.EINVAL):
                # Closed behind the map's back (EINVAL: the number now belongs
                # to the poller itself).
                self._invalid[fd] = mask
            else:
                raise
        except ValueError:
            # A negative descriptor: a socket closed behind the map's back.
            self._invalid[fd] = mask

    def _change(self, fd: int, mask: int) -> None:
        if fd in self._always_ready:
            self._always_ready[fd] = mask
        elif fd in self._invalid:
            self._invalid[fd] = mask
        else:
            try:
                self._modify(fd, mask)
            except OSError:
                # The descriptor was closed (and maybe reused) under us.
                self._forget(fd)
                self._register(fd, mask)

    def _forget(self, fd: int) -> None:
        del self.registrations[fd]
        if self._always_ready.pop(fd, None) is None and self._invalid.pop(fd, None) is None:
            try:
                self._remove(fd)
            except (OSError, ValueError, KeyError):
                pass  # already gone from the kernel with its descriptor

    def wait(self, timeout: Optional[float]) -> Events:
        """(fd, poll flags) for every ready registration, waiting up to *timeout* s."""
        if self._always_ready or self._invalid:
            timeout = 0.0
        events = self._wait(timeout)
        for fd, mask in self._always_ready.items():
            events.append((fd, mask & (POLLIN | POLLOUT)))
        for fd in self._invalid:
            events.append((fd, POLLNVAL))
        return events


class _EpollPoller(_Poller):
    """Linux: epoll, whose event bits are poll(2)'s, including POLLPRI for urgent data."""

    def __init__(self) -> None:
        super().__init__()
        self._epoll = select.epoll()

    def _add(self, fd: int, mask: int) -> None:
        self._epoll.register(fd, mask)

    def _modify(self, fd: int, mask: int) -> None:
        self._epoll.modify(fd, mask)

    def _remove(self, fd: int) -> None:
        self._epoll.unregister(fd)

    def _wait(self, timeout: Optional[float]) -> Events:
        while True:
            try:
                return self._epoll.poll(-1 if timeout is None else timeout)
            except InterruptedError:  # pragma: no cover - PEP 475 retries already
                continue

    def wait(self, timeout: Optional[float]) -> Events:
        if self._always_ready or self._invalid:
            return _Poller.wait(self, timeout)
        # Every turn waits here: the generic path's two frames, skipped.
        return self._epoll.poll(-1 if timeout is None else timeout)

    def fileno(self) -> Optional[int]:
        return self._epoll.fileno()

    def _close(self) -> None:
        self._epoll.close()


class _SelectorsPoller(_Poller):
    """Elsewhere: ``selectors.DefaultSelector``; urgent data (POLLPRI) is not reported."""

    def __init__(self) -> None:
        super().__init__()
        self._selector = selectors.DefaultSelector()

    @staticmethod
    def _events(mask: int) -> int:
        return (selectors.EVENT_READ if mask & POLLIN else 0) | (selectors.EVENT_WRITE if mask & POLLOUT else 0)

    def _add(self, fd: int, mask: int) -> None:
        events = self._events(mask)
        if events:
            self._selector.register(fd, events)

    def _modify(self, fd: int, mask: int) -> None:
        events = self._events(mask)
        try:
            self._selector.unregister(fd)
        except KeyError:
            pass
        if events:
            self._selector.register(fd, events)

    def _remove(self, fd: int) -> None:
        self._selector.unregister(fd)

    def _wait(self, timeout: Optional[float]) -> Events:
        while True:
            if not self._selector.get_map():
                # Nothing to watch: some selectors refuse an empty wait.
                if timeout is None or timeout > 0:
                    self.sleep(timeout or 0)
                return []
            try:
                selected = self._selector.select(timeout)
                break
            except OSError:
                # select() (Windows' selector) fails as a whole when one of
                # its descriptors was closed behind the map's back, where
                # epoll and kqueue just forget it: set such descriptors aside
                # as invalid, as _register does, and report them this turn.
                if not self._set_aside_closed():
                    raise
                timeout = 0.0
        events = []
        for key, ready in selected:
            flags = (POLLIN if ready & selectors.EVENT_READ else 0) | (POLLOUT if ready & selectors.EVENT_WRITE else 0)
            events.append((key.fd, flags))
        return events

    def fileno(self) -> Optional[int]:
        # kqueue, epoll and devpoll selectors have one; select and poll do not.
        fileno = getattr(self._selector, "fileno", None)
        return None if fileno is None else cast("int", fileno())

    def _set_aside_closed(self) -> bool:
        """Move registered descriptors that are no longer open to the invalid ones."""
        closed = []
        # Registered by number, so every key of the map is an int.
        for fd in cast("list[int]", list(self._selector.get_map())):
            try:
                select.select([fd], [], [], 0)
            except OSError:
                closed.append(fd)
        for fd in closed:
            self._selector.unregister(fd)
            self._invalid[fd] = self.registrations[fd][2]
        return bool(closed)

    def _close(self) -> None:
        self._selector.close()


class _ModulePoller(_Poller):
    """asyncore's own system calls, made through a select module given at run time.

    For a program (typically a test) that replaced the compat module's
    ``select`` or ``time``: select mode calls ``select_module.select()`` on
    the wanted descriptors, poll mode a ``select_module.poll()`` object, and
    an empty select set sleeps with ``time_module.sleep`` — what asyncore
    calls.  Such a poller lives for one turn and follows no changes, so each
    turn asks every channel, as asyncore does.
    """

    def __init__(self, select_module: Any, time_module: Any, poll_mode: bool) -> None:
        super().__init__()
        self._select = select_module
        self.sleep = time_module.sleep
        self._pollster = select_module.poll() if poll_mode else None
        self._masks: dict[int, int] = {}

    def _add(self, fd: int, mask: int) -> None:
        self._masks[fd] = mask
        if self._pollster is not None:
            self._pollster.register(fd, mask)

    def _modify(self, fd: int, mask: int) -> None:
        self._masks[fd] = mask
        if self._pollster is not None:
            self._pollster.modify(fd, mask)

    def _remove(self, fd: int) -> None:
        del self._masks[fd]
        if self._pollster is not None:
            self._pollster.unregister(fd)

    def _wait(self, timeout: Optional[float]) -> Events:
        if self._pollster is not None:
            return list(self._pollster.poll(None if timeout is None else round(timeout * 1000)))
        masks = self._masks
        r = [fd for fd, mask in masks.items() if mask & POLLIN]
        w = [fd for fd, mask in masks.items() if mask & POLLOUT]
        e = [fd for fd, mask in masks.items() if mask & POLLPRI]
        r, w, e = self._select.select(r, w, e, timeout)
        return [(fd, POLLIN) for fd in r] + [(fd, POLLOUT) for fd in w] + [(fd, POLLPRI) for fd in e]

    def _close(self) -> None:
        pass


def new_poller() -> _Poller:
    """The best poller this platform has."""
    if hasattr(select, "epoll"):
        return _EpollPoller()
    return _SelectorsPoller()


class _PollerCache:
    """The kernel poller of each channel map, kept between loop()/poll() calls.

    A poller is lent to one caller at a time: a second thread (or a handler
    that calls ``loop()`` itself) gets a fresh one, so registrations are never
    shared by two waits.  A map that runs empty gives its poller back to the
    kernel, so a finished map is not kept alive here; otherwise the least
    recently added idle pollers beyond ``MAX_MAPS`` are closed.  After ``fork()``
    the child starts afresh, because an epoll instance is shared with the
    parent.

    Legacy programs call ``poll()`` or ``loop(count=1)`` once a turn, so the
    common take/give-back (the map's kept poller, free) only acquires and
    releases that poller's own ``claim`` lock, without the cache's.
    """

    MAX_MAPS = 8

    def __init__(self) -> None:
        self._lock = threading.Lock()
        # id(map) -> (map, its tracking poller), lent out or not, oldest first.
        self._pollers: dict[int, tuple[ChannelMap, _Poller]] = {}
        # id(map) -> further pollers lent out while the tracking one was busy.
        self._extra: dict[int, list[_Poller]] = {}
        # Bumped in a forked child: pollers of an older generation are the
        # parent's.  (Where fork() cannot be hooked, the pid tells.)
        self._generation = 0
        self._pid: Optional[int] = os.getpid()
        if hasattr(os, "register_at_fork"):
            os.register_at_fork(after_in_child=self._forget_parent_pollers)
            self._pid = None

    def take(self, map: ChannelMap) -> _Poller:
        """The map's poller, for the caller alone until it calls ``give_back``."""
        key = id(map)
        # The common case without the cache's lock: the map's kept poller,
        # free (claim.acquire is atomic; eviction and release() claim a poller
        # before they drop it, so a claimed one stays kept).
        entry = self._pollers.get(key)
        if entry is not None and self._pid is None:
            poller = entry[1]
            if poller.claim.acquire(False):
                if poller.generation == self._generation and self._pollers.get(key) is entry:
                    return poller
                poller.claim.release()
        return self._take_slowly(map, key)

    def _take_slowly(self, map: ChannelMap, key: int) -> _Poller:
        with self._lock:
            if self._pid is not None and self._pid != os.getpid():
                self._forget_parent_pollers()
            pollers = self._pollers
            entry = pollers.get(key)
            evicted: list[_Poller] = []
            if entry is not None:
                # The cache holds the map, so its id cannot have been reused.
                poller = entry[1]
                if poller.claim.acquire(False):
                    return poller
                if poller.alone:
                    raise RuntimeError(
                        "this channel map is served by chatcore.aio.loop(): serve it from one loop at a time"
                    )
                # Busy (another thread, or loop() inside a handler): a fresh
                # poller that asks every channel every turn.
                poller = new_poller()
                poller.claim.acquire()
                self._extra.setdefault(key, []).append(poller)
            else:
                # The only poller of this map: it may follow changes instead
                # of asking every channel every turn.
                poller = new_poller()
                poller.claim.acquire()
                poller.changes = []
                interest_changes[key] = poller.changes
                pollers[key] = (map, poller)
                evicted = self._evict_beyond_max()
            poller.generation = self._generation
            # Its own waker, from the start: a first handoff from another
            # thread must wake a wait that began before any schedule existed.
            poller.watch_waker(Waker())
            scheduled = _schedules.get(key)
            if scheduled is not None:
                poller.schedule = scheduled[1]
        for stale in evicted:
            stale.close()
        return poller

    def take_alone(self, map: ChannelMap, changes: list[Any]) -> _Poller:
        """The map's tracking poller, for one caller (chatcore.aio) until ``give_back_alone``.

        While it is out no other loop may serve the map: ``take`` raises
        RuntimeError, as this does while another loop serves it.  *changes*
        replaces the list the map's interest changes are collected in, and
        takes over what is pending there.
        """
        key = id(map)
        with self._lock:
            entry = self._pollers.get(key)
            busy = bool(self._extra.get(key))
            if entry is not None and not busy:
                busy = not entry[1].claim.acquire(False)
                if not busy:
                    entry[1].claim.release()
        poller = None if busy else self.take(map)
        with self._lock:
            entry = self._pollers.get(key)
            if poller is not None and entry is not None and entry[1] is poller and not self._extra.get(key):
                poller.alone = True
                if poller.changes is not None:
                    changes.extend(poller.changes)
                poller.changes = changes
                interest_changes[key] = changes
                return poller
        if poller is not None:
            self.give_back(map, poller)
        raise RuntimeError(
            "this channel map is already served by another loop (chatcore.loop(), poll() or "
            "chatcore.aio.loop()): serve it from one loop at a time"
        )

    def give_back_alone(self, map: ChannelMap, poller: _Poller) -> None:
        """Return a poller lent by ``take_alone``: other loops may serve the map again."""
        with self._lock:
            poller.alone = False
            shared = poller.changes
            if shared is not None:
                plain = list(shared)
                poller.changes = plain
                if interest_changes.get(id(map)) is shared:
                    interest_changes[id(map)] = plain
        self.give_back(map, poller)

    def give_back(self, map: ChannelMap, poller: _Poller) -> None:
        key = id(map)
        if map and poller.generation == self._generation and self._pid is None:
            entry = self._pollers.get(key)
            if entry is not None and entry[1] is poller:
                poller.claim.release()
                return
        with self._lock:
            entry = self._pollers.get(key)
            kept = entry is not None and entry[1] is poller
            if kept and map and poller.generation == self._generation:
                poller.claim.release()
                return
            if kept:
                # The map ran empty (or this is a forked child's copy).
                del self._pollers[key]
                self._stop_tracking(map, [poller])
                self._forget_idle_schedule(map)
            else:
                extra = self._extra.get(key)
                if extra is not None and poller in extra:
                    extra.remove(poller)
                    if not extra:
                        del self._extra[key]
        poller.close()

    def _evict_beyond_max(self) -> list[_Poller]:
        """Drop the oldest idle pollers beyond MAX_MAPS (lock held)."""
        evicted = []
        if len(self._pollers) > self.MAX_MAPS:
            for key, (map, poller) in list(self._pollers.items()):
                if len(self._pollers) <= self.MAX_MAPS:
                    break
                # Claimed for good: it is closed.
                if poller.claim.acquire(False):
                    del self._pollers[key]
                    self._stop_tracking(map, [poller])
                    evicted.append(poller)
        return evicted

    def release(self, map: ChannelMap) -> None:
        """Close the poller kept for *map* (``close_all()`` emptied it)."""
        with self._lock:
            self._forget_idle_schedule(map)
            entry = self._pollers.get(id(map))
            if entry is None or not entry[1].claim.acquire(False):
                # In use: closed when given back, the map being empty.
                return
            del self._pollers[id(map)]
            self._stop_tracking(map, [entry[1]])
        entry[1].close()

    def pollers_of(self, map: ChannelMap) -> list[_Poller]:
        """Every poller that holds registrations for *map* now, kept or lent."""
        with self._lock:
            pollers = list(self._extra.get(id(map), ()))
            entry = self._pollers.get(id(map))
            if entry is not None:
                pollers.append(entry[1])
        return pollers

    def schedule_for(self, map: ChannelMap) -> Schedule:
        """The timers and handoffs of *map*, made (and shown to its pollers) if it has none."""
        with self._lock:
            return self._schedule_locked(map)

    def hand_off(self, map: ChannelMap, callback: Callable[..., object], args: tuple[Any, ...]) -> None:
        """Queue ``callback(*args)`` for *map*'s loop and wake the pollers serving it."""
        with self._lock:
            # Under the lock: a schedule is forgotten only while idle, and
            # the pollers woken are the ones that will look at this one.
            self._schedule_locked(map).handoffs.append((callback, args))
            entry = self._pollers.get(id(map))
            if entry is not None and entry[1].waker is not None:
                entry[1].waker.wake()
            for poller in self._extra.get(id(map), ()):
                if poller.waker is not None:
                    poller.waker.wake()

    def _schedule_locked(self, map: ChannelMap) -> Schedule:
        key = id(map)
        scheduled = _schedules.get(key)
        if scheduled is not None:
            return scheduled[1]
        schedule = Schedule()
        # The entry holds the map, so its id cannot be reused meanwhile.
        _schedules[key] = (map, schedule)
        entry = self._pollers.get(key)
        if entry is not None:
            entry[1].schedule = schedule
        for poller in self._extra.get(key, ()):
            poller.schedule = schedule
        return schedule

    @staticmethod
    def _forget_idle_schedule(map: ChannelMap) -> None:
        # An emptied map with nothing scheduled lets go of its schedule, so a
        # finished map is not kept alive by it (lock held).
        scheduled = _schedules.get(id(map))
        if scheduled is not None and scheduled[1].idle():
            del _schedules[id(map)]

    @staticmethod
    def _stop_tracking(map: ChannelMap, evicted: list[_Poller]) -> None:
        for stale in evicted:
            if stale.changes is not None and interest_changes.get(id(map)) is stale.changes:
                del interest_changes[id(map)]

    def _forget_parent_pollers(self) -> None:
        # Runs in a forked child (from the fork hook, or when the pid
        # changed): closing our copy of a descriptor leaves the parent's
        # intact.  Pollers still lent out are closed when given back.  The
        # lock may have been held by a thread that does not exist here.
        self._lock = threading.Lock()
        for _, poller in self._pollers.values():
            poller.close()
        self._pollers.clear()
        self._extra.clear()
        interest_changes.clear()
        self._generation += 1
        if self._pid is not None:
            self._pid = os.getpid()


#: id(map) -> (map, its timers and handoffs), for maps that have any.
_schedules: dict[int, tuple[ChannelMap, Schedule]] = {}

_pollers = _PollerCache()


def call_later(
    delay: float, callback: Callable[..., object], *args: Any, map: Optional[ChannelMap] = None
) -> TimerHandle:
    """Call ``callback(*args)`` from the loop serving *map*, *delay* seconds from now.

    *map* defaults to the default channel map, as for ``loop()``.  The call
    runs in a loop turn (``loop()``, ``poll()``) once it is due; a turn never
    waits past the next deadline.  Timers do not keep ``loop()`` running: it
    still returns when the map is empty, and the timers left wait for the
    next turn.  The handle's ``cancel()`` stops a call that has not run.  An
    exception from the callback is logged to the "chatcore" logger and the
    loop carries on (``ExitNow``, ``KeyboardInterrupt`` and ``SystemExit``
    leave the loop, as from a handler).  Not thread-safe: from another
    thread, hand it over with ``call_soon_threadsafe()`` (a
    ``functools.partial(call_later, ..., map=...)`` for a map of its own).
    """
    if map is None:
        map = socket_map
    scheduled = _schedules.get(id(map))
    schedule = scheduled[1] if scheduled is not None else _pollers.schedule_for(map)
    return schedule.call_later(delay, callback, args)


def call_soon_threadsafe(callback: Callable[..., object], *args: Any, map: Optional[ChannelMap] = None) -> None:
    """Have the loop serving *map* call ``callback(*args)`` in its own thread, soon.

    The one chatcore call that is safe from any thread: it wakes a loop
    sleeping in its poller, and the loop runs the callbacks in the order they
    were handed over, when its current wait ends.  *map* defaults
    to the default channel map.  Like timers, pending handoffs do not keep
    ``loop()`` running once the map is empty.
    """
    if not callable(callback):
        raise TypeError("callback must be callable, not %r" % (callback,))
    if map is None:
        map = socket_map
    _pollers.hand_off(map, callback, args)


def forget_channel(channel_map: ChannelMap, fd: Any, obj: Any) -> None:
    """Unregister *obj*'s descriptor from the pollers of *channel_map*, now.

    ``del_channel()`` calls this while the socket is still open.  Waiting for
    the next turn would be too late: once the descriptor is closed the kernel
    cannot be asked to forget it, and if the socket was ``dup()``ed the epoll
    registration outlives the close and reports the other copy's events
    under a number a new socket may reuse.
    """
    for poller in _pollers.pollers_of(channel_map):
        registered = poller.registrations.get(fd)
        if registered is not None and registered[0] is obj:
            poller.drop(fd)


def take_poller_alone(channel_map: ChannelMap, changes: list[Any]) -> _Poller:
    """The kernel poller of *channel_map*, lent to chatcore.aio alone (see ``_PollerCache.take_alone``)."""
    return _pollers.take_alone(channel_map, changes)


def give_back_poller_alone(channel_map: ChannelMap, poller: _Poller) -> None:
    """Return what ``take_poller_alone`` lent."""
    _pollers.give_back_alone(channel_map, poller)


def schedule_of(channel_map: ChannelMap) -> Schedule:
    """The timers and handoffs of *channel_map*, made if it has none."""
    return _pollers.schedule_for(channel_map)


def release_pollers(channel_map: ChannelMap) -> None:
    """Give the kernel poller kept for *channel_map* back (the map was emptied)."""
    _pollers.release(channel_map)


#: How often a tracking poller still asks every channel, in seconds: the safety
#: net for state changed behind chatcore's back (a channel put into the map
#: without add_channel(), a ``connected`` flag set by hand).
FULL_SCAN_INTERVAL = 1.0

# readable()/writable() functions whose answers change only in ways their
# channels report through note_interest_change(); chatcore.dispatch registers
# dispatcher's (constant answers), chatcore.chat async_chat's, with
# track_predicates().
_TRACKED_READABLE: set[Any] = set()
_TRACKED_WRITABLE: set[Any] = set()


def track_predicates(readable: Any, writable: Any) -> None:
    """Let the loop skip channels whose readable()/writable() are such functions.

    A channel whose readable() and writable() are both registered (not
    necessarily together) is asked again only when it had events or reported
    a change with ``note_interest_change()`` (and at every full scan).
    """
    _TRACKED_READABLE.add(readable)
    _TRACKED_WRITABLE.add(writable)


def _asks_own_predicates(obj: Any) -> bool:
    """Whether obj's readable()/writable() are its own, to be asked every turn."""
    return not (_tracked(obj, obj.readable, _TRACKED_READABLE) and _tracked(obj, obj.writable, _TRACKED_WRITABLE))


def _tracked(obj: Any, method: Any, tracked: set[Any]) -> bool:
    # Through the bound method, never obj.__dict__: on Python 3.11 an object
    # whose __dict__ has been asked for is slower at every attribute access.
    return getattr(method, "__self__", None) is obj and getattr(method, "__func__", None) in tracked


def _look_at(poller: _Poller, fd: int, obj: Any, poll_mode: bool) -> None:
    """Ask one channel what it wants and bring its registration up to date."""
    is_r = obj.readable()
    if is_r:
        # Still asked, as asyncore asks every turn; a paused channel (see
        # dispatch.pause_reading) is not watched for reading whatever it says.
        try:
            if obj._read_pauses:
                is_r = False
        except AttributeError:
            pass  # not a dispatcher: never paused
    is_w = obj.writable()
    # Listening sockets are never asked to write.
    mask = POLLOUT if is_w and not obj.accepting else 0
    if poll_mode:
        if is_r:
            mask |= POLLIN | POLLPRI
    else:
        if is_r:
            mask |= POLLIN
        if is_r or is_w:
            mask |= POLLPRI
    poller.wanted[fd] = mask
    if not mask:
        if fd in poller.registrations:
            poller.drop(fd)
        return
    current = poller.registrations.get(fd)
    # Only a change costs a system call.
    if current is None or current[2] != mask or current[0] is not obj or current[1] is not getattr(obj, "socket", None):
        poller.update(fd, obj, mask)


def _scan_all(poller: _Poller, map: ChannelMap, poll_mode: bool) -> None:
    """Ask every channel, as asyncore does each turn."""
    poller.wanted = {}
    poller.custom = {}
    if poller.changes is not None:
        del poller.changes[:]
    poller.touched = []
    for fd, obj in list(map.items()):
        if _asks_own_predicates(obj):
            poller.custom[fd] = obj
        _look_at(poller, fd, obj, poll_mode)
    poller.drop_except(poller.wanted)
    poller.scanned_at = _monotonic()
    poller.scanned_mode = poll_mode


def _scan_changes(poller: _Poller, map: ChannelMap, poll_mode: bool) -> None:
    """Ask only the channels that may want something else than last turn."""
    # Only a poller that follows changes gets here (see _turn).
    changes: list[Any] = poller.changes  # type: ignore[assignment]
    touched = poller.touched
    poller.touched = []
    if len(touched) <= 1 and len(changes) <= 1 and not poller.custom:
        # The common turn: one channel had an event and/or reported a change.
        fd = touched[0][0] if touched else None
        if changes:
            changed = changes[0]
            del changes[:1]  # another thread may append meanwhile
            if changed != fd:
                _look_again(poller, map, changed, poll_mode)
        if fd is not None:
            _look_again(poller, map, fd, poll_mode)
        return
    fds = {fd for fd, _ in touched}
    if changes:
        # Take only what is there now.
        count = len(changes)
        fds.update(changes[:count])
        del changes[:count]
    fds.update(poller.custom)
    for fd in fds:
        _look_again(poller, map, fd, poll_mode)


def _look_again(poller: _Poller, map: ChannelMap, fd: int, poll_mode: bool) -> None:
    """Bring *fd*'s registration up to date with its channel, or forget it."""
    obj = map.get(fd)
    if obj is None:
        poller.wanted.pop(fd, None)
        poller.custom.pop(fd, None)
        if fd in poller.registrations:
            poller.drop(fd)
        return
    if not _asks_own_predicates(obj):
        if poller.custom:
            poller.custom.pop(fd, None)
    else:
        poller.custom[fd] = obj
    _look_at(poller, fd, obj, poll_mode)


def _turn(
    poller: _Poller, timeout: Optional[float], map: ChannelMap, poll_mode: bool, scan: bool = True, rest: bool = True
) -> None:
    """One loop turn: find out what the channels want, wait, run what is due, dispatch.

    A poller that follows changes asks only the channels that had events,
    reported a change (push, close, ...) or have readable()/writable() of
    their own; any other poller asks every channel, as asyncore does.

    chatcore.aio makes a turn in two halves, with its own wait between them:
    the finding out alone (``rest=False``), then the rest with a zero
    *timeout* (``scan=False``).
    """
    if not scan:
        pass
    elif (
        poller.changes is None
        or poller.scanned_mode != poll_mode
        or _monotonic() - poller.scanned_at > FULL_SCAN_INTERVAL
    ):
        _scan_all(poller, map, poll_mode)
    elif poller.touched or poller.changes or poller.custom:
        _scan_changes(poller, map, poll_mode)
    if not rest:
        return
    schedule = poller.schedule
    if schedule is not None:
        timeout = schedule.wait_limit(timeout)
    if not poller.registrations and not poll_mode and (schedule is None or poller.waker is None):
        # asyncore's select() path sleeps when nothing is watched (and no
        # other thread can wake the wait).
        if timeout:
            poller.sleep(timeout)
        if schedule is not None:
            schedule.run_due()
        return
    events = poller.wait(timeout)
    # Not the schedule read above: another thread may have attached one, and
    # woken the wait, meanwhile.
    if poller.schedule is not None:
        events = _run_scheduled(poller, poller.schedule, events)
    if not events:
        return
    # Their channels are looked at again next turn.
    poller.touched = events
    # Channels that coalesce send what the handlers pushed once all of the
    # turn's events have been dispatched.
    outer = coalesce.begin_turn()
    try:
        if poll_mode:
            for fd, flags in events:
                obj = map.get(fd)
                if obj is not None:
                    readwrite(obj, flags & _REPORTED)
        else:
            _dispatch_selected(events, poller.wanted, map)
    finally:
        coalesce.end_turn(outer)


def _run_scheduled(poller: _Poller, schedule: Schedule, events: Events) -> Events:
    """Run what is due after a turn's wait; the turn's events, without the waker's own."""
    waker = poller.waker
    if waker is not None:
        wake_fd = waker.fileno()
        # POLLNVAL under the waker's number is for a stale channel (see _register).
        for fd, flags in events:
            if fd == wake_fd and not flags & POLLNVAL:
                # Emptied before the handoffs run: one handed over meanwhile
                # wakes the next turn.
                waker.drain()
                events = [event for event in events if event[0] != wake_fd or event[1] & POLLNVAL]
                break
    schedule.run_due()
    return events


def _dispatch_selected(events: Events, wanted: dict[int, int], map: ChannelMap) -> None:
    """select() semantics: every read event of the turn, then writes, then urgent data."""
    if len(events) == 1:
        # One ready channel (request/response traffic): the same order, no lists.
        fd, flags = events[0]
        mask = wanted[fd]
        # select() reports errors and hang-ups as readable and writable.
        if mask & POLLIN and flags & (POLLIN | POLLHUP | POLLERR | POLLNVAL):
            obj = map.get(fd)
            if obj is not None:
                read(obj)
        if mask & POLLOUT and flags & (POLLOUT | POLLERR | POLLNVAL):
            # Looked up again: the read handler may have closed or replaced it.
            obj = map.get(fd)
            if obj is not None:
                write(obj)
        if flags & POLLPRI:
            obj = map.get(fd)
            if obj is not None:
                _exception(obj)
        return
    readable, writable, exceptional = [], [], []
    for fd, flags in events:
        mask = wanted[fd]
        if mask & POLLIN and flags & (POLLIN | POLLHUP | POLLERR | POLLNVAL):
            readable.append(fd)
        if mask & POLLOUT and flags & (POLLOUT | POLLERR | POLLNVAL):
            writable.append(fd)
        if flags & POLLPRI:
            exceptional.append(fd)
    for fds, handler in ((readable, read), (writable, write), (exceptional, _exception)):
        for fd in fds:
            # Look up again: an earlier handler may have closed or replaced it.
            obj = map.get(fd)
            if obj is not None:
                handler(obj)


def _patched_modules(system: Any) -> bool:
    """Whether *system* (a module namespace) has another select or time than ours."""
    return system is not None and (system.select is not select or system.time is not time)


def poll_once(timeout: Optional[float], map: Optional[ChannelMap], poll_mode: bool, system: Any = None) -> None:
    """One turn, with poll semantics or select's; *system* as for ``run_loop``."""
    if map is None:
        map = socket_map
    if poll_mode:
        if not map:
            return
        timeout = _poll_timeout(timeout)
    if _patched_modules(system):
        module_poller = _ModulePoller(system.select, system.time, poll_mode)
        # It runs the map's timers and handoffs, but has no waker: another
        # thread's handoff waits for the end of the turn's wait.
        scheduled = _schedules.get(id(map))
        if scheduled is not None:
            module_poller.schedule = scheduled[1]
        _turn(module_poller, timeout, map, poll_mode)
        return
    poller = _pollers.take(map)
    try:
        _turn(poller, timeout, map, poll_mode)
    finally:
        _pollers.give_back(map, poller)


def _poll_timeout(timeout: Optional[float]) -> Optional[float]:
    """asyncore's poll2 rounds the timeout down to whole milliseconds."""
    if timeout is None:
        return None
    milliseconds = int(timeout * 1000)
    return None if milliseconds < 0 else milliseconds / 1000.0


def poll(timeout: Optional[float] = 0.0, map: Optional[ChannelMap] = None) -> None:
    """One turn with select semantics."""
    poll_once(timeout, map, False)


def poll2(timeout: Optional[float] = 0.0, map: Optional[ChannelMap] = None) -> None:
    """One turn with poll semantics (flags handed to ``readwrite``)."""
    poll_once(timeout, map, True)


poll3 = poll2


def loop(
    timeout: Optional[float] = 30.0,
    use_poll: bool = False,
    map: Optional[ChannelMap] = None,
    count: Optional[int] = None,
) -> None:
    """Serve the channels in *map* until it is empty, or for *count* turns.

    *use_poll* selects poll semantics where the platform has poll(), as in
    asyncore; the kernel poller is the same either way.
    """
    run_loop(timeout, use_poll, map, count)


def run_loop(
    timeout: Optional[float], use_poll: bool, map: Optional[ChannelMap], count: Optional[int], system: Any = None
) -> None:
    """``loop()``; *system* is a module whose ``select`` and ``time`` to honour.

    ``chatcore.compat.asyncore`` passes itself: when a program has replaced
    its ``select`` or ``time`` global (as tests do), the turns are made with
    those modules' calls, as asyncore makes them, instead of the kernel
    poller.
    """
    if map is None:
        map = socket_map
    if _patched_modules(system):
        poll_mode = bool(use_poll) and hasattr(system.select, "poll")
        while map and (count is None or count > 0):
            poll_once(timeout, map, poll_mode, system)
            if count is not None:
                count -= 1
        return
    poll_mode = bool(use_poll) and hasattr(select, "poll")
    if poll_mode:
        timeout = _poll_timeout(timeout)
    poller = _pollers.take(map)
    try:
        if count is None:
            while map:
                _turn(poller, timeout, map, poll_mode)
        else:
            while map and count > 0:
                _turn(poller, timeout, map, poll_mode)
                count -= 1
    finally:
        _pollers.give_back(map, poller)
