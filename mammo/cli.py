"""Small pieces every command line shares."""
from __future__ import annotations

from pathlib import Path


def split_args(items) -> tuple[list[str], list[str]]:
    """Trailing words of a command: 'key=value' config overrides (unless the word is an existing path, which
    may contain '=') and everything else (inputs)."""
    overrides, inputs = [], []
    for item in items:
        (overrides if "=" in item and not Path(item).exists() else inputs).append(item)
    return overrides, inputs


def command_parser(prog: str, description: str, epilog: str):
    """(parser, subparsers) of a `python -m <stage> <command>` line; add commands with `add_command`."""
    import argparse

    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser, parser.add_subparsers(dest="command", required=True, metavar="command")


def run_command(parser, argv, call, input_commands=()) -> int:
    """Parse, split the trailing words into overrides and inputs, and run `call(args, overrides, inputs)`.
    Inputs are refused for commands not in `input_commands`; a MammoError is one 'error:' line and exit 2."""
    import sys

    from mammo.errors import MammoError

    args = parser.parse_args(argv)
    overrides, inputs = split_args(args.rest)
    if inputs and args.command not in input_commands:
        print(f"error: unexpected argument(s) {inputs} (overrides are key=value)", file=sys.stderr)
        return 2
    try:
        return call(args, overrides, inputs)
    except MammoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def add_command(subparsers, name: str, func, help_text: str, epilog: str, rest_help: str = "key=value config "
                "overrides", rest_metavar: str = "key=value"):
    """One subcommand with what every command takes: --config, and trailing words (inputs and/or key=value
    overrides). The caller adds the command's own options to the returned parser."""
    import argparse

    from mammo.config import DEFAULT_CONFIG

    p = subparsers.add_parser(name, help=help_text, description=help_text, epilog=epilog,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML config (default: %(default)s)")
    p.add_argument("rest", nargs="*", metavar=rest_metavar, help=rest_help)
    p.set_defaults(func=func)
    return p
