"""Type stub for the compiled framing engine (src/_framing_c.pyx).

Identical in behaviour to ``chatcore._framing_py``; see that module for the
semantics of each name.  The signatures are the twin's (tests/test_typing.py
compares them); ``channel`` is an ``async_chat`` or anything shaped like one.
"""

from collections import deque
from collections.abc import Callable
from typing import Any

from _typeshed import ReadableBuffer

__all__ = [
    "Framer",
    "SizeLimit",
    "collect_incoming_piece",
    "deliver_messages",
    "deliver_received",
    "get_terminator",
    "handle_read",
    "initiate_send",
    "initiate_send_once",
    "join_incoming",
    "push",
    "push_and_send",
    "send_gathered",
    "set_terminator",
]

class SizeLimit:
    """A channel attribute holding a size limit (None or an int >= 0), checked when assigned."""

    def __init__(self, name: str, default: int | None = None) -> None: ...
    @property
    def name(self) -> str:
        """The attribute's name, used in errors."""
    @property
    def default(self) -> int | None:
        """What the class, and an instance that set nothing, read."""
    @property
    def key(self) -> str:
        """The plain attribute (``_limit_<name>``) holding the instance's value, else the class's default."""
    def __set_name__(self, owner: type, name: str) -> None:
        """Put the default on *owner* under ``key``, where instances find it."""
    def __get__(self, instance: object, owner: type | None = None) -> int | None: ...
    def __set__(self, instance: object, value: int | None) -> None:
        """Check *value* (``chatcore.limits.check_limit``) and keep it on *instance*."""
    def __delete__(self, instance: object) -> None:
        """Go back to the default."""

def set_terminator(
    channel: Any,
    term: bytes | bytearray | memoryview | str | int | tuple[bytes | bytearray | memoryview, ...] | None,
) -> None:
    """Set the input delimiter: bytes of any length, a tuple of them, a byte count, or None.

    A tuple (at least one non-empty bytes-like terminator) is checked here
    and stored with its elements as bytes; the earliest match in the stream
    ends a message, the longest of those starting at the same position.
    """

def collect_incoming_piece(channel: Any, data: bytes) -> None:
    """Keep *data* for ``join_incoming`` (stdlib's ``_collect_incoming_data``)."""

def join_incoming(channel: Any) -> bytes:
    """The pieces kept so far as one bytes object, and forget them (``_get_data``)."""

class Framer:
    """Incoming terminator engine for one channel."""

    @property
    def pending(self) -> bytes:
        """Received bytes not yet handed to the channel (stdlib's ``ac_in_buffer``)."""
    @pending.setter
    def pending(self, value: ReadableBuffer) -> None: ...
    @property
    def feeding(self) -> bool:
        """True while ``feed`` is running."""
    def feed(
        self, channel: Any, data: ReadableBuffer, call_get_terminator: bool = True, max_size: int | None = None
    ) -> None:
        """Append *data* to the pending bytes and deliver every complete piece.

        With a tuple terminator, ``channel.matched_terminator`` is set to the
        element that ended a message before ``found_terminator()`` runs (and
        back to None once a message is ended otherwise).
        """
    def feed_messages(self, channel: Any, data: ReadableBuffer, max_size: int | None) -> None:
        """Message mode: hand each complete message to ``channel.handle_message``."""

def push(channel: Any, data: bytes | bytearray | memoryview) -> None:
    """Queue *data* on ``channel.producer_fifo`` in ``ac_out_buffer_size`` pieces.

    A memoryview of any format or shape is queued as its bytes.
    """

def initiate_send(channel: Any, zero_copy: bool = False) -> None:
    """Send from the head of ``channel.producer_fifo`` once, as stdlib does."""

GATHER_LIMIT: int

def send_gathered(fifo: deque[Any], sendmsg: Callable[[list[Any]], int], max_bytes: int) -> int:
    """Send the plain buffers at the head of *fifo* in one ``sendmsg`` call."""

# The per-event steps of async_chat (src/_framing_io.pxi; twin: chatcore._framing_io_py).
def handle_read(channel: Any) -> None:
    """``async_chat.handle_read``: receive once and hand the bytes to framing."""

def get_terminator(channel: Any) -> Any:
    """``async_chat.get_terminator``."""

def deliver_received(channel: Any, data: ReadableBuffer) -> None:
    """``async_chat._deliver_received``: frame *data* into the two callbacks."""

def deliver_messages(channel: Any, data: ReadableBuffer) -> None:
    """``message_chat._deliver_received``: frame *data* into ``handle_message`` calls."""

def initiate_send_once(channel: Any) -> None:
    """``async_chat.initiate_send``: stdlib's one step of sending, then a look by the loop."""

def push_and_send(channel: Any, data: bytes | bytearray | memoryview) -> None:
    """Queue *data* for sending (``async_chat.push``); see ``async_chat.ac_coalesce_sends``."""
