"""Drop-in stand-ins for the ``asyncore`` and ``asynchat`` modules.

``install()`` registers them in ``sys.modules`` under those names, so a program
written for Python 3.11's modules runs unchanged on 3.12+ after one line::

    import chatcore.compat; chatcore.compat.install()
    import asynchat, asyncore   # chatcore's
"""

import sys

__all__ = ["install"]

_NAMES = ("asyncore", "asynchat")


def install(coalesce_sends: bool = False) -> None:
    """Make ``import asyncore`` and ``import asynchat`` give chatcore's modules.

    Call it before anything imports those names.  If another ``asyncore`` or
    ``asynchat`` (the standard library's, or PyPI's copies) is already
    imported, some of the program holds it and would put its channels in a
    socket map chatcore's loop never serves, so ``install()`` raises
    RuntimeError instead of splitting the program in two.

    *coalesce_sends* opts the compat ``async_chat`` in to coalescing (its
    ``ac_coalesce_sends``): pushes made inside a handler then leave at the end
    of the loop turn in gathered sends instead of at once.  Only for programs
    whose handlers never wait for the peer after a push (block, fork, swap or
    hand the socket on): such a handler would wait for a reply that has not
    been sent yet.
    """
    from . import asynchat, asyncore

    ours = {"asyncore": asyncore, "asynchat": asynchat}
    for name in _NAMES:
        present = sys.modules.get(name)
        if present is not None and present is not ours[name]:
            raise RuntimeError(
                "chatcore.compat.install() was called after another %s module was "
                "imported (%s); channels made with it would never be served by "
                "chatcore's loop. Call install() before anything imports asyncore or "
                "asynchat: first thing in the program's entry point, or in sitecustomize."
                % (name, getattr(present, "__file__", None) or present)
            )
    if coalesce_sends:
        asynchat.async_chat.ac_coalesce_sends = True
    sys.modules.update(ours)
