"""chatcore.compat as a drop-in for ``import asyncore, asynchat``."""

import subprocess
import sys
import textwrap

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
    out = subprocess.run(
        [sys.executable, "-W", "error::DeprecationWarning", "-c", program],
        stdout=subprocess.PIPE, stderr=subprocess.STDOUT, timeout=60, universal_newlines=True,
    )
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
        "dispatcher", "dispatcher_with_send", "loop", "poll", "poll2", "poll3", "read", "write",
        "readwrite", "close_all", "socket_map", "ExitNow", "compact_traceback", "file_wrapper",
        "file_dispatcher", "_exception", "_strerror", "_DISCONNECTED", "_reraised_exceptions",
        "EWOULDBLOCK", "ECONNRESET", "errorcode", "socket", "select", "os", "sys", "time",
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


def test_every_stdlib_name_exists_where_stdlib_has_it():
    import pytest
    import warnings

    with warnings.catch_warnings():
        warnings.simplefilter("ignore", DeprecationWarning)
        stdlib_asyncore = pytest.importorskip("asyncore", reason="stdlib asyncore removed in 3.12")
        stdlib_asynchat = pytest.importorskip("asynchat", reason="stdlib asynchat removed in 3.12")
    if stdlib_asyncore is compat_asyncore:
        pytest.skip("chatcore.compat is installed as asyncore in this process")
    pairs = [
        (stdlib_asyncore, compat_asyncore),
        (stdlib_asynchat, compat_asynchat),
        (stdlib_asyncore.dispatcher, compat_asyncore.dispatcher),
        (stdlib_asyncore.dispatcher_with_send, compat_asyncore.dispatcher_with_send),
        (stdlib_asynchat.async_chat, compat_asynchat.async_chat),
        (stdlib_asynchat.simple_producer, compat_asynchat.simple_producer),
    ]
    if hasattr(stdlib_asyncore, "file_dispatcher"):
        pairs += [
            (stdlib_asyncore.file_dispatcher, compat_asyncore.file_dispatcher),
            (stdlib_asyncore.file_wrapper, compat_asyncore.file_wrapper),
        ]
    # Module plumbing that is not API.
    ignored = {"_DEPRECATION_MSG", "_deprecated", "__file__", "__cached__", "__spec__",
               "__loader__", "__builtins__", "__warningregistry__"}
    for reference, ours in pairs:
        missing = sorted(set(dir(reference)) - set(dir(ours)) - ignored)
        assert not missing, (reference, missing)
    # Instance attributes set by the constructors.
    chat = compat_asynchat.async_chat(map={})
    for name in ("ac_in_buffer", "incoming", "producer_fifo", "_map", "_fileno", "socket"):
        assert hasattr(chat, name), name
