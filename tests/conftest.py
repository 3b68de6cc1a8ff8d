"""Shared fixtures: every engine-dependent test runs against both implementations.

``engine`` is parametrised over the compiled module (id "c") and its
pure-Python twin (id "py"); ``chat_class`` is ``chatcore.async_chat`` bound to
that engine, ready to subclass.  The "c" cases are skipped, with the reason,
only in a build made with CHATCORE_NO_EXTENSIONS=1; test_build.py fails a
normal build that lacks the compiled module.  ``sockets`` and ``socket_pair``
hand out real sockets that are closed after the test (helpers/sockets.py);
the rest of what tests share is in helpers/.
"""

import os
import sys
from types import ModuleType

import pytest

# Before anything imports them: helpers' asserts report their operands as the
# tests' own do.
pytest.register_assert_rewrite("helpers")

from helpers.engines import ENGINES  # noqa: E402
from helpers.sockets import Sockets  # noqa: E402

import chatcore  # noqa: E402
from chatcore import eventloop  # noqa: E402


@pytest.fixture(params=sorted(ENGINES), scope="session")
def engine(request) -> ModuleType:
    module = ENGINES[request.param]
    if module is None:
        pytest.skip("compiled engine not built (CHATCORE_NO_EXTENSIONS=1 build)")
    return module


@pytest.fixture(scope="session")
def chat_class(engine) -> type[chatcore.async_chat]:
    """``chatcore.async_chat`` running on the engine under test."""
    return type("async_chat", (chatcore.async_chat,), {"_engine": engine})


#: The loop's kernel pollers: the portable selectors one, and epoll where there is one.
POLLERS = ["selectors"] + (
    ["epoll"] if hasattr(eventloop, "_EpollPoller") and hasattr(__import__("select"), "epoll") else []
)


@pytest.fixture(params=POLLERS)
def poller_kind(request, monkeypatch):
    """Each test using it runs once per poller kind (the loop makes that kind of poller)."""
    if request.param == "selectors":
        monkeypatch.setattr(eventloop, "new_poller", eventloop._SelectorsPoller)
    else:
        monkeypatch.setattr(eventloop, "new_poller", eventloop._EpollPoller)
    return request.param


@pytest.fixture
def sockets():
    """A ``helpers.sockets.Sockets``: socketpairs, TCP pairs and listeners, all closed after the test."""
    opened = Sockets()
    yield opened
    opened.close()


@pytest.fixture
def socket_pair(sockets):
    """A connected socketpair (channel end, peer end) whose blocking calls time out."""
    return sockets.pair()


def pytest_report_header(config):
    return "chatcore %s from %s, default engine: %s, python %s" % (
        chatcore.__version__,
        os.path.dirname(chatcore.__file__),
        chatcore.implementation,
        sys.version.split()[0],
    )
