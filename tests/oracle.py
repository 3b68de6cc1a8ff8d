"""The oracle: the real ``asyncore``/``asynchat``, against which chatcore is compared.

On Python <= 3.11 that is the standard library's pair; on 3.12+, where they
were removed, PyPI's ``pyasyncore`` and ``pyasynchat`` (verbatim copies,
installed by the ``test`` extra).  This module is the one place that imports
them; tests use ``oracle.asynchat`` / ``oracle.asyncore``, or ``require()``.

Whatever ``chatcore.compat.install()`` left under those names in
``sys.modules`` is never taken for the oracle, and ``sys.modules`` is left as
it was found: the oracle is held here by reference only, so a later
``install()`` (which refuses to run beside foreign modules under those names)
and ``import asynchat`` in other tests are not affected by this import.
"""

import importlib
import os
import sys
import sysconfig
import warnings
from types import ModuleType
from typing import Optional, Tuple

import pytest

__all__ = ["MISSING", "SOURCE", "asynchat", "asyncore", "is_chatcore", "load", "require"]

NAMES = ("asyncore", "asynchat")  # asynchat imports asyncore: that order
# Where the oracle comes from on 3.12+: module name -> PyPI distribution.
DISTRIBUTIONS = {"asyncore": "pyasyncore", "asynchat": "pyasynchat"}


def is_chatcore(module: object) -> bool:
    """Whether *module* is one of chatcore's (its compat stand-ins included)."""
    name = getattr(module, "__name__", "") or ""
    path = getattr(module, "__file__", "") or ""
    return name.split(".")[0] == "chatcore" or "chatcore" in os.path.normpath(path).split(os.sep)


def _same_file(left: str, right: str) -> bool:
    return os.path.normcase(os.path.realpath(left)) == os.path.normcase(os.path.realpath(right))


def _provenance(module: ModuleType) -> Tuple[Optional[str], str]:
    """(why *module* is not the oracle, or None; a label naming where it comes from)."""
    name = module.__name__
    path = getattr(module, "__file__", None) or ""
    if is_chatcore(module):
        return "%s resolves to chatcore's stand-in (%s)" % (name, path), ""
    if sys.version_info < (3, 12):
        stdlib = sysconfig.get_paths()["stdlib"]
        if not _same_file(os.path.dirname(path), stdlib):
            return "%s comes from %s, not from the standard library in %s" % (
                name, path, stdlib), ""
        return None, "stdlib"
    from importlib import metadata

    distribution = DISTRIBUTIONS[name]
    try:
        dist = metadata.distribution(distribution)
    except metadata.PackageNotFoundError:
        return "%s (%s) is not PyPI's %s" % (name, path, distribution), ""
    if not any(_same_file(str(dist.locate_file(file)), path) for file in dist.files or ()):
        return "%s comes from %s, which %s %s did not install" % (
            name, path, distribution, dist.version), ""
    return None, "%s %s" % (distribution, dist.version)


def load() -> Tuple[Optional[Tuple[ModuleType, ModuleType]], str]:
    """((asynchat, asyncore), label) for the oracle, or (None, the reason it is missing)."""
    python = "Python %s" % sys.version.split()[0]
    missing = object()
    saved = {name: sys.modules.get(name, missing) for name in NAMES}
    for name, module in saved.items():
        if module is not missing and module is not None and is_chatcore(module):
            del sys.modules[name]  # install()'s stand-in: look past it
    try:
        with warnings.catch_warnings():
            # Stdlib's 3.11 copies warn that they are deprecated, on import.
            warnings.simplefilter("ignore", DeprecationWarning)
            modules = {name: importlib.import_module(name) for name in NAMES}
    except ImportError as exc:
        if sys.version_info < (3, 12):
            return None, "stdlib asyncore/asynchat, the oracle, cannot be imported on %s (%s)" % (
                python, exc)
        return None, (
            "the oracle, PyPI's pyasyncore and pyasynchat (stdlib's asyncore/asynchat were "
            "removed in Python 3.12), is not installed on %s: pip install -e \".[test]\" (%s)"
            % (python, exc))
    finally:
        for name, module in saved.items():
            if module is missing:
                sys.modules.pop(name, None)
            else:
                sys.modules[name] = module
    labels = []
    for name in NAMES:
        problem, label = _provenance(modules[name])
        if problem is not None:
            return None, "no oracle on %s: %s" % (python, problem)
        labels.append(label)
    # pyasynchat must run on pyasyncore, not on whatever else was importable.
    if modules["asynchat"].asyncore is not modules["asyncore"]:
        return None, "no oracle on %s: asynchat runs on another asyncore (%r)" % (
            python, modules["asynchat"].asyncore)
    source = labels[0] if labels[0] == labels[1] else " + ".join(labels)
    return (modules["asynchat"], modules["asyncore"]), "%s on %s" % (source, python)


_modules, _label = load()
#: Why there is no oracle here (a skip reason), or None.
MISSING: Optional[str] = None if _modules is not None else _label
#: Where the oracle comes from, e.g. "stdlib on Python 3.11.7" or
#: "pyasyncore 1.0.5 + pyasynchat 1.0.5 on Python 3.13.0"; None without one.
SOURCE: Optional[str] = _label if _modules is not None else None
asynchat: Optional[ModuleType] = _modules[0] if _modules is not None else None
asyncore: Optional[ModuleType] = _modules[1] if _modules is not None else None


def require() -> None:
    """Skip the calling test (or, at import time, its module) when there is no oracle."""
    if MISSING is not None:
        pytest.skip(MISSING, allow_module_level=True)
