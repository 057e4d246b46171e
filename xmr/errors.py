"""Error types for bad user input that the ``xmr`` command reports as one line (no traceback).

``DataError`` (``xmr.data.base``) and ``CheckpointError`` (``xmr.checkpoint``) are the older
ones; both are ``ValueError``s, as these are.
"""
from __future__ import annotations


class TrainingError(ValueError):
    """Training cannot go on meaningfully (a non-finite loss, a resume that does not match)."""


class ConfigError(ValueError):
    """A setting (``--set KEY=VALUE``, a preset value, a checkpoint's stored config) is unusable."""


def one_line(e: BaseException) -> str:
    """The error as one line: a KeyError's message without its quotes, an OSError with its file."""
    if isinstance(e, KeyError):
        text = str(e.args[0]) if e.args else "missing key"
        if e.args and len(text.split()) == 1:  # a bare key: say what it is
            text = f"missing field {text!r}"
    elif isinstance(e, OSError) and e.filename:
        text = f"{e.filename}: {e.strerror or e}"
    else:
        text = str(e)
    return " ".join(text.split()) or type(e).__name__
