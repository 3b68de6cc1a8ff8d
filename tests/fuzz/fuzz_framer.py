"""Coverage-guided fuzz target (atheris) for the compiled framing engine.

    pip install atheris
    python tests/fuzz/fuzz_framer.py -max_total_time=120 -artifact_prefix=tests/fuzz/regressions/ \\
        /tmp/chatcore-corpus tests/fuzz/corpus

Each input is decoded by ``fuzz.oracle.run_program`` into a framing mode, a
terminator, a max_size and a sequence of operations (reads cut anywhere,
terminator changes, pending replacements, and what the callbacks do: change
the terminator, replace pending, raise, feed re-entrantly), played on the
compiled ``Framer`` and on its pure-Python twin.  Any difference between them,
or an exception no operation can cause, is raised and libFuzzer saves the
input as a crash file.  See README.md in this folder (native coverage build,
replaying crashes without atheris).
"""

import os
import sys

HERE = os.path.dirname(os.path.abspath(__file__))


def _check_corpus_order(argv):
    """Refuse to let libFuzzer write new inputs into the committed seed corpus."""
    directories = [arg for arg in argv[1:] if not arg.startswith("-")]
    seeds = os.path.join(HERE, "corpus")
    if directories and os.path.isdir(directories[0]) and os.path.samefile(directories[0], seeds):
        sys.exit(
            "fuzz_framer: libFuzzer adds inputs to the first corpus directory; put a "
            "scratch directory before tests/fuzz/corpus (see tests/fuzz/README.md)"
        )


def main(argv):
    _check_corpus_order(argv)
    import atheris  # only the fuzzer needs it: the replay test runs without

    # tests/ on the path, so the oracle imports as fuzz.oracle as under pytest.
    sys.path.insert(0, os.path.dirname(HERE))
    with atheris.instrument_imports(include=["chatcore", "fuzz"]):
        from fuzz import oracle

    if oracle.compiled is None:
        try:
            import chatcore._framing_c  # noqa: F401  (for its error message)
        except ImportError as exc:
            # "undefined symbol: __sancov_lowest_stack": a native-coverage
            # build, run without LD_PRELOAD of libFuzzer (see README.md).
            sys.exit("fuzz_framer: chatcore's compiled engine does not import: %s" % exc)
        sys.exit("fuzz_framer: chatcore's compiled engine is not built")
    print("fuzz_framer: compiled engine %s" % oracle.compiled.__file__, file=sys.stderr)

    def test_one_input(data):
        oracle.run_program(data)

    atheris.Setup(argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main(sys.argv)
