"""The measuring side of the regression gate (``gate.py``): one build, one size.

    python -S gate_child.py HARNESS_DIR SCALE PASSES WORKLOAD...

Runs in a build's environment (its unpacked wheel on PYTHONPATH) and prints,
as JSON, which chatcore it imported and the fastest of PASSES timings of each
WORKLOAD at SCALE: ``name@read_size`` is a framing workload
(``framing.run_once`` on the compiled engine), ``name/api`` an in-process one
(``inprocess.run_once``); both modules are loaded from HARNESS_DIR.  It
imports as little as it can: under callgrind every start-up import costs
seconds, and the gate runs it dozens of times.
"""

import importlib.util
import json
import os
import sys
from typing import Any


def _load_harness(directory: str, name: str) -> Any:
    spec = importlib.util.spec_from_file_location("chatcore_gate_" + name, os.path.join(directory, name + ".py"))
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measure(keys: list[str], scale: float, passes: int, harness: str) -> dict[str, Any]:
    """Fastest of *passes* timings per workload, on the build chatcore resolves to."""
    import chatcore

    if chatcore.implementation != "cython":
        raise SystemExit(
            "gate: %s runs the %s engine, not the compiled one" % (chatcore.__file__, chatcore.implementation)
        )
    best: dict[str, float] = {}
    framing_keys = [key for key in keys if "/" not in key]
    if framing_keys:
        framing = _load_harness(harness, "framing")
        runner = framing.chatcore_implementations()["chatcore-cython"]
        for key in framing_keys:
            workload, read_size = key.split("@")
            framing.prepared_reads(workload, scale, int(read_size))
            best[key] = min(
                framing.run_once(workload, "chatcore-cython", int(read_size), scale, runner).seconds
                for _ in range(passes)
            )
    inprocess_keys = [key for key in keys if "/" in key]
    if inprocess_keys:
        inprocess = _load_harness(harness, "inprocess")
        for key in inprocess_keys:
            workload, api = key.split("/")
            best[key] = min(inprocess.run_once(workload, api, scale) for _ in range(passes))
    return {"chatcore": os.path.realpath(chatcore.__file__), "seconds": best}


def main(argv: list[str]) -> int:
    if len(argv) < 4:
        print(__doc__.split("\n\n")[1], file=sys.stderr)
        return 2
    harness, scale, passes = argv[0], float(argv[1]), int(argv[2])
    print(json.dumps(measure(argv[3:], scale, passes, harness)))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
