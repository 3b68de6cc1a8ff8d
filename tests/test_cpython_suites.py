"""CPython 3.11's own test_asynchat.py and test_asyncore.py, run against chatcore.compat.

The files are taken from an installed CPython at test time, never vendored:
this interpreter's own stdlib where it still has them (3.9-3.11, whose suites
match its ``test.support``), otherwise a sibling 3.11 installation (pyenv's
layout), or the directory named by CHATCORE_CPYTHON_TESTS.  Each suite runs
in a child process per engine, so ``sys.modules`` surgery and the suites'
threads and sockets stay out of this process.
"""

import glob
import os
import subprocess
import sys
import sysconfig

import pytest

from conftest import ENGINES, extensions_disabled

SUITES = ["test_asynchat.py", "test_asyncore.py"]
RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpython_suite.py")


def _candidate_dirs():
    override = os.environ.get("CHATCORE_CPYTHON_TESTS")
    if override:
        yield override
    yield os.path.join(sysconfig.get_paths()["stdlib"], "test")
    # Sibling interpreters of a pyenv-style layout: <versions>/3.11.x/lib/python3.11/test
    versions_dir = os.path.dirname(sys.base_prefix)
    for prefix in sorted(glob.glob(os.path.join(versions_dir, "3.11*")), reverse=True):
        yield os.path.join(prefix, "lib", "python3.11", "test")


def _find_suite(name: str):
    for directory in _candidate_dirs():
        path = os.path.join(directory, name)
        if os.path.isfile(path):
            return path
    return None


@pytest.mark.parametrize("suite", SUITES)
@pytest.mark.parametrize("engine_id", sorted(ENGINES))
def test_cpython_suite_passes(suite, engine_id, tmp_path):
    path = _find_suite(suite)
    if path is None:
        pytest.skip(
            "CPython 3.11's %s not found (looked in this stdlib, sibling 3.11 "
            "installs and $CHATCORE_CPYTHON_TESTS)" % suite
        )
    env = dict(os.environ)
    if engine_id == "py":
        env["CHATCORE_NO_EXTENSIONS"] = "1"
    else:
        if ENGINES["c"] is None or extensions_disabled():
            pytest.skip("compiled engine not built (CHATCORE_NO_EXTENSIONS=1 build)")
        env.pop("CHATCORE_NO_EXTENSIONS", None)
    expected = {"c": "cython", "py": "python"}[engine_id]
    # The suites write scratch files (os_helper.TESTFN) into the working directory.
    proc = subprocess.run(
        [sys.executable, RUNNER, path],
        cwd=str(tmp_path),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=600,
        universal_newlines=True,
    )
    output = proc.stdout
    assert output.startswith("chatcore engine: %s\n" % expected), output[:500]
    assert proc.returncode == 0, output[-6000:]
