"""Runs a legacy server's own CPython test module on a chosen asyncore/asynchat.

Usage::

    python tests/legacy_suite.py --backend chatcore|oracle --results FILE
        [--exclude FILE | --only FILE] [--test-timeout SECONDS] [--smtpd-copy]
        PATH/TO/test_ftplib.py

The suites (test_ftplib, test_poplib, test_smtpd, test_smtplib) are CPython's
files, loaded unchanged from the given path as members of this interpreter's
``test`` package.  They reach the event-loop modules under several names:
``asyncore``/``asynchat`` (<= 3.11, and smtpd.py there) or
``test.support.asyncore``/``asynchat`` (3.12+, test-only copies that
test.support's smtpd also imports).  Before the suite is imported, all of
those names are bound to the backend's pair:

* ``chatcore``: ``chatcore.compat.install()``'s modules; the engine follows
  CHATCORE_NO_EXTENSIONS.
* ``oracle``: tests/oracle.py's pair (stdlib's on <= 3.11, PyPI's
  pyasyncore/pyasynchat on 3.12+); without one the runner exits with status 3.

The first line printed names the backend; after the import, the runner checks
that the suite and its smtpd really hold the backend's modules and prints
them ("modules: ...").  Results go to FILE as JSON lines written as they
happen, so a caller that had to kill a stuck child still knows every finished
test and the one that hung: ``{"event": "start", "id": ...}``, ``{"event":
"result", "id": ..., "outcome": "pass|fail|error|skip|xfail|xpass", "detail":
..., "seconds": ...}``, and ``{"event": "done", "ran": N}`` at the end.  A test
still running after --test-timeout seconds makes faulthandler dump every
thread and end the process; tests listed in the --exclude file (one id a
line) are not run, so the caller can resume after the stuck one; --only runs
just the listed ones (to reproduce a failure by hand).
"""

import argparse
import faulthandler
import importlib
import importlib.util
import json
import os
import sys
import time
import traceback
import types
import unittest

#: (asyncore, asynchat) of one backend.
Pair = tuple[types.ModuleType, types.ModuleType]

#: Exit status when there is no oracle to run on (the caller skips).
NO_ORACLE = 3

# How long the interpreter may take to exit once every test is done (threads
# a failed test left behind are joined at shutdown).
_EXIT_GRACE = 30.0


def _support_has_copies() -> bool:
    """True on 3.12+, where the suites use test.support's asyncore/asynchat/smtpd."""
    return importlib.util.find_spec("test.support.asyncore") is not None


def _bind(asyncore: types.ModuleType, asynchat: types.ModuleType) -> None:
    """Make every name a suite imports the event-loop modules by give these two."""
    names = {"asyncore": asyncore, "asynchat": asynchat}
    sys.modules.update(names)
    if _support_has_copies():
        import test.support

        for name, module in names.items():
            # `from test.support import asyncore` reads the package attribute
            # first and sys.modules second: set both.
            sys.modules["test.support." + name] = module
            setattr(test.support, name, module)


def _install_chatcore() -> tuple[str, Pair]:
    import chatcore
    import chatcore.compat

    chatcore.compat.install()
    import asynchat
    import asyncore

    assert asyncore.__name__ == "chatcore.compat.asyncore", asyncore
    assert asynchat.__name__ == "chatcore.compat.asynchat", asynchat
    _bind(asyncore, asynchat)
    return "chatcore engine: %s" % chatcore.implementation, (asyncore, asynchat)


def _install_oracle() -> tuple[str, Pair]:
    # tests/oracle.py is the one definition of the oracle (stdlib's pair on
    # <= 3.11, pyasyncore/pyasynchat on 3.12+); this script's folder is on sys.path.
    import oracle

    modules, label = oracle.load()
    if modules is None:
        print("no oracle:", label, flush=True)
        sys.exit(NO_ORACLE)
    asynchat, asyncore = modules
    assert not (oracle.is_chatcore(asynchat) or oracle.is_chatcore(asyncore)), modules
    # load() leaves sys.modules as found: bind the names the suite imports.
    _bind(asyncore, asynchat)
    return "oracle: %s" % label, (asyncore, asynchat)


def _check_modules(module: types.ModuleType, pair: Pair, backend: str) -> str:
    """Fail unless the suite and its smtpd hold the backend's modules; name them."""
    seen = []
    holders = {"suite": module}
    if getattr(module, "smtpd", None) is not None:
        holders["smtpd"] = module.smtpd
    for holder_name, holder in holders.items():
        for expected in pair:
            name = expected.__name__.rpartition(".")[2]
            used = getattr(holder, name, None)
            if used is None:
                continue
            if used is not expected:
                raise AssertionError(
                    "%s.%s is %r, not the %s backend's %r" % (holder_name, name, used, backend, expected)
                )
            seen.append("%s.%s=%s" % (holder_name, name, used.__name__))
    if not seen:
        raise AssertionError("the suite uses neither asyncore nor asynchat")
    return " ".join(seen)


def _format(err) -> str:
    return "".join(traceback.format_exception(*err))[-3000:]


class _RecordingResult(unittest.TextTestResult):
    """A text result that also writes one JSON line per test as it finishes."""

    def __init__(self, *args, record, timeout, **kwargs):
        super().__init__(*args, **kwargs)
        self._record = record
        self._timeout = timeout
        self._outcome = {}

    def _set(self, test, outcome, detail=""):
        if not isinstance(test, unittest.TestCase):
            # setUpClass/setUpModule and their tearDowns run outside any test.
            self._record({"event": "result", "id": test.id(), "outcome": outcome, "detail": detail})
            return
        # A subtest's outcome is its test's; the first failure or error sticks,
        # so a failed subtest fails the test even when later ones pass.
        test = getattr(test, "test_case", test)
        if self._outcome.get(test.id(), ("pass",))[0] not in ("fail", "error"):
            self._outcome[test.id()] = (outcome, detail)

    def startTest(self, test):
        self._started = time.monotonic()
        self._record({"event": "start", "id": test.id()})
        if self._timeout:
            faulthandler.dump_traceback_later(self._timeout, exit=True)
        super().startTest(test)

    def stopTest(self, test):
        super().stopTest(test)
        if self._timeout:
            faulthandler.cancel_dump_traceback_later()
        outcome, detail = self._outcome.pop(test.id(), ("pass", ""))
        self._record(
            {
                "event": "result",
                "id": test.id(),
                "outcome": outcome,
                "detail": detail,
                "seconds": round(time.monotonic() - self._started, 3),
            }
        )

    def addError(self, test, err):
        super().addError(test, err)
        self._set(test, "error", _format(err))

    def addFailure(self, test, err):
        super().addFailure(test, err)
        self._set(test, "fail", _format(err))

    def addSubTest(self, test, subtest, err):
        super().addSubTest(test, subtest, err)
        if err is not None:
            failed = issubclass(err[0], test.failureException)
            self._set(test, "fail" if failed else "error", _format(err))

    def addSkip(self, test, reason):
        super().addSkip(test, reason)
        self._set(test, "skip", reason)

    def addExpectedFailure(self, test, err):
        super().addExpectedFailure(test, err)
        self._set(test, "xfail")

    def addUnexpectedSuccess(self, test):
        super().addUnexpectedSuccess(test)
        self._set(test, "xpass")


def _iter_tests(suite):
    for item in suite:
        if isinstance(item, unittest.TestSuite):
            yield from _iter_tests(item)
        else:
            yield item


def _read_ids(path) -> set:
    with open(path) as handle:
        return {line.strip() for line in handle if line.strip()}


def _filtered(suite: unittest.TestSuite, exclude: set, only) -> unittest.TestSuite:
    """The chosen tests, in the loader's order (so a class's setUpClass still runs once)."""
    kept = unittest.TestSuite()
    for test in _iter_tests(suite):
        if test.id() not in exclude and (only is None or test.id() in only):
            kept.addTest(test)
    return kept


def main(argv=None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("path")
    parser.add_argument("--backend", choices=("chatcore", "oracle"), required=True)
    parser.add_argument("--results", required=True)
    parser.add_argument("--exclude", help="file of test ids not to run")
    parser.add_argument("--only", help="file of the only test ids to run")
    parser.add_argument("--test-timeout", type=float, default=0.0)
    parser.add_argument(
        "--smtpd-copy",
        action="store_true",
        help="serve `import smtpd` from test.support's copy (3.11's test_smtpd.py on 3.12+)",
    )
    args = parser.parse_args(argv)

    # A crash (say, in the compiled engine) then leaves Python's traceback.
    faulthandler.enable()
    results = open(args.results, "a", buffering=1)

    def record(event):
        results.write(json.dumps(event) + "\n")

    header, pair = _install_chatcore() if args.backend == "chatcore" else _install_oracle()
    print(header, flush=True)
    if args.smtpd_copy:
        # 3.12+ keep a test-only copy of smtpd (test.smtpd in 3.12,
        # test.support.smtpd later); 3.11's own smtpd.py refuses to import
        # there (it is deprecated with remove=(3, 12)).
        try:
            smtpd = importlib.import_module("test.support.smtpd")
        except ModuleNotFoundError:
            smtpd = importlib.import_module("test.smtpd")
        sys.modules["smtpd"] = smtpd

    # Loaded as a member of this interpreter's `test` package, as regrtest
    # imports it, so relative imports (3.12's `from . import smtpd`) and the
    # test ids are CPython's own.
    name = "test." + os.path.splitext(os.path.basename(args.path))[0]
    spec = importlib.util.spec_from_file_location(name, args.path)
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    print("modules:", _check_modules(module, pair, args.backend), flush=True)

    exclude = _read_ids(args.exclude) if args.exclude else set()
    only = _read_ids(args.only) if args.only else None
    suite = _filtered(unittest.defaultTestLoader.loadTestsFromModule(module), exclude, only)
    runner = unittest.TextTestRunner(
        stream=sys.stdout,
        verbosity=2,
        resultclass=lambda *a, **kw: _RecordingResult(*a, record=record, timeout=args.test_timeout, **kw),
    )
    result = runner.run(suite)
    record({"event": "done", "ran": result.testsRun})
    results.close()
    sys.stdout.flush()
    faulthandler.dump_traceback_later(_EXIT_GRACE, exit=True)
    return 0 if result.wasSuccessful() else 1


if __name__ == "__main__":
    sys.exit(main())
