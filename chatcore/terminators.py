"""The one rule for a tuple of terminators, shared by both framing engines.

``set_terminator((b"\\r\\n", b"\\n"))`` ends a message at whichever of the
terminators comes first in the stream (at the same position, the longest).
``check_terminators`` is what such a tuple must be: at least one terminator,
each bytes-like and not empty.  ``set_terminator`` applies it, so a mistake
fails where it is made, and the engines apply it again to a tuple assigned to
``channel.terminator`` directly (or returned by an overridden
``get_terminator``), once per tuple, never per message.
"""

from typing import Any

__all__ = ["check_terminators"]


def check_terminators(terminators: Any) -> "tuple[bytes, ...]":
    """*terminators* (a tuple) as a tuple of non-empty bytes.

    A tuple whose elements are all ``bytes`` is returned itself, so its
    elements are the very objects the caller passed; any other bytes-like
    element (bytearray, memoryview, array) is replaced by its ``bytes``.
    An empty tuple or an empty terminator: ``ValueError``; anything else
    (a str, an int, None): ``TypeError``.
    """
    if not isinstance(terminators, tuple):
        raise TypeError("terminators must be a tuple, not %s" % type(terminators).__name__)
    if not terminators:
        raise ValueError("a tuple of terminators must hold at least one")
    unchanged = type(terminators) is tuple
    checked = []
    for terminator in terminators:
        if type(terminator) is not bytes:
            unchanged = False
            if isinstance(terminator, str):
                raise TypeError("each terminator in a tuple must be bytes-like, not str")
            try:
                terminator = bytes(memoryview(terminator))
            except TypeError:
                raise TypeError(
                    "each terminator in a tuple must be bytes-like, not %s" % type(terminator).__name__
                ) from None
        if not terminator:
            raise ValueError("a terminator in a tuple must not be empty")
        checked.append(terminator)
    return terminators if unchanged else tuple(checked)
