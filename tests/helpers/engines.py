"""The two framing engines the tests run on: "c" (compiled) and "py" (its pure-Python twin).

conftest.py's ``engine`` fixture is parametrised over ``ENGINES``; tests that
compare the two engines directly, the CPython-suite runners and the fuzz
oracle take them from here too.  Only chatcore is imported, so the fuzz
target (which runs without pytest) can use this module.
"""

import os
from types import ModuleType
from typing import Optional

from chatcore import _framing_py

try:
    from chatcore import _framing_c as _compiled
except ImportError:  # a CHATCORE_NO_EXTENSIONS=1 build
    _compiled: Optional[ModuleType] = None

#: Engine id -> module; the compiled engine is None in a build without it.
ENGINES: dict[str, Optional[ModuleType]] = {"c": _compiled, "py": _framing_py}


def env_flag(name: str) -> bool:
    """Whether the environment switch *name* is on (set, and neither empty nor "0")."""
    return os.environ.get(name, "") not in ("", "0")


def extensions_disabled() -> bool:
    """Whether this build was made, or is run, with CHATCORE_NO_EXTENSIONS=1."""
    return env_flag("CHATCORE_NO_EXTENSIONS")


def engine_id(engine: ModuleType) -> str:
    """*engine*'s id in ``ENGINES`` ("c" or "py")."""
    for key, module in ENGINES.items():
        if module is engine:
            return key
    raise ValueError("not one of the engines: %r" % (engine,))
