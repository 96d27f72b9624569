"""Locate the parts of a sequence classifier that a forget patch edits.

A patch edits two things: rows of the input-embedding matrix and the final linear layer of the
classification head. ``HEAD_MODULES`` names that layer for each architecture; ``--head`` (the
``head`` argument below) overrides it for architectures not in the table.
"""

from __future__ import annotations

import logging
from dataclasses import dataclass

import torch
from torch import nn

from .errors import UnsupportedModelError

logger = logging.getLogger(__name__)

# Final classification layer by ``config.model_type``. Only this layer is trained: for example
# DistilBERT's ``pre_classifier`` and RoBERTa's ``classifier.dense`` stay frozen.
HEAD_MODULES: dict[str, str] = {
    "albert": "classifier",
    "bert": "classifier",
    "camembert": "classifier.out_proj",
    "deberta": "classifier",
    "deberta-v2": "classifier",
    "distilbert": "classifier",
    "electra": "classifier.out_proj",
    "gemma": "score",
    "gemma2": "score",
    "gpt2": "score",
    "llama": "score",
    "mistral": "score",
    "modernbert": "classifier",
    "mpnet": "classifier.out_proj",
    "qwen2": "score",
    "roberta": "classifier.out_proj",
    "xlm-roberta": "classifier.out_proj",
}

# Tried in order when the model type is not in ``HEAD_MODULES``.
_FALLBACK_HEADS = ("classifier.out_proj", "classifier", "score")


@dataclass(frozen=True)
class EditableParts:
    """Names of the modules a patch edits, as they appear in ``model.named_modules()``."""

    embedding_name: str
    head_name: str

    @property
    def embedding_weight_key(self) -> str:
        return f"{self.embedding_name}.weight"

    def head_parameter_keys(self, model: nn.Module) -> list[str]:
        head = model.get_submodule(self.head_name)
        return [f"{self.head_name}.{name}" for name, _ in head.named_parameters(recurse=False)]


def find_input_embeddings(model: nn.Module) -> str:
    """Return the module name of the model's input embedding matrix.

    Raises:
        UnsupportedModelError: if the model exposes no ``nn.Embedding`` input embeddings.
    """
    try:
        embeddings = model.get_input_embeddings()
    except (AttributeError, NotImplementedError):
        embeddings = None
    if not isinstance(embeddings, nn.Embedding):
        raise UnsupportedModelError(
            f"{type(model).__name__} has no nn.Embedding input embeddings; steu-patch edits rows of the "
            "input-embedding matrix, so it supports transformers text classifiers such as BERT, RoBERTa "
            "and DistilBERT."
        )
    for name, module in model.named_modules():
        if module is embeddings:
            return name
    raise UnsupportedModelError(f"The input embeddings of {type(model).__name__} are not a submodule of the model.")


def find_head(model: nn.Module, head: str | None = None) -> str:
    """Return the module name of the final classification layer.

    Args:
        model: a sequence classifier.
        head: module name to use instead of the built-in table, for architectures it lacks.

    Raises:
        UnsupportedModelError: if the layer is missing, is not ``nn.Linear``, or does not produce
            one output per label.
    """
    config = getattr(model, "config", None)
    model_type = getattr(config, "model_type", None)
    if head is not None:
        candidates: tuple[str, ...] = (head,)
    elif model_type in HEAD_MODULES:
        candidates = (HEAD_MODULES[model_type],)
    else:
        candidates = _FALLBACK_HEADS

    modules = dict(model.named_modules())
    for name in candidates:
        module = modules.get(name)
        if module is None:
            continue
        if not isinstance(module, nn.Linear):
            raise UnsupportedModelError(
                f"Classification head {name!r} of {type(model).__name__} is {type(module).__name__}, not "
                "nn.Linear. Pass the name of its final linear layer with --head."
            )
        num_labels = getattr(config, "num_labels", None)
        if num_labels is not None and module.out_features != num_labels:
            raise UnsupportedModelError(
                f"Classification head {name!r} has {module.out_features} outputs but the model has {num_labels} "
                "labels. Pass the name of the layer that produces the logits with --head."
            )
        return name

    tried = ", ".join(repr(name) for name in candidates)
    raise UnsupportedModelError(
        f"No classification head found in {type(model).__name__} (model_type={model_type!r}); tried {tried}. "
        "Load the model with AutoModelForSequenceClassification, or pass the name of its final linear layer "
        "with --head."
    )


def find_editable_parts(model: nn.Module, head: str | None = None) -> EditableParts:
    """Locate the input embeddings and the final classification layer of ``model``."""
    return EditableParts(embedding_name=find_input_embeddings(model), head_name=find_head(model, head))


def count_parameters(model: nn.Module) -> int:
    """Count the distinct parameters of ``model``, counting tied tensors once."""
    seen: set[int] = set()
    total = 0
    for parameter in model.parameters():
        if id(parameter) in seen:
            continue
        seen.add(id(parameter))
        total += parameter.numel()
    return total


def model_dtype(model: nn.Module) -> torch.dtype:
    """Return the dtype of the model's input embeddings."""
    return model.get_input_embeddings().weight.dtype
