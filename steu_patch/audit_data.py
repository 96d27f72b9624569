"""Measure on labeled data how deeply a forget patch forgets, before and after applying it.

The data is split into a training and an evaluation portion. A column named ``split`` (values
``train``/``training`` against ``eval``, ``evaluation``, ``test``, ``validation``, ``valid``,
``val``, ``dev``, ``heldout``, ``held-out``, ``holdout``) or a boolean column named ``eval``
decides when present. Otherwise :func:`steu_patch.data.stratified_split` splits with the audit's
``eval_fraction`` (0.2 by default, as ``create`` uses) and ``seed`` (by default the seed the
patch recorded, else 0). When the patch was created on the same data without separate evaluation
data, the training portion is then the patch's training data.

The base model is loaded once, measured, patched in memory with
:func:`steu_patch.apply.apply_patch`, and measured again:

- forget and retain metrics on the evaluation portion (behaviour);
- a linear probe on the head's input features, fitted on the training portion (representation);
- loss-based membership inference, forget-class training texts against held-out forget-class
  texts (behaviour);
- relearning: head-only fine-tuning of the patched model on a few training texts (representation).
"""

from __future__ import annotations

import logging
import os
from typing import TYPE_CHECKING, Any

import numpy as np

from .apply import apply_patch
from .data import LabeledTexts, load_texts, resolve_labels, stratified_split
from .create import load_classifier
from .errors import DataError
from .evaluation import compute_metrics
from .patch import ForgetPatch
from .probes import (
    BEHAVIOUR,
    REPRESENTATION,
    HeadInputs,
    RelearningResult,
    encode_texts,
    fit_linear_probe,
    membership_auc,
    relearn_head,
    select_relearning_texts,
)

if TYPE_CHECKING:
    from .audit import AuditOptions

logger = logging.getLogger(__name__)

STATEMENT = (
    "STEU promises behavioural forgetting, not representational forgetting: the patched classifier stops "
    "predicting the forget class, but the frozen encoder's representations may still carry it. Each measurement "
    "below states which of the two it measured."
)
DESCRIPTIONS = {
    "metrics": "Forget F1 and retain macro-F1 of the classifier's predictions on the evaluation portion.",
    "probe": (
        "F1 of a logistic-regression probe per forget class, fitted on the frozen input of the classification head "
        "for the training portion and scored on the evaluation portion. A high value after the patch means the "
        "class is still recoverable from the representations."
    ),
    "membership_inference": (
        "ROC AUC of a loss-based attack separating forget-class training texts (members) from held-out "
        "forget-class texts (non-members); 0.5 means the loss does not reveal membership."
    ),
    "relearning": (
        "Head-only fine-tuning (Adam, full batch) of the patched model on a few training texts, counting the "
        "steps until forget F1 on the evaluation portion exceeds the threshold. A class that returns after a "
        "handful of head-only steps was hidden, not forgotten."
    ),
}

SPLIT_COLUMN = "split"
EVAL_COLUMN = "eval"
TRAIN_SPLIT_VALUES = ("train", "training")
EVAL_SPLIT_VALUES = ("eval", "evaluation", "test", "validation", "valid", "val", "dev", "heldout", "held-out", "holdout")
TRUE_VALUES = ("true", "1", "yes", "y")
FALSE_VALUES = ("false", "0", "no", "n")
DEFAULT_MAX_LENGTH = 256
# Absolute position embeddings of BERT-style encoders cover at most 512 positions. Some
# tokenizers report a placeholder model_max_length of about 1e30, which is ignored.
MAX_SEQUENCE_LENGTH = 512


def skipped_data_section(source: str, reason: str) -> dict[str, Any]:
    """Return the ``data`` section of a report whose measurements were not run."""
    section = _empty_section(source)
    section.update(status="skipped", reason=reason)
    return section


def _empty_section(source: str) -> dict[str, Any]:
    keys = ("forget_classes", "multi_label", "max_length", "split", "loading", "metrics", "probe", "membership_inference", "relearning")
    return {"source": str(source), "status": None, "reason": None, "statement": STATEMENT, **dict.fromkeys(keys)}


def measure_forgetting(patch: ForgetPatch, base_dir: str | os.PathLike, options: AuditOptions) -> dict[str, Any]:
    """Load the base model from ``base_dir``, measure it, apply ``patch`` in memory, measure again.

    Returns:
        The ``data`` section of the audit report.

    Raises:
        ModelNotFoundError: the base model or its tokenizer cannot be loaded.
        DataError / LabelError: the data cannot be read, or a portion lacks forget-class or other texts.
    """
    model, tokenizer = load_classifier(base_dir, head=patch.head_module)
    id2label = {int(class_id): name for class_id, name in model.config.id2label.items()}
    forget_ids = resolve_labels(patch.forget_classes, id2label)
    multi_label = getattr(model.config, "problem_type", None) == "multi_label_classification"

    data, loading = load_texts(
        options.data, id2label=id2label, text_column=options.text_column, label_column=options.label_column,
        split=options.split, multi_label=multi_label, forget_label_ids=forget_ids,
    )
    seed = _seed(options, patch)
    train, evaluation, split = split_for_audit(data, options, forget_ids, seed)
    _require_portions(train, evaluation, forget_ids)
    max_length = _max_length(options, patch, tokenizer, model.config)

    encode = {"head_module": patch.head_module, "max_length": max_length, "batch_size": options.batch_size, "show_progress": options.show_progress}
    before = [
        encode_texts(model, tokenizer, train.texts, desc="Base model, training texts", **encode),
        encode_texts(model, tokenizer, evaluation.texts, desc="Base model, evaluation texts", **encode),
    ]
    # audit_patch() calls this function only after the base fingerprint check passed.
    apply_patch(model, patch, force=True)
    after = [
        encode_texts(model, tokenizer, train.texts, desc="Patched model, training texts", **encode),
        encode_texts(model, tokenizer, evaluation.texts, desc="Patched model, evaluation texts", **encode),
    ]

    measured = {
        "before": _measure(before, train, evaluation, id2label, forget_ids, multi_label, seed),
        "after": _measure(after, train, evaluation, id2label, forget_ids, multi_label, seed),
    }
    head = model.get_submodule(patch.head_module)
    relearning = _relearn(head, after, train, evaluation, id2label, forget_ids, multi_label, options, seed)

    section = _empty_section(options.data)
    loading_dict = loading.to_dict()
    if options.redact_tokens:
        loading_dict["conflict_examples"] = []  # snippets of forget-class texts contain the edited tokens
    section.update(
        status="measured",
        forget_classes=[id2label[class_id] for class_id in forget_ids],
        multi_label=multi_label,
        max_length=max_length,
        split=split,
        loading=loading_dict,
        metrics=_phases("metrics", BEHAVIOUR, measured),
        probe=_phases("probe", REPRESENTATION, measured),
        membership_inference=_phases("membership_inference", BEHAVIOUR, measured),
        relearning={"measures": REPRESENTATION, "description": DESCRIPTIONS["relearning"], "result": relearning.to_dict()},
    )
    return section


def _phases(name: str, measures: str, measured: dict[str, dict[str, Any]]) -> dict[str, Any]:
    return {
        "measures": measures,
        "description": DESCRIPTIONS[name],
        "before": measured["before"][name],
        "after": measured["after"][name],
    }


def _seed(options: AuditOptions, patch: ForgetPatch) -> int:
    """Return the requested seed, else the seed the patch recorded (``create`` splits with it), else 0."""
    if options.seed is not None:
        return options.seed
    recorded = (patch.manifest.get("method") or {}).get("seed")
    return recorded if isinstance(recorded, int) else 0




def _max_length(options: AuditOptions, patch: ForgetPatch, tokenizer: Any, config: Any) -> int:
    recorded = (patch.manifest.get("method") or {}).get("max_length")
    requested = options.max_length or (int(recorded) if isinstance(recorded, int) else DEFAULT_MAX_LENGTH)
    limits = [requested, MAX_SEQUENCE_LENGTH, int(min(tokenizer.model_max_length, 1 << 30))]
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        limits.append(positions)
    return min(limits)


# ----- splitting -----


def split_for_audit(
    data: LabeledTexts, options: AuditOptions, forget_ids: list[int], seed: int
) -> tuple[LabeledTexts, LabeledTexts, dict[str, Any]]:
    """Split into training and evaluation portions by a split column, else by a stratified split."""
    held_out, column = _read_held_out_column(data, options)
    if held_out is not None:
        rows = np.arange(len(data))
        train, evaluation = data.subset(rows[~held_out]), data.subset(rows[held_out])
        if len(train) == 0 or len(evaluation) == 0:
            raise DataError(
                f"Column {column!r} of {options.data} puts {len(train)} texts in training and {len(evaluation)} in "
                "evaluation; both portions need texts. Fix the column or remove it to use a stratified split."
            )
        description = f"column {column!r} of the data"
    else:
        train, evaluation = stratified_split(data, eval_fraction=options.eval_fraction, seed=seed, forget_label_ids=forget_ids)
        description = f"stratified split, eval_fraction {options.eval_fraction}, seed {seed}"
    split = {
        "method": "column" if held_out is not None else "stratified",
        "description": description,
        "train_texts": len(train),
        "eval_texts": len(evaluation),
        "forget_train_texts": int(_forget_mask(train, forget_ids).sum()),
        "forget_eval_texts": int(_forget_mask(evaluation, forget_ids).sum()),
    }
    return train, evaluation, split


def _read_held_out_column(data: LabeledTexts, options: AuditOptions) -> tuple[np.ndarray | None, str | None]:
    """Return True for each held-out text, read from the ``split`` or ``eval`` column, or None without one."""
    # NOTE: load_texts() returns only texts and labels, so the column is read again through
    # data.py's private reader and aligned by the rule load_texts applies (empty texts dropped).
    from .data import _read_dataset

    source = str(options.data)
    dataset = _read_dataset(source, split=options.split, revision=None, columns=(options.text_column, SPLIT_COLUMN))
    for column in (SPLIT_COLUMN, EVAL_COLUMN):
        if column not in dataset.column_names:
            continue
        kept = [
            value
            for text, value in zip(dataset[options.text_column], dataset[column])
            if text is not None and str(text).strip()
        ]
        if len(kept) != len(data):
            raise DataError(
                f"Column {column!r} of {source} has {len(kept)} values for {len(data)} texts; every row needs a value."
            )
        return np.array([_is_held_out(value, column, source) for value in kept], dtype=bool), column
    return None, None


def _is_held_out(value: Any, column: str, source: str) -> bool:
    text = str(value).strip().lower()
    if column == SPLIT_COLUMN:
        if text in TRAIN_SPLIT_VALUES:
            return False
        if text in EVAL_SPLIT_VALUES:
            return True
        valid = ", ".join(TRAIN_SPLIT_VALUES + EVAL_SPLIT_VALUES)
    else:
        if text in TRUE_VALUES:
            return True
        if text in FALSE_VALUES:
            return False
        valid = ", ".join(TRUE_VALUES + FALSE_VALUES)
    raise DataError(
        f"Column {column!r} of {source} contains {value!r}; valid values: {valid}. Fix the value, or rename the "
        "column so the audit uses a stratified split."
    )


def _forget_mask(data: LabeledTexts, forget_ids: list[int]) -> np.ndarray:
    forget = set(forget_ids)
    if data.multi_label:
        return np.array([bool(forget.intersection(labels)) for labels in data.labels], dtype=bool)
    return np.array([label in forget for label in data.labels], dtype=bool)


def _require_portions(train: LabeledTexts, evaluation: LabeledTexts, forget_ids: list[int]) -> None:
    for name, part in (("training", train), ("evaluation", evaluation)):
        forget = int(_forget_mask(part, forget_ids).sum())
        if forget == 0 or forget == len(part):
            which = "no text" if forget == 0 else "only texts"
            raise DataError(
                f"The {name} portion of the data has {which} of the forget class(es) ({forget} of {len(part)}); the "
                "probe, membership inference and relearning need forget-class and other texts in both portions. Use "
                "more data, or fix the split column."
            )


# ----- measurements -----


def _measure(
    inputs: list[HeadInputs],
    train: LabeledTexts,
    evaluation: LabeledTexts,
    id2label: dict[int, str],
    forget_ids: list[int],
    multi_label: bool,
    seed: int,
) -> dict[str, Any]:
    train_inputs, eval_inputs = inputs
    metrics = compute_metrics(eval_inputs.logits, evaluation.labels, id2label=id2label, forget_ids=forget_ids, multi_label=multi_label)
    probe = fit_linear_probe(
        train_inputs.features, train.labels, eval_inputs.features, evaluation.labels, forget_ids,
        multi_label=multi_label, seed=seed,
    )
    members = np.flatnonzero(_forget_mask(train, forget_ids)).tolist()
    non_members = np.flatnonzero(_forget_mask(evaluation, forget_ids)).tolist()
    attack = membership_auc(
        train_inputs.subset(members).logits, [train.labels[row] for row in members],
        eval_inputs.subset(non_members).logits, [evaluation.labels[row] for row in non_members],
        multi_label=multi_label,
    )
    probe_dict = probe.to_dict()
    probe_dict["per_class_f1"] = {id2label[class_id]: value for class_id, value in probe.per_class_f1.items()}
    return {"metrics": metrics.to_dict(), "probe": probe_dict, "membership_inference": attack.to_dict()}


def _relearn(
    head: Any,
    after: list[HeadInputs],
    train: LabeledTexts,
    evaluation: LabeledTexts,
    id2label: dict[int, str],
    forget_ids: list[int],
    multi_label: bool,
    options: AuditOptions,
    seed: int,
) -> RelearningResult:
    train_inputs, eval_inputs = after
    rows = select_relearning_texts(
        train.labels, forget_ids, multi_label=multi_label, forget_texts=options.relearn_forget_texts,
        retain_texts=options.relearn_retain_texts, seed=seed,
    )
    return relearn_head(
        head, train_inputs.subset(rows).features, [train.labels[row] for row in rows],
        eval_inputs.features, evaluation.labels, forget_ids=forget_ids, id2label=id2label, multi_label=multi_label,
        max_steps=options.relearn_max_steps, learning_rate=options.relearn_learning_rate,
        show_progress=options.show_progress,
    )
