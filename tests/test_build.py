"""Which engine this build runs, and that both engines expose the same surface."""

import inspect

import pytest

import chatcore
from conftest import ENGINES, extensions_disabled


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
