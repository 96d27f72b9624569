"""Audit a forget patch: prove what it changes and measure how deeply it forgets.

:func:`audit_patch` always checks the patch's own files and describes every edited value. Given a
base model it verifies the base fingerprint; given a patched model as well it verifies bit for bit
that the patched model equals base plus patch (see :mod:`steu_patch.compare`); given labeled data
it measures forgetting before and after the patch (see :mod:`steu_patch.audit_data`).

:meth:`AuditReport.to_dict` returns one JSON document, schema version 1, with exactly these
top-level keys:

- ``schema_version`` (int): 1.
- ``verdict`` (str): ``"verified"`` when every check passed, else ``"failed"``.
- ``checks`` (list): ``{"name", "passed", "detail"}`` per check. Names: ``patch_files``,
  ``patch_id``; with a base model ``base_fingerprint``; with a patched model ``model_keys``,
  ``model_patched_values`` and ``model_unpatched_values``. Data measurements are not checks.
- ``patch`` (dict): identity, labels, modules, file hashes and the number of values modified.
- ``edits`` (list): one entry per edited embedding row, head tensor and head row (see
  :func:`describe_edits`).
- ``base`` (dict or null): the base model and its fingerprint comparison.
- ``model`` (dict or null): the patched model and its tensor-by-tensor comparison.
- ``data`` (dict or null): forget and retain metrics, linear probe, membership inference and
  relearning, each stating whether it measures behaviour or representation.
"""

from __future__ import annotations

import hashlib
import json
import logging
import math
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open

from .apply import get_chain
from .checkpoint import Checkpoint, read_checkpoint_values
from .compare import ModelComparison, compare_with_patch
from .errors import ModelNotFoundError, PatchFormatError, PatchNotFoundError, UnsupportedModelError
from .hub import resolve_model_dir, resolve_patch_dir
from .patch import ADAPTER_WEIGHTS_NAME, ORIGINALS_NAME, ForgetPatch, compute_fingerprint, file_sha256, load_patch

logger = logging.getLogger(__name__)

SCHEMA_VERSION = 1
VERIFIED = "verified"
FAILED = "failed"
TOP_LEVEL_KEYS = ("schema_version", "verdict", "checks", "patch", "edits", "base", "model", "data")


@dataclass(frozen=True)
class AuditOptions:
    """Settings of :func:`audit_patch` beyond the patch itself.

    Attributes:
        base: base model directory or Hub id; enables the fingerprint check.
        model: patched model directory or Hub id; needs ``base``.
        data: labeled data (any source :func:`steu_patch.data.load_texts` reads); needs ``base``.
        revision: Hub revision of ``base``; patch_revision: Hub revision of the patch.
        redact_tokens: leave token strings out of the report (token ids stay).
        max_length: tokens per text for the data measurements; default: the patch's recorded
            ``max_length``, else 256.
        eval_fraction / seed: the stratified split used when the data has no split column. A seed
            of None uses the seed recorded in the patch's method, else 0.
        relearn_*: the relearning check's budget (see :func:`steu_patch.probes.relearn_head`).
    """

    base: str | None = None
    model: str | None = None
    data: str | None = None
    text_column: str = "text"
    label_column: str = "label"
    split: str | None = None
    revision: str | None = None
    patch_revision: str | None = None
    redact_tokens: bool = False
    show_progress: bool = False
    max_length: int | None = None
    batch_size: int = 32
    eval_fraction: float = 0.2
    seed: int | None = None
    relearn_forget_texts: int = 16
    relearn_retain_texts: int = 16
    relearn_max_steps: int = 200
    relearn_learning_rate: float = 1e-3

    def __post_init__(self) -> None:
        if self.model is not None and self.base is None:
            raise ValueError("Auditing a patched model needs its base model: pass base (--base) as well.")
        if self.data is not None and self.base is None:
            raise ValueError("Measuring forgetting on data needs the base model: pass base (--base) as well.")
        if self.batch_size < 1 or (self.max_length is not None and self.max_length < 1):
            raise ValueError(
                f"batch_size and max_length must be positive, got {self.batch_size} and {self.max_length}."
            )


@dataclass(frozen=True)
class Check:
    """One verification: its name, whether it passed, and what was found."""

    name: str
    passed: bool
    detail: str


@dataclass(frozen=True)
class AuditReport:
    """Everything :func:`audit_patch` found; :meth:`to_dict` gives the JSON document."""

    checks: tuple[Check, ...]
    patch: dict[str, Any]
    edits: tuple[dict[str, Any], ...]
    base: dict[str, Any] | None = None
    model: dict[str, Any] | None = None
    data: dict[str, Any] | None = None

    @property
    def passed(self) -> bool:
        return all(check.passed for check in self.checks)

    @property
    def verdict(self) -> str:
        return VERIFIED if self.passed else FAILED

    @property
    def failed_checks(self) -> list[Check]:
        return [check for check in self.checks if not check.passed]

    def to_dict(self) -> dict[str, Any]:
        """Return the report as a JSON-serialisable dictionary with the keys in ``TOP_LEVEL_KEYS``."""
        return {
            "schema_version": SCHEMA_VERSION,
            "verdict": self.verdict,
            "checks": [asdict(check) for check in self.checks],
            "patch": self.patch,
            "edits": list(self.edits),
            "base": self.base,
            "model": self.model,
            "data": self.data,
        }


def audit_patch(patch: str | os.PathLike, options: AuditOptions | None = None) -> AuditReport:
    """Verify ``patch`` (a directory or Hub id) and, as ``options`` ask, its base model, patched model and data.

    Failed checks do not raise: they appear in the report with ``passed`` False.

    Raises:
        PatchNotFoundError / ModelNotFoundError: the patch or a model cannot be found.
        PatchFormatError: the patch is unreadable beyond a file hash mismatch.
        DataError / LabelError: the data cannot be read or split for the measurements.
    """
    options = options or AuditOptions()
    patch_dir = resolve_patch_dir(patch, revision=options.patch_revision)
    forget_patch, files = _load_for_audit(patch_dir)
    checks = _patch_checks(forget_patch, files)

    base_checkpoint = base_section = model_section = data_section = None
    if options.base is not None:
        base_checkpoint = Checkpoint(resolve_model_dir(options.base, revision=options.revision))
        base_check, base_section = verify_base(base_checkpoint, forget_patch)
        checks.append(base_check)
    if options.model is not None:
        model_checkpoint = Checkpoint(resolve_model_dir(options.model))
        model_checks, model_section = verify_model(
            base_checkpoint, model_checkpoint, forget_patch, show_progress=options.show_progress
        )
        checks += model_checks
    if options.data is not None:
        from .audit_data import measure_forgetting, skipped_data_section

        if base_section is not None and base_section["fingerprint_matches"]:
            data_section = measure_forgetting(forget_patch, base_checkpoint.model_dir, options)
        else:
            data_section = skipped_data_section(
                options.data, "the base model does not match the patch's fingerprint, so base plus patch is not the "
                "model the patch describes"
            )

    return AuditReport(
        checks=tuple(checks),
        patch=describe_patch(forget_patch, patch_dir, files, options.redact_tokens, base_checkpoint),
        edits=tuple(describe_edits(forget_patch, redact_tokens=options.redact_tokens)),
        base=base_section,
        model=model_section,
        data=data_section,
    )


# ----- the patch itself -----


def _load_for_audit(patch_dir: Path) -> tuple[ForgetPatch, dict[str, dict[str, Any]]]:
    """Load the patch and recompute the SHA-256 of its tensor files.

    A patch whose files do not match the manifest is still loaded, without that check, so the
    report can show what the files contain next to the failed check.
    """
    manifest = _read_manifest_for_hashes(patch_dir)
    files: dict[str, dict[str, Any]] = {}
    for name in (ADAPTER_WEIGHTS_NAME, ORIGINALS_NAME):
        path = patch_dir / name
        actual = file_sha256(path) if path.is_file() else None
        expected = (manifest.get("files") or {}).get(name)
        files[name] = {"manifest_sha256": expected, "actual_sha256": actual, "matches": actual is not None and actual == expected}

    return load_patch(patch_dir, check_file_hashes=False), files


def _read_manifest_for_hashes(patch_dir: Path) -> dict[str, Any]:
    from .patch import _read_manifest

    if not patch_dir.exists():
        raise PatchNotFoundError(f"Patch directory {patch_dir} does not exist. Check the path or the Hub repository id.")
    if not patch_dir.is_dir():
        raise PatchFormatError(f"Patch {patch_dir} is a file; a forget patch is a directory containing steu_patch.json.")
    return _read_manifest(patch_dir)


def _patch_checks(patch: ForgetPatch, files: dict[str, dict[str, Any]]) -> list[Check]:
    bad = [name for name, entry in files.items() if not entry["matches"]]
    if bad:
        described = "; ".join(
            f"{name}: SHA-256 {files[name]['actual_sha256'] or 'missing'}, manifest {files[name]['manifest_sha256']}"
            for name in bad
        )
        file_check = Check("patch_files", False, f"file(s) differ from the manifest ({described})")
    else:
        file_check = Check("patch_files", True, f"SHA-256 of {' and '.join(files)} match the manifest")

    recorded = {name: entry["manifest_sha256"] for name, entry in files.items()}
    expected_id = hashlib.sha256(json.dumps(recorded, sort_keys=True).encode()).hexdigest()
    if patch.patch_id == expected_id:
        id_check = Check("patch_id", True, "patch id is the SHA-256 of the recorded file hashes")
    else:
        id_check = Check(
            "patch_id", False,
            f"patch id {patch.patch_id} is not the SHA-256 of the recorded file hashes ({expected_id}); the "
            "manifest was edited after the patch was saved",
        )
    return [file_check, id_check]


def describe_patch(
    patch: ForgetPatch,
    patch_dir: Path,
    files: dict[str, dict[str, Any]],
    redact_tokens: bool,
    base: Checkpoint | None = None,
) -> dict[str, Any]:
    """Return the ``patch`` section: identity, classes, modules, file hashes and size of the edit."""
    manifest = patch.manifest
    count = patch.parameters_modified()
    recorded_total = (manifest.get("parameters_modified") or {}).get("total")
    total, source = (count_checkpoint_parameters(base), "base checkpoint") if base else (recorded_total, "manifest")
    return {
        "path": str(patch_dir),
        "patch_id": patch.patch_id,
        "format_version": manifest["format_version"],
        "tool_version": (manifest.get("tool") or {}).get("version"),
        "created_at": manifest.get("created_at"),
        "base_model": manifest["base_model"],
        "base_fingerprint": manifest["base_fingerprint"],
        "parent_patches": [parent["patch_id"] for parent in manifest.get("parent_patches", [])],
        "labels": manifest["id2label"],
        "forget_classes": patch.forget_classes,
        "embedding_module": patch.embedding_module,
        "head_module": patch.head_module,
        "head_parameters": sorted(patch.new_head),
        "tokens_edited": len(patch.token_ids),
        "tokens_redacted": redact_tokens,
        "parameters_modified": {
            "count": count,
            "total": total,
            "fraction": count / total if total else None,
            "total_source": source if total else None,
        },
        "files": files,
        "recorded_method": manifest.get("method") or {},
        "recorded_metrics": manifest.get("metrics") or {},
    }


def count_checkpoint_parameters(checkpoint: Checkpoint) -> int:
    """Count the floating-point values stored in a checkpoint, reading only the file headers."""
    total = 0
    for file_name in checkpoint.files:
        path = checkpoint.model_dir / file_name
        try:
            with safe_open(str(path), framework="pt") as handle:
                for key in handle.keys():
                    tensor_slice = handle.get_slice(key)
                    if tensor_slice.get_dtype() in ("F64", "F32", "F16", "BF16", "F8_E4M3", "F8_E5M2"):
                        total += math.prod(tensor_slice.get_shape())
        except (SafetensorError, OSError) as error:
            raise ModelNotFoundError(f"{path} is not a readable safetensors file ({error}).") from error
    return total


# ----- edits -----


def change_statistics(new: torch.Tensor, original: torch.Tensor) -> dict[str, float | None]:
    """Return L2 norm and max absolute value of ``new - original``, and their cosine similarity.

    Computed in float64. The cosine similarity is None when either vector is all zeros.
    """
    new_values = new.detach().double().reshape(-1)
    old_values = original.detach().double().reshape(-1)
    delta = new_values - old_values
    norms = float(new_values.norm() * old_values.norm())
    return {
        "l2_change": float(delta.norm()),
        "max_abs_change": float(delta.abs().max()) if delta.numel() else 0.0,
        "cosine_similarity": float(new_values @ old_values) / norms if norms > 0 else None,
    }


def describe_edits(patch: ForgetPatch, *, redact_tokens: bool = False) -> list[dict[str, Any]]:
    """Describe every edited embedding row, head tensor and row of a 2-D head tensor.

    Each entry has the keys ``kind`` (``embedding_row``, ``head_tensor`` or ``head_row``),
    ``tensor``, ``row``, ``token_id``, ``token`` (None when redacted or unknown), ``label`` (the
    class of a head row), ``values``, ``l2_change``, ``max_abs_change`` and ``cosine_similarity``.
    """
    tokens = patch.manifest.get("tokens", [])
    embedding = f"{patch.embedding_module}.weight"
    edits = []
    for index, token_id in enumerate(patch.token_ids):
        token = None if redact_tokens or index >= len(tokens) else tokens[index].get("token")
        edits.append(
            _edit("embedding_row", embedding, index, patch.new_rows[index], patch.original_rows[index], token_id=token_id, token=token)
        )

    labels = patch.manifest["id2label"]
    for name in sorted(patch.new_head):
        tensor = f"{patch.head_module}.{name}"
        new, original = patch.new_head[name], patch.original_head[name]
        edits.append(_edit("head_tensor", tensor, None, new, original))
        if new.dim() == 2:
            for row in range(new.shape[0]):
                edits.append(_edit("head_row", tensor, row, new[row], original[row], label=labels.get(str(row))))
    return edits


def _edit(
    kind: str,
    tensor: str,
    row: int | None,
    new: torch.Tensor,
    original: torch.Tensor,
    *,
    token_id: int | None = None,
    token: str | None = None,
    label: str | None = None,
) -> dict[str, Any]:
    return {
        "kind": kind,
        "tensor": tensor,
        "row": token_id if kind == "embedding_row" else row,
        "token_id": token_id,
        "token": token,
        "label": label,
        "values": new.numel(),
        **change_statistics(new, original),
    }


# ----- base and patched models -----


def verify_base(checkpoint: Checkpoint, patch: ForgetPatch) -> tuple[Check, dict[str, Any]]:
    """Compare the fingerprint of the base checkpoint's touched values with the patch's."""
    section: dict[str, Any] = {
        "path": str(checkpoint.model_dir),
        "expected_fingerprint": patch.fingerprint,
        "actual_fingerprint": None,
        "fingerprint_matches": False,
        "differing": [],
        "error": None,
        "patches_recorded": [entry["patch_id"] for entry in get_chain(checkpoint.config())],
    }
    try:
        current = read_checkpoint_values(checkpoint, patch)
    except (PatchFormatError, UnsupportedModelError) as error:
        section["error"] = str(error)
        return Check("base_fingerprint", False, f"the base model cannot hold the patch: {error}"), section

    actual = compute_fingerprint(patch.token_ids, current, patch.embedding_shape, patch.dtype)
    section["actual_fingerprint"] = actual
    section["fingerprint_matches"] = actual == patch.fingerprint
    section["differing"] = current.differing(patch.original_values(), patch.token_ids)
    if section["fingerprint_matches"]:
        return Check("base_fingerprint", True, f"base fingerprint {actual} matches the patch"), section
    detail = f"base fingerprint {actual} differs from the patch's {patch.fingerprint}"
    if section["differing"]:
        detail += f" (differing: {'; '.join(section['differing'])})"
    return Check("base_fingerprint", False, detail), section


def verify_model(
    base: Checkpoint, model: Checkpoint, patch: ForgetPatch, *, show_progress: bool = False
) -> tuple[list[Check], dict[str, Any]]:
    """Check bit for bit that ``model`` equals ``base`` plus ``patch``, tensor by tensor."""
    section: dict[str, Any] = {
        "path": str(model.model_dir),
        "records_patch": patch.patch_id in [entry["patch_id"] for entry in get_chain(model.config())],
        "comparison": None,
        "error": None,
    }
    try:
        comparison = compare_with_patch(base, model, patch, show_progress=show_progress)
    except (UnsupportedModelError, PatchFormatError) as error:
        section["error"] = str(error)
        detail = f"the model cannot be compared with base plus patch: {error}"
        names = ("model_keys", "model_patched_values", "model_unpatched_values")
        return [Check(name, False, detail) for name in names], section

    section["comparison"] = comparison.to_dict()
    return _model_checks(comparison), section


def _model_checks(comparison: ModelComparison) -> list[Check]:
    checks = []
    if comparison.keys_match:
        checks.append(Check("model_keys", True, f"the same {comparison.tensors_compared} tensor names as the base model"))
    else:
        parts = []
        if comparison.missing_keys:
            parts.append(f"missing {_list(comparison.missing_keys)}")
        if comparison.extra_keys:
            parts.append(f"extra {_list(comparison.extra_keys)}")
        checks.append(Check("model_keys", False, "tensor names differ from the base model: " + "; ".join(parts)))

    written = comparison.written_differences
    checks.append(
        Check("model_patched_values", not written, _describe_differences(written) or "every patched row and head tensor equals the patch's new values")
    )
    unwritten = comparison.unwritten_differences
    checks.append(
        Check("model_unpatched_values", not unwritten, _describe_differences(unwritten) or "every other value equals the base model bit for bit")
    )
    return checks


def _describe_differences(differences: tuple[Any, ...]) -> str:
    return "; ".join(f"{difference.tensor}: {difference.detail}" for difference in differences)


def _list(names: tuple[str, ...], shown: int = 5) -> str:
    more = f" and {len(names) - shown} more" if len(names) > shown else ""
    return ", ".join(names[:shown]) + more
