"""CPython's own test files, found at test time, and the environment of a child per engine.

The suites that run CPython's tests against chatcore.compat
(test_cpython_suites.py, test_legacy_servers.py) take the files from an
installed CPython, never from a copy kept here: this interpreter's own stdlib
first (its files match its ``test.support``), then $CHATCORE_CPYTHON_TESTS,
then sibling installations of a pyenv-style layout
(``<versions>/X.Y.z/lib/pythonX.Y/test``).
"""

import glob
import os
import sys
import sysconfig
from collections.abc import Iterator, Sequence
from typing import Optional

from .engines import ENGINES, extensions_disabled

THIS_VERSION = "%d.%d" % sys.version_info[:2]


def _test_dirs(versions: Sequence[str]) -> Iterator[str]:
    yield os.path.join(sysconfig.get_paths()["stdlib"], "test")
    override = os.environ.get("CHATCORE_CPYTHON_TESTS")
    if override:
        yield override
    versions_dir = os.path.dirname(sys.base_prefix)
    for version in versions:
        for prefix in sorted(glob.glob(os.path.join(versions_dir, version + ".*")), reverse=True):
            yield os.path.join(prefix, "lib", "python" + version, "test")


def find_cpython_test(filename: str, versions: Sequence[str]) -> Optional[str]:
    """Path of CPython's test/*filename*, from one of *versions* if not this stdlib's."""
    for directory in _test_dirs(versions):
        path = os.path.join(directory, filename)
        if os.path.isfile(path):
            return path
    return None


def engine_available(engine_id: str) -> bool:
    """Whether a child can run on engine *engine_id* ("c" or "py")."""
    return engine_id == "py" or (ENGINES["c"] is not None and not extensions_disabled())


def engine_env(engine_id: str) -> dict[str, str]:
    """This process's environment, selecting engine *engine_id* (anything else: the default)."""
    env = dict(os.environ)
    if engine_id == "py":
        env["CHATCORE_NO_EXTENSIONS"] = "1"
    else:
        env.pop("CHATCORE_NO_EXTENSIONS", None)
    return env
