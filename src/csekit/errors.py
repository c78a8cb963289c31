"""User-facing errors.

Anything a user can cause (bad input file, bad option, missing model) raises a subclass of
:class:`CsekitError` with a one-line message. The CLI prints ``csekit: error: <message>`` and exits
with code 2; it never shows a traceback for these.
"""

from __future__ import annotations


def first_line(err: BaseException) -> str:
    """The first line of an exception's message (its type name when the message is empty): how
    csekit quotes a library's error inside its own one-line message."""
    text = str(err).strip()
    return text.splitlines()[0] if text else type(err).__name__


class CsekitError(Exception):
    """A user mistake or bad input: one-line message, CLI exit code 2."""

    exit_code: int = 2


class ConfigError(CsekitError, ValueError):
    """Contradictory or out-of-range options (also a ``ValueError``: a bad argument value)."""


class DataError(CsekitError):
    """A corpus or evaluation file that is missing or malformed."""


class ModelLoadError(CsekitError):
    """A model folder or hub id that cannot be loaded."""


class CheckpointError(CsekitError):
    """A checkpoint or model save that cannot be written (full disk) or read back (I/O error);
    the previous checkpoint is intact. Exit code 2."""


class TrainingError(CsekitError):
    """Training cannot go on (for example a non-finite loss); the last good checkpoint is kept."""

    exit_code = 1
