#!/bin/sh
# Build chatcore's extension with clang's libFuzzer coverage (and optionally
# AddressSanitizer) for tests/fuzz/fuzz_framer.py, outside the checkout.
#
#   tests/fuzz/build_native.sh OUTDIR [--asan]
#
# Leaves in OUTDIR:
#   src/                  a copy of the tree whose chatcore/ holds the
#                         instrumented extension (put it first on PYTHONPATH)
#   libfuzzer.so          clang's libFuzzer as a shared library, to LD_PRELOAD:
#                         the instrumented extension needs its __sanitizer_cov_*
#                         symbols at load time, and atheris then uses it
#                         ("Using preloaded libfuzzer") instead of its own copy
#   env.sh                the variables to source before running the fuzzer
#
# Needs clang with compiler-rt (Debian: apt-get install clang).  PYTHON
# selects the interpreter (default python3); the wheel build fetches the
# pinned setuptools and Cython unless FUZZ_NO_BUILD_ISOLATION=1.
set -eu

[ $# -ge 1 ] || { echo "usage: $0 OUTDIR [--asan]" >&2; exit 2; }
out=$(mkdir -p "$1" && cd "$1" && pwd)
asan=0
[ "${2:-}" = "--asan" ] && asan=1
here=$(cd "$(dirname "$0")" && pwd)
repo=$(cd "$here/../.." && pwd)
python=$("${PYTHON:-python3}" -c 'import sys; print(sys.executable)')
runtime="$(clang -print-resource-dir)/lib/linux"
arch=$(uname -m)

rm -rf "$out/src" "$out/wheel"
mkdir -p "$out/src" "$out/wheel"
(cd "$repo" && git ls-files -co --exclude-standard -z | tr '\0' '\n' \
    | grep -v -E '(\.so|\.pyd)$' | tar -cf - -T -) | tar -xf - -C "$out/src"

clang++ -shared -fPIC -o "$out/libfuzzer.so" \
    -Wl,--whole-archive "$runtime/libclang_rt.fuzzer_no_main-$arch.a" -Wl,--no-whole-archive \
    -lpthread

sanitize="fuzzer-no-link"
ldflags=""
if [ "$asan" = 1 ]; then
    sanitize="address,fuzzer-no-link"
    ldflags="-fsanitize=address -shared-libasan"
fi
isolation=""
[ "${FUZZ_NO_BUILD_ISOLATION:-0}" != "0" ] && isolation="--no-build-isolation"
CC=clang LDSHARED="clang -shared $ldflags" \
CFLAGS="-fsanitize=$sanitize -g -O1 -fno-omit-frame-pointer" \
    "$python" -m pip wheel -q --no-deps $isolation -w "$out/wheel" "$out/src"
"$python" - "$out" <<'EOF'
import glob, sys, zipfile
out = sys.argv[1]
(wheel,) = glob.glob(out + "/wheel/*.whl")
with zipfile.ZipFile(wheel) as archive:
    for name in archive.namelist():
        if name.endswith(".so"):
            archive.extract(name, out + "/src")
            print("build_native: instrumented", out + "/src/" + name)
EOF

{
    echo "# source this, then: $python $repo/tests/fuzz/fuzz_framer.py [libFuzzer options] CORPUS..."
    echo "export PYTHONPATH=\"$out/src\""
    if [ "$asan" = 1 ]; then
        # libFuzzer first, so its coverage callbacks win over the ASan
        # runtime's weak stubs; ASan then cannot be first, hence the option.
        # Short allocation stacks and a small quarantine: Python allocates on
        # every step, and the defaults make it ~20x slower and 2 GB large.
        echo "export LD_PRELOAD=\"$out/libfuzzer.so:$runtime/libclang_rt.asan-$arch.so\""
        echo "export ASAN_OPTIONS=detect_leaks=0:verify_asan_link_order=0:malloc_context_size=2:quarantine_size_mb=32"
        echo "export PYTHONMALLOC=malloc"
    else
        echo "export LD_PRELOAD=\"$out/libfuzzer.so\""
    fi
} > "$out/env.sh"
echo "build_native: now '. $out/env.sh' and run tests/fuzz/fuzz_framer.py"
