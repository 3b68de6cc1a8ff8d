#!/bin/sh
# Run the compiled engine's tests under valgrind memcheck, on a debug build.
#
#   PYTHON=/path/to/python3.13 tests/memcheck/run_valgrind.sh [pytest arguments...]
#
# 1. copies the source tree (tracked and new files, no build products) to a
#    temporary directory, so the checkout's own build is never touched;
# 2. builds a wheel there with CHATCORE_DEBUG_BUILD=1 (Cython bounds checks,
#    -O0 -g -UNDEBUG; see setup.py) and unpacks its extension next to the
#    copied package;
# 3. runs pytest from the copy (so the copy is what gets imported) under
#    valgrind with PYTHONMALLOC=malloc, on the compiled engine only
#    (tests/memcheck/compiled_only.py), plus the fuzz corpus replay, with
#    pytest's per-test timeout off (valgrind runs Python ~30x slower than the
#    timeout assumes); exits 99 on any memcheck error or definite leak.
#
# Use Python >= 3.12.  CPython 3.11 leaves the digit of a zero int made by
# int.from_bytes()/int(str) uninitialised (every .pyc import does that), and
# valgrind then reports every later use of that 0 object, in any code; on
# 3.11 the script therefore turns uninitialised-value errors off
# (--undef-value-errors=no) and says so: invalid reads/writes, bad frees and
# leaks are still errors.
#
# Environment:
#   PYTHON                      interpreter (default: python3).  If it lacks pytest,
#                               hypothesis or pytest-timeout, a temporary venv gets
#                               them from the package index.
#   CHATCORE_MEMCHECK_EXAMPLES  cap on hypothesis examples per test (default 50;
#                               0 = each test's own number)
#   MEMCHECK_LOG_DIR            where valgrind's logs go, one per process
#                               (default: /tmp/chatcore-memcheck-logs)
#   MEMCHECK_NO_BUILD_ISOLATION=1  build with the installed setuptools and Cython
#                               instead of fetching the pinned ones
set -eu

here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
python=$("${PYTHON:-python3}" -c 'import sys; print(sys.executable)')
logs=${MEMCHECK_LOG_DIR:-${TMPDIR:-/tmp}/chatcore-memcheck-logs}
export CHATCORE_MEMCHECK_EXAMPLES=${CHATCORE_MEMCHECK_EXAMPLES:-50}

work=$(mktemp -d "${TMPDIR:-/tmp}/chatcore-memcheck.XXXXXX")
trap 'rm -rf "$work"' EXIT INT TERM
mkdir "$work/src" "$work/wheel"

# pytest-timeout too: the pytest configuration (pyproject.toml) names its options.
if ! "$python" -c 'import pytest, hypothesis, pytest_timeout' 2>/dev/null; then
    echo "memcheck: $python lacks pytest/hypothesis/pytest-timeout: installing them into a venv"
    "$python" -m venv "$work/venv"
    "$work/venv/bin/python" -m pip install -q pytest hypothesis pytest-timeout
    python="$work/venv/bin/python"
fi

echo "memcheck: copying $repo to $work/src"
if git -C "$repo" rev-parse --git-dir >/dev/null 2>&1; then
    (cd "$repo" && git ls-files -co --exclude-standard -z | tr '\0' '\n' \
        | grep -v -E '(\.so|\.pyd)$' | tar -cf - -T -) | tar -xf - -C "$work/src"
else
    (cd "$repo" && tar -cf - --exclude=./build --exclude='*.so' --exclude='*.pyd' .) \
        | tar -xf - -C "$work/src"
fi

echo "memcheck: building the debug extension (CHATCORE_DEBUG_BUILD=1)"
isolation=""
if [ "${MEMCHECK_NO_BUILD_ISOLATION:-0}" != "0" ]; then
    isolation="--no-build-isolation"
fi
CHATCORE_DEBUG_BUILD=1 "$python" -m pip wheel -q --no-deps $isolation \
    -w "$work/wheel" "$work/src"
"$python" - "$work" <<'EOF'
import glob, sys, zipfile
work = sys.argv[1]
(wheel,) = glob.glob(work + "/wheel/*.whl")
with zipfile.ZipFile(wheel) as archive:
    names = [n for n in archive.namelist() if n.endswith((".so", ".pyd"))]
    if not names:
        sys.exit("memcheck: the wheel has no compiled extension")
    for name in names:
        archive.extract(name, work + "/src")
        print("memcheck: unpacked", name)
EOF

undef=""
if "$python" -c 'import sys; sys.exit(sys.version_info >= (3, 12))'; then
    echo "memcheck: Python < 3.12: uninitialised-value errors off (see the top of this script)"
    undef="--undef-value-errors=no"
fi

rm -rf "$logs"
mkdir -p "$logs"
cd "$work/src"
echo "memcheck: valgrind logs in $logs"
start=$(date +%s)
status=0
PYTHONMALLOC=malloc PYTHONPATH="$here" PYTHONDONTWRITEBYTECODE=1 \
valgrind --tool=memcheck --error-exitcode=99 $undef \
    --leak-check=full --errors-for-leak-kinds=definite --show-leak-kinds=definite \
    --suppressions="$here/python.supp" --num-callers=40 --log-file="$logs/valgrind.%p.log" \
    "$python" -m pytest -p compiled_only -p no:cacheprovider -q --timeout=0 \
    tests/test_framing.py tests/test_messages.py tests/test_chat.py tests/test_stateful.py \
    tests/fuzz/test_fuzz_corpus.py \
    "$@" || status=$?
end=$(date +%s)
echo "memcheck: pytest under valgrind took $((end - start)) s, exit status $status"
grep -h "ERROR SUMMARY" "$logs"/valgrind.*.log
exit $status
