"""Apply a forget patch to an in-memory model and remove it again, bit for bit.

A model records the patches it carries, oldest first, in ``config.steu_patch_chain``, so the
record travels with ``save_pretrained`` and with patched model directories. Applying checks the
base fingerprint and that the patch's parents are exactly the patches the model carries;
reverting checks that the patch is the newest one and that the model holds its values.

A patch's PEFT passthrough tensors are part of the fingerprint, so applying rejects a model
whose values there differ from the patch's. Neither applying nor reverting writes them, and
reverting does not compare them because it restores only the rows and the head.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Iterator, Mapping, Sequence
from typing import Any

import torch
from torch import nn

from .errors import FingerprintMismatchError, PatchFormatError, PatchStateError, UnsupportedModelError
from .patch import ForgetPatch, TouchedValues, compute_fingerprint, dtype_name, read_touched_values

logger = logging.getLogger(__name__)

CHAIN_ATTRIBUTE = "steu_patch_chain"


def chain_entry(patch: ForgetPatch) -> dict[str, Any]:
    """Return the record of ``patch`` kept in ``config.steu_patch_chain`` and in child manifests."""
    return {"patch_id": patch.patch_id, "forget_classes": patch.forget_classes}


def get_chain(config: Any) -> list[dict[str, Any]]:
    """Return the patches recorded on a model config (or config dict), oldest first."""
    value = config.get(CHAIN_ATTRIBUTE) if isinstance(config, Mapping) else getattr(config, CHAIN_ATTRIBUTE, None)
    return [dict(entry) for entry in value or []]


def _describe(entry: Mapping[str, Any]) -> str:
    classes = ", ".join(entry.get("forget_classes", [])) or "?"
    # A patch gets its id when saved, so an applied but unsaved patch records None.
    name = f"patch {entry['patch_id'][:12]}" if entry.get("patch_id") else "an unsaved patch"
    return f"{name} (forgets {classes})"


def check_chain_for_apply(patch: ForgetPatch, chain: Sequence[Mapping[str, Any]]) -> None:
    """Raise :class:`PatchStateError` unless the model carries exactly the patch's parents."""
    carried = [entry["patch_id"] for entry in chain]
    parents = patch.parent_patch_ids
    if patch.patch_id in carried:
        raise PatchStateError(f"The model already carries {_describe(chain_entry(patch))}; it cannot be applied twice.")
    if carried == parents:
        return
    if carried[: len(parents)] == parents:
        newer = [_describe(entry) for entry in chain[len(parents) :]][::-1]
        raise PatchStateError(
            f"{_describe(chain_entry(patch))} was created on a model carrying {len(parents)} patch(es), but this model "
            f"also carries {', '.join(newer)}. Revert {newer[0]} first with `steu-patch revert`."
        )
    missing = [entry for entry in patch.manifest.get("parent_patches", []) if entry["patch_id"] not in carried]
    if missing:
        raise PatchStateError(
            f"{_describe(chain_entry(patch))} was created on a model carrying {_describe(missing[0])}, which this "
            "model does not carry. Apply that patch first with `steu-patch apply`."
        )
    raise PatchStateError(
        f"{_describe(chain_entry(patch))} expects the patch order {parents}, but the model carries {carried}. "
        "Revert the model's patches and apply them in the recorded order."
    )


def check_chain_for_revert(patch: ForgetPatch, chain: Sequence[Mapping[str, Any]]) -> None:
    """Raise :class:`PatchStateError` unless ``patch`` is the newest patch the model records.

    A model whose config records no patch at all is accepted; the value check decides then.
    """
    carried = [entry["patch_id"] for entry in chain]
    if not carried:
        return
    if patch.patch_id not in carried:
        raise PatchStateError(
            f"The model does not carry {_describe(chain_entry(patch))}; it records "
            f"{', '.join(_describe(entry) for entry in chain)}."
        )
    if carried[-1] != patch.patch_id:
        newer = [_describe(entry) for entry in chain[carried.index(patch.patch_id) + 1 :]][::-1]
        raise PatchStateError(
            f"{_describe(chain_entry(patch))} cannot be reverted before the patches applied after it. Revert "
            f"{newer[0]} first."
        )


def check_carries_values(patch: ForgetPatch, current: TouchedValues, model_name: str) -> None:
    """Raise :class:`PatchStateError` unless ``current`` holds the patch's new rows and head.

    Reverting restores only rows and head, so the PEFT passthrough tensors are not compared.
    """
    written = patch.new_values().without_passthrough()
    current = current.without_passthrough()
    if not current.equals(written):
        changed = current.differing(written, patch.token_ids)
        raise PatchStateError(
            f"{model_name} does not carry the values of {_describe(chain_entry(patch))}: {'; '.join(changed)} "
            "differ. Revert only a model that this patch was applied to."
        )


def check_fingerprint(patch: ForgetPatch, current: TouchedValues, embedding_shape: Sequence[int], dtype: torch.dtype) -> None:
    """Raise :class:`FingerprintMismatchError` when the model is not the patch's base model."""
    actual = compute_fingerprint(patch.token_ids, current, embedding_shape, dtype)
    if actual != patch.fingerprint:
        changed = current.differing(patch.original_values(), patch.token_ids)
        raise FingerprintMismatchError(
            f"The model does not match the patch's base model: fingerprint {actual} but the patch expects "
            f"{patch.fingerprint} (base {patch.manifest['base_model'].get('name_or_path')!r}; differing: "
            f"{'; '.join(changed) or 'none'}). Apply the patch to the model it was created on, or pass --force "
            "(force=True) to overwrite these values anyway. Reverting a forced patch writes the patch's recorded "
            "original values, not this model's current ones."
        )


def check_compatible(patch: ForgetPatch, embedding_shape: Sequence[int], dtype: torch.dtype, head_shapes: Mapping[str, Sequence[int]]) -> None:
    """Raise when shapes or dtypes of the model cannot hold the patch's tensors."""
    if tuple(embedding_shape) != patch.embedding_shape:
        raise PatchFormatError(
            f"The model's embedding matrix has shape {tuple(embedding_shape)} but the patch was made for "
            f"{patch.embedding_shape}; the patch belongs to another model."
        )
    if dtype != patch.dtype:
        raise PatchFormatError(
            f"The model is {dtype_name(dtype)} but the patch holds {dtype_name(patch.dtype)} values; bit-exact "
            f"apply and revert need the same dtype. Load the model with dtype=torch.{dtype_name(patch.dtype)} "
            "(torch_dtype in older transformers releases)."
        )
    for name, tensor in patch.new_head.items():
        shape = head_shapes.get(name)
        if shape is None or tuple(shape) != tuple(tensor.shape):
            raise PatchFormatError(
                f"Head tensor {patch.head_module}.{name} has shape {None if shape is None else tuple(shape)} in the "
                f"model but {tuple(tensor.shape)} in the patch; the patch belongs to another model."
            )


def _module(model: nn.Module, name: str, role: str) -> nn.Module:
    try:
        return model.get_submodule(name)
    except AttributeError as error:
        raise UnsupportedModelError(
            f"The model {type(model).__name__} has no module {name!r} ({role}) that the patch edits; it is not the "
            "architecture the patch was created for."
        ) from error


def _parameters(model: nn.Module, patch: ForgetPatch) -> dict[str, torch.Tensor]:
    embedding = _module(model, patch.embedding_module, "input embeddings")
    head = _module(model, patch.head_module, "classification head")
    tensors = {f"{patch.embedding_module}.weight": embedding.weight}
    head_parameters = dict(head.named_parameters(recurse=False))
    for name in patch.new_head:
        if name not in head_parameters:
            raise UnsupportedModelError(
                f"The model's classification head {patch.head_module!r} has no parameter {name!r}; it has "
                f"{sorted(head_parameters)}."
            )
        tensors[f"{patch.head_module}.{name}"] = head_parameters[name]
    for name in patch.peft_passthrough:
        tensors[name] = _passthrough_tensor(model, name)
    return tensors


def _passthrough_tensor(model: nn.Module, name: str) -> torch.Tensor:
    module_name, _, attribute = name.rpartition(".")
    try:
        tensor = getattr(model.get_submodule(module_name), attribute, None)
    except AttributeError:
        tensor = None
    if not isinstance(tensor, torch.Tensor):
        raise UnsupportedModelError(
            f"The model {type(model).__name__} has no tensor {name!r}, which the patch records as a PEFT passthrough "
            "tensor; it is not the architecture the patch was created for."
        )
    return tensor


def _write(model: nn.Module, patch: ForgetPatch, values: TouchedValues) -> None:
    tensors = _parameters(model, patch)
    weight = tensors[f"{patch.embedding_module}.weight"]
    index = torch.tensor(patch.token_ids, dtype=torch.long, device=weight.device)
    with torch.no_grad():
        weight.index_copy_(0, index, values.rows.to(weight.device))
        for name, tensor in values.head.items():
            tensors[f"{patch.head_module}.{name}"].copy_(tensor.to(tensors[f"{patch.head_module}.{name}"].device))


def read_model_values(model: nn.Module, patch: ForgetPatch) -> TouchedValues:
    """Read the model's current values at every position ``patch`` touches."""
    tensors = _parameters(model, patch)
    weight = tensors[f"{patch.embedding_module}.weight"]
    head_shapes = {name: tensors[f"{patch.head_module}.{name}"].shape for name in patch.new_head}
    check_compatible(patch, weight.shape, weight.dtype, head_shapes)
    return read_touched_values(patch, tensors.__getitem__)


def apply_patch(model: nn.Module, patch: ForgetPatch, *, force: bool = False) -> nn.Module:
    """Write the patch's new values into ``model`` in place and record it in the config.

    Raises:
        FingerprintMismatchError: the model is not the patch's base (skipped with ``force``).
        PatchStateError: the model carries the wrong patches for this one (skipped with ``force``).
    """
    current = read_model_values(model, patch)
    config = getattr(model, "config", None)
    chain = get_chain(config)
    if current.equals(patch.new_values()) and any(entry["patch_id"] == patch.patch_id for entry in chain):
        raise PatchStateError(f"The model already carries {_describe(chain_entry(patch))}.")
    if not force:
        check_chain_for_apply(patch, chain)
        check_fingerprint(patch, current, patch.embedding_shape, patch.dtype)
    elif compute_fingerprint(patch.token_ids, current, patch.embedding_shape, patch.dtype) != patch.fingerprint:
        logger.warning("Forcing %s onto a model whose fingerprint differs from its base.", _describe(chain_entry(patch)))

    _write(model, patch, patch.new_values())
    if config is not None:
        setattr(config, CHAIN_ATTRIBUTE, chain + [chain_entry(patch)])
    return model


def revert_patch(model: nn.Module, patch: ForgetPatch) -> nn.Module:
    """Restore the patch's original values in ``model`` in place.

    Raises:
        PatchStateError: a newer patch must be reverted first, or the model does not hold the
            patch's values (naming the rows and tensors that differ).
    """
    current = read_model_values(model, patch)
    config = getattr(model, "config", None)
    chain = get_chain(config)
    check_chain_for_revert(patch, chain)
    check_carries_values(patch, current, "The model")
    _write(model, patch, patch.original_values())
    if config is not None:
        remaining = [entry for entry in chain if entry["patch_id"] != patch.patch_id]
        setattr(config, CHAIN_ATTRIBUTE, remaining or None)
        if not remaining and hasattr(config, CHAIN_ATTRIBUTE):
            delattr(config, CHAIN_ATTRIBUTE)
    return model


class PatchedModel(nn.Module):
    """A model that carries a forget patch, with PEFT-style controls.

    The patch is written into the base model's parameters, so inference costs nothing extra.
    ``disable_patch()`` restores the originals inside a ``with`` block, ``unload()`` restores them
    for good and returns the bare model, and ``merge_and_unload()`` returns the bare model with
    the patch kept.

    Example:
        >>> patched = PatchedModel.from_pretrained(model, "patches/cardio")
        >>> logits = patched(**batch).logits
        >>> original = patched.unload()
    """

    def __init__(self, model: nn.Module, patch: ForgetPatch, *, force: bool = False) -> None:
        super().__init__()
        apply_patch(model, patch, force=force)
        self.base_model = model
        self.patch = patch
        self._enabled = True

    @classmethod
    def from_pretrained(
        cls, model: nn.Module, patch: str | ForgetPatch, *, revision: str | None = None, force: bool = False, **hub_kwargs: Any
    ) -> PatchedModel:
        """Load a patch (directory, Hub id or :class:`ForgetPatch`) and apply it to ``model``."""
        if not isinstance(patch, ForgetPatch):
            patch = ForgetPatch.from_pretrained(patch, revision=revision, **hub_kwargs)
        return cls(model, patch, force=force)

    @property
    def config(self) -> Any:
        return self.base_model.config

    def forward(self, *args: Any, **kwargs: Any) -> Any:
        return self.base_model(*args, **kwargs)

    @contextlib.contextmanager
    def disable_patch(self) -> Iterator[nn.Module]:
        """Run the original model inside a ``with`` block, then put the patch back."""
        if not self._enabled:
            raise PatchStateError("The patch is already disabled.")
        revert_patch(self.base_model, self.patch)
        self._enabled = False
        try:
            yield self.base_model
        finally:
            apply_patch(self.base_model, self.patch, force=True)
            self._enabled = True

    def merge_and_unload(self) -> nn.Module:
        """Return the base model with the patch's values kept in it."""
        return self.base_model

    def unload(self) -> nn.Module:
        """Restore the original values and return the bare base model."""
        revert_patch(self.base_model, self.patch)
        return self.base_model
