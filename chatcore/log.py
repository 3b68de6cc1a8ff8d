"""The library's logger, and rate limits on the messages a peer can make it write.

Everything chatcore reports goes to ``logging.getLogger("chatcore")`` (``logger``
here).  Which handlers write it where is the application's choice: the logger
carries a ``NullHandler``, as the logging HOWTO recommends for libraries, so a
program that configures no logging writes nothing (Python's "last resort"
handler, which would write warnings to stderr, is never used) and a full
stderr pipe cannot stall the loop.  ``logging.basicConfig()`` makes the
messages visible.

A peer chooses how often the library has something to report (an over-long
line per connection, an exception per request), so each kind of message the
library writes is a ``MessageKind`` with its own rate limit: at most ``burst``
messages per ``interval`` seconds.  The first suppressed one is announced, and
how many were suppressed is reported with the next message of that kind that
gets through.  No thread or timer is involved: each check is a clock reading
and a few integer operations.  The kinds are created when the library's modules
are imported (``KINDS`` lists them), never from what a peer sends, so what the
limits remember stays bounded.  The counts are shared by every loop of the
process and taken without a lock: loops in two threads may let a message or
two more through.
"""

import logging
import time
from typing import Any, Callable

__all__ = ["KINDS", "MessageKind", "log_message", "logger"]

#: The library's logger: the parent of any ``chatcore.*`` logger.
logger: logging.Logger = logging.getLogger("chatcore")
logger.addHandler(logging.NullHandler())

#: The levels of ``dispatcher.log_info()``'s types.
_LEVELS = {
    "debug": logging.DEBUG,
    "info": logging.INFO,
    "warning": logging.WARNING,
    "error": logging.ERROR,
    "critical": logging.CRITICAL,
}

#: Every kind of the library's own messages, by name (tests reset them between cases).
KINDS: "dict[str, MessageKind]" = {}


def log_message(message_type: str, message: Any) -> None:
    """What ``dispatcher.log_info()`` does: log *message* at the level its type names.

    A type that names no level (``log_info()`` accepts any string) is logged
    at INFO, after the type, as ``"type: message"``.  The record names the
    caller of ``log_info()`` as where it was logged from.
    """
    level = _LEVELS.get(message_type)
    if level is None:
        logger.info("%s: %s", message_type, message, stacklevel=3)
    else:
        logger.log(level, "%s", message, stacklevel=3)


class MessageKind:
    """One kind of message the library writes, at most *burst* of them per *interval* seconds.

    ``admit()`` says whether a message of this kind may be written now;
    ``log()`` writes one if it may.  *clock* is read once per check (a test
    passes a fake one).
    """

    __slots__ = (
        "name",
        "message_type",
        "level",
        "burst",
        "interval",
        "_clock",
        "_window_end",
        "_admitted",
        "_suppressed",
    )

    def __init__(
        self,
        name: str,
        message_type: str,
        burst: int = 10,
        interval: float = 60.0,
        clock: Callable[[], float] = time.monotonic,
    ):
        self.name: str = name
        #: Its ``log_info()`` type: "warning", "error" …
        self.message_type: str = message_type
        #: The logging level of this kind's messages (and of the notes about suppressing them).
        self.level: int = _LEVELS[message_type]
        self.burst: int = burst
        self.interval: float = interval
        self._clock = clock
        self.reset()
        # By name, so that a module imported again replaces its kinds.
        KINDS[name] = self

    def reset(self) -> None:
        """Forget what was counted: the next message starts a new interval."""
        self._window_end = float("-inf")
        self._admitted = 0
        self._suppressed = 0

    def admit(self) -> bool:
        """Whether a message of this kind may be written now (each call counts as one message)."""
        now = self._clock()
        if now >= self._window_end:
            if self._suppressed:
                logger.log(
                    self.level,
                    "%d more %r messages were suppressed (at most %d per %g s are logged)",
                    self._suppressed,
                    self.name,
                    self.burst,
                    self.interval,
                    stacklevel=3,
                )
            self._window_end = now + self.interval
            self._admitted = self._suppressed = 0
        if self._admitted < self.burst:
            self._admitted += 1
            return True
        self._suppressed += 1
        if self._suppressed == 1:
            logger.log(
                self.level,
                "too many %r messages: suppressing them for up to %g s",
                self.name,
                self.interval,
                stacklevel=3,
            )
        return False

    def log(self, message_format: str, *args: Any) -> None:
        """Log ``message_format % args`` at this kind's level, if ``admit()`` lets it through."""
        if self.admit():
            logger.log(self.level, message_format, *args, stacklevel=2)

    def __repr__(self) -> str:
        return "<MessageKind %r: %d per %g s>" % (self.name, self.burst, self.interval)
