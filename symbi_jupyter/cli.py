"""The ``symbi-jupyter`` command.

Each subcommand is added by an ``_add_<name>(subparsers)`` function that registers its
parser and sets ``func``, a callable taking the parsed arguments and returning the exit
status. Exit status: 0 success, 1 the check failed, 2 usage error.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Callable

from . import __version__
from .audit import verify

EXIT_OK, EXIT_FAILED, EXIT_USAGE = 0, 1, 2


def _audit_verify(args: argparse.Namespace) -> int:
    report = verify(args.path)
    print(f"{args.path}: {report}")
    return EXIT_OK if report.ok else EXIT_FAILED


def _add_audit(subparsers: argparse._SubParsersAction) -> None:
    audit = subparsers.add_parser("audit", help="inspect the hash-chained audit log")
    audit.set_defaults(func=_needs_subcommand(audit))
    actions = audit.add_subparsers(title="actions", metavar="ACTION")
    check = actions.add_parser(
        "verify",
        help="check that no record was edited, deleted or reordered",
        description="Verify the hash chain of an audit log. Exit 0 if intact, 1 if not.",
    )
    check.add_argument("path", metavar="PATH", help="the audit log (JSON lines)")
    check.set_defaults(func=_audit_verify)


_SUBCOMMANDS: list[Callable[[argparse._SubParsersAction], None]] = [_add_audit]


def build_parser() -> argparse.ArgumentParser:
    """The argument parser, with every subcommand registered."""
    parser = argparse.ArgumentParser(
        prog="symbi-jupyter",
        description="Run notebook code under Symbiont's security-tier model.",
    )
    parser.add_argument("--version", action="version", version=f"%(prog)s {__version__}")
    parser.set_defaults(func=_needs_subcommand(parser))
    subparsers = parser.add_subparsers(title="commands", metavar="COMMAND")
    for add in _SUBCOMMANDS:
        add(subparsers)
    return parser


def _needs_subcommand(parser: argparse.ArgumentParser) -> Callable[[argparse.Namespace], int]:
    def run(args: argparse.Namespace) -> int:
        parser.print_usage(sys.stderr)
        print(f"{parser.prog}: error: a command is required", file=sys.stderr)
        return EXIT_USAGE

    return run


def main(argv: list[str] | None = None) -> int:
    """Run the command line ``argv`` (default ``sys.argv[1:]``); return the exit status."""
    parser = build_parser()
    try:
        args = parser.parse_args(argv)
    except SystemExit as exc:
        # argparse exits on --help/--version (0) and on usage errors (2); return instead,
        # so main() can be called from Python.
        if exc.code is None:
            return EXIT_OK
        return exc.code if isinstance(exc.code, int) else EXIT_USAGE
    return args.func(args)


if __name__ == "__main__":
    raise SystemExit(main())
