"""Framing throughput, no sockets: every workload x read size x implementation.

Rows of one workload and read size share a pytest-benchmark group, so the
table compares implementations side by side (the figures in parentheses are
ratios to the fastest row of the group), the ``handler-floor`` row (the
handler alone on pre-split messages, no framing) among them; the rows of
``lines16-any-eol`` (the same lines framed by ``(b"\\r\\n", b"\\n")``) sit in
``lines16``'s group.  Each round's
result is checked inside ``framing.run_once``.

    python -m pytest benchmarks/test_framing.py --benchmark-columns=min,median,rounds
"""

import pytest

from chatcore.benchmark import framing

IMPLEMENTATIONS = framing.implementations()


@pytest.mark.parametrize("implementation", sorted(IMPLEMENTATIONS))
@pytest.mark.parametrize("read_size", framing.READ_SIZES)
@pytest.mark.parametrize("workload", sorted(framing.WORKLOADS))
def test_framing(benchmark, timed_rounds, scale, workload, read_size, implementation):
    if not framing.runs_on(implementation, workload):
        pytest.skip("%s does not run %s (see chatcore.benchmark.framing)" % (implementation, workload))
    runner = IMPLEMENTATIONS[implementation]
    # A tuple-terminator workload joins its one-terminator twin's group:
    # the table's ratios are then the tuple's cost, measured in one run.
    benchmark.group = "%s @ %d B reads" % (framing.WORKLOADS[workload].single_terminator_twin or workload, read_size)
    framing.prepared_reads(workload, scale, read_size)  # build outside the timing

    def one_pass():
        return framing.run_once(workload, implementation, read_size, scale, runner)

    result = timed_rounds(one_pass)[-1]
    benchmark.extra_info.update(
        messages=result.messages,
        stream_bytes=result.stream_bytes,
    )
