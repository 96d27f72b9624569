"""Measure how well a classifier forgets the forget class(es) and keeps the retained ones.

Single-label (softmax) models predict the argmax over all logits. The forget logit is not masked,
because a patch has to suppress it in the model itself and evaluation should see what users see.
Multi-label (sigmoid) models predict every label whose probability exceeds a threshold.
"""

from __future__ import annotations

import logging
import math
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from sklearn.metrics import accuracy_score, confusion_matrix, f1_score, precision_recall_fscore_support
from torch import nn
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from .errors import DataError, LabelError

logger = logging.getLogger(__name__)

# Single-label: one class id per text. Multi-label: the class ids of each text, or an (n, L) 0/1 matrix.
Labels = Sequence[int] | Sequence[Sequence[int]] | torch.Tensor | np.ndarray


@torch.no_grad()
def predict_logits(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    max_length: int,
    batch_size: int = 32,
    show_progress: bool = False,
    desc: str = "Predicting",
) -> torch.Tensor:
    """Run the classifier over ``texts`` in eval mode and collect its logits.

    The model's training mode is restored afterwards, also when a batch fails.

    Returns:
        A float32 CPU tensor of shape ``(len(texts), num_labels)``.

    Raises:
        DataError: if ``texts`` is empty or contains a non-string, if ``batch_size`` is below 1, or if
            the tokenizer has no padding token.
    """
    _check_texts(texts, batch_size)
    if tokenizer.pad_token is None and min(batch_size, len(texts)) > 1:
        raise DataError(
            f"{type(tokenizer).__name__} has no padding token, so texts cannot be batched; set "
            "tokenizer.pad_token (for example to tokenizer.eos_token) and model.config.pad_token_id."
        )
    device = next(model.parameters()).device
    was_training = model.training
    model.eval()
    try:
        batches = []
        starts = range(0, len(texts), batch_size)
        for start in tqdm(starts, desc=desc, unit="batch", disable=not show_progress):
            encoded = tokenizer(
                list(texts[start : start + batch_size]),
                padding=True,
                truncation=True,
                max_length=max_length,
                return_tensors="pt",
            ).to(device)
            batches.append(model(**encoded).logits.float().cpu())
    finally:
        model.train(was_training)
    return torch.cat(batches)


def _check_texts(texts: Sequence[str], batch_size: int) -> None:
    if len(texts) == 0:
        raise DataError("No texts to predict; pass at least one evaluation text.")
    if batch_size < 1:
        raise DataError(f"batch_size must be at least 1, got {batch_size}; pass a positive batch size.")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise DataError(
                f"Text {index} is {type(text).__name__}, not str; remove or fill missing texts before predicting."
            )


@dataclass(frozen=True)
class ClassificationMetrics:
    """Forget and retain metrics of one classifier on one evaluation set.

    Attributes:
        forget_f1: F1 of the forget class, one-vs-rest over all texts. With several forget
            classes, the mean of their F1 scores.
        retain_macro_f1: macro-F1 over the retained classes, on the retain set: texts whose true
            class is retained (single-label) or that carry no forget label (multi-label). NaN when
            no text qualifies.
        retain_macro_f1_all_texts: macro-F1 over the retained classes on every text, so forget
            texts that a patch sends to retained classes count as their false positives.
        retain_accuracy: single-label: accuracy on texts whose true class is retained. Multi-label:
            exact match on the retained labels, over texts without a forget label. NaN when no text
            qualifies.
        per_class: precision, recall, F1 and support of each class, keyed by label name.
        confusion_matrix: single-label only, ``None`` for multi-label. Rows are true classes and
            columns predicted classes, both in class-id order.
        labels: class names in class-id order.
        forget_labels: names of the forget classes.
    """

    forget_f1: float
    retain_macro_f1: float
    retain_accuracy: float
    retain_macro_f1_all_texts: float
    per_class: dict[str, dict[str, float]]
    confusion_matrix: list[list[int]] | None
    labels: list[str]
    forget_labels: list[str]

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dictionary, with NaN written as ``None``."""
        data = asdict(self)
        for key in ("forget_f1", "retain_macro_f1", "retain_accuracy", "retain_macro_f1_all_texts"):
            if math.isnan(data[key]):
                data[key] = None
        return data


def compute_metrics(
    logits: torch.Tensor,
    labels: Labels,
    *,
    id2label: dict[int, str],
    forget_ids: Sequence[int],
    multi_label: bool = False,
    threshold: float = 0.5,
) -> ClassificationMetrics:
    """Compute forget and retain metrics from a classifier's logits.

    Args:
        logits: ``(n, num_labels)`` logits, as returned by :func:`predict_logits`.
        labels: single-label: one class id per text. Multi-label: the list of class ids of each
            text, or an ``(n, num_labels)`` 0/1 tensor or array.
        id2label: class names by id, as in ``model.config.id2label``. Ids must be ``0..num_labels-1``.
        forget_ids: ids of the classes the patch forgets.
        multi_label: predict with a sigmoid and ``threshold`` instead of an argmax.
        threshold: probability above which a multi-label model predicts a label.

    Raises:
        DataError: if there are no texts, shapes disagree, every class is forgotten, or
            ``threshold`` is outside (0, 1).
        LabelError: if a forget id or a true label is not a class of ``id2label``.
    """
    class_ids = _check_classes(logits, id2label)
    forget = _check_forget_ids(forget_ids, id2label)
    retained = [i for i in class_ids if i not in forget]
    names = [id2label[i] for i in class_ids]

    if multi_label:
        if not 0.0 < threshold < 1.0:
            raise DataError(f"threshold must be between 0 and 1 (exclusive), got {threshold}.")
        y_true = _indicator_matrix(labels, len(logits), id2label)
        y_pred = (torch.sigmoid(logits.double()) > threshold).numpy().astype(np.int64)
        retain_rows = y_true[:, forget].sum(axis=1) == 0
        retain_true, retain_pred = y_true[retain_rows][:, retained], y_pred[retain_rows][:, retained]
        matrix = None
    else:
        y_true = _class_vector(labels, len(logits), id2label)
        y_pred = logits.argmax(dim=1).numpy()
        retain_rows = np.isin(y_true, retained)
        retain_true, retain_pred = y_true[retain_rows], y_pred[retain_rows]
        matrix = confusion_matrix(y_true, y_pred, labels=class_ids).tolist()

    forget_f1s = f1_score(y_true, y_pred, labels=forget, average=None, zero_division=0)
    retain_macro_f1_all_texts = f1_score(y_true, y_pred, labels=retained, average="macro", zero_division=0)
    if retain_rows.any():
        # Multi-label retain columns are already restricted to the retained classes.
        retain_labels = None if multi_label else retained
        retain_macro_f1 = float(f1_score(retain_true, retain_pred, labels=retain_labels, average="macro", zero_division=0))
        retain_accuracy = float(accuracy_score(retain_true, retain_pred))
    else:
        logger.warning("No evaluation text has only retained labels, so retain macro-F1 and accuracy are NaN.")
        retain_macro_f1 = retain_accuracy = float("nan")

    return ClassificationMetrics(
        forget_f1=float(np.mean(forget_f1s)),
        retain_macro_f1=retain_macro_f1,
        retain_accuracy=retain_accuracy,
        retain_macro_f1_all_texts=float(retain_macro_f1_all_texts),
        per_class=_per_class(y_true, y_pred, class_ids, names),
        confusion_matrix=matrix,
        labels=names,
        forget_labels=[id2label[i] for i in forget],
    )


def _check_classes(logits: torch.Tensor, id2label: dict[int, str]) -> list[int]:
    if logits.dim() != 2 or logits.shape[0] == 0:
        raise DataError(
            f"logits must have shape (texts, classes) with at least one text, got {tuple(logits.shape)}; "
            "pass the output of predict_logits()."
        )
    class_ids = sorted(id2label)
    if class_ids != list(range(logits.shape[1])):
        raise DataError(
            f"id2label has ids {class_ids} but the logits have {logits.shape[1]} columns; "
            f"id2label must map exactly the ids 0..{logits.shape[1] - 1}."
        )
    names = list(id2label.values())
    if len(set(names)) != len(names):
        raise DataError(f"id2label repeats label names {names}; give every class a distinct name.")
    return class_ids


def _check_forget_ids(forget_ids: Sequence[int], id2label: dict[int, str]) -> list[int]:
    forget = list(dict.fromkeys(int(i) for i in forget_ids))
    if not forget:
        raise DataError("No forget class given; pass the id of at least one class to forget.")
    unknown = [i for i in forget if i not in id2label]
    if unknown:
        raise LabelError(f"Forget class ids {unknown} are not in id2label; valid ids: {_choices(id2label)}.")
    if len(forget) == len(id2label):
        raise DataError(
            f"Every class ({len(forget)}) is a forget class, so retained metrics are undefined; "
            "keep at least one class."
        )
    return forget


def _class_vector(labels: Labels, num_texts: int, id2label: dict[int, str]) -> np.ndarray:
    y_true = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
    if y_true.ndim != 1 or len(y_true) != num_texts or not np.issubdtype(y_true.dtype, np.integer):
        raise DataError(
            f"Single-label evaluation expects {num_texts} integer class ids, got an array of shape "
            f"{y_true.shape} and dtype {y_true.dtype}; pass multi_label=True for label sets."
        )
    unknown = sorted(set(y_true.tolist()) - set(id2label))
    if unknown:
        raise LabelError(f"True labels {unknown} are not in id2label; valid ids: {_choices(id2label)}.")
    return y_true.astype(np.int64)


def _indicator_matrix(labels: Labels, num_texts: int, id2label: dict[int, str]) -> np.ndarray:
    if isinstance(labels, (torch.Tensor, np.ndarray)):
        y_true = np.asarray(labels.cpu() if isinstance(labels, torch.Tensor) else labels)
        if y_true.shape != (num_texts, len(id2label)) or not np.isin(y_true, (0, 1)).all():
            raise DataError(
                f"Multi-label targets must be a 0/1 matrix of shape ({num_texts}, {len(id2label)}), got "
                f"shape {y_true.shape}; pass one row per text and one column per class."
            )
        return y_true.astype(np.int64)

    if len(labels) != num_texts:
        raise DataError(f"Got {len(labels)} label lists for {num_texts} texts; pass one list of class ids per text.")
    y_true = np.zeros((num_texts, len(id2label)), dtype=np.int64)
    for row, text_labels in enumerate(labels):
        unknown = [i for i in text_labels if i not in id2label]
        if unknown:
            raise LabelError(
                f"Text {row} has labels {unknown} that are not in id2label; valid ids: {_choices(id2label)}."
            )
        y_true[row, list(text_labels)] = 1
    return y_true


def _per_class(
    y_true: np.ndarray, y_pred: np.ndarray, class_ids: list[int], names: list[str]
) -> dict[str, dict[str, float]]:
    precision, recall, f1, support = precision_recall_fscore_support(
        y_true, y_pred, labels=class_ids, average=None, zero_division=0
    )
    return {
        name: {
            "precision": float(precision[i]),
            "recall": float(recall[i]),
            "f1": float(f1[i]),
            "support": int(support[i]),
        }
        for i, name in enumerate(names)
    }


def _choices(id2label: dict[int, str]) -> str:
    return ", ".join(f"{i} ({name})" for i, name in sorted(id2label.items()))


def metrics_table(
    before: ClassificationMetrics, after: ClassificationMetrics | None = None
) -> list[tuple[str, str, str]]:
    """Build the rows ``(metric, before, after)`` that the CLI prints.

    The rows are forget F1, retain macro-F1, retain accuracy, retain macro-F1 over all texts, then
    the F1 of each class with forget classes marked. ``after`` is an empty string in every row when ``after`` is ``None``.

    Raises:
        DataError: if ``before`` and ``after`` were computed over different label sets.
    """
    if after is not None and after.labels != before.labels:
        raise DataError(
            f"Cannot compare metrics over labels {before.labels} with metrics over labels {after.labels}; "
            "evaluate both models with the same id2label."
        )
    rows = [
        ("forget F1", before.forget_f1, after.forget_f1 if after else None),
        ("retain macro-F1", before.retain_macro_f1, after.retain_macro_f1 if after else None),
        ("retain accuracy", before.retain_accuracy, after.retain_accuracy if after else None),
        ("retain macro-F1, all texts", before.retain_macro_f1_all_texts, after.retain_macro_f1_all_texts if after else None),
    ]
    for name in before.labels:
        marker = " (forget)" if name in before.forget_labels else ""
        after_f1 = after.per_class[name]["f1"] if after else None
        rows.append((f"F1 {name}{marker}", before.per_class[name]["f1"], after_f1))
    return [(metric, _format(old), _format(new)) for metric, old, new in rows]


def _format(value: float | None) -> str:
    if value is None:
        return ""
    if math.isnan(value):
        return "n/a"
    return f"{value:.4f}"
