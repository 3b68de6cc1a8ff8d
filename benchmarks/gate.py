"""Performance-regression gate: a base revision against the working tree, in one job.

    python benchmarks/gate.py --base origin/main                  # wall-clock mode
    python benchmarks/gate.py --base origin/main --mode instructions

Both trees are built the same way (``pip wheel`` of each, with the pinned
build requirements) and unpacked side by side; then the framing workloads of
``chatcore/benchmark/framing.py`` — always this tree's copy, so both builds run
identical harness code — are measured on the compiled engine of each build.

* ``time`` mode alternates base and tree processes several times and compares
  the fastest pass of each workload (the least disturbed one on a shared
  machine); every pass lasts well over a millisecond.  The default threshold
  (25 %) is one an unchanged tree does not trip on a noisy 2-core machine.
* ``instructions`` mode counts instructions with valgrind's callgrind, which
  is repeatable whatever else the machine is doing.  Each workload runs at two
  sizes and the difference is kept, so interpreter start-up cancels out; the
  default threshold is 2 % (an unchanged tree measures within 0.01 %).

Exit status: 0 when no workload got slower than the threshold, 1 otherwise,
2 for a usage or build error.
"""

import argparse
import importlib.util
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import zipfile
from typing import Dict, List, Tuple

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
HARNESS = os.path.join(ROOT, "chatcore", "benchmark", "framing.py")

#: (workload, read size) pairs the gate watches.
GATED = [
    ("lines16", 65536),
    ("lines16", 4096),
    ("headers200", 65536),
    ("smtp64k", 65536),
    ("length-prefixed", 65536),
    ("body64m", 65536),
]
#: Time-mode sizes: every pass lasts 10 ms or more here, so timer and cache
#: effects stay small (at 0.2 the 64 MiB body took 1 ms and varied by 25 %).
TIME_SCALES = {"body64m": 1.0}
DEFAULT_TIME_SCALE = 0.2
INSTRUCTION_SCALES = (0.005, 0.01)
INSTRUCTION_THRESHOLD = 0.02
TIME_THRESHOLD = 0.25


# -- child side: runs inside a build's environment ------------------------------------


def _load_harness():
    spec = importlib.util.spec_from_file_location("chatcore_gate_framing", HARNESS)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def measure(workloads: List[Tuple[str, int]], scale: float, passes: int) -> Dict[str, float]:
    """Fastest of *passes* timings per workload, on the build chatcore resolves to."""
    import chatcore

    if chatcore.implementation != "cython":
        raise SystemExit("gate: %s runs the %s engine, not the compiled one"
                         % (chatcore.__file__, chatcore.implementation))
    framing = _load_harness()
    runner = framing.implementations()["chatcore-cython"]
    best = {}
    for workload, read_size in workloads:
        framing.prepared_reads(workload, scale, read_size)
        timings = [framing.run_once(workload, "chatcore-cython", read_size, scale, runner).seconds
                   for _ in range(passes)]
        best["%s@%d" % (workload, read_size)] = min(timings)
    return best


def _child_main(argv: List[str]) -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--workload", action="append", required=True)
    parser.add_argument("--scale", type=float, required=True)
    parser.add_argument("--passes", type=int, default=1)
    args = parser.parse_args(argv)
    workloads = [(name, int(size)) for name, size in (item.split("@") for item in args.workload)]
    print(json.dumps(measure(workloads, args.scale, args.passes)))
    return 0


# -- parent side ------------------------------------------------------------------------


def _run(command: List[str], **kwargs) -> subprocess.CompletedProcess:
    return subprocess.run(command, check=True, universal_newlines=True, **kwargs)


def build(source: str, destination: str, scratch: str) -> str:
    """Build a wheel of *source* and unpack it into *destination*; returns that path."""
    wheels = tempfile.mkdtemp(dir=scratch)
    _run([sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", wheels, source],
         stdout=subprocess.DEVNULL)
    (wheel,) = [name for name in os.listdir(wheels) if name.endswith(".whl")]
    with zipfile.ZipFile(os.path.join(wheels, wheel)) as archive:
        archive.extractall(destination)
    return destination


def export_revision(revision: str, destination: str) -> None:
    """The tree of *revision*, as files (no .git), in *destination*."""
    os.makedirs(destination)
    archive = subprocess.run(["git", "-C", ROOT, "archive", "--format=tar", revision],
                             check=True, stdout=subprocess.PIPE).stdout
    subprocess.run(["tar", "-x", "-C", destination], input=archive, check=True)


def _child_env(site: str) -> Dict[str, str]:
    env = dict(os.environ, PYTHONPATH=site, PYTHONHASHSEED="0")
    env.pop("CHATCORE_NO_EXTENSIONS", None)
    return env


def _child_command(workloads: List[Tuple[str, int]], scale: float, passes: int) -> List[str]:
    command = [sys.executable, os.path.abspath(__file__), "_measure", "--scale", str(scale),
               "--passes", str(passes)]
    for name, size in workloads:
        command += ["--workload", "%s@%d" % (name, size)]
    return command


def time_mode(sites: Dict[str, str], rounds: int, passes: int) -> Dict[str, Dict[str, float]]:
    best: Dict[str, Dict[str, float]] = {label: {} for label in sites}
    for round_index in range(rounds):
        # Alternate the order so a slow phase of the machine hits both builds.
        order = list(sites) if round_index % 2 == 0 else list(reversed(list(sites)))
        for label in order:
            for scale in sorted(set(TIME_SCALES.values()) | {DEFAULT_TIME_SCALE}):
                workloads = [w for w in GATED if TIME_SCALES.get(w[0], DEFAULT_TIME_SCALE) == scale]
                output = _run(_child_command(workloads, scale, passes), env=_child_env(sites[label]),
                              stdout=subprocess.PIPE, cwd=HERE).stdout
                for key, seconds in json.loads(output).items():
                    best[label][key] = min(seconds, best[label].get(key, float("inf")))
        print("  round %d/%d done" % (round_index + 1, rounds), file=sys.stderr, flush=True)
    return best


_COLLECTED = re.compile(r"Collected\s*:\s*(\d+)")


def _instructions(site: str, workload: Tuple[str, int], scale: float) -> int:
    command = ["valgrind", "--tool=callgrind", "--callgrind-out-file=/dev/null"]
    command += _child_command([workload], scale, 1)
    proc = _run(command, env=_child_env(site), stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=HERE)
    match = _COLLECTED.search(proc.stderr)
    if not match:
        raise SystemExit("gate: no instruction count in valgrind's output:\n" + proc.stderr[-2000:])
    return int(match.group(1))


def instruction_mode(sites: Dict[str, str]) -> Dict[str, Dict[str, float]]:
    counts: Dict[str, Dict[str, float]] = {label: {} for label in sites}
    small, large = INSTRUCTION_SCALES
    for workload in GATED:
        key = "%s@%d" % workload
        for label, site in sites.items():
            counts[label][key] = _instructions(site, workload, large) - _instructions(site, workload, small)
        print("  %s counted" % key, file=sys.stderr, flush=True)
    return counts


def compare(results: Dict[str, Dict[str, float]], threshold: float, unit: str) -> bool:
    """Print base vs tree per workload; True when none got slower than *threshold*."""
    ok = True
    print("%-24s %14s %14s %9s" % ("workload", "base " + unit, "tree " + unit, "change"))
    for key in results["base"]:
        base, tree = results["base"][key], results["tree"][key]
        change = tree / base - 1.0
        verdict = ""
        if change > threshold:
            verdict = "  SLOWER than the %.0f%% threshold" % (threshold * 100)
            ok = False
        shown = (base * 1e3, tree * 1e3) if unit == "ms" else (base, tree)
        print("%-24s %14.6g %14.6g %+8.1f%%%s" % (key, shown[0], shown[1], change * 100, verdict))
    return ok


def main(argv: List[str]) -> int:
    if argv[:1] == ["_measure"]:
        return _child_main(argv[1:])
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--base", default="HEAD", help="git revision to compare against (default HEAD)")
    parser.add_argument("--mode", choices=["time", "instructions"], default="time")
    parser.add_argument("--threshold", type=float, help="allowed slow-down, e.g. 0.25 for 25%%")
    parser.add_argument("--rounds", type=int, default=6, help="time mode: alternations (default 6)")
    parser.add_argument("--passes", type=int, default=3, help="time mode: passes per process")
    args = parser.parse_args(argv)
    threshold = args.threshold if args.threshold is not None else (
        TIME_THRESHOLD if args.mode == "time" else INSTRUCTION_THRESHOLD)
    if args.mode == "instructions" and shutil.which("valgrind") is None:
        print("gate: instructions mode needs valgrind (apt-get install valgrind)", file=sys.stderr)
        return 2
    scratch = tempfile.mkdtemp(prefix="chatcore-gate-")
    try:
        print("building %s and the working tree..." % args.base, file=sys.stderr, flush=True)
        export_revision(args.base, os.path.join(scratch, "base-src"))
        sites = {
            "base": build(os.path.join(scratch, "base-src"), os.path.join(scratch, "base"), scratch),
            "tree": build(ROOT, os.path.join(scratch, "tree"), scratch),
        }
        if args.mode == "time":
            results = time_mode(sites, args.rounds, args.passes)
            ok = compare(results, threshold, "ms")
        else:
            results = instruction_mode(sites)
            ok = compare(results, threshold, "instr")
    except subprocess.CalledProcessError as error:
        print("gate: %s failed with status %d" % (error.cmd[:4], error.returncode), file=sys.stderr)
        return 2
    finally:
        shutil.rmtree(scratch, ignore_errors=True)
    print("gate: %s" % ("passed" if ok else "FAILED: a workload got slower"))
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
