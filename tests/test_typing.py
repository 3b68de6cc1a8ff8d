"""chatcore's types as its users' type checkers see them.

* tests/typing/user_program.py, a small server and client written against
  the public API, runs for real on each engine, and mypy (``--strict``) and
  pyright (strict, as pyproject.toml sets it up) accept it;
* tests/typing/misuses.py holds mistakes both checkers must report: each is
  silenced by name, and a silencer that silences nothing is an error;
* ``pyright --verifytypes`` knows the type of every public name;
* the compiled engine's stub (chatcore/_framing_c.pyi) has the twin's
  signatures, the compiled engine has the twin's parameters, and the methods
  ``async_chat`` declares for type checkers have the parameters of the
  engine functions they are at run time.

mypy and pyright are optional: without one its tests skip, unless
CHATCORE_REQUIRE_TYPECHECKERS=1 (set where the checkers are installed) makes
a missing checker a failure.
"""

import ast
import importlib.util
import inspect
import json
import os
import pathlib
import shutil
import subprocess
import sys
from types import ModuleType
from typing import Any, Optional

import pytest
from helpers.engines import ENGINES, env_flag
from helpers.processes import run_python

import chatcore
from chatcore import chat

ROOT = pathlib.Path(__file__).resolve().parent.parent
TYPING_DIR = ROOT / "tests" / "typing"
CHECKED_FILES = sorted(str(path.relative_to(ROOT)) for path in TYPING_DIR.glob("*.py"))
PACKAGE_DIR = pathlib.Path(chatcore.__file__).resolve().parent

# Generous: a first pyright run starts node, a cold mypy run parses typeshed.
CHECKER_TIMEOUT = 600


def _require_checker(module: str, requirement: str) -> None:
    if importlib.util.find_spec(module) is not None:
        return
    reason = "%s is not installed (pip install '%s')" % (module, requirement)
    if env_flag("CHATCORE_REQUIRE_TYPECHECKERS"):
        pytest.fail(reason + ", and CHATCORE_REQUIRE_TYPECHECKERS=1 requires it")
    pytest.skip(reason)


def _pyright(*args: str, cwd: pathlib.Path, env: Optional[dict[str, str]] = None) -> dict[str, Any]:
    """Run pyright with JSON output (which also skips its look for a newer release online)."""
    run_env = dict(os.environ if env is None else env, PYRIGHT_PYTHON_IGNORE_WARNINGS="1")
    command = [sys.executable, "-m", "pyright", "--outputjson", "--pythonpath", sys.executable, *args]
    result = subprocess.run(command, cwd=cwd, env=run_env, capture_output=True, text=True, timeout=CHECKER_TIMEOUT)
    try:
        report: dict[str, Any] = json.loads(result.stdout)
    except ValueError:
        pytest.fail("pyright failed (exit status %d):\n%s%s" % (result.returncode, result.stdout, result.stderr))
    return report


def test_the_user_program_runs(engine: ModuleType) -> None:
    env = dict(os.environ)
    # The child imports the chatcore these tests import, on the engine under test.
    env["PYTHONPATH"] = os.pathsep.join(filter(None, [str(PACKAGE_DIR.parent), env.get("PYTHONPATH")]))
    env.pop("CHATCORE_NO_EXTENSIONS", None)
    if engine is ENGINES["py"]:
        env["CHATCORE_NO_EXTENSIONS"] = "1"
    program = TYPING_DIR / "user_program.py"
    result = run_python("import runpy; runpy.run_path(%r, run_name='__main__')" % str(program), env=env)
    assert result.returncode == 0, result.stdout
    implementation = "python" if engine is ENGINES["py"] else "cython"
    assert result.stdout.startswith("engine: %s\n" % implementation), result.stdout


def test_mypy_accepts_the_user_program_and_reports_every_misuse() -> None:
    _require_checker("mypy", "mypy")
    # Strict whatever the configuration says; --strict includes warn_unused_ignores.
    command = [sys.executable, "-m", "mypy", "--strict", "--config-file", "pyproject.toml"]
    command += ["--cache-dir", os.devnull, *CHECKED_FILES]
    result = subprocess.run(command, cwd=ROOT, capture_output=True, text=True, timeout=CHECKER_TIMEOUT)
    assert result.returncode == 0, result.stdout + result.stderr


def test_pyright_accepts_the_user_program_and_reports_every_misuse() -> None:
    _require_checker("pyright", "pyright[nodejs]")
    # The files named, so each is checked whatever pyproject.toml includes.
    report = _pyright(*CHECKED_FILES, cwd=ROOT)
    problems = [
        "%s:%d: %s" % (item["file"], item["range"]["start"]["line"] + 1, item["message"])
        for item in report["generalDiagnostics"]
        if item["severity"] != "information"
    ]
    assert not problems, "\n".join(problems)
    assert report["summary"]["filesAnalyzed"] == len(CHECKED_FILES)


def test_pyright_knows_the_type_of_every_public_name(tmp_path: pathlib.Path) -> None:
    _require_checker("pyright", "pyright[nodejs]")
    # --verifytypes reads the package as installed (site-packages), which an
    # editable install is not: a copy of its sources stands in for it.
    shutil.copytree(PACKAGE_DIR, tmp_path / "chatcore", ignore=shutil.ignore_patterns("__pycache__", "*.so", "*.pyd"))
    env = dict(os.environ, PYTHONPATH=str(tmp_path))
    report = _pyright("--verifytypes", "chatcore", "--ignoreexternal", cwd=tmp_path, env=env)
    completeness = report["typeCompleteness"]
    assert completeness["pyTypedPath"], "chatcore has no py.typed"
    problems = [
        "%s: %s" % (symbol["name"], diagnostic["message"])
        for symbol in completeness["symbols"]
        # The benchmark package measures, it is no API (mypy checks it too, less strictly).
        if not symbol["name"].startswith("chatcore.benchmark.")
        for diagnostic in symbol["diagnostics"]
        if diagnostic["severity"] == "error"
    ]
    assert not problems, "\n".join(problems)


# The stub and the engines.


def _annotation(node: Optional[ast.expr]) -> object:
    """An annotation as a comparable value: quotes dropped, Optional and Union spelled as unions."""
    if node is None:
        return None
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return _annotation(ast.parse(node.value, mode="eval").body)
    if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
        return _union([node.left, node.right])
    if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
        members = node.slice.elts if isinstance(node.slice, ast.Tuple) else [node.slice]
        if node.value.id == "Optional":
            return _union([*members, ast.Constant(None)])
        if node.value.id == "Union":
            return _union(members)
    return ast.unparse(node)


def _union(members: list[ast.expr]) -> frozenset[object]:
    flat: set[object] = set()
    for member in members:
        value = _annotation(member)
        flat.update(value if isinstance(value, frozenset) else [value])
    return frozenset(flat)


def _default(node: Optional[ast.expr]) -> Optional[str]:
    return None if node is None else ast.unparse(node)


def _signature(function: ast.FunctionDef) -> tuple[object, ...]:
    """Parameters (kind, name, annotation, default) and return annotation of a def."""
    arguments = function.args
    positional = arguments.posonlyargs + arguments.args
    kinds = ["positional-only"] * len(arguments.posonlyargs) + ["positional"] * len(arguments.args)
    defaults: list[Optional[ast.expr]] = [None] * (len(positional) - len(arguments.defaults))
    defaults += arguments.defaults
    parameters = [
        (kind, arg.arg, _annotation(arg.annotation), _default(default))
        for kind, arg, default in zip(kinds, positional, defaults)
    ]
    if arguments.vararg is not None:
        parameters.append(("*", arguments.vararg.arg, _annotation(arguments.vararg.annotation), None))
    parameters += [
        ("keyword-only", arg.arg, _annotation(arg.annotation), _default(default))
        for arg, default in zip(arguments.kwonlyargs, arguments.kw_defaults)
    ]
    if arguments.kwarg is not None:
        parameters.append(("**", arguments.kwarg.arg, _annotation(arguments.kwarg.annotation), None))
    return (*parameters, _annotation(function.returns))


def _definitions(body: list[ast.stmt]) -> dict[str, tuple[object, ...]]:
    """Each def in *body* by name (a property setter as ``name.setter``)."""
    found = {}
    for node in body:
        if isinstance(node, ast.FunctionDef):
            setter = any(isinstance(d, ast.Attribute) and d.attr == "setter" for d in node.decorator_list)
            found[node.name + (".setter" if setter else "")] = _signature(node)
    return found


def _module_tree(path: str) -> ast.Module:
    with open(path) as handle:
        return ast.parse(handle.read(), path)


def _classes(tree: ast.Module) -> dict[str, ast.ClassDef]:
    return {node.name: node for node in tree.body if isinstance(node, ast.ClassDef)}


def test_the_stub_has_the_twins_signatures() -> None:
    twin = ENGINES["py"]
    stub = _module_tree(str(PACKAGE_DIR / "_framing_c.pyi"))
    stub_functions, stub_classes = _definitions(stub.body), _classes(stub)
    for name in twin.__all__:
        obj = getattr(twin, name)
        source = _module_tree(inspect.getsourcefile(obj) or "?")
        if inspect.isclass(obj):
            assert name in stub_classes, "the stub lacks class %s" % name
            stub_members = _definitions(stub_classes[name].body)
            twin_members = _definitions(_classes(source)[name].body)
            for member, signature in stub_members.items():
                assert twin_members.get(member) == signature, "%s.%s: the stub says %r" % (name, member, signature)
            public = {member for member in twin_members if not member.startswith("_")}
            assert public <= set(stub_members), "%s: missing from the stub: %s" % (name, public - set(stub_members))
        else:
            assert name in stub_functions, "the stub lacks def %s" % name
            assert _definitions(source.body)[name] == stub_functions[name], name


def _parameters(function: Any) -> list[tuple[str, Any]]:
    return [(parameter.name, parameter.default) for parameter in inspect.signature(function).parameters.values()]


def test_the_compiled_engine_has_the_twins_parameters() -> None:
    compiled, twin = ENGINES["c"], ENGINES["py"]
    if compiled is None:
        pytest.skip("compiled engine not built (CHATCORE_NO_EXTENSIONS=1 build)")
    for name in twin.__all__:
        ours, theirs = getattr(compiled, name), getattr(twin, name)
        if not inspect.isclass(ours):
            assert _parameters(ours) == _parameters(theirs), name
            continue
        for member, value in vars(ours).items():
            # Cython functions only: slot wrappers (__get__ ...) and
            # getset descriptors have no signature of their own to compare.
            if type(value).__name__ == "cython_function_or_method" and not member.startswith("_"):
                assert _parameters(value) == _parameters(getattr(theirs, member)), "%s.%s" % (name, member)


def test_async_chats_typed_methods_have_the_engine_functions_parameters() -> None:
    tree = _module_tree(inspect.getsourcefile(chat) or "?")
    declared: dict[str, tuple[object, ...]] = {}
    for node in _classes(tree)["async_chat"].body:
        if isinstance(node, ast.If) and isinstance(node.test, ast.Name) and node.test.id == "TYPE_CHECKING":
            declared.update(_definitions(node.body))
    assert set(declared) == set(chat._ENGINE_METHODS)
    for name in declared:
        # Run-time parameters: the engine function's, its first being the channel.
        runtime = _parameters(vars(chatcore.async_chat)[name])[1:]
        typed = [(parameter[1], parameter[3]) for parameter in declared[name][1:-1]]
        assert typed == [(n, None if d is inspect.Parameter.empty else repr(d)) for n, d in runtime], name
