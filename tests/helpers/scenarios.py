"""Scenarios played on several implementations of asyncore/asynchat, and compared.

A scenario is a function of an ``Impl`` that returns everything observable.
``check`` plays it on the oracle first (the real modules, when installed:
see oracle.py), which must give the outcome the test wrote down, so every
expectation is the real modules' behaviour; then on the implementation under
test, which must give it too.  ``recorder`` is the channel most fault
scenarios use: it records its callbacks, and its handlers raise on request.
"""

import functools
import sys
from typing import Any

import oracle

import chatcore
from chatcore.compat import asynchat as compat_asynchat
from chatcore.compat import asyncore as compat_asyncore

from .engines import engine_id


class Impl:
    """One implementation of the programming model, as a scenario uses it.

    ``async_chat`` and ``simple_producer`` are its classes; ``core`` is its
    asyncore-like module: ``loop``, ``poll``, ``read``/``write``/``readwrite``
    (the wrappers through which the loop delivers events and turns exceptions
    into ``handle_error``/``handle_close``), ``close_all``, ``dispatcher``, and
    the globals a test may patch.
    """

    def __init__(self, name: str, async_chat: type, simple_producer: type, core: Any) -> None:
        self.name = name
        self.async_chat = async_chat
        self.simple_producer = simple_producer
        self.core = core

    def __repr__(self) -> str:
        return "<Impl %s>" % self.name


#: The oracle as an Impl, or None where it is not installed (``oracle.MISSING`` says why).
ORACLE = (
    None
    if oracle.MISSING
    else Impl("oracle", oracle.asynchat.async_chat, oracle.asynchat.simple_producer, oracle.asyncore)
)


def chatcore_impl(chat_class: type) -> Impl:
    """chatcore's own API, with *chat_class* (the ``chat_class`` fixture) as its async_chat."""
    return Impl("chatcore-" + engine_id(chat_class._engine), chat_class, chatcore.simple_producer, chatcore)


def compat_impl(engine: Any, **attributes: Any) -> Impl:
    """chatcore.compat on *engine*, as a legacy program sees it; *attributes* set on its async_chat."""
    cls = type("async_chat", (compat_asynchat.async_chat,), dict(attributes, _engine=engine))
    suffix = "".join("+%s=%s" % item for item in sorted(attributes.items()))
    return Impl("compat-%s%s" % (engine_id(engine), suffix), cls, compat_asynchat.simple_producer, compat_asyncore)


def check(scenario, impl: Impl, expected: Any, *args: Any, **kwargs: Any) -> Any:
    """Play *scenario* on the oracle (when installed), then on *impl*; both must give *expected*.

    Without the oracle only the written expectation is checked
    (``test_faults.test_oracle_is_available`` reports that).
    """
    if ORACLE is not None:
        assert scenario(ORACLE, *args, **kwargs) == expected, "the oracle does not do what this test expects"
    outcome = scenario(impl, *args, **kwargs)
    assert outcome == expected, "%s differs from the oracle" % impl.name
    return outcome


class HandlerBug(Exception):
    """What the handlers of ``recorder`` channels raise when told to."""


@functools.cache
def recorder(base: type) -> type:
    """*base* (an async_chat class) recording its callbacks in ``events``; handlers can be told to raise.

    Events: ("data", bytes), ("term",), ("error", exception name), ("close",).
    """

    class Recorder(base):
        # handle_error: "close" runs the inherited one (log, handle_close);
        # "keep" records and leaves the channel open, as some servers do.
        on_error = "close"
        fail_found = fail_collect = None  # predicates on the current message

        def __init__(self, sock, terminator=b"\n", channel_map=None, **options):
            self.events = []
            self.logged = []
            self.message = b""
            self.__dict__.update(options)
            base.__init__(self, sock, map={} if channel_map is None else channel_map)
            self.set_terminator(terminator)

        def collect_incoming_data(self, data):
            data = bytes(data)
            self.events.append(("data", data))
            self.message += data
            if self.fail_collect is not None and self.fail_collect(data):
                raise HandlerBug("collect_incoming_data")

        def found_terminator(self):
            message, self.message = self.message, b""
            self.events.append(("term",))
            if self.fail_found is not None and self.fail_found(message):
                raise HandlerBug("found_terminator")
            self.found(message)

        def found(self, message):
            """Subclasses answer here."""

        def handle_error(self):
            self.events.append(("error", sys.exc_info()[0].__name__))
            if self.on_error == "close":
                base.handle_error(self)

        def handle_close(self):
            self.events.append(("close",))
            base.handle_close(self)

        def log_info(self, message, type="info"):
            self.logged.append(type)

        @property
        def gone(self):
            """Closed: the loop would no longer deliver events to it."""
            return self._fileno is None

    return Recorder
