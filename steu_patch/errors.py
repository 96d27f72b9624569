"""Exceptions raised by steu-patch.

Every error subclasses :class:`SteuPatchError` and also a built-in exception, so callers can
catch either. Messages say what failed, on which value, and what to do next; the CLI prints
them as they are.
"""

from __future__ import annotations


class SteuPatchError(Exception):
    """Base class of every error that steu-patch raises on purpose."""


class PatchFormatError(SteuPatchError, ValueError):
    """A patch directory is missing files, holds unreadable or unsafe files, or fails validation."""


class PatchNotFoundError(SteuPatchError, FileNotFoundError):
    """A patch path or Hub repository does not exist."""


class ModelNotFoundError(SteuPatchError, FileNotFoundError):
    """A model path or Hub repository does not exist or holds no usable checkpoint."""


class UnsupportedModelError(SteuPatchError, ValueError):
    """A model lacks input embeddings or a classification head that steu-patch can edit."""


class FingerprintMismatchError(SteuPatchError, ValueError):
    """The model's original values differ from those the patch was created on."""


class PatchStateError(SteuPatchError, ValueError):
    """A patch cannot be applied or reverted in the model's current state (stacking order, missing values)."""


class DataError(SteuPatchError, ValueError):
    """Training or evaluation data is missing, empty, malformed or inconsistent with the model."""


class LabelError(DataError):
    """A class label is unknown to the model's ``id2label``."""


class HubError(SteuPatchError, RuntimeError):
    """A Hugging Face Hub operation failed."""
