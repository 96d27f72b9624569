"""The forget-patch format, version 1: build, save, load and validate patches.

A patch is a directory:

- ``adapter_config.json`` and ``adapter_model.safetensors``: a PEFT LoRA adapter with no LoRA
  layers, whose ``trainable_token_indices`` carry the new embedding rows and whose
  ``modules_to_save`` carries the new classification layer. Stock PEFT loads it with
  ``PeftModel.from_pretrained(base, patch_dir)``.
- ``original_values.safetensors``: the original values of every row and tensor the patch
  touches, so a patched model can be reverted without the base model at hand. It is a separate
  file because PEFT would report its keys as unexpected.
- ``steu_patch.json``: the manifest (format and tool version, base model and fingerprint, labels,
  forget classes, tokens, method, metrics, SHA-256 of the tensor files).

When PEFT's ``modules_to_save`` suffix match also wraps modules other than the head (DistilBERT's
``pre_classifier`` for ``classifier``), the adapter file also stores those modules' unchanged base
values, the "PEFT passthrough" tensors, so stock PEFT loads the patch and computes the same outputs.
- ``README.md``: a model card.

All tensors are stored as values, never as differences, so applying and reverting are bit-exact
in every floating-point dtype.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file
from torch import nn

from . import __version__
from .errors import PatchFormatError, PatchNotFoundError, UnsupportedModelError

logger = logging.getLogger(__name__)

FORMAT_VERSION = 1
MANIFEST_NAME = "steu_patch.json"
ADAPTER_CONFIG_NAME = "adapter_config.json"
ADAPTER_WEIGHTS_NAME = "adapter_model.safetensors"
ORIGINALS_NAME = "original_values.safetensors"
CARD_NAME = "README.md"

# PEFT matches no module against this target, so the LoRA adapter adds no LoRA layer and no
# parameter; only ``trainable_token_indices`` and ``modules_to_save`` take effect. The value
# equals ``peft.utils.constants.DUMMY_TARGET_MODULES`` (peft 0.21).
NO_LORA_TARGETS = "dummy-target-modules"

# Files that would be unpickled by torch or transformers. A patch never contains them.
PICKLE_SUFFIXES = (".bin", ".pt", ".pth", ".pkl", ".pickle", ".ckpt")

_DTYPES = {"float32": torch.float32, "float16": torch.float16, "bfloat16": torch.bfloat16}


def dtype_name(dtype: torch.dtype) -> str:
    """Return the manifest name of a floating-point dtype (``float32``, ``float16``, ``bfloat16``)."""
    name = str(dtype).removeprefix("torch.")
    if name not in _DTYPES:
        raise PatchFormatError(f"Unsupported dtype {name}; forget patches hold {', '.join(_DTYPES)} tensors.")
    return name


def tensor_bytes(tensor: torch.Tensor) -> bytes:
    """Return the raw little-endian bytes of a tensor, in row-major order."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    return flat.view(torch.uint8).numpy().tobytes()


def tensor_sha256(tensor: torch.Tensor) -> str:
    return hashlib.sha256(tensor_bytes(tensor)).hexdigest()


def file_sha256(path: Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


@dataclass(frozen=True)
class TouchedValues:
    """Values of every element a patch touches, read from one model state.

    Attributes:
        rows: embedding rows at the patch's token ids, shape ``(k, hidden)``.
        head: final classification layer tensors by parameter name (``weight``, ``bias``).
        passthrough: PEFT passthrough tensors by parameter name in the model (for DistilBERT
            ``pre_classifier.weight`` and ``pre_classifier.bias``); empty for most models. A patch
            never changes them, so they hold the base model's values before and after it.
    """

    rows: torch.Tensor
    head: dict[str, torch.Tensor]
    passthrough: dict[str, torch.Tensor] = field(default_factory=dict)

    def equals(self, other: TouchedValues) -> bool:
        """Return True when both hold bit-identical tensors."""
        if set(self.head) != set(other.head) or set(self.passthrough) != set(other.passthrough):
            return False
        if not _bit_equal(self.rows, other.rows):
            return False
        if not all(_bit_equal(self.head[name], other.head[name]) for name in self.head):
            return False
        return all(_bit_equal(self.passthrough[name], other.passthrough[name]) for name in self.passthrough)

    def without_passthrough(self) -> TouchedValues:
        """Return only the rows and head tensors, the values that applying and reverting write."""
        return TouchedValues(self.rows, dict(self.head))

    def differing(self, other: TouchedValues, token_ids: Sequence[int]) -> list[str]:
        """Describe which rows and head tensors differ from ``other``."""
        changed_rows = [
            token_ids[i]
            for i in range(self.rows.shape[0])
            if not _bit_equal(self.rows[i], other.rows[i])
        ]
        described = []
        if changed_rows:
            shown = ", ".join(str(token_id) for token_id in changed_rows[:3])
            more = f" and {len(changed_rows) - 3} more" if len(changed_rows) > 3 else ""
            described.append(f"{len(changed_rows)} embedding row(s) (token ids {shown}{more})")
        described += [f"head {name}" for name in sorted(self.head) if not _bit_equal(self.head[name], other.head[name])]
        for name in sorted(set(self.passthrough) | set(other.passthrough)):
            mine, theirs = self.passthrough.get(name), other.passthrough.get(name)
            if mine is None or theirs is None or not _bit_equal(mine, theirs):
                described.append(f"PEFT passthrough tensor {name}")
        return described


def _bit_equal(left: torch.Tensor, right: torch.Tensor) -> bool:
    return left.dtype == right.dtype and left.shape == right.shape and tensor_bytes(left) == tensor_bytes(right)


def compute_fingerprint(
    token_ids: Sequence[int],
    values: TouchedValues,
    embedding_shape: Sequence[int],
    dtype: torch.dtype,
) -> str:
    """Return the SHA-256 that identifies a base model for a patch.

    The digest covers the embedding matrix shape and dtype, the token ids, and the values of every
    touched row and head tensor, so two models get the same fingerprint exactly when the patch
    would overwrite the same original values. PEFT passthrough tensors are hashed after the head
    only when ``values.passthrough`` is not empty, so a patch without them keeps the digest that
    earlier steu-patch releases computed.
    """
    digest = hashlib.sha256(b"steu-patch fingerprint v1\n")
    digest.update(json.dumps({"shape": list(embedding_shape), "dtype": dtype_name(dtype)}).encode())
    digest.update(torch.tensor(list(token_ids), dtype=torch.int64).numpy().tobytes())
    digest.update(tensor_bytes(values.rows))
    for name in sorted(values.head):
        digest.update(name.encode() + b"\0" + json.dumps(list(values.head[name].shape)).encode())
        digest.update(tensor_bytes(values.head[name]))
    if values.passthrough:
        digest.update(b"peft passthrough\0")
        for name in sorted(values.passthrough):
            tensor = values.passthrough[name]
            # The dtype is read from the tensor, not checked: a model tensor of another dtype must
            # give a different digest, not an error.
            header = {"shape": list(tensor.shape), "dtype": str(tensor.dtype).removeprefix("torch.")}
            digest.update(name.encode() + b"\0" + json.dumps(header).encode())
            digest.update(tensor_bytes(tensor))
    return digest.hexdigest()


@dataclass
class ForgetPatch:
    """A forget patch in memory: the manifest plus new and original values.

    Attributes:
        manifest: the content of ``steu_patch.json``.
        token_ids: edited embedding rows, in the order of ``new_rows``.
        new_rows / original_rows: embedding rows after and before the edit, ``(k, hidden)``.
        new_head / original_head: final classification layer tensors by parameter name.
        source: the directory the patch was loaded from or saved to, or None.
        peft_passthrough: base values of the PEFT passthrough tensors by parameter name, as listed
            in the manifest's ``peft_passthrough``; empty for most models.
    """

    manifest: dict[str, Any]
    token_ids: list[int]
    new_rows: torch.Tensor
    original_rows: torch.Tensor
    new_head: dict[str, torch.Tensor]
    original_head: dict[str, torch.Tensor]
    source: str | None = field(default=None, compare=False)
    peft_passthrough: dict[str, torch.Tensor] = field(default_factory=dict)

    # ----- properties read from the manifest -----

    @property
    def embedding_module(self) -> str:
        return self.manifest["embedding_module"]

    @property
    def head_module(self) -> str:
        return self.manifest["head_module"]

    @property
    def patch_id(self) -> str:
        return self.manifest["patch_id"]

    @property
    def fingerprint(self) -> str:
        return self.manifest["base_fingerprint"]["sha256"]

    @property
    def embedding_shape(self) -> tuple[int, int]:
        rows, hidden = self.manifest["base_fingerprint"]["embedding_shape"]
        return int(rows), int(hidden)

    @property
    def dtype(self) -> torch.dtype:
        return _DTYPES[self.manifest["base_fingerprint"]["dtype"]]

    @property
    def parent_patch_ids(self) -> list[str]:
        return [parent["patch_id"] for parent in self.manifest.get("parent_patches", [])]

    @property
    def forget_classes(self) -> list[str]:
        return list(self.manifest["forget_classes"])

    def new_values(self) -> TouchedValues:
        return TouchedValues(self.new_rows, dict(self.new_head), dict(self.peft_passthrough))

    def original_values(self) -> TouchedValues:
        return TouchedValues(self.original_rows, dict(self.original_head), dict(self.peft_passthrough))

    def parameters_modified(self) -> int:
        """Count the values the patch overwrites: embedding rows plus head tensors."""
        return self.new_rows.numel() + sum(tensor.numel() for tensor in self.new_head.values())

    # ----- loading and saving -----

    @classmethod
    def from_pretrained(cls, patch: str | os.PathLike, revision: str | None = None, **hub_kwargs: Any) -> ForgetPatch:
        """Load and validate a patch from a local directory or a Hub repository id.

        Raises:
            PatchNotFoundError: the directory or repository does not exist.
            PatchFormatError: a file is missing, unsafe, corrupt, inconsistent or holds NaN/inf.
        """
        from .hub import resolve_patch_dir

        return load_patch(resolve_patch_dir(patch, revision=revision, **hub_kwargs))

    def save_pretrained(self, output_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
        """Write the patch directory atomically and return its path."""
        return save_patch(self, output_dir, overwrite=overwrite)


# ----- building -----


def build_patch(
    *,
    token_ids: Sequence[int],
    original: TouchedValues,
    new: TouchedValues,
    embedding_module: str,
    head_module: str,
    embedding_shape: Sequence[int],
    base_model: Mapping[str, Any],
    id2label: Mapping[int, str],
    forget_classes: Sequence[str],
    parent_patches: Sequence[Mapping[str, Any]] = (),
    tokens: Sequence[Mapping[str, Any]] = (),
    method: Mapping[str, Any] | None = None,
    metrics: Mapping[str, Any] | None = None,
    total_parameters: int | None = None,
    extra: Mapping[str, Any] | None = None,
    peft_passthrough: Mapping[str, torch.Tensor] | None = None,
) -> ForgetPatch:
    """Assemble a validated :class:`ForgetPatch` from original and new values.

    ``tokens`` lists one mapping per token id (at least ``id`` and ``token``) in the order of
    ``token_ids``; ``base_model`` holds ``name_or_path`` and optionally ``revision``,
    ``model_type`` and ``architecture``.

    ``peft_passthrough`` maps each tensor that stock PEFT wraps besides the head to its base
    value, as :func:`peft_passthrough_values` returns them. Without it (None), the passthrough
    tensors of ``original`` are used, and most models have none. Without them, stock PEFT cannot
    load a patch for a model such as DistilBERT, but steu-patch still applies it.
    """
    token_ids = [int(token_id) for token_id in token_ids]
    dtype = original.rows.dtype
    passthrough = {
        name: tensor.detach().to("cpu").contiguous()
        for name, tensor in sorted((original.passthrough if peft_passthrough is None else peft_passthrough).items())
    }
    manifest: dict[str, Any] = {
        "format_version": FORMAT_VERSION,
        "tool": {"name": "steu-patch", "version": __version__},
        "patch_id": None,
        "created_at": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "base_model": dict(base_model),
        "base_fingerprint": {
            "sha256": compute_fingerprint(token_ids, TouchedValues(original.rows, original.head, passthrough), embedding_shape, dtype),
            "embedding_shape": [int(size) for size in embedding_shape],
            "dtype": dtype_name(dtype),
        },
        "parent_patches": [dict(parent) for parent in parent_patches],
        "id2label": {str(int(label_id)): name for label_id, name in id2label.items()},
        "forget_classes": list(forget_classes),
        "embedding_module": embedding_module,
        "head_module": head_module,
        "head_parameters": sorted(new.head),
    }
    # Absent rather than empty for most models, so their manifests keep the layout of earlier releases.
    if passthrough:
        manifest["peft_passthrough"] = list(passthrough)
    manifest.update({
        "tokens": [dict(token) for token in tokens] or [{"id": token_id} for token_id in token_ids],
        "method": dict(method or {}),
        "metrics": dict(metrics or {}),
        "parameters_modified": None,
        "files": {},
    })  # fmt: skip
    if extra:
        manifest.update(extra)
    patch = ForgetPatch(
        manifest=manifest,
        token_ids=token_ids,
        new_rows=new.rows.detach().to("cpu").contiguous(),
        original_rows=original.rows.detach().to("cpu").contiguous(),
        new_head={name: tensor.detach().to("cpu").contiguous() for name, tensor in new.head.items()},
        original_head={name: tensor.detach().to("cpu").contiguous() for name, tensor in original.head.items()},
        peft_passthrough=passthrough,
    )
    count = patch.parameters_modified()
    manifest["parameters_modified"] = {
        "count": count,
        "total": total_parameters,
        "fraction": (count / total_parameters) if total_parameters else None,
    }
    validate_patch(patch)
    return patch


# ----- PEFT adapter files -----


def adapter_weight_keys(
    embedding_module: str, head_module: str, head_parameters: Sequence[str], peft_passthrough: Sequence[str] = ()
) -> dict[str, str]:
    """Map each patch tensor to its key in ``adapter_model.safetensors`` as peft 0.21 names it.

    ``rows`` maps to the trainable-token values; ``head.<name>`` to the ``modules_to_save`` copy;
    ``passthrough.<name>`` to the ``modules_to_save`` copy of another module that PEFT wraps.
    """
    keys = {"rows": f"base_model.model.{embedding_module}.token_adapter.trainable_tokens_delta"}
    for name in head_parameters:
        keys[f"head.{name}"] = f"base_model.model.{head_module}.{name}"
    for name in peft_passthrough:
        keys[f"passthrough.{name}"] = f"base_model.model.{name}"
    return keys


def peft_wrapped_modules(model: nn.Module, module_name: str) -> list[str]:
    """List the modules that peft 0.21 wraps for ``modules_to_save=[module_name]``, in model order.

    PEFT (``peft.utils.other._set_trainable``) selects every name in
    ``model.named_modules(remove_duplicate=False)`` that ends with the entry as a plain string,
    not by dotted path. So ``classifier`` also selects DistilBERT's ``pre_classifier``.
    """
    names = [name for name, _ in model.named_modules(remove_duplicate=False) if name.endswith(module_name)]
    return list(dict.fromkeys(names))


def peft_passthrough_values(model: nn.Module, head_module: str) -> dict[str, torch.Tensor]:
    """Read the base values of every tensor that stock PEFT wraps besides the head.

    For each module other than ``head_module`` that :func:`peft_wrapped_modules` selects, PEFT
    expects every entry of the module's ``state_dict()`` in the adapter file, and overwrites its
    copy of the module with them. Storing the base values keeps PEFT's outputs equal to the patched
    model's. Pass the result to :func:`build_patch` as ``peft_passthrough``.

    Args:
        model: the base model the patch is created on, not a PEFT-wrapped one.
        head_module: the patch's head module name, as in ``model.named_modules()``.

    Returns:
        CPU copies by parameter name (``pre_classifier.weight``), sorted; empty for most models.

    Raises:
        UnsupportedModelError: the head is missing, or a wrapped tensor's dtype differs from the head's.
    """
    modules = dict(model.named_modules(remove_duplicate=False))
    head = modules.get(head_module)
    if head is None:
        raise UnsupportedModelError(
            f"The model {type(model).__name__} has no module {head_module!r}; pass the head module name as it "
            "appears in model.named_modules()."
        )
    dtype = next(head.parameters()).dtype
    values: dict[str, torch.Tensor] = {}
    for module_name in peft_wrapped_modules(model, head_module):
        if module_name == head_module:
            continue
        for key, tensor in modules[module_name].state_dict().items():
            if tensor.dtype != dtype:
                raise UnsupportedModelError(
                    f"PEFT's modules_to_save={[head_module]} also wraps {module_name!r}, whose tensor {key!r} is "
                    f"{tensor.dtype} while the head is {dtype}; a forget patch stores tensors of one dtype. Stock "
                    "PEFT cannot load a patch for this model; apply it with steu-patch instead."
                )
            values[f"{module_name}.{key}"] = tensor.detach().to("cpu").clone()
    return dict(sorted(values.items()))


def adapter_config(patch: ForgetPatch) -> dict[str, Any]:
    """Return the ``adapter_config.json`` content that makes stock PEFT load the patch.

    The head is listed in ``modules_to_save``: without it, peft 0.21 loads the head weights
    straight into the base model without any warning, and ``unload()`` cannot undo it.
    """
    from peft import LoraConfig

    base = patch.manifest["base_model"]
    config = LoraConfig(
        r=1,
        target_modules=NO_LORA_TARGETS,
        trainable_token_indices={patch.embedding_module: list(patch.token_ids)},
        modules_to_save=[patch.head_module],
        base_model_name_or_path=base.get("name_or_path"),
        revision=base.get("revision"),
        inference_mode=True,
    )
    content = config.to_dict()
    # Sets and enums are not JSON types; PEFT writes them as lists and strings.
    for key, value in content.items():
        if isinstance(value, set):
            content[key] = sorted(value)
    content["peft_type"] = "LORA"
    return content


# ----- saving -----


def _tensor_files(patch: ForgetPatch) -> dict[str, dict[str, torch.Tensor]]:
    keys = adapter_weight_keys(patch.embedding_module, patch.head_module, sorted(patch.new_head), sorted(patch.peft_passthrough))
    adapter = {keys["rows"]: patch.new_rows}
    adapter.update({keys[f"head.{name}"]: tensor for name, tensor in patch.new_head.items()})
    adapter.update({keys[f"passthrough.{name}"]: tensor for name, tensor in patch.peft_passthrough.items()})
    originals = {f"{patch.embedding_module}.weight.rows": patch.original_rows}
    originals.update({f"{patch.head_module}.{name}": tensor for name, tensor in patch.original_head.items()})
    return {ADAPTER_WEIGHTS_NAME: adapter, ORIGINALS_NAME: originals}


def save_patch(patch: ForgetPatch, output_dir: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Write ``patch`` into ``output_dir`` through a temporary directory renamed into place.

    The manifest records the SHA-256 of each tensor file and a ``patch_id`` derived from them.
    """
    validate_patch(patch)
    output_dir = Path(output_dir)
    with atomic_directory(output_dir, overwrite=overwrite) as staging:
        # One metadata key only: safetensors writes the metadata map in a random order, so a
        # second key would make identical tensors produce different file hashes and patch ids.
        metadata = {"format": "pt"}
        for name, tensors in _tensor_files(patch).items():
            save_file({key: value.contiguous() for key, value in tensors.items()}, str(staging / name), metadata=metadata)
        file_hashes = {name: file_sha256(staging / name) for name in (ADAPTER_WEIGHTS_NAME, ORIGINALS_NAME)}
        patch.manifest["files"] = file_hashes
        patch.manifest["patch_id"] = hashlib.sha256(json.dumps(file_hashes, sort_keys=True).encode()).hexdigest()
        write_json(staging / ADAPTER_CONFIG_NAME, adapter_config(patch))
        write_json(staging / MANIFEST_NAME, patch.manifest)

        from .card import build_model_card

        (staging / CARD_NAME).write_text(build_model_card(patch), encoding="utf-8")
    patch.source = str(output_dir)
    logger.info("Wrote forget patch %s to %s", patch.patch_id[:12], output_dir)
    return output_dir


def write_json(path: Path, content: Any) -> None:
    path.write_text(json.dumps(content, indent=2, sort_keys=False) + "\n", encoding="utf-8")


class atomic_directory:
    """Context manager yielding a staging directory that replaces ``target`` on success.

    The staging directory is a sibling of ``target`` so the final rename stays on one file
    system. On error it is removed and ``target`` is left as it was.
    """

    def __init__(self, target: Path, *, overwrite: bool = False) -> None:
        self.target = Path(target)
        self.overwrite = overwrite
        self.staging: Path | None = None

    def __enter__(self) -> Path:
        if self.target.exists() and not self.overwrite:
            if not self.target.is_dir() or any(self.target.iterdir()):
                raise FileExistsError(
                    f"Output {self.target} already exists and is not empty. Choose another output path or pass "
                    "--overwrite (overwrite=True) to replace it."
                )
        self.target.parent.mkdir(parents=True, exist_ok=True)
        self.staging = Path(tempfile.mkdtemp(prefix=f".{self.target.name}.tmp-", dir=self.target.parent))
        # mkdtemp creates the directory with mode 0700; the output gets the mode a plain mkdir would.
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(self.staging, 0o777 & ~umask)
        return self.staging

    def __exit__(self, exc_type, exc, traceback) -> None:
        assert self.staging is not None
        if exc_type is not None:
            shutil.rmtree(self.staging, ignore_errors=True)
            return
        backup = None
        if self.target.exists():
            backup = self.target.with_name(f".{self.target.name}.old-{os.getpid()}")
            os.replace(self.target, backup)
        os.replace(self.staging, self.target)
        if backup is not None:
            shutil.rmtree(backup, ignore_errors=True)


# ----- loading -----


def load_patch(patch_dir: str | os.PathLike, *, check_file_hashes: bool = True) -> ForgetPatch:
    """Load and validate a patch directory (local only; see :meth:`ForgetPatch.from_pretrained`).

    Args:
        patch_dir: the patch directory.
        check_file_hashes: compare the tensor files' SHA-256 with the manifest. Only an audit
            that reports a mismatch next to the files' content turns this off; a missing tensor
            file is rejected either way.
    """
    patch_dir = Path(patch_dir)
    if not patch_dir.exists():
        raise PatchNotFoundError(f"Patch directory {patch_dir} does not exist. Create one with `steu-patch create`.")
    if not patch_dir.is_dir():
        raise PatchFormatError(f"Patch {patch_dir} is a file; a forget patch is a directory containing {MANIFEST_NAME}.")
    _reject_pickles(patch_dir)
    manifest = _read_manifest(patch_dir)
    if check_file_hashes:
        _check_file_hashes(patch_dir, manifest)
    else:
        _check_files_present(patch_dir)

    head_parameters = manifest["head_parameters"]
    passthrough_names = manifest.get("peft_passthrough", [])
    keys = adapter_weight_keys(manifest["embedding_module"], manifest["head_module"], head_parameters, passthrough_names)
    adapter = _read_safetensors(patch_dir / ADAPTER_WEIGHTS_NAME, list(dict.fromkeys(keys.values())))
    original_keys = [f"{manifest['embedding_module']}.weight.rows"]
    original_keys += [f"{manifest['head_module']}.{name}" for name in head_parameters]
    originals = _read_safetensors(patch_dir / ORIGINALS_NAME, original_keys)

    patch = ForgetPatch(
        manifest=manifest,
        token_ids=[int(token["id"]) for token in manifest["tokens"]],
        new_rows=adapter[keys["rows"]],
        original_rows=originals[original_keys[0]],
        new_head={name: adapter[keys[f"head.{name}"]] for name in head_parameters},
        original_head={name: originals[f"{manifest['head_module']}.{name}"] for name in head_parameters},
        source=str(patch_dir),
        peft_passthrough={name: adapter[keys[f"passthrough.{name}"]] for name in passthrough_names},
    )
    validate_patch(patch)
    _check_adapter_config(patch_dir, patch)
    return patch


def _reject_pickles(patch_dir: Path) -> None:
    pickles = sorted(path.name for path in patch_dir.iterdir() if path.suffix in PICKLE_SUFFIXES)
    if pickles:
        raise PatchFormatError(
            f"Patch {patch_dir} contains pickle file(s) {', '.join(pickles)}. steu-patch never loads pickles "
            "because unpickling can run arbitrary code; a forget patch stores tensors only in .safetensors files. "
            "Remove the file(s) or recreate the patch with `steu-patch create`."
        )


def _read_manifest(patch_dir: Path) -> dict[str, Any]:
    path = patch_dir / MANIFEST_NAME
    if not path.is_file():
        raise PatchFormatError(
            f"{patch_dir} is not a steu-patch patch: {MANIFEST_NAME} is missing. A PEFT adapter made by another tool "
            "cannot be used as a forget patch."
        )
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise PatchFormatError(f"Manifest {path} is not valid JSON ({error}); the patch is corrupt.") from error
    if not isinstance(manifest, dict):
        raise PatchFormatError(f"Manifest {path} is not a JSON object; the patch is corrupt.")

    version = manifest.get("format_version")
    if version != FORMAT_VERSION:
        raise PatchFormatError(
            f"Patch {patch_dir} has format version {version!r}; steu-patch {__version__} reads version "
            f"{FORMAT_VERSION}. Upgrade steu-patch or recreate the patch."
        )
    required = (
        "patch_id", "base_model", "base_fingerprint", "id2label", "forget_classes", "embedding_module",
        "head_module", "head_parameters", "tokens", "files",
    )  # fmt: skip
    missing = [key for key in required if key not in manifest]
    if missing:
        raise PatchFormatError(f"Manifest {path} lacks the field(s) {', '.join(missing)}; the patch is corrupt.")
    fingerprint = manifest["base_fingerprint"]
    if not isinstance(fingerprint, dict) or fingerprint.get("dtype") not in _DTYPES:
        raise PatchFormatError(f"Manifest {path} has an invalid base_fingerprint {fingerprint!r}.")
    invalid = [f"{key} (expected {expected})" for key, expected in _MANIFEST_TYPES.items() if not _has_type(manifest, key)]
    if invalid:
        raise PatchFormatError(f"Manifest {path} has invalid field(s) {'; '.join(invalid)}; the patch is corrupt.")
    return manifest


# Expected JSON shape of the manifest fields that loading and applying read.
_MANIFEST_TYPES = {
    "base_model": "an object",
    "base_fingerprint": 'an object with a string "sha256" and a two-integer "embedding_shape"',
    "id2label": "an object",
    "forget_classes": "a list of strings",
    "embedding_module": "a string",
    "head_module": "a string",
    "head_parameters": "a non-empty list of strings",
    "tokens": 'a list of objects with an integer "id"',
    "files": "an object",
    "parent_patches": 'a list of objects with a string "patch_id"',
    "peft_passthrough": "a list of strings",
}

# Manifest fields that may be absent; an absent one reads as an empty list.
_OPTIONAL_LISTS = ("parent_patches", "peft_passthrough")


def _has_type(manifest: Mapping[str, Any], key: str) -> bool:
    value = manifest.get(key, [] if key in _OPTIONAL_LISTS else None)
    if key == "base_fingerprint":
        shape = value.get("embedding_shape")
        valid_shape = isinstance(shape, list) and len(shape) == 2 and all(_is_int(size) for size in shape)
        return isinstance(value.get("sha256"), str) and valid_shape
    if key in ("base_model", "id2label", "files"):
        return isinstance(value, dict)
    if key in ("embedding_module", "head_module"):
        return isinstance(value, str)
    if key == "tokens":
        return _is_list_of(value, lambda token: isinstance(token, dict) and _is_int(token.get("id")))
    if key == "parent_patches":
        return _is_list_of(value, lambda parent: isinstance(parent, dict) and isinstance(parent.get("patch_id"), str))
    return _is_list_of(value, lambda item: isinstance(item, str)) and (key != "head_parameters" or bool(value))


def _is_list_of(value: Any, check: Callable[[Any], bool]) -> bool:
    return isinstance(value, list) and all(check(item) for item in value)


def _is_int(value: Any) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_files_present(patch_dir: Path) -> None:
    for name in (ADAPTER_WEIGHTS_NAME, ORIGINALS_NAME):
        if not (patch_dir / name).is_file():
            raise PatchFormatError(f"Patch {patch_dir} is incomplete: {name} is missing.")


def _check_file_hashes(patch_dir: Path, manifest: Mapping[str, Any]) -> None:
    _check_files_present(patch_dir)
    for name in (ADAPTER_WEIGHTS_NAME, ORIGINALS_NAME):
        path = patch_dir / name
        expected = manifest["files"].get(name)
        actual = file_sha256(path)
        if expected != actual:
            raise PatchFormatError(
                f"{path} does not match the manifest (SHA-256 {actual[:16]}…, manifest says "
                f"{str(expected)[:16]}…): the file is corrupt, truncated or was modified. Download or copy the "
                "patch again."
            )


def _read_safetensors(path: Path, keys: Sequence[str]) -> dict[str, torch.Tensor]:
    try:
        with safe_open(str(path), framework="pt") as handle:
            present = set(handle.keys())
            missing = [key for key in keys if key not in present]
            extra = sorted(present - set(keys))
            if missing or extra:
                raise PatchFormatError(
                    f"{path} does not hold the tensors the manifest declares (missing: {missing or 'none'}; "
                    f"unexpected: {extra or 'none'}). Recreate the patch."
                )
            return {key: handle.get_tensor(key) for key in keys}
    except SafetensorError as error:
        raise PatchFormatError(f"{path} is not a readable safetensors file ({error}); the patch is corrupt.") from error


def _check_adapter_config(patch_dir: Path, patch: ForgetPatch) -> None:
    path = patch_dir / ADAPTER_CONFIG_NAME
    try:
        config = json.loads(path.read_text(encoding="utf-8"))
    except FileNotFoundError as error:
        raise PatchFormatError(f"Patch {patch_dir} is incomplete: {ADAPTER_CONFIG_NAME} is missing.") from error
    except json.JSONDecodeError as error:
        raise PatchFormatError(f"{path} is not valid JSON ({error}); the patch is corrupt.") from error

    expected = adapter_config(patch)
    for key in ("trainable_token_indices", "modules_to_save", "target_modules", "peft_type"):
        if config.get(key) != expected[key]:
            raise PatchFormatError(
                f"{path} sets {key}={config.get(key)!r} but the manifest requires {expected[key]!r}. Without the "
                "head in modules_to_save, PEFT would write the head into the base model and could not unload it. "
                "Restore the file or recreate the patch."
            )


# ----- validation -----


def validate_patch(patch: ForgetPatch) -> None:
    """Check shapes, dtypes, token ids and finiteness of every tensor in ``patch``.

    Raises:
        PatchFormatError: naming the first inconsistent tensor or value.
    """
    vocab_size, hidden = patch.embedding_shape
    dtype = patch.dtype
    ids = patch.token_ids
    if not ids:
        raise PatchFormatError("The patch edits no embedding rows; a forget patch needs at least one token id.")
    if len(set(ids)) != len(ids):
        raise PatchFormatError("The patch lists a token id more than once; each embedding row may be edited once.")
    out_of_range = [token_id for token_id in ids if not 0 <= token_id < vocab_size]
    if out_of_range:
        raise PatchFormatError(
            f"Token id(s) {out_of_range[:3]} are outside the embedding matrix of {vocab_size} rows; the patch does "
            "not belong to this model or is corrupt."
        )
    for label, tensor in (("new embedding rows", patch.new_rows), ("original embedding rows", patch.original_rows)):
        _check_tensor(label, tensor, (len(ids), hidden), dtype)
    if set(patch.new_head) != set(patch.original_head) or not patch.new_head:
        raise PatchFormatError(
            f"Head tensors differ between new values {sorted(patch.new_head)} and original values "
            f"{sorted(patch.original_head)}; the patch is corrupt."
        )
    for name in patch.new_head:
        shape = tuple(patch.original_head[name].shape)
        _check_tensor(f"original head {name}", patch.original_head[name], shape, dtype)
        _check_tensor(f"new head {name}", patch.new_head[name], shape, dtype)
    _validate_passthrough(patch)


def _validate_passthrough(patch: ForgetPatch) -> None:
    listed = patch.manifest.get("peft_passthrough", [])
    held = sorted(patch.peft_passthrough)
    if listed != held:
        raise PatchFormatError(
            f"The manifest lists the PEFT passthrough tensors {listed} but the patch contains {held}. The list must be "
            "sorted, without repeats, and match the tensors. Recreate the patch."
        )
    written = {f"{patch.embedding_module}.weight"} | {f"{patch.head_module}.{name}" for name in patch.new_head}
    for name, tensor in patch.peft_passthrough.items():
        if name in written or name.startswith(f"{patch.head_module}.") or "." not in name:
            raise PatchFormatError(
                f"PEFT passthrough tensor {name!r} is not a parameter of a module other than the embeddings "
                f"{patch.embedding_module!r} and the head {patch.head_module!r}; the patch is corrupt."
            )
        _check_tensor(f"PEFT passthrough tensor {name}", tensor, tuple(tensor.shape), patch.dtype)


def _check_tensor(label: str, tensor: torch.Tensor, shape: tuple[int, ...], dtype: torch.dtype) -> None:
    if tuple(tensor.shape) != tuple(shape):
        raise PatchFormatError(f"The {label} have shape {tuple(tensor.shape)}, expected {tuple(shape)}.")
    if tensor.dtype != dtype:
        raise PatchFormatError(f"The {label} have dtype {tensor.dtype}, but the manifest declares {dtype}.")
    bad = (~torch.isfinite(tensor)).sum().item()
    if bad:
        raise PatchFormatError(
            f"The {label} contain {bad} NaN or infinite value(s); applying them would break the model. "
            "Recreate the patch (for example with a lower --lr)."
        )


def read_touched_values(patch_like: ForgetPatch, get_tensor: Callable[[str], torch.Tensor]) -> TouchedValues:
    """Read the values at the positions ``patch_like`` touches from any tensor source.

    ``get_tensor`` maps a parameter name (``<embedding_module>.weight``, ``<head_module>.<name>``,
    or a PEFT passthrough name) to a tensor: a model's parameters or a checkpoint's tensors.
    Passthrough tensors are read for the names in ``patch_like.peft_passthrough``, if it has one.
    """
    weight = get_tensor(f"{patch_like.embedding_module}.weight")
    index = torch.tensor(patch_like.token_ids, dtype=torch.long, device=weight.device)
    rows = weight.detach().index_select(0, index).to("cpu")
    head = {name: get_tensor(f"{patch_like.head_module}.{name}").detach().to("cpu").clone() for name in patch_like.new_head}
    names = sorted(getattr(patch_like, "peft_passthrough", {}))
    passthrough = {name: get_tensor(name).detach().to("cpu").clone() for name in names}
    return TouchedValues(rows, head, passthrough)
