"""``await chatcore.aio.loop()``: chatcore's channels served on the running asyncio event loop.

Dispatchers and async_chat channels then run unchanged beside asyncio code in
one thread, on asyncio's own loop or on any loop with ``add_reader`` (uvloop
included).  There is one way of dispatching: each turn is chatcore.loop()'s own
turn (chatcore.eventloop), on the map's own kernel poller.  An epoll or kqueue
instance is itself a descriptor, readable while an event waits, so asyncio
watches that one descriptor and a timer for chatcore's next deadline, and
chatcore's turn then waits for nothing:

1. the first half of a turn asks the channels what they want and brings the
   poller's registrations up to date, as chatcore.loop() does before it waits;
2. asyncio waits: for the poller's descriptor, for the deadline of the next
   chatcore timer (``chatcore.call_later``, idle timeouts, accept backoff,
   TLS handshake limits) or *timeout*, or for a change made by asyncio code
   meanwhile (a push, a pause, a new channel or timer: those wake the wait
   at once);
3. the rest of the turn waits zero seconds, runs what is due (timers,
   ``call_soon_threadsafe`` handoffs, whose waker is one of the poller's
   descriptors) and dispatches the events, with chatcore.loop()'s semantics.

Importing this module imports asyncio; ``import chatcore`` does not.
"""

import asyncio
import select
from typing import Any, Optional

from .eventloop import (
    ChannelMap,
    _poll_timeout,
    _Poller,
    _turn,
    give_back_poller_alone,
    schedule_of,
    socket_map,
    take_poller_alone,
)
from .timers import Schedule

__all__ = ["loop"]


class _WakingList(list[Any]):
    """The map's interest changes, which end asyncio's wait when one arrives during it."""

    # Set only while asyncio waits: during a turn the changes are looked at
    # anyway, before the next wait.
    on_append: Any = None

    def append(self, item: Any) -> None:
        list.append(self, item)
        if self.on_append is not None:
            self.on_append()


class _Service:
    """One ``loop()`` call: the turns of one map, driven by asyncio's callbacks."""

    def __init__(
        self,
        event_loop: asyncio.AbstractEventLoop,
        map: ChannelMap,
        poller: _Poller,
        changes: _WakingList,
        schedule: Schedule,
        timeout: Optional[float],
        poll_mode: bool,
        count: Optional[int],
    ) -> None:
        self._event_loop = event_loop
        self._map = map
        self._poller = poller
        self._changes = changes
        self._schedule = schedule
        self._timeout = timeout
        self._poll_mode = poll_mode
        self._count = count
        #: Resolved when the map is empty or *count* turns are made; raises
        #: what a turn raised (ExitNow, KeyboardInterrupt, ...).
        self.done: asyncio.Future[None] = event_loop.create_future()
        # The pending calls of the next turn: now (a change, nothing to wait
        # for), and at the deadline.  The deadline's timer is kept from turn
        # to turn while it is not later than the turn's deadline: one that
        # comes early makes a turn that finds nothing due, where making and
        # cancelling a timer every turn would cost every turn.
        self._soon: Optional[asyncio.Handle] = None
        self._deadline: Optional[asyncio.TimerHandle] = None
        # Whether the registrations are as the channels want them (the first
        # half of a turn ran, and nothing changed since).
        self._fresh = False
        # The poller's descriptor, while asyncio watches it.
        self._watched: Optional[int] = None

    def start(self, fd: int) -> None:
        self._event_loop.add_reader(fd, self._turn)
        self._watched = fd
        self._prepare()

    def stop(self) -> None:
        self._quiet()
        self._cancel_deadline()
        if self._watched is not None:
            self._event_loop.remove_reader(self._watched)
            self._watched = None

    def _quiet(self) -> None:
        """Stop listening for changes: a turn runs now."""
        self._changes.on_append = None
        self._poller_schedule().on_timer_added = None
        if self._soon is not None:
            self._soon.cancel()
            self._soon = None

    def _cancel_deadline(self) -> None:
        if self._deadline is not None:
            self._deadline.cancel()
            self._deadline = None

    def _poller_schedule(self) -> Schedule:
        # The map's schedule may have been replaced since start.
        schedule = self._poller.schedule
        return schedule if schedule is not None else self._schedule

    def _at_deadline(self) -> None:
        self._deadline = None
        self._turn()

    def _turn(self) -> None:
        """Events are waiting, a deadline came, or something changed: make the rest of a turn."""
        if self.done.done():
            return
        self._quiet()
        try:
            _turn(self._poller, 0.0, self._map, self._poll_mode, scan=not self._fresh)
            self._fresh = False
            if self._count is not None:
                self._count -= 1
            self._prepare()
        except BaseException as exc:
            # As from chatcore.loop(): ExitNow, KeyboardInterrupt, SystemExit
            # (handlers' other exceptions went to handle_error()).
            self.done.set_exception(exc)

    def _prepare(self) -> None:
        """The first half of the next turn, then what asyncio waits for."""
        map = self._map
        if not map or (self._count is not None and self._count <= 0):
            self.done.set_result(None)
            return
        poller = self._poller
        _turn(poller, None, map, self._poll_mode, rest=False)
        self._fresh = True
        schedule = self._poller_schedule()
        limit = schedule.wait_limit(self._timeout)
        if limit == 0.0 or poller.ready_now():
            self._soon = self._event_loop.call_soon(self._turn)
            return
        if limit is None:
            self._cancel_deadline()
        else:
            deadline = self._event_loop.time() + limit
            if self._deadline is None or self._deadline.when() > deadline:
                self._cancel_deadline()
                self._deadline = self._event_loop.call_at(deadline, self._at_deadline)
        self._changes.on_append = self._wake
        schedule.on_timer_added = self._wake

    def _wake(self) -> None:
        """asyncio code changed what a channel wants, or added a timer, during the wait."""
        self._quiet()
        self._fresh = False
        self._soon = self._event_loop.call_soon(self._turn)


async def loop(
    map: Optional[ChannelMap] = None,
    *,
    timeout: Optional[float] = 30.0,
    use_poll: bool = False,
    count: Optional[int] = None,
) -> None:
    """Serve the channels in *map* on the running asyncio loop until it is empty, or for *count* turns.

    *map* defaults to the default channel map; *timeout*, *use_poll* and
    *count* mean what they mean for ``chatcore.loop()``: a turn is made at
    least every *timeout* seconds (None: only for events and timers), with
    poll or select semantics.  The other asyncio tasks run between turns; a
    handler that blocks blocks them too, as it blocks every channel.

    The channels are dispatched as ``chatcore.loop()`` dispatches them: an
    exception in a handler goes to its ``handle_error()``; ``ExitNow``,
    ``KeyboardInterrupt`` and ``SystemExit`` end this call, raised here.  When
    the awaiting task is cancelled (or a turn raises), the service stops and
    the channels stay in the map, open, as ``chatcore.loop()`` leaves them
    when an exception ends it: ``close_all()`` closes them, another ``loop()``
    serves them on.

    One loop serves a map at a time: RuntimeError here while another loop
    (``chatcore.loop()``, ``poll()`` or this) serves *map*, and from those
    while this does.  Needs a kernel poller with a descriptor of its own
    (epoll on Linux, kqueue on macOS and the BSDs) and an event loop with
    ``add_reader()``: RuntimeError on Windows (select, and the proactor loop).
    """
    if map is None:
        map = socket_map
    if not map:
        return
    event_loop = asyncio.get_running_loop()
    poll_mode = bool(use_poll) and hasattr(select, "poll")
    if poll_mode:
        timeout = _poll_timeout(timeout)
    changes = _WakingList()
    poller = take_poller_alone(map, changes)
    fd = poller.fileno()
    service: Optional[_Service] = None
    try:
        if fd is None:
            raise RuntimeError(
                "chatcore.aio needs a kernel poller with a descriptor of its own (epoll, kqueue); "
                "this platform's poller has none"
            )
        service = _Service(event_loop, map, poller, changes, schedule_of(map), timeout, poll_mode, count)
        try:
            service.start(fd)
        except NotImplementedError:
            raise RuntimeError(
                "chatcore.aio needs an event loop with add_reader() (%s has none)" % type(event_loop).__name__
            ) from None
        await service.done
    finally:
        if service is not None:
            service.stop()
        give_back_poller_alone(map, poller)
