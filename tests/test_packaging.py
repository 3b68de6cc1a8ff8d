"""What the wheels depend on: the package list, and running where only select() exists.

Windows has none of epoll, poll, kqueue, fcntl or resource.  Its absence is
simulated here in a child process, which hides them before chatcore is
imported, so a POSIX-only call that slips into the import path or the loop
shows up on Linux too.
"""

import os
import textwrap

import pytest
from helpers.processes import run_python

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))

SELECT_ONLY = textwrap.dedent(
    """
    import select, selectors, sys
    for name in ("epoll", "poll", "devpoll", "kqueue"):
        if hasattr(select, name):
            delattr(select, name)
    for name in ("EpollSelector", "PollSelector", "DevpollSelector", "KqueueSelector"):
        if hasattr(selectors, name):
            delattr(selectors, name)
    selectors.DefaultSelector = selectors.SelectSelector
    for name in ("fcntl", "resource", "termios"):
        sys.modules[name] = None  # import fails, as on Windows

    import socket
    import chatcore, chatcore.compat
    from chatcore import eventloop
    chatcore.compat.install()
    import asynchat, asyncore

    poller = eventloop.new_poller()
    assert type(poller._selector) is selectors.SelectSelector, poller
    poller.close()

    class Upper(asynchat.async_chat):
        def __init__(self, sock, map):
            asynchat.async_chat.__init__(self, sock, map)
            self.set_terminator(b"\\n")
            self.parts = []
        def collect_incoming_data(self, data):
            self.parts.append(data)
        def found_terminator(self):
            self.push(b"".join(self.parts).upper() + b"\\n")
            self.parts = []

    for use_poll in (False, True):
        left, right = socket.socketpair()
        right.settimeout(10)
        channel_map = {}
        Upper(left, channel_map)
        right.sendall(b"hello\\nworld\\n")
        echoed = b""
        for _ in range(200):
            if echoed == b"HELLO\\nWORLD\\n":
                break
            asyncore.loop(timeout=0.01, use_poll=use_poll, map=channel_map, count=1)
            if select.select([right], [], [], 0)[0]:
                echoed += right.recv(100)
        assert echoed == b"HELLO\\nWORLD\\n", (use_poll, echoed)
        asyncore.close_all(channel_map)
        right.close()
    print("ok", chatcore.implementation)
    """
)


@pytest.mark.parametrize("no_extensions", ["0", "1"], ids=["default-engine", "py"])
def test_imports_and_serves_where_only_select_exists(no_extensions, tmp_path):
    env = dict(os.environ, CHATCORE_NO_EXTENSIONS=no_extensions)
    proc = run_python(SELECT_ONLY, cwd=str(tmp_path), env=env)
    assert proc.returncode == 0, proc.stdout
    assert proc.stdout.startswith("ok ")


def test_every_subpackage_is_listed_for_the_wheel():
    # setuptools is given the package list (src/ beside chatcore/ defeats
    # discovery), so a new subpackage left out of it would vanish from wheels.
    tomllib = pytest.importorskip("tomllib", reason="tomllib is new in Python 3.11")
    pyproject = os.path.join(ROOT, "pyproject.toml")
    source = os.path.join(ROOT, "chatcore")
    if not (os.path.isfile(pyproject) and os.path.isdir(source)):
        pytest.skip("no source tree beside the tests")
    with open(pyproject, "rb") as stream:
        listed = set(tomllib.load(stream)["tool"]["setuptools"]["packages"])
    found = {
        os.path.relpath(directory, ROOT).replace(os.sep, ".")
        for directory, _, files in os.walk(source)
        if "__init__.py" in files
    }
    assert listed == found
