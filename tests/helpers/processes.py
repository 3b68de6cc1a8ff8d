"""Child interpreters and server processes the tests start.

``run_python`` runs a short program in a fresh interpreter: for what must not
happen in the test process (``chatcore.compat.install()`` changes
``sys.modules`` for good, hidden platform modules, warnings as errors from
the first import).  Every child is bounded by a timeout that only a failing
test reaches.
"""

import os
import signal
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from typing import Any, Optional

import pytest

#: Seconds a short child program may take.  Only a failing (hung) child takes that long.
CHILD_TIMEOUT = 60.0
#: A generous ceiling for "fails within its bound": a benchmark run's own
#: timeout plus the longest a server stop may take (1 s + terminate 5 s + kill
#: 5 s) and slack for a loaded machine.  Not a speed assertion.
STOP_ALLOWANCE = 20.0


def run_python(
    program: str,
    *options: str,
    env: Optional[Mapping[str, str]] = None,
    cwd: Optional[str] = None,
    timeout: float = CHILD_TIMEOUT,
) -> "subprocess.CompletedProcess[str]":
    """Run *program* (dedented) with ``python *options -c``; its stdout and stderr together, as text."""
    return subprocess.run(
        [sys.executable, *options, "-c", textwrap.dedent(program)],
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        env=None if env is None else dict(env),
        cwd=cwd,
        timeout=timeout,
        text=True,
    )


def assert_process_gone(process: "subprocess.Popen[bytes]") -> None:
    """*process* has exited and been reaped: no process of its id is left."""
    assert process.returncode is not None, "the server process was not reaped"
    if os.name == "nt":
        return  # os.kill(pid, 0) would terminate a live process there
    with pytest.raises(ProcessLookupError):
        os.kill(process.pid, 0)


def stop_server(process: "subprocess.Popen[Any]", how: int = signal.SIGTERM) -> tuple[Any, Any]:
    """Send *process* the signal *how*, then collect its (stdout, stderr); killed if it lingers."""
    process.send_signal(how)
    try:
        return process.communicate(timeout=CHILD_TIMEOUT)
    except subprocess.TimeoutExpired:
        process.kill()
        return process.communicate()
