"""Shared fixtures: every engine-dependent test runs against both implementations.

``engine`` is parametrised over the compiled module (id "c") and its
pure-Python twin (id "py"); ``chat_class`` is ``chatcore.async_chat`` bound to
that engine, ready to subclass.  The "c" cases are skipped, with the reason,
only in a build made with CHATCORE_NO_EXTENSIONS=1; test_build.py fails a
normal build that lacks the compiled module.
"""

import os
import sys
from types import ModuleType
from typing import Optional

import pytest

import chatcore
from chatcore import _framing_py

try:
    from chatcore import _framing_c as _compiled
except ImportError:
    _compiled: Optional[ModuleType] = None

ENGINES = {"c": _compiled, "py": _framing_py}


def extensions_disabled() -> bool:
    return os.environ.get("CHATCORE_NO_EXTENSIONS", "") not in ("", "0")


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


def pytest_report_header(config):
    return "chatcore %s from %s, default engine: %s, python %s" % (
        chatcore.__version__,
        os.path.dirname(chatcore.__file__),
        chatcore.implementation,
        sys.version.split()[0],
    )
