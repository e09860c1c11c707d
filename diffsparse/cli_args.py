"""Argument handling shared by the command-line modules (`cli.py`, `eval_cli.py`): one-line errors.

Bad input ends as one line `error: ...` on stderr and exit status 2 (argparse's convention): argument
types raise `ArgumentTypeError` saying what is allowed, checks raise `UsageError`, and `user_errors`
turns the library's own refusals of user input (ValueError, TypeError, FileNotFoundError) into
`UsageError` around setup steps only.
"""

from __future__ import annotations

import argparse
import contextlib
import math
import os
from typing import Callable, Iterator, Optional, Sequence


class UsageError(Exception):
    """Bad user input: `main` prints `error: <message>` (one line) on stderr and exits with status 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse whose errors are one line, `error: <message> (see `<prog> --help`)`, exit status 2."""

    def error(self, message: str):  # type: ignore[override]
        self.exit(2, f"error: {message} (see `{self.prog} --help`)\n")


class HelpFormatter(argparse.ArgumentDefaultsHelpFormatter):
    """`(default: X)` after an option's help, unless the help says its default itself (model-dependent ones)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        if "default" in text or action.default is None:
            return text
        return super()._get_help_string(action)


def first_line(err: BaseException) -> str:
    """The first non-empty line of an exception's message (library messages are one line; tools' are not)."""
    return next((line.strip() for line in str(err).splitlines() if line.strip()), type(err).__name__)


@contextlib.contextmanager
def user_errors(*extra: type) -> Iterator[None]:
    """Setup steps whose ValueError / TypeError / FileNotFoundError (+ `extra`) mean bad user input."""
    try:
        yield
    except (ValueError, TypeError, FileNotFoundError, *extra) as err:
        raise UsageError(first_line(err)) from None


# ---- argument types: each returns the value or raises ArgumentTypeError saying what is allowed ----

def int_in(low: int, high: Optional[int] = None, high_text: Optional[str] = None) -> Callable[[str], int]:
    allowed = f"an int >= {low}" if high is None else f"an int in [{low}, {high_text or high}]"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"must be {allowed}, got {text!r}")
        return value

    return parse


positive_int = int_in(1)
non_negative_int = int_in(0)


def number_at_least(low: float) -> Callable[[str], float]:
    def parse(text: str) -> float:
        try:
            value = float(text)
        except ValueError:
            value = math.nan
        if not (math.isfinite(value) and value >= low):
            raise argparse.ArgumentTypeError(f"must be a number >= {low:g}, got {text!r}")
        return value

    return parse


def check_out_file(path: str, option_name: str, extensions: Sequence[str]) -> None:
    """An output file: one of `extensions`, in a folder that exists, not a folder itself."""
    if not path.lower().endswith(tuple(extensions)):
        raise UsageError(f"{option_name} {path!r} must end in {', '.join(extensions)}")
    if os.path.isdir(path):
        raise UsageError(f"{option_name} {path!r} is a folder; name a file in it")
    folder = os.path.dirname(os.path.abspath(path))
    if not os.path.isdir(folder):
        raise UsageError(f"{option_name} {path!r}: folder {folder!r} does not exist (create it first)")
