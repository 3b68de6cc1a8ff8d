"""Build script: compiles the Cython framing engine (src/_framing_c.pyx).

All metadata lives in pyproject.toml; this file only declares the extension.
Set CHATCORE_NO_EXTENSIONS=1 to skip compilation: the package then runs on its
pure-Python twin, the same switch chatcore reads at import time.
"""

import os

from setuptools import Extension, setup


def _env_flag(name: str) -> bool:
    return os.environ.get(name, "") not in ("", "0")


def _extensions():
    if _env_flag("CHATCORE_NO_EXTENSIONS"):
        return []
    from Cython.Build import cythonize

    return cythonize(
        [Extension("chatcore._framing_c", ["src/_framing_c.pyx"])],
        compiler_directives={"language_level": "3"},
    )


setup(ext_modules=_extensions())
