"""chatcore.compat as a drop-in for ``import asyncore, asynchat``."""

import os
import sys
import textwrap

import oracle
import pytest
from helpers.processes import run_python

import chatcore
from chatcore.compat import asynchat as compat_asynchat
from chatcore.compat import asyncore as compat_asyncore


def test_install_makes_unchanged_programs_import_chatcore():
    program = textwrap.dedent(
        """
        import chatcore.compat
        chatcore.compat.install()
        import asynchat, asyncore, socket

        class Echo(asynchat.async_chat):
            def __init__(self, sock):
                asynchat.async_chat.__init__(self, sock)
                self.set_terminator(b"\\n")
                self.data = []
            def collect_incoming_data(self, data):
                self.data.append(data)
            def found_terminator(self):
                self.push(b"".join(self.data).upper() + b"\\n")
                self.data = []
                self.close_when_done()

        left, right = socket.socketpair()
        right.settimeout(10)
        Echo(left)
        right.sendall(b"hello\\n")
        asyncore.loop(timeout=0.05, count=20)
        print(asynchat.__name__, asyncore.__name__, right.recv(100))
        right.close()
        """
    )
    out = run_python(program, "-W", "error::DeprecationWarning")
    assert out.returncode == 0, out.stdout
    assert out.stdout.split() == ["chatcore.compat.asynchat", "chatcore.compat.asyncore", "b'HELLO\\n'"]


def test_reprs_read_as_stdlib_prints_them():
    d = compat_asyncore.dispatcher(map={})
    assert repr(d) == "<asyncore.dispatcher at %#x>" % id(d)
    c = compat_asynchat.async_chat(map={})
    assert repr(c) == "<asynchat.async_chat at %#x>" % id(c)
    assert isinstance(c, compat_asyncore.dispatcher)
    assert isinstance(c, chatcore.async_chat) and isinstance(c, chatcore.dispatcher)


def test_socket_map_is_read_at_call_time():
    saved = compat_asyncore.socket_map
    private = {}
    try:
        compat_asyncore.socket_map = private
        d = compat_asyncore.dispatcher()
        d.set_socket(_DummySocket())
        assert private == {42: d}
        compat_asyncore.close_all()
        assert private == {} and d.socket.closed
    finally:
        compat_asyncore.socket_map = saved


def test_default_maps_are_shared_until_replaced():
    assert compat_asyncore.socket_map is chatcore.socket_map


def test_module_level_names_match_stdlib():
    expected_asyncore = {
        "dispatcher",
        "dispatcher_with_send",
        "loop",
        "poll",
        "poll2",
        "poll3",
        "read",
        "write",
        "readwrite",
        "close_all",
        "socket_map",
        "ExitNow",
        "compact_traceback",
        "file_wrapper",
        "file_dispatcher",
        "_exception",
        "_strerror",
        "_DISCONNECTED",
        "_reraised_exceptions",
        "EWOULDBLOCK",
        "ECONNRESET",
        "errorcode",
        "socket",
        "select",
        "os",
        "sys",
        "time",
    }
    missing = {name for name in expected_asyncore if not hasattr(compat_asyncore, name)}
    if sys.platform == "win32":
        missing -= {"file_wrapper", "file_dispatcher"}
    assert not missing
    for name in ("async_chat", "simple_producer", "find_prefix_at_end", "deque", "asyncore"):
        assert hasattr(compat_asynchat, name), name


class _DummySocket:
    closed = False

    def fileno(self):
        return 42

    def close(self):
        self.closed = True


def test_every_oracle_name_exists_where_the_oracle_has_it():
    oracle.require()
    reference_asyncore, reference_asynchat = oracle.asyncore, oracle.asynchat
    pairs = [
        (reference_asyncore, compat_asyncore),
        (reference_asynchat, compat_asynchat),
        (reference_asyncore.dispatcher, compat_asyncore.dispatcher),
        (reference_asyncore.dispatcher_with_send, compat_asyncore.dispatcher_with_send),
        (reference_asynchat.async_chat, compat_asynchat.async_chat),
        (reference_asynchat.simple_producer, compat_asynchat.simple_producer),
    ]
    if hasattr(reference_asyncore, "file_dispatcher"):
        pairs += [
            (reference_asyncore.file_dispatcher, compat_asyncore.file_dispatcher),
            (reference_asyncore.file_wrapper, compat_asyncore.file_wrapper),
        ]
    # Module plumbing that is not API (__path__: pyasyncore/pyasynchat are packages).
    ignored = {
        "_DEPRECATION_MSG",
        "_deprecated",
        "__file__",
        "__cached__",
        "__spec__",
        "__loader__",
        "__builtins__",
        "__warningregistry__",
        "__path__",
    }
    for reference, ours in pairs:
        missing = sorted(set(dir(reference)) - set(dir(ours)) - ignored)
        assert not missing, (reference, missing)
    # Instance attributes set by the constructors.
    chat = compat_asynchat.async_chat(map={})
    for name in ("ac_in_buffer", "incoming", "producer_fifo", "_map", "_fileno", "socket"):
        assert hasattr(chat, name), name


# -- the oracle helper (tests/oracle.py) ----------------------------------------------

TESTS_DIR = os.path.dirname(os.path.abspath(__file__))


def _run(program):
    """Run *program* in a child interpreter with tests/ importable; its stdout, split."""
    out = run_python("import sys; sys.path.insert(0, %r)\n" % TESTS_DIR + textwrap.dedent(program))
    assert out.returncode == 0, out.stdout
    return out.stdout.split()


def test_oracle_is_found_where_the_test_extra_installs_it():
    """Stdlib's modules up to 3.11; on 3.12+ pyasynchat's whenever it is installed."""
    if sys.version_info >= (3, 12):
        from importlib import metadata

        try:
            metadata.distribution("pyasynchat")
        except metadata.PackageNotFoundError:
            pytest.skip('pyasynchat is not installed here (pip install -e ".[test]")')
        assert oracle.SOURCE.startswith("pyasyncore "), oracle.SOURCE
    else:
        assert oracle.SOURCE.startswith("stdlib "), oracle.SOURCE
    assert oracle.MISSING is None
    assert not oracle.is_chatcore(oracle.asynchat) and not oracle.is_chatcore(oracle.asyncore)
    assert oracle.asynchat.asyncore is oracle.asyncore


def test_oracle_is_never_chatcores_stand_in_and_leaves_sys_modules_alone():
    names = _run(
        """
        import chatcore.compat
        chatcore.compat.install()
        import oracle
        import asynchat, asyncore
        print(oracle.MISSING is None, oracle.is_chatcore(oracle.asynchat),
              oracle.is_chatcore(oracle.asynchat.asyncore), asynchat.__name__, asyncore.__name__)
        """
    )
    assert names == ["True", "False", "False", "chatcore.compat.asynchat", "chatcore.compat.asyncore"]
    # Imported first, the oracle does not stay in sys.modules, so install() still works.
    names = _run(
        """
        import oracle
        import sys
        print(oracle.MISSING is None, "asyncore" in sys.modules, "asynchat" in sys.modules)
        import chatcore.compat
        chatcore.compat.install()
        import asynchat
        print(asynchat.__name__)
        """
    )
    assert names == ["True", "False", "False", "chatcore.compat.asynchat"]


def test_a_missing_oracle_skips_with_its_reason():
    names = _run(
        """
        import sys
        sys.modules["asynchat"] = None  # what an interpreter without it does on import
        import pytest
        import oracle
        assert oracle.asynchat is None and oracle.SOURCE is None, oracle.SOURCE
        try:
            oracle.require()
        except pytest.skip.Exception as skip:
            print(skip.msg == oracle.MISSING, sys.modules["asynchat"] is None)
            print(oracle.MISSING)
        """
    )
    assert names[:2] == ["True", "True"]
    reason = " ".join(names[2:])
    assert (
        "cannot be imported" in reason
        if sys.version_info < (3, 12)
        else ("pyasynchat" in reason and ".[test]" in reason)
    ), reason
