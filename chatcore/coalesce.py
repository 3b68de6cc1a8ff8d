"""Coalesced sends: what handlers push during one loop turn leaves at its end.

The loop brackets the dispatch of each turn's events with ``begin_turn()``
and ``end_turn()``.  In between, a channel that coalesces (see
``async_chat.ac_coalesce_sends``) calls ``defer(channel)`` from ``push()``
instead of sending, and ``end_turn()`` then sends each such channel's queue
with as few gathered sends as the socket takes.  Outside a turn ``defer``
refuses, so a push from plain code is sent at once.

A deferred channel has ``_send_deferred`` set; it must provide
``_send_gathered()`` (send the queue now) and ``handle_error()``.  Channels
flush themselves earlier where stdlib's timing would be observable: before
their socket is closed or replaced, and from ``flush_sends()``.

The state is per thread: each thread's loop has its own turn.
"""

import threading
from typing import Any, Optional

from .events import _RERAISED

__all__ = ["begin_turn", "defer", "end_turn", "flush"]


class _Turn(threading.local):
    def __init__(self) -> None:
        # The channels deferred in this thread's current turn; None outside one.
        self.channels: Optional[list[Any]] = None


_turn = _Turn()


def begin_turn() -> Optional[list[Any]]:
    """Start deferring; returns what ``end_turn`` must be given (an outer turn's state)."""
    outer = _turn.channels
    _turn.channels = []
    return outer


def defer(channel: Any) -> bool:
    """Hold *channel*'s pushes until the turn's end; False when no turn is under way."""
    channels = _turn.channels
    if channels is None:
        return False
    channel._send_deferred = True
    channels.append(channel)
    return True


def flush(channel: Any) -> None:
    """Send what *channel* deferred now, if it deferred anything."""
    if channel._send_deferred:
        channel._send_deferred = False
        channel._send_gathered()


def end_turn(outer: Optional[list[Any]]) -> None:
    """Send what the turn deferred, one channel after another, in push order."""
    channels, _turn.channels = _turn.channels, outer
    for position, channel in enumerate(channels or ()):
        try:
            flush(channel)
        except _RERAISED:
            # The channels not reached send their pushes themselves from now on.
            for skipped in channels[position + 1 :]:  # type: ignore[index]  # not None: the loop ran
                skipped._send_deferred = False
            raise
        except BaseException:
            channel.handle_error()
