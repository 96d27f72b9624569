"""Write a patched (or reverted) copy of a model directory without loading the model.

The writer streams the safetensors checkpoint shard by shard: shards that hold no touched tensor
are copied byte for byte, the others are rewritten with only the touched rows and head tensors
replaced. Config and tokenizer files are copied, ``config.json`` gains the updated patch chain,
and the result appears at the output path only when complete. A patch's PEFT passthrough tensors
are read for the fingerprint check and never written.
"""

from __future__ import annotations

import json
import logging
import os
import shutil
from collections.abc import Iterator
from contextlib import ExitStack
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file

from .apply import (
    CHAIN_ATTRIBUTE,
    chain_entry,
    check_chain_for_apply,
    check_carries_values,
    check_chain_for_revert,
    check_compatible,
    check_fingerprint,
    get_chain,
)
from .errors import ModelNotFoundError, UnsupportedModelError
from .patch import PICKLE_SUFFIXES, ForgetPatch, TouchedValues, atomic_directory, compute_fingerprint, read_touched_values

logger = logging.getLogger(__name__)

SINGLE_FILE = "model.safetensors"
INDEX_FILE = "model.safetensors.index.json"


class Checkpoint:
    """The safetensors weights of a model directory, single-file or sharded with an index."""

    def __init__(self, model_dir: str | os.PathLike) -> None:
        self.model_dir = Path(model_dir)
        if not self.model_dir.is_dir():
            raise ModelNotFoundError(f"Model directory {self.model_dir} does not exist.")
        if not (self.model_dir / "config.json").is_file():
            raise ModelNotFoundError(
                f"{self.model_dir} has no config.json; pass a directory written by save_pretrained()."
            )
        self.weight_map = self._read_weight_map()

    def _read_weight_map(self) -> dict[str, str]:
        index = self.model_dir / INDEX_FILE
        if index.is_file():
            try:
                return dict(json.loads(index.read_text(encoding="utf-8"))["weight_map"])
            except (json.JSONDecodeError, KeyError, TypeError) as error:
                raise ModelNotFoundError(f"{index} is not a valid safetensors index ({error}).") from error
        single = self.model_dir / SINGLE_FILE
        if single.is_file():
            with _open(single) as handle:
                return {key: SINGLE_FILE for key in handle.keys()}
        pickles = sorted(path.name for path in self.model_dir.iterdir() if path.suffix in PICKLE_SUFFIXES)
        hint = (
            f" It holds pickle weights ({', '.join(pickles)}), which steu-patch does not load; convert them with "
            "`AutoModelForSequenceClassification.from_pretrained(DIR).save_pretrained(DIR)`."
            if pickles
            else ""
        )
        raise ModelNotFoundError(f"{self.model_dir} contains no {SINGLE_FILE} or {INDEX_FILE}.{hint}")

    @property
    def files(self) -> list[str]:
        return sorted(set(self.weight_map.values()))

    def config(self) -> dict[str, Any]:
        return json.loads((self.model_dir / "config.json").read_text(encoding="utf-8"))

    def resolve_key(self, name: str) -> str:
        """Return the checkpoint key of a parameter name, tolerating a base-model prefix difference."""
        if name in self.weight_map:
            return name
        matches = [key for key in self.weight_map if key.endswith("." + name) or name.endswith("." + key)]
        if len(matches) == 1:
            return matches[0]
        raise UnsupportedModelError(
            f"The checkpoint in {self.model_dir} has no tensor {name!r}"
            + (f" (ambiguous: {matches[:3]})" if matches else "")
            + "; it is not the architecture the patch was created for."
        )

    def get_tensor(self, name: str) -> torch.Tensor:
        key = self.resolve_key(name)
        with _open(self.model_dir / self.weight_map[key]) as handle:
            return handle.get_tensor(key)

    def iter_tensors(self) -> Iterator[tuple[str, torch.Tensor]]:
        """Yield every tensor in file order, holding one shard open at a time."""
        for file_name in self.files:
            with _open(self.model_dir / file_name) as handle:
                for key in handle.keys():
                    yield key, handle.get_tensor(key)


def _open(path: Path) -> Any:
    try:
        return safe_open(str(path), framework="pt")
    except (SafetensorError, OSError) as error:
        raise ModelNotFoundError(f"{path} is not a readable safetensors file ({error}).") from error


def read_checkpoint_values(checkpoint: Checkpoint, patch: ForgetPatch) -> TouchedValues:
    """Read the values at the positions ``patch`` touches, checking shapes and dtype first."""
    weight = checkpoint.get_tensor(f"{patch.embedding_module}.weight")
    head_shapes = {name: checkpoint.get_tensor(f"{patch.head_module}.{name}").shape for name in patch.new_head}
    check_compatible(patch, weight.shape, weight.dtype, head_shapes)
    return read_touched_values(patch, checkpoint.get_tensor)


def write_patched_model(
    model_dir: str | os.PathLike,
    patch: ForgetPatch,
    output_dir: str | os.PathLike,
    *,
    revert: bool = False,
    force: bool = False,
    overwrite: bool = False,
) -> Path:
    """Write ``model_dir`` with ``patch`` applied (or reverted) to ``output_dir``.

    Raises:
        FingerprintMismatchError: applying to a model that is not the patch's base (unless ``force``).
        PatchStateError: reverting a model that does not carry the patch, or wrong stacking order.
    """
    if patch.source and Path(output_dir).resolve() == Path(patch.source).resolve():
        raise FileExistsError(
            f"Output {output_dir} is the patch directory itself; writing the model there would delete the patch. "
            "Choose another output directory."
        )
    checkpoint = Checkpoint(model_dir)
    config = checkpoint.config()
    chain = get_chain(config)
    current = read_checkpoint_values(checkpoint, patch)
    if revert:
        check_chain_for_revert(patch, chain)
        check_carries_values(patch, current, str(model_dir))
        values = patch.original_values()
        new_chain = [entry for entry in chain if entry["patch_id"] != patch.patch_id]
    else:
        if not force:
            check_chain_for_apply(patch, chain)
            check_fingerprint(patch, current, patch.embedding_shape, patch.dtype)
        elif compute_fingerprint(patch.token_ids, current, patch.embedding_shape, patch.dtype) != patch.fingerprint:
            logger.warning("Forcing patch %s onto %s, whose fingerprint differs from the patch's base.", patch.patch_id[:12], model_dir)
        values = patch.new_values()
        new_chain = chain + [chain_entry(patch)]

    replacements = _replacements(checkpoint, patch, values)
    output_dir = Path(output_dir)
    with atomic_directory(output_dir, overwrite=overwrite) as staging:
        _copy_tree(checkpoint, replacements, staging, skip=(staging, output_dir))
        if new_chain:
            config[CHAIN_ATTRIBUTE] = new_chain
        else:
            config.pop(CHAIN_ATTRIBUTE, None)
        (staging / "config.json").write_text(json.dumps(config, indent=2, sort_keys=True) + "\n", encoding="utf-8")
    logger.info("Wrote %s model to %s", "reverted" if revert else "patched", output_dir)
    return output_dir


def _replacements(checkpoint: Checkpoint, patch: ForgetPatch, values: TouchedValues) -> dict[str, torch.Tensor]:
    """Return the full new tensors of every touched checkpoint key."""
    embedding_key = checkpoint.resolve_key(f"{patch.embedding_module}.weight")
    weight = checkpoint.get_tensor(embedding_key).clone()
    weight.index_copy_(0, torch.tensor(patch.token_ids, dtype=torch.long), values.rows)
    replaced = {embedding_key: weight}
    for name, tensor in values.head.items():
        replaced[checkpoint.resolve_key(f"{patch.head_module}.{name}")] = tensor.clone()
    return replaced


def _copy_tree(checkpoint: Checkpoint, replacements: dict[str, torch.Tensor], staging: Path, skip: tuple[Path, ...]) -> None:
    touched_files = {checkpoint.weight_map[key] for key in replacements}
    # The output may lie inside the model directory: its staging directory and an older output
    # there are not part of the model.
    skipped = {path.resolve() for path in skip}
    for source in sorted(checkpoint.model_dir.iterdir()):
        target = staging / source.name
        if source.resolve() in skipped:
            continue
        if source.name in touched_files:
            _rewrite_shard(source, replacements, target)
        elif source.suffix in PICKLE_SUFFIXES:
            logger.warning("Skipped %s: pickle weights would be stale next to the patched safetensors.", source.name)
        elif source.is_dir():
            shutil.copytree(source, target)
        elif source.name != "config.json":
            shutil.copy2(source, target)


def _rewrite_shard(source: Path, replacements: dict[str, torch.Tensor], target: Path) -> None:
    with ExitStack() as stack:
        handle = stack.enter_context(_open(source))
        metadata = handle.metadata() or {"format": "pt"}
        tensors = {key: replacements.get(key, None) for key in handle.keys()}
        for key, value in tensors.items():
            if value is None:
                tensors[key] = handle.get_tensor(key)
    save_file(tensors, str(target), metadata=metadata)
