"""Error types for bad user input that the ``xmr`` command reports as one line (no traceback).

``DataError`` (``xmr.data.base``) and ``CheckpointError`` (``xmr.checkpoint``) are the older
ones; both are ``ValueError``s, as these are.
"""
from __future__ import annotations


class TrainingError(ValueError):
    """Training cannot go on meaningfully (a non-finite loss, a resume that does not match)."""


class ConfigError(ValueError):
    """A setting (``--set KEY=VALUE``, a preset value, a checkpoint's stored config) is unusable."""
