"""Measure one unlearned model with the library's metrics and probes.

Behaviour: the test predictions, from which the main process computes forget F1 and retained
macro-F1 with ``compute_metrics``, and a loss-based membership-inference attack (forget-class training texts against forget-class test
texts). Representation: a linear probe on the frozen input of the final layer (fitted on the
probe subset of the training split, scored on the test split) and head-only relearning from 16
forget and 16 retained training texts. All four come from :mod:`steu_patch.probes`.
"""

from __future__ import annotations

import resource
from collections.abc import Callable
from typing import Any

import torch
from torch import nn
from transformers import PreTrainedTokenizerBase

from benchmark_setup import BenchmarkData, BenchmarkSettings
from steu_patch.data import LabeledTexts
from steu_patch.probes import HeadInputs, encode_texts, fit_linear_probe, membership_auc, relearn_head, select_relearning_texts
from steu_patch.selection import document_token_matrix
from unlearning_methods import UnlearnedModel


def peak_rss_mib() -> float:
    """Return this process's peak resident set size so far, in MiB (``ru_maxrss`` is KiB on Linux)."""
    return resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024


def count_modified_values(base: nn.Module, model: nn.Module) -> int:
    """Count parameter values of ``model`` that differ from ``base``.

    A parameter that ``base`` lacks or has in another shape (the retrained 12-class head)
    counts in full.
    """
    base_parameters = dict(base.named_parameters())
    modified = 0
    for name, parameter in model.named_parameters():
        original = base_parameters.get(name)
        if original is None or original.shape != parameter.shape:
            modified += parameter.numel()
        else:
            modified += int(torch.ne(parameter.detach(), original.detach().to(parameter.dtype)).sum())
    return modified


def notes_with_tokens(
    tokenizer: PreTrainedTokenizerBase, train: LabeledTexts, forget_ids: tuple[int, ...], token_ids: list[int], max_length: int
) -> dict[str, int]:
    """Count training notes, retained and forget, that contain at least one of ``token_ids`` within ``max_length`` tokens."""
    presence = document_token_matrix(tokenizer, train.texts, max_length=max_length)
    has_token = presence[:, torch.as_tensor(token_ids, dtype=torch.long)].any(dim=1)
    is_forget = torch.tensor([label in forget_ids for label in train.labels], dtype=torch.bool)
    return {
        "retained_notes_with_token": int((has_token & ~is_forget).sum()),
        "retained_notes": int((~is_forget).sum()),
        "forget_notes_with_token": int((has_token & is_forget).sum()),
        "forget_notes": int(is_forget.sum()),
        "tokens_in_any_note": int(presence[:, torch.as_tensor(token_ids, dtype=torch.long)].any(dim=0).sum()),
    }


def _transformed(inputs: HeadInputs, transform: Callable[[torch.Tensor], torch.Tensor] | None) -> HeadInputs:
    return inputs if transform is None else HeadInputs(inputs.features, transform(inputs.logits))


def measure_unlearned(unlearned: UnlearnedModel, tokenizer: PreTrainedTokenizerBase, data: BenchmarkData, settings: BenchmarkSettings) -> dict[str, Any]:
    """Run the probe, membership inference and relearning on one method's model and return its test predictions.

    The main process computes the test metrics from the predictions (see ``run_baselines.recompute_metrics``).
    """
    options = {"max_length": settings.max_length, "batch_size": settings.eval_batch_size, "show_progress": settings.show_progress}
    test = _transformed(encode_texts(unlearned.model, tokenizer, data.test.texts, desc="Test texts", **options), unlearned.logits_transform)
    probe_train = _transformed(
        encode_texts(unlearned.model, tokenizer, data.probe_train.texts, desc="Probe training texts", **options),
        unlearned.logits_transform,
    )
    probe = fit_linear_probe(
        probe_train.features, data.probe_train.labels, test.features, data.test.labels, data.forget_ids, seed=settings.seed
    )
    members = [row for row, label in enumerate(data.probe_train.labels) if label in data.forget_ids]
    non_members = [row for row, label in enumerate(data.test.labels) if label in data.forget_ids]
    attack = membership_auc(
        probe_train.subset(members).logits, [data.probe_train.labels[row] for row in members],
        test.subset(non_members).logits, [data.test.labels[row] for row in non_members],
    )
    relearning = _relearn(unlearned.relearn_head, probe_train, test, data, settings)
    return {
        "test_predictions": test.logits.argmax(dim=1).tolist(),
        "probe": probe.to_dict(),
        "membership_inference": attack.to_dict(),
        "relearning": relearning,
    }


def _relearn(head: nn.Linear, probe_train: HeadInputs, test: HeadInputs, data: BenchmarkData, settings: BenchmarkSettings) -> dict[str, Any]:
    rows = select_relearning_texts(
        data.probe_train.labels, data.forget_ids, forget_texts=settings.relearn_forget_texts,
        retain_texts=settings.relearn_retain_texts, seed=settings.seed,
    )
    result = relearn_head(
        head, probe_train.subset(rows).features, [data.probe_train.labels[row] for row in rows],
        test.features, data.test.labels, forget_ids=data.forget_ids, id2label=data.id2label,
        max_steps=settings.relearn_max_steps, learning_rate=settings.relearn_learning_rate,
        threshold=settings.relearn_threshold,
    )
    summary = result.to_dict()
    summary.pop("forget_f1_by_step")
    return summary
