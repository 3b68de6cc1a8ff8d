"""Replays the fuzz corpus and every saved crash, without atheris.

Each file under tests/fuzz/corpus/ and tests/fuzz/regressions/ is decoded by
the same ``run_program`` the fuzz target uses, and played on the compiled
engine and its pure-Python twin; a difference (``Mismatch``) or an exception
no operation can cause (``Unexpected``) fails the test with a reproducer.
"""

import os
import sys

import pytest

from fuzz.oracle import compiled, run_program

HERE = os.path.dirname(os.path.abspath(__file__))


def _inputs():
    found = []
    for folder in ("corpus", "regressions"):
        path = os.path.join(HERE, folder)
        for name in sorted(os.listdir(path)) if os.path.isdir(path) else ():
            if not name.endswith(".md") and not name.startswith("."):
                found.append(pytest.param(os.path.join(path, name), id="%s/%s" % (folder, name)))
    return found


@pytest.mark.skipif(compiled is None, reason="compiled engine not built (CHATCORE_NO_EXTENSIONS=1 build)")
@pytest.mark.parametrize("path", _inputs())
def test_replay(path):
    with open(path, "rb") as source:
        run_program(source.read())


def test_the_fuzz_target_imports_without_atheris():
    """The harness imports atheris only when it runs, so CI needs no atheris."""
    import fuzz.fuzz_framer as harness

    assert callable(harness.main)
    assert "atheris" not in vars(harness)
    if "atheris" not in sys.modules:
        assert not any(name.startswith("atheris") for name in sys.modules)
