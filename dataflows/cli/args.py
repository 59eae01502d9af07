"""Argument types and the parser class shared by the `cuts` subcommands."""
from __future__ import annotations

import argparse
import sys

EXIT_USAGE = 2


class UsageError(Exception):
    """The command asks for something that is not there (a run id, say)."""


class Parser(argparse.ArgumentParser):
    def __init__(self, *args, **kwargs):
        kwargs.setdefault("formatter_class", DefaultsHelp)
        super().__init__(*args, **kwargs)

    def error(self, message: str):  # one line, exit 2 (argparse prints usage too)
        print(f"cuts: error: {message}", file=sys.stderr)
        sys.exit(EXIT_USAGE)


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a whole number: {text!r}") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be at least 1: {value}")
    return value


def seconds(text: str) -> float:
    """A duration in seconds: a finite number, 0 or more."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number of seconds: {text!r}") from None
    if not 0 <= value < float("inf"):
        raise argparse.ArgumentTypeError(f"must be 0 or more seconds: {text}")
    return value


def positive_seconds(text: str) -> float:
    value = seconds(text)
    if value <= 0:
        raise argparse.ArgumentTypeError(f"must be more than 0 seconds: {text}")
    return value


class DefaultsHelp(argparse.HelpFormatter):
    """Every option's help ends with its default: "(default: X)" is added
    where the help does not say it already; an option without a default
    says what happens instead (tests/test_cli_help.py checks both)."""

    def _get_help_string(self, action):
        text = action.help or ""
        if "default" in text or not action.option_strings:
            return text
        if action.default is False and isinstance(action, argparse._StoreTrueAction):
            return f"{text} (default: off)"
        if action.default is None or action.default is argparse.SUPPRESS or action.default is False:
            return text
        return f"{text} (default: %(default)s)"


def out_dir_arg(text: str) -> str:
    """An output directory, checked before any work: created when missing,
    refused (one line, exit 2) when it is a file or cannot be written."""
    import os
    import tempfile

    path = os.path.abspath(os.path.expanduser(text))
    if text.endswith(".csv") and not os.path.isdir(path):
        folder = os.path.dirname(path)  # `report --against ... --csv FILE.csv`: the file's directory
        if os.path.isdir(path + os.sep) or (os.path.exists(path) and not os.path.isfile(path)):
            raise argparse.ArgumentTypeError(f"{text} is not a file")
    else:
        folder = path
        if os.path.exists(path) and not os.path.isdir(path):
            raise argparse.ArgumentTypeError(f"{text} is a file, not a directory")
    try:
        os.makedirs(folder, exist_ok=True)
        fd, probe = tempfile.mkstemp(prefix=".cuts-write-check-", dir=folder)
        os.close(fd)
        os.unlink(probe)
    except OSError as exc:
        raise argparse.ArgumentTypeError(f"cannot write into {text}: {exc.strerror or exc}") from None
    return text


def bar_file_out_arg(text: str) -> str:
    """A bar file to write: .parquet or .csv, in a directory that can be written."""
    import os

    if os.path.isdir(text):
        raise argparse.ArgumentTypeError(f"{text} is a directory: name a .parquet or .csv file")
    ext = os.path.splitext(text)[1].lower()
    if ext not in (".parquet", ".csv"):
        raise argparse.ArgumentTypeError(f"{text}: a bar file ends in .parquet or .csv, not {ext or '(nothing)'}")
    out_dir_arg(os.path.dirname(os.path.abspath(text)))  # created when missing, must be writable
    return text
