"""The one error type the exporter raises for problems a user can fix (rendered as one line)."""

from __future__ import annotations


class ExportError(Exception):
    """A user-facing failure: the message says what went wrong and how to fix it."""

    exit_code: int = 1


class UsageError(ExportError):
    """Bad command-line arguments (exit code 2, like argparse)."""

    exit_code = 2
