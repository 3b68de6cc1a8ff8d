"""``chatcore.compat.install()``: registration, refusal to split a program, opt-in."""

from helpers.processes import run_python


def test_install_after_another_asyncore_was_imported_raises_naming_the_fix():
    # Whatever asyncore the interpreter has (stdlib, PyPI's copy, or none:
    # then a stand-in module), a program already holding it would register
    # channels in a map chatcore's loop never serves.
    out = run_python(
        """
        import sys, types, warnings
        warnings.simplefilter("ignore", DeprecationWarning)
        try:
            import asyncore
        except ImportError:
            sys.modules["asyncore"] = types.ModuleType("asyncore")
        import chatcore.compat
        try:
            chatcore.compat.install()
        except RuntimeError as err:
            print("refused:", err)
        print(sys.modules["asyncore"].__name__)
        """
    )
    assert out.returncode == 0, out.stdout
    assert "refused: chatcore.compat.install() was called after another asyncore" in out.stdout
    assert "Call install() before anything imports asyncore" in out.stdout
    # Nothing was half-installed.
    assert out.stdout.splitlines()[-1] == "asyncore"


def test_install_twice_is_harmless_and_coalescing_is_opt_in():
    out = run_python(
        """
        import chatcore.compat
        chatcore.compat.install()
        import asynchat
        print(asynchat.__name__, asynchat.async_chat.ac_coalesce_sends)
        chatcore.compat.install(coalesce_sends=True)
        print(asynchat.async_chat.ac_coalesce_sends)
        chatcore.compat.install()
        print(asynchat.async_chat.ac_coalesce_sends)
        import chatcore
        print(chatcore.async_chat.ac_coalesce_sends)
        """
    )
    assert out.returncode == 0, out.stdout
    assert out.stdout.split() == ["chatcore.compat.asynchat", "False", "True", "True", "True"]
