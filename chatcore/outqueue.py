"""``producer_fifo``'s type: a deque that tells the loop when something is queued.

The loop asks a channel ``writable()`` again only when told its answer may
have changed (see ``chatcore.eventloop.note_interest_change``).  Legacy relays
append to another channel's ``producer_fifo`` directly instead of calling
``push()``; stdlib's loop, which asks every channel every turn, sends such
data on the next turn, and so does chatcore because every way of adding to
this deque reports it to its channel.  Reading and removing stay deque's own
C methods, and the framing engines' ``push`` appends with deque's own
``append`` too (``push()`` reports its additions itself, once a turn), so
only additions made behind ``push()``'s back pay for a Python-level call.
"""

import weakref
from collections import deque
from collections.abc import Iterable
from typing import Any, Optional, TypeVar

__all__ = ["OutputQueue"]

_append = deque.append
_appendleft = deque.appendleft
_extend = deque.extend
_extendleft = deque.extendleft
_insert = deque.insert
_iadd = deque.__iadd__


_Queue = TypeVar("_Queue", bound="OutputQueue")


class OutputQueue(deque[Any]):
    """A deque of buffers, producers and None (close) that reports additions.

    Only a change from empty to not empty is reported, by calling the
    owner's ``_producer_fifo_filled()``: while the queue holds something the
    loop already watches the channel for writing.  The owner is held weakly,
    so channel and queue do not form a reference cycle; a queue without one,
    such as a copy, behaves as a plain deque.
    """

    __slots__ = ("_owner",)

    def __init__(self, iterable: Iterable[Any] = (), maxlen: Optional[int] = None) -> None:
        super().__init__(iterable, maxlen)
        self._owner: Any = None

    def set_owner(self, channel: Any) -> None:
        self._owner = weakref.ref(channel)

    def _filled(self) -> None:
        owner = self._owner
        channel = owner() if owner is not None else None
        if channel is not None:
            channel._producer_fifo_filled()

    def append(self, item: Any) -> None:
        _append(self, item)
        if len(self) == 1:
            self._filled()

    def appendleft(self, item: Any) -> None:
        _appendleft(self, item)
        if len(self) == 1:
            self._filled()

    def insert(self, index: int, item: Any) -> None:
        _insert(self, index, item)
        if len(self) == 1:
            self._filled()

    def extend(self, items: Iterable[Any]) -> None:
        was_empty = not self
        _extend(self, items)
        if was_empty and self:
            self._filled()

    def extendleft(self, items: Iterable[Any]) -> None:
        was_empty = not self
        _extendleft(self, items)
        if was_empty and self:
            self._filled()

    def __iadd__(self: _Queue, items: Iterable[Any]) -> _Queue:
        was_empty = not self
        _iadd(self, items)
        if was_empty and self:
            self._filled()
        return self

    def __repr__(self) -> str:
        # Logged by legacy code as stdlib's deque prints.
        if self.maxlen is None:
            return "deque(%r)" % (list(self),)
        return "deque(%r, maxlen=%d)" % (list(self), self.maxlen)

    def __reduce__(self) -> Any:
        # Copies and pickles are plain deques: they belong to no channel.
        return deque, (list(self), self.maxlen)
