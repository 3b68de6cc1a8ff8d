"""Command line entry point: ``python -m chatcore COMMAND``.

Commands are argparse subcommands, so new ones sit next to the existing:

* ``bench``: benchmark chatcore against stdlib asynchat and asyncio
  (see ``chatcore.benchmark.cli``);
* ``demo``: run an echo server and clients over 127.0.0.1 in one event loop
  and check every echoed line (see ``chatcore.demo``).

Without a command the help is printed and the exit status is 2.
"""

import argparse
import sys
from typing import Callable, Optional

from . import demo
from .benchmark import cli as bench_cli


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not an integer: %r" % text) from None
    if value < 1:
        raise argparse.ArgumentTypeError("must be at least 1, got %d" % value)
    return value


def _positive_seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError("not a number: %r" % text) from None
    if not value > 0:
        raise argparse.ArgumentTypeError("must be more than 0, got %r" % text)
    return value


def _run_demo_command(args: argparse.Namespace) -> int:
    try:
        result = demo.run_demo(args.lines, args.connections, timeout=args.timeout)
    except demo.DemoError as error:
        print("chatcore demo failed: %s" % error, file=sys.stderr)
        return 1
    print(result.summary())
    return 0


def build_parser() -> argparse.ArgumentParser:
    """The parser for ``python -m chatcore``, one subparser per command."""
    parser = argparse.ArgumentParser(
        prog="python -m chatcore",
        description="chatcore command line tools (everything runs on 127.0.0.1 only).",
    )
    commands = parser.add_subparsers(dest="command", metavar="COMMAND")

    demo_parser = commands.add_parser(
        "demo",
        help="echo lines through a loopback echo server and check them",
        description=(
            "Start an echo server and CONNECTIONS clients on 127.0.0.1 in one event "
            "loop; each client sends LINES lines and checks that every echo is exact "
            "and in order.  Exits 0 on success, 1 on a mismatch or timeout."
        ),
    )
    demo_parser.add_argument("--lines", type=_positive_int, default=1000, help="lines per connection (default 1000)")
    demo_parser.add_argument("--connections", type=_positive_int, default=4, help="client connections (default 4)")
    demo_parser.add_argument(
        "--timeout",
        type=_positive_seconds,
        default=60.0,
        help="give up after this many seconds (default 60)",
    )
    demo_parser.set_defaults(run=_run_demo_command)
    bench_cli.add_parser(commands)
    return parser


def main(argv: Optional[list[str]] = None) -> int:
    """Run the command line *argv* (default ``sys.argv[1:]``); returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.command is None:
        parser.print_help(sys.stderr)
        return 2
    run: Callable[[argparse.Namespace], int] = args.run
    return run(args)


if __name__ == "__main__":
    sys.exit(main())
