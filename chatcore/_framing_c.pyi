"""Type stub for the compiled framing engine (src/_framing_c.pyx).

Identical in behaviour to ``chatcore._framing_py``; see that module for the
semantics of each name.
"""

from typing import Any, overload

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

class Framer:
    """Incoming terminator engine for one channel."""

    pending: bytes
    """Received bytes not yet handed to the channel (stdlib's ``ac_in_buffer``)."""
    @property
    def feeding(self) -> bool:
        """True while ``feed`` is running."""
    def feed(self, channel: Any, data: Any, call_get_terminator: bool = ..., max_size: int | None = ...) -> None:
        """Append *data* to the pending bytes and deliver every complete piece."""
    def feed_messages(self, channel: Any, data: Any, max_size: int | None) -> None:
        """Message mode: hand each complete message to ``channel.handle_message``."""

class SizeLimit:
    """A channel attribute holding a size limit (None or an int >= 0), checked when assigned."""

    @property
    def name(self) -> str:
        """The attribute's name, used in errors."""
    @property
    def default(self) -> int | None:
        """What the class, and an instance that set nothing, read."""
    @property
    def key(self) -> str:
        """The plain attribute (``_limit_<name>``) holding the instance's value, else the class's default."""
    def __init__(self, name: str, default: int | None = ...) -> None: ...
    def __set_name__(self, owner: type, name: str) -> None:
        """Put the default on *owner* under ``key``, where instances find it."""
    @overload
    def __get__(self, instance: None, owner: Any) -> int | None: ...
    @overload
    def __get__(self, instance: object, owner: Any) -> int | None: ...
    def __set__(self, instance: Any, value: int | None) -> None:
        """Check *value* (``chatcore.limits.check_limit``) and keep it on *instance*."""
    def __delete__(self, instance: Any) -> None:
        """Go back to the default."""

def push(channel: Any, data: Any) -> None:
    """Queue *data* on ``channel.producer_fifo`` in ``ac_out_buffer_size`` pieces.

    A memoryview of any format or shape is queued as its bytes.
    """

def initiate_send(channel: Any, zero_copy: bool = ...) -> None:
    """Send from the head of ``channel.producer_fifo`` once, as stdlib does."""

GATHER_LIMIT: int

def send_gathered(fifo: Any, sendmsg: Any, max_bytes: int) -> int:
    """Send the plain buffers at the head of *fifo* in one ``sendmsg`` call."""

def set_terminator(channel: Any, term: Any) -> None:
    """Set the input delimiter: bytes of any length, a byte count, or None."""

def collect_incoming_piece(channel: Any, data: Any) -> None:
    """Keep *data* for ``join_incoming`` (stdlib's ``_collect_incoming_data``)."""

def join_incoming(channel: Any) -> bytes:
    """The pieces kept so far as one bytes object, and forget them (``_get_data``)."""

# The per-event steps of async_chat (src/_framing_io.pxi; twin: chatcore._framing_io_py).
def handle_read(channel: Any) -> None:
    """``async_chat.handle_read``: receive once and hand the bytes to framing."""

def deliver_received(channel: Any, data: Any) -> None:
    """``async_chat._deliver_received``: frame *data* into the two callbacks."""

def deliver_messages(channel: Any, data: Any) -> None:
    """``message_chat._deliver_received``: frame *data* into ``handle_message`` calls."""

def get_terminator(channel: Any) -> Any:
    """``async_chat.get_terminator``."""

def push_and_send(channel: Any, data: Any) -> None:
    """Queue *data* for sending (``async_chat.push``); see ``async_chat.ac_coalesce_sends``."""

def initiate_send_once(channel: Any) -> None:
    """``async_chat.initiate_send``: stdlib's one step of sending, then a look by the loop."""
