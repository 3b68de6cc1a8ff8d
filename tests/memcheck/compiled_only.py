"""pytest plugin for the memory checks: run only the compiled engine's cases.

Loaded with ``-p compiled_only`` (tests/memcheck on PYTHONPATH) by
run_valgrind.sh.  It

* fails the run unless the compiled engine is the one imported;
* drops the cases parametrised with the pure-Python twin (``engine`` id
  "py"), which valgrind would only make slower;
* turns hypothesis deadlines off (valgrind runs Python ~30x slower) and, with
  CHATCORE_MEMCHECK_EXAMPLES=N, caps every hypothesis test at N examples.
"""

import os

import pytest


def _limit():
    return int(os.environ.get("CHATCORE_MEMCHECK_EXAMPLES", "0") or 0)


def _adjust(current):
    from hypothesis import settings

    changes = {"deadline": None}
    if _limit() > 0 and (current is None or current.max_examples > _limit()):
        changes["max_examples"] = _limit()
    return settings(current or settings.default, **changes)


def pytest_configure(config):
    from hypothesis import settings

    import chatcore

    if chatcore.implementation != "cython":
        raise pytest.UsageError("memcheck: chatcore is running its pure-Python engine")
    # For tests that take their bounds from the profile (test_stateful.py).
    profile = {"deadline": None}
    if _limit() > 0:
        profile["max_examples"] = _limit()
    settings.register_profile("memcheck", **profile)
    settings.load_profile("memcheck")


def pytest_report_header(config):
    from chatcore import _framing_c

    return "memcheck: compiled engine from %s" % _framing_c.__file__


def pytest_collection_modifyitems(config, items):
    keep, drop = [], []
    for item in items:
        callspec = getattr(item, "callspec", None)
        if callspec is not None and callspec.params.get("engine") == "py":
            drop.append(item)
        else:
            keep.append(item)
    if drop:
        config.hook.pytest_deselected(items=drop)
        items[:] = keep
    for item in keep:
        function = getattr(item, "obj", None)
        if hasattr(function, "hypothesis"):  # @given: @settings keeps them here
            current = getattr(function, "_hypothesis_internal_use_settings", None)
            function._hypothesis_internal_use_settings = _adjust(current)
        cls = getattr(item, "cls", None)
        if cls is not None and "settings" in vars(cls):  # a state machine's TestCase
            cls.settings = _adjust(cls.settings)
