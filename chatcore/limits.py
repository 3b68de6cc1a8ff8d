"""The one rule for a size-limit value, shared by both framing engines and the channels.

A limit is ``None`` (no limit) or an integer >= 0: an ``int``, or anything
with ``__index__`` (such as a numpy integer), taken as its ``int`` value.
Everything else fails with an error naming the attribute or argument:

* a negative integer: ``ValueError``;
* a float (``1e6``), a str, ``True``/``False`` or any other type:
  ``TypeError``.  Booleans are refused although ``bool`` is an ``int``
  subclass: ``max_message_size = True`` is a mistake, never a size of 1
  (and ``False`` would silently be a limit of 0 bytes).

``Framer.feed(max_size=...)``, ``Framer.feed_messages(max_size)`` and the
``SizeLimit`` descriptors behind ``async_chat.ac_max_message_size`` and
``message_chat.max_message_size`` apply it, in the pure-Python engine and in
the compiled one (whose fast path accepts only what this function accepts
and hands everything else to it, so the errors are the same words).
``declare_limits`` is how a channel class gets those descriptors: a limit
set in a subclass body is checked when the class is created.
"""

import operator
from collections.abc import Iterable
from typing import Any, Optional, SupportsIndex, overload

__all__ = ["check_limit", "declare_limits"]

# Where the two SizeLimit implementations live (see chatcore._framing).
_ENGINE_MODULES = ("chatcore._framing_c", "chatcore._framing_py")


@overload
def check_limit(value: None, name: str) -> None: ...
@overload
def check_limit(value: SupportsIndex, name: str) -> int: ...
def check_limit(value: Any, name: str) -> Optional[int]:
    """*value* as a limit: None, or a plain ``int`` >= 0; *name* is used in the error."""
    if value is None:
        return None
    if isinstance(value, bool):
        raise TypeError("%s must be None or an int >= 0, not bool" % name)
    try:
        limit = operator.index(value)
    except TypeError:
        raise TypeError("%s must be None or an int >= 0, not %s" % (name, type(value).__name__)) from None
    if limit < 0:
        raise ValueError("%s must not be negative, got %d" % (name, limit))
    return limit


def _is_size_limit(value: Any) -> bool:
    kind = type(value)
    return kind.__name__ == "SizeLimit" and kind.__module__ in _ENGINE_MODULES


def declare_limits(cls: type, names: Iterable[str], engine: Any) -> None:
    """Make each limit attribute *names* of the channel class *cls* a checked one.

    A plain value set in *cls*'s own body (``max_message_size = 4096``) is
    checked here, so a bad one fails when the class is created, and becomes
    ``engine.SizeLimit(name, value)``, so that assigning it on an instance
    is checked too.  A class naming its own ``_engine`` gets that engine's
    descriptor with the inherited default.  Other descriptors (a property
    computing the limit) are left alone: the framer checks what they return.
    """
    own_engine = "_engine" in cls.__dict__
    for name in names:
        for klass in cls.__mro__:
            if name in klass.__dict__:
                value = klass.__dict__[name]
                break
        else:
            continue
        if _is_size_limit(value):
            if own_engine and value.name == name and type(value) is not engine.SizeLimit:
                _install(cls, name, engine.SizeLimit(name, value.default))
        elif klass is cls and not hasattr(type(value), "__get__"):
            _install(cls, name, engine.SizeLimit(name, value))


def _install(cls: type, name: str, limit: Any) -> None:
    # What a class body does with a descriptor: set it, then __set_name__
    # (which puts the default where instances find it).
    setattr(cls, name, limit)
    limit.__set_name__(cls, name)
