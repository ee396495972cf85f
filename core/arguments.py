"""Argument types for the command lines: each refuses a bad value while the arguments are parsed, before any work,
with a message that names the value and the valid form (argparse turns it into a usage error, exit 2)."""
from __future__ import annotations

import argparse
from pathlib import Path


def comma_integers(what: str, example: str = "0,1,2"):
    """An argparse type for a comma-separated list of distinct integers (seeds, run ids: one given twice would
    plan a run twice) that names the bad value and the valid form."""
    def parse(text: str) -> list[int]:
        try:
            values = [int(x) for x in text.split(",")]
        except ValueError:
            raise argparse.ArgumentTypeError(f"invalid {what} {text!r}: valid values are comma-separated "
                                             f"integers, e.g. {example}") from None
        if twice := sorted({v for v in values if values.count(v) > 1}):
            raise argparse.ArgumentTypeError(f"invalid {what} {text!r}: {twice[0]} is given twice; valid values are "
                                             f"distinct comma-separated integers, e.g. {example}")
        return values
    return parse


def integer_at_least(what: str, least: int = 1):
    """An argparse type for an integer >= ``least`` (>= 0) that names the bad value and the valid form."""
    def parse(text: str) -> int:
        if not text.isdigit() or int(text) < least:
            raise argparse.ArgumentTypeError(f"invalid {what} {text!r}: valid values are integers >= {least}")
        return int(text)
    return parse


def positive_integers(what: str, example: str = "1,2"):
    """An argparse type for a comma-separated list of integers >= 1 that names the bad value and the valid form."""
    def parse(text: str) -> list[int]:
        if not all(part.isdigit() and int(part) >= 1 for part in text.split(",")):
            raise argparse.ArgumentTypeError(f"invalid {what} {text!r}: valid values are comma-separated "
                                             f"integers >= 1, e.g. {example}")
        return [int(part) for part in text.split(",")]
    return parse


def output_file(what: str):
    """An argparse type for a file to write a result to: its folder is made now, so that a folder at that path, or a
    file where its folder should be, is refused before the work whose result it would hold (not after it)."""
    def parse(text: str) -> Path:
        path = Path(text)
        existing = next(p for p in path.parents if p.exists())
        why = "it is a folder" if path.is_dir() else None if existing.is_dir() else f"{existing} is a file"
        if why is None:
            try:
                path.parent.mkdir(parents=True, exist_ok=True)
            except OSError as exc:  # e.g. no permission to make it
                why = exc.strerror
        if why:
            raise argparse.ArgumentTypeError(f"invalid {what} {text!r}: {why}; valid values are file paths whose "
                                             "folder exists or can be made")
        return path
    return parse
