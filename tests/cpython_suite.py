"""Runs one of CPython 3.11's own test modules against chatcore.compat.

Usage: python tests/cpython_suite.py PATH/TO/test_asynchat.py [asyncio|uvloop]

The module is loaded from the given path (an installed CPython's file, never a
copy kept here) after ``chatcore.compat.install()`` has put chatcore's modules
in ``sys.modules`` as ``asyncore`` and ``asynchat``.  The engine is chosen by
the environment (CHATCORE_NO_EXTENSIONS), and the first line printed names it
so the caller can check it.  Exit status 0 means every test passed.

With ``asyncio`` or ``uvloop`` after the path, the suite's ``asyncore.loop()``
calls serve through ``chatcore.aio.loop()`` on a new event loop of that kind
(but for the tests that replace asyncore's ``select`` or ``time``, which
only chatcore.loop() honours), and the last line printed counts those calls.
"""

import importlib.util
import os
import select
import sys
import time
import unittest


def serve_through_aio(asyncore, event_loop: str):
    """Replace ``asyncore.loop`` with calls of ``chatcore.aio.loop()``; the list counts them."""
    import asyncio

    from chatcore import aio

    if event_loop == "uvloop":
        import uvloop

        new_event_loop = uvloop.new_event_loop
    else:
        new_event_loop = asyncio.new_event_loop
    served = []
    chatcore_loop = asyncore.loop

    def loop(timeout=30.0, use_poll=False, map=None, count=None):
        if asyncore.select is not select or asyncore.time is not time:
            return chatcore_loop(timeout, use_poll, map, count)
        served.append(count)
        event_loop = new_event_loop()
        try:
            event_loop.run_until_complete(
                aio.loop(asyncore.socket_map if map is None else map, timeout=timeout, use_poll=use_poll, count=count)
            )
        finally:
            event_loop.close()

    asyncore.loop = loop
    return served


def main(path: str, event_loop: str = "chatcore") -> int:
    import chatcore
    import chatcore.compat

    chatcore.compat.install()
    import asynchat
    import asyncore

    assert asyncore.__name__ == "chatcore.compat.asyncore", asyncore
    assert asynchat.__name__ == "chatcore.compat.asynchat", asynchat
    print("chatcore engine:", chatcore.implementation, flush=True)
    served = None if event_loop == "chatcore" else serve_through_aio(asyncore, event_loop)

    name = os.path.splitext(os.path.basename(path))[0]
    spec = importlib.util.spec_from_file_location("cpython_" + name, path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    if not hasattr(select, "epoll"):
        # Urgent (out-of-band) data is reported only through epoll;
        # docs/migrating.rst lists this among the differences from stdlib.
        for cls in vars(module).values():
            if isinstance(cls, type) and hasattr(cls, "test_handle_expt"):
                cls.test_handle_expt = unittest.skip("chatcore reports urgent data only through epoll")(
                    cls.test_handle_expt
                )
    suite = unittest.defaultTestLoader.loadTestsFromModule(module)
    result = unittest.TextTestRunner(stream=sys.stdout, verbosity=2).run(suite)
    if result.testsRun == 0:
        print("no tests ran", flush=True)
        return 1
    if served is not None:
        print("chatcore.aio.loop() calls:", len(served), flush=True)
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main(*sys.argv[1:]))
