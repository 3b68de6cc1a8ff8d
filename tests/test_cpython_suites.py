"""CPython 3.11's own test_asynchat.py and test_asyncore.py, run against chatcore.compat.

The files are taken from an installed CPython at test time, never vendored:
this interpreter's own stdlib where it still has them (3.9-3.11, whose suites
match its ``test.support``), otherwise the directory named by
CHATCORE_CPYTHON_TESTS or a sibling 3.11 installation (pyenv's layout); see
helpers/cpython.py.  Each suite runs in a child process per engine, so
``sys.modules`` surgery and the suites' threads and sockets stay out of this
process.
"""

import os
import subprocess
import sys

import pytest
from helpers.cpython import engine_available, engine_env, find_cpython_test
from helpers.engines import ENGINES

SUITES = ["test_asynchat.py", "test_asyncore.py"]
RUNNER = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cpython_suite.py")
#: Bound on one suite's child (about 10 s normally); only a hung child reaches it.
CHILD_TIMEOUT = 600


# The child's own bound ends a hang first, and reports its output.
@pytest.mark.timeout(CHILD_TIMEOUT + 60)
@pytest.mark.parametrize("suite", SUITES)
@pytest.mark.parametrize("engine_id", sorted(ENGINES))
def test_cpython_suite_passes(suite, engine_id, tmp_path):
    path = find_cpython_test(suite, ["3.11"])
    if path is None:
        pytest.skip(
            "CPython 3.11's %s not found (looked in this stdlib, $CHATCORE_CPYTHON_TESTS "
            "and sibling 3.11 installs)" % suite
        )
    if not engine_available(engine_id):
        pytest.skip("compiled engine not built (CHATCORE_NO_EXTENSIONS=1 build)")
    env = engine_env(engine_id)
    expected = {"c": "cython", "py": "python"}[engine_id]
    # The suites write scratch files (os_helper.TESTFN) into the working directory.
    proc = subprocess.run(
        [sys.executable, RUNNER, path],
        cwd=str(tmp_path),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        timeout=CHILD_TIMEOUT,
        text=True,
    )
    output = proc.stdout
    assert output.startswith("chatcore engine: %s\n" % expected), output[:500]
    assert proc.returncode == 0, output[-6000:]
