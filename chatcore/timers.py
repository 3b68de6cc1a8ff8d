"""Timers and cross-thread handoffs of one channel map: what a loop turn runs besides its events.

A ``Schedule`` holds a map's timers in a heap ordered by deadline (then by
the order they were scheduled, so equal deadlines run first in, first out)
and the callbacks other threads handed to the map's loop, in a FIFO.  The
event loop (chatcore.eventloop) asks it how long a turn may wait
(``wait_limit``) and, once the turn's events are dispatched, runs what is due
(``run_due``).

Cancelling only marks a handle: the heap entry is skipped when it comes to
the top, and the heap is rebuilt without cancelled entries once they are
most of it, so scheduling and cancelling many timers (idle timeouts pushed
back on every event) keeps it bounded.

Deadlines are on ``monotonic()``, looked up in this module when used, so a
test can replace it with a fake clock.  Everything here runs in the loop's
thread, except ``Schedule.handoffs.append`` (a deque's append is atomic).
"""

import heapq
import itertools
import time
from collections import deque
from typing import Any, Callable, Optional

from .events import _RERAISED
from .log import MessageKind, logger

__all__ = ["Schedule", "TimerHandle", "monotonic"]

#: The clock deadlines are measured on.
monotonic: Callable[[], float] = time.monotonic

# A (deadline, sequence number, handle) heap entry: the unique sequence number
# breaks ties, so handles themselves are never compared.
_Entry = tuple[float, int, "TimerHandle"]


#: A failing callback must not stop the loop serving its channels (asyncio
#: logs and carries on too); one that fails for every connection a peer opens
#: must not flood the log either.
_CALLBACK_ERROR = MessageKind("exception in callback", "error")


def _report(callback: Any) -> None:
    if _CALLBACK_ERROR.admit():
        logger.error("Exception in callback %r", callback, exc_info=True)


class TimerHandle:
    """A call scheduled by ``chatcore.call_later()``; ``cancel()`` stops it from running."""

    __slots__ = ("_args", "_callback", "_cancelled", "_schedule", "when")

    when: float
    _callback: Optional[Callable[..., object]]
    _args: tuple[Any, ...]
    _schedule: Optional["Schedule"]
    _cancelled: bool

    def __init__(self, when: float, callback: Callable[..., object], args: tuple[Any, ...], schedule: "Schedule"):
        #: When the call is due, on the ``time.monotonic()`` clock.
        self.when = when
        self._callback = callback
        self._args = args
        # The schedule whose heap still holds this handle (None once it is out).
        self._schedule = schedule
        self._cancelled = False

    def cancel(self) -> None:
        """Do not run the call (if it has not run yet); cancelling again does nothing."""
        self._cancelled = True
        if self._callback is None:
            return
        self._callback = None
        self._args = ()
        schedule = self._schedule
        if schedule is not None:
            self._schedule = None
            schedule._note_cancelled()

    def cancelled(self) -> bool:
        """Whether ``cancel()`` was called."""
        return self._cancelled

    def __repr__(self) -> str:
        state = "cancelled" if self._cancelled else "pending" if self._callback is not None else "done"
        return "<TimerHandle when=%r %s %r>" % (self.when, state, self._callback)


class Schedule:
    """The timers and handed-off callbacks of one channel map (see the module docstring)."""

    #: Below this many cancelled entries the heap is never rebuilt.
    COMPACT_MIN = 64

    def __init__(self) -> None:
        self._heap: list[_Entry] = []
        self._sequence = itertools.count()
        # Cancelled handles still in the heap.
        self._cancelled = 0
        #: (callback, args) handed over by other threads, oldest first.
        self.handoffs: deque[tuple[Callable[..., object], tuple[Any, ...]]] = deque()
        #: Called after each new timer while set: chatcore.aio's wait may
        #: have to end sooner.
        self.on_timer_added: Optional[Callable[[], None]] = None

    def call_later(self, delay: float, callback: Callable[..., object], args: tuple[Any, ...]) -> TimerHandle:
        """Schedule ``callback(*args)`` *delay* seconds from now (a negative delay means now)."""
        if not callable(callback):
            raise TypeError("callback must be callable, not %r" % (callback,))
        if delay != delay:
            raise ValueError("delay must be a number, not NaN")
        handle = TimerHandle(monotonic() + max(delay, 0.0), callback, args, self)
        heapq.heappush(self._heap, (handle.when, next(self._sequence), handle))
        if self.on_timer_added is not None:
            self.on_timer_added()
        return handle

    def pending(self) -> int:
        """How many timers are scheduled and neither run nor cancelled."""
        return len(self._heap) - self._cancelled

    def heap_size(self) -> int:
        """Entries in the heap, cancelled ones not yet dropped included."""
        return len(self._heap)

    def idle(self) -> bool:
        """Whether nothing is scheduled or handed over."""
        return not self.handoffs and self.pending() == 0

    def wait_limit(self, timeout: Optional[float]) -> Optional[float]:
        """*timeout* cut down so that a turn does not sleep past the next deadline."""
        if self.handoffs:
            return 0.0
        heap = self._heap
        while heap and heap[0][2]._callback is None:
            heapq.heappop(heap)
            self._cancelled -= 1
        if not heap:
            return timeout
        remaining = heap[0][0] - monotonic()
        if remaining <= 0.0:
            return 0.0
        if timeout is None or timeout > remaining:
            return remaining
        return timeout

    def run_due(self) -> None:
        """Run the timers due now, then the callbacks handed over so far.

        What these calls schedule or hand over, even for right now, waits for
        the next turn, so a callback that reschedules itself cannot keep the
        loop from its channels.
        """
        heap = self._heap
        now = monotonic() if heap else 0.0
        if heap and heap[0][0] <= now:
            due: list[_Entry] = []
            while heap and heap[0][0] <= now:
                entry = heapq.heappop(heap)
                if entry[2]._callback is None:
                    self._cancelled -= 1
                else:
                    entry[2]._schedule = None
                    due.append(entry)
            self._run_timers(due)
        if self.handoffs:
            self._run_handoffs()

    def _run_timers(self, due: list[_Entry]) -> None:
        for index, (_, _, handle) in enumerate(due):
            callback = handle._callback
            if callback is None:
                continue  # cancelled by a callback that ran before it
            args = handle._args
            handle._callback = None
            handle._args = ()
            try:
                callback(*args)
            except _RERAISED:
                # ExitNow & co. leave the loop, as from a channel's handler;
                # the calls due after this one stay scheduled.
                for entry in due[index + 1 :]:
                    if entry[2]._callback is not None:
                        entry[2]._schedule = self
                        heapq.heappush(self._heap, entry)
                raise
            except Exception:
                _report(callback)

    def _run_handoffs(self) -> None:
        handoffs = self.handoffs
        # Only those there now: more may arrive while these run.
        for _ in range(len(handoffs)):
            callback, args = handoffs.popleft()
            try:
                callback(*args)
            except _RERAISED:
                raise
            except Exception:
                _report(callback)

    def _note_cancelled(self) -> None:
        self._cancelled += 1
        heap = self._heap
        if self._cancelled > self.COMPACT_MIN and self._cancelled * 2 > len(heap):
            # In place: run_due may hold the list.
            heap[:] = [entry for entry in heap if entry[2]._callback is not None]
            heapq.heapify(heap)
            self._cancelled = 0
