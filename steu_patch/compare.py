"""Verify bit for bit that a model checkpoint equals a base checkpoint plus a forget patch.

Both checkpoints are streamed tensor by tensor from their safetensors files, without building
torch modules, and may be sharded differently. Every tensor must have the same name, shape,
dtype and bytes as in the base model, except the embedding rows at the patch's token ids and
the head tensors, which must hold the patch's new values.
"""

from __future__ import annotations

import logging
from collections.abc import Iterator
from contextlib import ExitStack
from dataclasses import asdict, dataclass
from typing import Any

import torch
from safetensors import SafetensorError, safe_open
from tqdm.auto import tqdm

from .checkpoint import Checkpoint
from .errors import ModelNotFoundError, UnsupportedModelError
from .patch import ForgetPatch

logger = logging.getLogger(__name__)

# Kinds of TensorDifference.
SHAPE = "shape"
DTYPE = "dtype"
PATCHED_ROWS = "patched_rows"
HEAD = "head"
UNPATCHED_VALUES = "unpatched_values"


@dataclass(frozen=True)
class TensorDifference:
    """One way in which a tensor of the model differs from base plus patch.

    Attributes:
        tensor: checkpoint key of the tensor.
        kind: one of ``shape`` and ``dtype`` (the tensor cannot be compared), ``patched_rows``
            (embedding rows at the patch's token ids differ from its new values), ``head`` (a head
            tensor differs from the patch's new values) and ``unpatched_values`` (values that the
            patch does not touch differ from the base model).
        changed_values: number of differing elements (for shape and dtype: the model tensor's size).
        detail: one sentence for people.
    """

    tensor: str
    kind: str
    changed_values: int
    detail: str


@dataclass(frozen=True)
class ModelComparison:
    """The result of :func:`compare_with_patch`.

    Attributes:
        tensors_compared: tensors present in both checkpoints.
        missing_keys: tensors of the base model that the model lacks.
        extra_keys: tensors of the model that the base model lacks.
        differences: every difference found, in base checkpoint order.
        embedding_tensor / head_tensors: checkpoint keys that the patch writes.
    """

    tensors_compared: int
    missing_keys: tuple[str, ...]
    extra_keys: tuple[str, ...]
    differences: tuple[TensorDifference, ...]
    embedding_tensor: str
    head_tensors: tuple[str, ...]

    @property
    def keys_match(self) -> bool:
        return not self.missing_keys and not self.extra_keys

    @property
    def written_differences(self) -> tuple[TensorDifference, ...]:
        """Differences at values the patch writes, including a shape or dtype change of a written tensor."""
        return tuple(difference for difference in self.differences if self._is_written(difference))

    @property
    def unwritten_differences(self) -> tuple[TensorDifference, ...]:
        """Differences at values the patch does not write."""
        return tuple(difference for difference in self.differences if not self._is_written(difference))

    def _is_written(self, difference: TensorDifference) -> bool:
        if difference.kind in (PATCHED_ROWS, HEAD):
            return True
        return difference.kind in (SHAPE, DTYPE) and difference.tensor in (self.embedding_tensor, *self.head_tensors)

    @property
    def identical(self) -> bool:
        return self.keys_match and not self.differences

    def to_dict(self) -> dict[str, Any]:
        data = asdict(self)
        data["missing_keys"] = list(self.missing_keys)
        data["extra_keys"] = list(self.extra_keys)
        data["head_tensors"] = list(self.head_tensors)
        data["differences"] = [asdict(difference) for difference in self.differences]
        return data


class _TensorReader:
    """Reads tensors of a checkpoint by key, keeping each shard open once."""

    def __init__(self, checkpoint: Checkpoint, stack: ExitStack) -> None:
        self.checkpoint = checkpoint
        self.stack = stack
        self.handles: dict[str, Any] = {}

    def get(self, key: str) -> torch.Tensor:
        file_name = self.checkpoint.weight_map[key]
        if file_name not in self.handles:
            path = self.checkpoint.model_dir / file_name
            try:
                self.handles[file_name] = self.stack.enter_context(safe_open(str(path), framework="pt"))
            except (SafetensorError, OSError) as error:
                raise ModelNotFoundError(f"{path} is not a readable safetensors file ({error}).") from error
        return self.handles[file_name].get_tensor(key)


def compare_with_patch(
    base: Checkpoint, model: Checkpoint, patch: ForgetPatch, *, show_progress: bool = False
) -> ModelComparison:
    """Compare ``model`` with ``base`` plus ``patch``, value by value.

    Raises:
        UnsupportedModelError: the base checkpoint lacks the embedding matrix or a head tensor
            that the patch edits.
    """
    embedding_key = base.resolve_key(f"{patch.embedding_module}.weight")
    head_keys = {base.resolve_key(f"{patch.head_module}.{name}"): name for name in sorted(patch.new_head)}
    base_keys, model_keys = set(base.weight_map), set(model.weight_map)
    common = base_keys & model_keys

    differences: list[TensorDifference] = []
    with ExitStack() as stack:
        reader = _TensorReader(model, stack)
        progress = tqdm(total=len(common), desc="Comparing tensors", unit="tensor", disable=not show_progress)
        stack.enter_context(progress)
        for key, base_tensor in _iter_common(base, common):
            actual = reader.get(key)
            if key == embedding_key:
                differences += _compare_embedding(key, base_tensor, actual, patch)
            elif key in head_keys:
                differences += _compare_tensor(key, patch.new_head[head_keys[key]], actual, HEAD, "the patch's new values")
            else:
                differences += _compare_tensor(key, base_tensor, actual, UNPATCHED_VALUES, "the base model")
            progress.update()

    return ModelComparison(
        tensors_compared=len(common),
        missing_keys=tuple(sorted(base_keys - model_keys)),
        extra_keys=tuple(sorted(model_keys - base_keys)),
        differences=tuple(differences),
        embedding_tensor=embedding_key,
        head_tensors=tuple(head_keys),
    )


def _iter_common(base: Checkpoint, keys: set[str]) -> Iterator[tuple[str, torch.Tensor]]:
    for key, tensor in base.iter_tensors():
        if key in keys:
            yield key, tensor


def differing_elements(expected: torch.Tensor, actual: torch.Tensor) -> torch.Tensor:
    """Return a boolean tensor of ``expected``'s shape: True where the bytes of an element differ.

    Comparing bytes instead of values treats NaN payloads, -0.0 and +0.0 as the bits they are.
    Both tensors must have the same shape and dtype.
    """
    itemsize = expected.element_size()
    left = expected.contiguous().reshape(-1).view(torch.uint8).reshape(-1, itemsize)
    right = actual.contiguous().reshape(-1).view(torch.uint8).reshape(-1, itemsize)
    return (left != right).any(dim=1).reshape(expected.shape)


def _mismatch(key: str, expected: torch.Tensor, actual: torch.Tensor) -> TensorDifference | None:
    if actual.shape != expected.shape:
        return TensorDifference(
            key, SHAPE, actual.numel(), f"shape {tuple(actual.shape)} instead of {tuple(expected.shape)}"
        )
    if actual.dtype != expected.dtype:
        return TensorDifference(key, DTYPE, actual.numel(), f"dtype {actual.dtype} instead of {expected.dtype}")
    return None


def _compare_tensor(key: str, expected: torch.Tensor, actual: torch.Tensor, kind: str, reference: str) -> list[TensorDifference]:
    mismatch = _mismatch(key, expected, actual)
    if mismatch is not None:
        return [mismatch]
    count = int(differing_elements(expected, actual).sum())
    if count == 0:
        return []
    return [TensorDifference(key, kind, count, f"{count} of {expected.numel()} value(s) differ from {reference}")]


def _compare_embedding(key: str, base: torch.Tensor, actual: torch.Tensor, patch: ForgetPatch) -> list[TensorDifference]:
    if tuple(base.shape) != patch.embedding_shape or base.dtype != patch.dtype:
        raise UnsupportedModelError(
            f"The base model's {key} has shape {tuple(base.shape)} and dtype {base.dtype}, but the patch was made "
            f"for {patch.embedding_shape} {patch.dtype}; pass the base model the patch was created on."
        )
    mismatch = _mismatch(key, base, actual)
    if mismatch is not None:
        return [mismatch]

    rows = torch.tensor(patch.token_ids, dtype=torch.long)
    expected = base.clone()
    expected.index_copy_(0, rows, patch.new_rows)
    changed = differing_elements(expected, actual)
    in_rows = int(changed.index_select(0, rows).sum())
    outside = int(changed.sum()) - in_rows

    differences = []
    if in_rows:
        differences.append(TensorDifference(key, PATCHED_ROWS, in_rows, _describe_rows(changed, actual, patch)))
    if outside:
        differences.append(
            TensorDifference(
                key, UNPATCHED_VALUES, outside,
                f"{outside} value(s) outside the patch's {len(rows)} rows differ from the base model",
            )
        )
    return differences


def _describe_rows(changed: torch.Tensor, actual: torch.Tensor, patch: ForgetPatch) -> str:
    rows = torch.tensor(patch.token_ids, dtype=torch.long)
    row_changed = changed.index_select(0, rows).any(dim=1)
    bad_ids = [token_id for token_id, bad in zip(patch.token_ids, row_changed.tolist()) if bad]
    still_original = sum(
        1
        for index, bad in enumerate(row_changed.tolist())
        if bad and not differing_elements(patch.original_rows[index], actual[patch.token_ids[index]]).any()
    )
    shown = ", ".join(str(token_id) for token_id in bad_ids[:5]) + (" …" if len(bad_ids) > 5 else "")
    detail = (
        f"{int(changed.index_select(0, rows).sum())} value(s) in {len(bad_ids)} patched row(s) (token ids {shown}) "
        "differ from the patch's new values"
    )
    if still_original:
        detail += f"; {still_original} of these rows still hold the base model's values"
    return detail
