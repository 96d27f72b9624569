"""steu-patch: class-level unlearning for Hugging Face sequence classifiers as forget patches.

The public names are imported on first access, so ``import steu_patch`` stays cheap for the CLI.
"""

from __future__ import annotations

import importlib
from typing import Any

__version__ = "0.1.0"

_PUBLIC = {
    "ForgetPatch": "patch",
    "load_patch": "patch",
    "save_patch": "patch",
    "PatchedModel": "apply",
    "apply_patch": "apply",
    "revert_patch": "apply",
    "write_patched_model": "checkpoint",
}

__all__ = ["__version__", *_PUBLIC]


def __getattr__(name: str) -> Any:
    module = _PUBLIC.get(name)
    if module is None:
        raise AttributeError(f"module 'steu_patch' has no attribute {name!r}")
    return getattr(importlib.import_module(f".{module}", __name__), name)
