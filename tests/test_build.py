"""Which engine this build runs, and that both engines expose the same surface.

Two switches make a test run stricter, for runs against a built wheel (set by
cibuildwheel's test step and by .ci/run's packaging check):

* CHATCORE_REQUIRE_EXTENSION=1: the compiled engine must be the one in use;
* CHATCORE_REQUIRE_INSTALLED=1: chatcore must come from site-packages, not
  from a source tree that happens to be importable.
"""

import importlib.machinery
import inspect
import os
import sysconfig

import pytest
from helpers.engines import ENGINES, env_flag, extensions_disabled

import chatcore


def test_normal_build_uses_the_cython_engine():
    if extensions_disabled():
        assert chatcore.implementation == "python"
        pytest.skip("CHATCORE_NO_EXTENSIONS=1 selects the pure-Python engine")
    assert ENGINES["c"] is not None, "the compiled engine chatcore._framing_c was not built"
    assert chatcore.implementation == "cython"
    assert chatcore.async_chat._engine is ENGINES["c"]


def test_engines_expose_the_same_names():
    if ENGINES["c"] is None:
        pytest.skip("compiled engine not built")
    for name in ENGINES["py"].__all__:
        assert hasattr(ENGINES["c"], name), name
    assert sorted(ENGINES["c"].__all__) == sorted(ENGINES["py"].__all__)


def test_the_stub_file_matches_the_twin():
    stub = inspect.getfile(chatcore).replace("__init__.py", "_framing_c.pyi")
    with open(stub) as handle:
        text = handle.read()
    for name in ENGINES["py"].__all__:
        assert ("def %s(" % name in text) or ("class %s" % name in text), name


@pytest.mark.skipif(not env_flag("CHATCORE_REQUIRE_EXTENSION"), reason="CHATCORE_REQUIRE_EXTENSION=1 not set")
def test_required_extension_is_compiled_and_in_use():
    assert chatcore.implementation == "cython"
    assert ENGINES["c"] is not None and chatcore.async_chat._engine is ENGINES["c"]
    # A binary extension module, not some Python file of the same name.
    assert ENGINES["c"].__file__.endswith(tuple(importlib.machinery.EXTENSION_SUFFIXES))


@pytest.mark.skipif(not env_flag("CHATCORE_REQUIRE_INSTALLED"), reason="CHATCORE_REQUIRE_INSTALLED=1 not set")
def test_required_installation_is_what_the_tests_import():
    package = os.path.dirname(os.path.realpath(chatcore.__file__))
    site_dirs = {os.path.realpath(sysconfig.get_paths()[key]) for key in ("purelib", "platlib")}
    assert os.path.dirname(package) in site_dirs, package
