"""Build script: compiles the Cython framing engine (src/_framing_c.pyx and the .pxi it includes).

All metadata lives in pyproject.toml; this file only declares the extension.
Set CHATCORE_NO_EXTENSIONS=1 to skip compilation: the package then runs on its
pure-Python twin, the same switch chatcore reads at import time.
CHATCORE_DEBUG_BUILD=1 compiles it with Cython's bounds checks on and -O0 -g
(for valgrind and sanitizers; see tests/memcheck/).
"""

import os

from setuptools import Extension, setup


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def _debug_source(path: str) -> str:
    """A copy of *path* under build/debug-src/ with bounds checking on.

    CHATCORE_DEBUG_BUILD=1 (for valgrind and sanitizers, see tests/memcheck/).
    A file's own ``# cython:`` header comments override cythonize()'s
    compiler_directives, so the copy rewrites them instead.
    """
    import re

    with open(path, encoding="utf-8") as source:
        lines = source.read().splitlines(keepends=True)
    for number, line in enumerate(lines):
        if not line.startswith("# cython:"):
            break
        lines[number] = re.sub(r"\b(boundscheck|wraparound|initializedcheck)\s*=\s*False\b", r"\1=True", line)
    os.makedirs(os.path.join("build", "debug-src"), exist_ok=True)
    copy = os.path.join("build", "debug-src", os.path.basename(path))
    with open(copy, "w", encoding="utf-8") as target:
        target.writelines(lines)
    return copy


def _extensions():
    if _env_flag("CHATCORE_NO_EXTENSIONS"):
        return []
    from Cython.Build import cythonize

    source = "src/_framing_c.pyx"
    directives = {"language_level": "3"}
    compile_args = []
    if _env_flag("CHATCORE_DEBUG_BUILD"):
        source = _debug_source(source)
        directives.update(boundscheck=True, wraparound=True, initializedcheck=True)
        if os.name != "nt":
            compile_args = ["-O0", "-g", "-UNDEBUG"]
    return cythonize(
        [Extension("chatcore._framing_c", [source], extra_compile_args=compile_args)],
        compiler_directives=directives,
        # src/_framing_c.pyx includes src/*.pxi, also from the debug copy.
        include_path=["src"],
    )


setup(ext_modules=_extensions())
