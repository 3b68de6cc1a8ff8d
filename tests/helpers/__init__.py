"""What the tests share, one module per kind of thing; test modules import from these.

* ``engines``: the two framing engines by id ("c", "py"), and the
  environment switches that select them;
* ``sockets``: socketpairs and loopback TCP pairs that time out and are all
  closed, a non-blocking ``Peer`` that collects what arrives, exact reads;
* ``fakes``: socket stand-ins whose ``recv``/``send`` results are scripted;
* ``serving``: turning a channel map's loop until a condition holds, and
  what a peer receives meanwhile;
* ``channels``: a line-framing channel class to build test servers on;
* ``recorders``: the slices of a channel the sans-IO engine talks to
  (incoming and outgoing), recording every call; reading event lists;
* ``scenarios``: the oracle, chatcore and chatcore.compat as interchangeable
  implementations a scenario runs on, the comparison, a recording channel;
* ``faults``: the errnos the fault tests inject and what stdlib does about
  each, and failing producers;
* ``processes``: child interpreters and server processes;
* ``tls``: certificates made at test time (trustme) and a TLS peer driven
  between loop turns;
* ``cpython``: CPython's own test files, found at test time.

``tests/`` is on ``sys.path`` under pytest (its default import mode puts
there the folder of conftest.py and of each test module, tests/ having no
``__init__.py``), in the child scripts run from it, and in the fuzz target,
so ``import helpers...`` works the same from an unpacked sdist as from a
checkout.  Nothing here imports pytest except where a helper skips or fails
a test, so the fuzz target can use ``engines`` without it.
"""
