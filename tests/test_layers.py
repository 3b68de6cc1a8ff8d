"""The package's layers depend one way: chat -> engine -> dispatch -> loop -> events.

asyncore's side (dispatcher, loop) must work without asynchat's: the loop
reaches channels only through the methods it calls and the narrow interfaces
of ``chatcore.coalesce`` and ``eventloop.track_predicates``.  This reads each
module's imports and fails on one that points upwards.
"""

import ast
import os

import chatcore

PACKAGE_DIR = os.path.dirname(os.path.abspath(chatcore.__file__))

# module -> the chatcore modules it may import (its own layer and below).
ALLOWED = {
    "events": set(),
    "limits": set(),
    # The rule for a tuple of terminators, shared by both engines.
    "terminators": set(),
    # The library's logger and rate limits: below everything that logs.
    "log": set(),
    "_framing_py": {"dispatch", "limits", "outqueue", "terminators", "_framing_io_py"},
    # The engine's per-event steps (async_chat's methods) use the dispatcher
    # and the loop's interest tracking, never chat itself.
    "_framing_io_py": {"coalesce", "dispatch", "eventloop", "events"},
    "coalesce": {"events"},
    "eventloop": {"events", "coalesce", "timers", "wakeup"},
    "timers": {"events", "log"},
    "wakeup": set(),
    "outqueue": set(),
    "dispatch": {"events", "eventloop", "log"},
    "chat": {"_framing", "coalesce", "dispatch", "eventloop", "events", "filesend", "limits", "log", "outqueue", "tls"},
    # A file queued by push_file(): a producer that reads or sendfile()s, knowing only the log.
    "filesend": {"log"},
    # TLS under a channel: the loop's timers and interest tracking, never chat itself.
    "tls": {"eventloop", "events", "log", "timers"},
    # asyncio's loop driving the loop's own turns: above the loop, beside chat.
    "aio": {"eventloop", "timers"},
    # Forks workers that each run the loop.
    "workers": {"eventloop", "log"},
}


def _chatcore_imports(module):
    with open(os.path.join(PACKAGE_DIR, module + ".py"), encoding="utf-8") as source:
        tree = ast.parse(source.read())
    found = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.ImportFrom):
            if node.level == 1 and node.module is None:
                found.update(alias.name for alias in node.names)
            elif node.level == 1:
                found.add(node.module.split(".")[0])
            elif (node.module or "").startswith("chatcore."):
                found.add(node.module.split(".")[1])
        elif isinstance(node, ast.Import):
            found.update(alias.name.split(".")[1] for alias in node.names if alias.name.startswith("chatcore."))
    return found


def test_every_module_imports_only_its_own_layer_and_below():
    upward = {
        module: sorted(_chatcore_imports(module) - allowed)
        for module, allowed in ALLOWED.items()
        if _chatcore_imports(module) - allowed
    }
    assert upward == {}


def test_the_reader_sees_the_imports_it_checks():
    # The check above would pass vacuously if the parsing found nothing.
    assert _chatcore_imports("chat") >= {"dispatch", "coalesce", "outqueue"}
    assert _chatcore_imports("dispatch") == {"events", "eventloop", "log"}
