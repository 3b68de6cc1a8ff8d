"""Benchmark workloads shared by ``python -m chatcore bench`` and ``benchmarks/``.

``framing`` feeds fixed-size reads of known message streams to each framing
implementation without sockets; ``echo`` runs loopback echo servers against a
client process.  ``cli`` is the ``bench`` command that runs, tabulates and
plots them.
"""
