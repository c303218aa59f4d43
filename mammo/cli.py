"""The one command-line layer of `python -m detector | classifier | pipeline | tuning` (and their console scripts).

A command line is `<stage> <command> [options] [words]`, where options and words may be interleaved in any order:
a word shaped like a config key, `section.key=value`, is an override; every other word is an input (a file, a
folder, a CSV list) for the commands that take inputs. Bad usage and bad configs print one `error:` line and exit
with code 2, before anything is written.
"""
from __future__ import annotations

import argparse
import math
import re
import sys
from pathlib import Path

# 'detector.imgsz=320', also a bare 'imgsz=320', which the config then refuses with "did you mean
# 'detector.imgsz'?" rather than looking for a file of that name. A word with a path separator is an input.
_OVERRIDE = re.compile(r"[A-Za-z_][\w-]*(\.[\w-]+)*=")


def is_override(word: str) -> bool:
    return bool(_OVERRIDE.match(word)) and not Path(word).exists()


def split_args(items) -> tuple[list[str], list[str]]:
    """Words of a command line -> (key=value config overrides, inputs), each in the order given."""
    overrides, inputs = [], []
    for item in items:
        (overrides if is_override(item) else inputs).append(item)
    return overrides, inputs


def in_range(low, high, convert=int):
    """argparse type of a numeric option that is not a config key (--repeats, --folder-sizes, --threshold):
    bounded like the config's settings, so no command line can ask for a billion of anything."""
    def number(text):
        value = convert(text)  # ValueError: argparse says 'invalid value'
        if not (math.isfinite(value) and low <= value <= high):
            raise argparse.ArgumentTypeError(f"{text} is out of range; allowed {low} to {high}")
        return value

    number.__name__ = convert.__name__
    return number


class ListOption(argparse.Action):
    """An option taking several values (`--crops a.png b.png`, `--folder-sizes 10 100`) that leaves override
    words behind it to the overrides: `--folder-sizes 10 100 run.name=x` is two sizes and one override."""

    def __init__(self, *args, convert=str, **kwargs):
        super().__init__(*args, **kwargs)
        self.convert = convert

    def __call__(self, parser, namespace, values, option_string=None):
        items = []
        for value in values:
            if is_override(value):
                namespace._later_words = [*getattr(namespace, "_later_words", []), value]
                continue
            try:
                items.append(self.convert(value))
            except (ValueError, argparse.ArgumentTypeError) as exc:
                parser.error(f"argument {option_string}: invalid value {value!r}"
                             + (f" ({exc})" if isinstance(exc, argparse.ArgumentTypeError) else ""))
        if not items and self.nargs == "+":
            parser.error(f"argument {option_string}: expected at least one value")
        setattr(namespace, self.dest, items)


def parse(parser: argparse.ArgumentParser, argv=None) -> tuple[argparse.Namespace, list[str], list[str]]:
    """(args, overrides, inputs). argparse alone stops taking positional words after the first option
    ('unrecognized arguments'); here every non-option word anywhere on the line is kept, in order."""
    args, extra = parser.parse_known_args(argv)
    unknown = [w for w in extra if w.startswith("-") and w != "-"]
    if unknown:
        parser.error(f"unrecognized arguments: {' '.join(unknown)}")
    words = [*getattr(args, "rest", []), *getattr(args, "_later_words", []), *extra]
    return (args, *split_args(words))


def command_parser(prog: str, description: str, epilog: str):
    """(parser, subparsers) of a `python -m <stage> <command>` line; add commands with `add_command`."""
    script = Path(sys.argv[0]).name
    prog = script if script.startswith("mammo-") else prog  # the console entry points of pyproject.toml
    parser = argparse.ArgumentParser(prog=prog, description=description, epilog=epilog,
                                     formatter_class=argparse.RawDescriptionHelpFormatter)
    return parser, parser.add_subparsers(dest="command", required=True, metavar="command")


def run_command(parser, argv, call, input_commands=()) -> int:
    """Parse, split the words into overrides and inputs, and run `call(args, overrides, inputs)`.
    Inputs are refused for commands not in `input_commands`; a MammoError is one 'error:' line and exit 2."""
    from mammo.errors import MammoError

    args, overrides, inputs = parse(parser, argv)
    if inputs and args.command not in input_commands:
        parser.error(f"unexpected argument(s) {' '.join(inputs)} ({args.command} takes no inputs; config "
                     f"overrides are section.key=value)")
    try:
        return call(args, overrides, inputs)
    except MammoError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2


def add_command(subparsers, name: str, func, help_text: str, epilog: str, rest_help: str = "key=value config "
                "overrides", rest_metavar: str = "key=value"):
    """One subcommand with what every command takes: --config, and words (inputs and/or key=value overrides)
    anywhere on the line. The caller adds the command's own options to the returned parser."""
    from mammo.config import DEFAULT_CONFIG

    p = subparsers.add_parser(name, help=help_text, description=help_text, epilog=epilog,
                              formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default=str(DEFAULT_CONFIG), help="YAML config (default: %(default)s)")
    p.add_argument("rest", nargs="*", metavar=rest_metavar, help=rest_help)
    p.set_defaults(func=func)
    return p
