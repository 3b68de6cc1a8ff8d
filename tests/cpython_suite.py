"""Runs one of CPython 3.11's own test modules against chatcore.compat.

Usage: python tests/cpython_suite.py PATH/TO/test_asynchat.py

The module is loaded from the given path (an installed CPython's file, never a
copy kept here) after ``chatcore.compat.install()`` has put chatcore's modules
in ``sys.modules`` as ``asyncore`` and ``asynchat``.  The engine is chosen by
the environment (CHATCORE_NO_EXTENSIONS), and the first line printed names it
so the caller can check it.  Exit status 0 means every test passed.
"""

import importlib.util
import os
import select
import sys
import unittest


def main(path: str) -> int:
    import chatcore
    import chatcore.compat

    chatcore.compat.install()
    import asynchat
    import asyncore

    assert asyncore.__name__ == "chatcore.compat.asyncore", asyncore
    assert asynchat.__name__ == "chatcore.compat.asynchat", asynchat
    print("chatcore engine:", chatcore.implementation, flush=True)

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
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1]))
