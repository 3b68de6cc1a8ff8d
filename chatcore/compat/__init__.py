"""Drop-in stand-ins for the ``asyncore`` and ``asynchat`` modules.

``install()`` registers them in ``sys.modules`` under those names, so a program
written for Python 3.11's modules runs unchanged on 3.12+ after one line::

    import chatcore.compat; chatcore.compat.install()
    import asynchat, asyncore   # chatcore's
"""

import sys

__all__ = ["install"]


def install() -> None:
    """Make ``import asyncore`` and ``import asynchat`` give chatcore's modules.

    Call it before anything imports those names: a module that already holds
    the standard library's copy keeps it.
    """
    from . import asynchat, asyncore

    sys.modules["asyncore"] = asyncore
    sys.modules["asynchat"] = asynchat
