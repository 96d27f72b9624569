"""Create a forget patch: select tokens, train the rows and the head, measure, assemble.

:func:`create_patch` works on a loaded model and loaded texts; :func:`create_patch_from_files`
loads the model, the tokenizer and the data first and saves the patch, as ``steu-patch create``
does. Tokens are selected on the training texts only, and the metrics before and after come from
the evaluation texts, so no evaluation text influences which rows are edited.

A model stored in float16 or bfloat16 is trained in float32 on a copy; the trained values are
cast back to the checkpoint's dtype, and the original values stored in the patch are the
checkpoint's own, so applying and reverting stay bit-exact.
"""

from __future__ import annotations

import contextlib
import logging
import os
import time
from collections import Counter
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import asdict, dataclass, field, replace
from pathlib import Path
from typing import Any

import torch
from accelerate import Accelerator
from torch import nn
from transformers import PreTrainedModel, PreTrainedTokenizerBase

from .apply import get_chain
from .data import DataReport, LabeledTexts, load_texts, resolve_labels, stratified_split
from .errors import DataError, ModelNotFoundError, UnsupportedModelError
from .evaluation import ClassificationMetrics, compute_metrics
from .hub import resolve_model_dir
from .models import EditableParts, count_parameters, find_editable_parts
from .patch import ForgetPatch, TouchedValues, build_patch, peft_passthrough_values
from .selection import TokenSelection, select_tokens
from .training import (
    DEFAULT_BATCH_SIZE,
    DEFAULT_EPOCHS,
    DEFAULT_LEARNING_RATE,
    DEFAULT_TARGET_FORGET_F1,
    TrainingOptions,
    TrainingResult,
    forget_mask,
    make_accelerator,
    predict_sharded,
    train_forget_patch,
)

logger = logging.getLogger(__name__)

DEFAULT_TOP_K = 256
DEFAULT_MIN_DOC_FREQ = 5
# Share of --data held out for evaluation when no evaluation data is given.
EVAL_FRACTION = 0.2
# BERT-style checkpoints have absolute position embeddings for at most 512 positions, and some
# tokenizers report a placeholder model_max_length of int(1e30) when none is configured.
MAX_SEQUENCE_LENGTH = 512
# Minimum number of training texts per forget class, because one text gives no class contrast.
MIN_CLASS_TEXTS = 2

METHOD_NAME = "steu"
OBJECTIVES = {
    False: "soft cross-entropy towards the teacher's softmax renormalised over the retained classes",
    True: "binary cross-entropy towards 0 for forget labels and the teacher's sigmoid for the others",
}


@dataclass(frozen=True)
class CreateOptions:
    """Settings of :func:`create_patch`.

    Attributes:
        top_k: maximum number of embedding rows to edit.
        min_doc_freq: minimum number of forget texts a token must occur in to be selected.
        epochs, learning_rate, batch_size, seed, target_forget_f1, eval_steps: see
            :class:`steu_patch.training.TrainingOptions`.
        max_length: tokens per text; ``None`` uses the tokenizer's ``model_max_length``, at most
            512 and at most the model's position embeddings.
        head: module name of the final classification layer, for architectures the built-in
            table lacks.
        show_progress: draw progress bars on stderr.
    """

    top_k: int = DEFAULT_TOP_K
    min_doc_freq: int = DEFAULT_MIN_DOC_FREQ
    epochs: int = DEFAULT_EPOCHS
    learning_rate: float = DEFAULT_LEARNING_RATE
    batch_size: int = DEFAULT_BATCH_SIZE
    max_length: int | None = None
    seed: int = 0
    target_forget_f1: float = DEFAULT_TARGET_FORGET_F1
    eval_steps: int | None = None
    head: str | None = None
    show_progress: bool = True

    def training_options(self, max_length: int) -> TrainingOptions:
        return TrainingOptions(
            epochs=self.epochs, learning_rate=self.learning_rate, batch_size=self.batch_size, max_length=max_length,
            seed=self.seed, target_forget_f1=self.target_forget_f1, eval_steps=self.eval_steps,
            show_progress=self.show_progress,
        )


@dataclass(frozen=True)
class EvalSplit:
    """Source of the evaluation texts.

    ``held_out_fraction`` and ``seed`` are set when the texts were held out from the training data.
    """

    source: str
    split: str | None
    texts: int
    held_out_fraction: float | None = None
    seed: int | None = None

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


@dataclass(frozen=True)
class PreparedData:
    """Training and evaluation texts for one patch, labelled with the model's class ids."""

    train: LabeledTexts
    eval: LabeledTexts
    report: DataReport
    eval_split: EvalSplit
    forget_ids: tuple[int, ...]


@dataclass(frozen=True)
class CreateResult:
    """Outcome of :func:`create_patch`.

    Attributes:
        patch: the patch; ``patch.patch_id`` is set once it is saved.
        selection: the selected tokens with their scores.
        before / after: metrics of the model without and with the patch on the evaluation texts.
        training: trained values, stop point and history.
        timings: seconds per phase (``selection``, ``evaluation_before``, ``training``,
            ``evaluation_after``, ``total``).
        max_length: tokens per text used for selection, training and evaluation.
        output_dir: where the patch was saved, or None.
    """

    patch: ForgetPatch
    selection: TokenSelection
    before: ClassificationMetrics
    after: ClassificationMetrics
    training: TrainingResult
    timings: dict[str, float]
    max_length: int
    data_report: DataReport | None = None
    eval_split: EvalSplit | None = None
    output_dir: Path | None = field(default=None, compare=False)

    def summary(self) -> dict[str, Any]:
        """Return a JSON-serialisable summary of the run (what ``create --json`` prints)."""
        return {
            "output": None if self.output_dir is None else str(self.output_dir),
            "patch_id": self.patch.manifest.get("patch_id"),
            "forget_classes": self.patch.forget_classes,
            "tokens": len(self.patch.token_ids),
            "parameters_modified": self.patch.manifest["parameters_modified"],
            "stopped_at": self.training.stopped_at.to_dict(),
            "metrics": {"before": self.before.to_dict(), "after": self.after.to_dict()},
            "timings": dict(self.timings),
        }


# ----- loading -----


def load_classifier(model_dir: str | os.PathLike, *, head: str | None = None) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    """Load a trained sequence classifier in its checkpoint dtype, with its tokenizer, in eval mode.

    Raises:
        ModelNotFoundError: the directory lacks a config, weights or tokenizer files.
        UnsupportedModelError: the checkpoint is not a trained sequence classifier (for example a
            bare encoder or a masked-language model, whose classification head would be random).
    """
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    try:
        model, info = AutoModelForSequenceClassification.from_pretrained(
            model_dir, dtype="auto", output_loading_info=True, use_safetensors=True
        )
    except ValueError as error:
        raise UnsupportedModelError(
            f"{model_dir} cannot be loaded as a sequence classifier ({error}). steu-patch edits transformers "
            "models that AutoModelForSequenceClassification loads, such as BERT, RoBERTa and DistilBERT."
        ) from error
    except OSError as error:
        raise ModelNotFoundError(
            f"Failed to load a model from {model_dir}: {error}. Pass a directory that contains config.json and "
            "the weights, or a Hub model id."
        ) from error

    parts = find_editable_parts(model, head)
    missing = sorted(info.get("missing_keys") or [])
    if missing:
        architectures = ", ".join(getattr(model.config, "architectures", None) or ["an unknown architecture"])
        shown = ", ".join(missing[:4]) + (f" and {len(missing) - 4} more" if len(missing) > 4 else "")
        raise UnsupportedModelError(
            f"{model_dir} contains {architectures}, not a trained sequence classifier: the checkpoint lacks {shown}, so "
            f"the classification head {parts.head_name!r} would be random. Fine-tune it into a classifier first "
            "(for example with `steu-patch finetune`) and pass that directory."
        )
    try:
        tokenizer = AutoTokenizer.from_pretrained(model_dir)
    except (OSError, ValueError) as error:
        raise ModelNotFoundError(
            f"Failed to load the tokenizer of {model_dir}: {error}. Save the tokenizer next to the model with "
            "tokenizer.save_pretrained()."
        ) from error
    model.eval()
    return model, tokenizer


def resolve_max_length(tokenizer: PreTrainedTokenizerBase, config: Any, requested: int | None = None) -> int:
    """Return the tokens per text: ``requested``, or the tokenizer's limit, clamped to 512 and the position embeddings."""
    limits = [MAX_SEQUENCE_LENGTH]
    if isinstance(tokenizer.model_max_length, int) and tokenizer.model_max_length > 1:
        limits.append(tokenizer.model_max_length)
    positions = getattr(config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 1:
        limits.append(positions)
    limit = min(limits)
    if requested is None:
        return limit
    if requested > limit:
        logger.warning("max_length %d exceeds the limit of the tokenizer or model, so %d is used", requested, limit)
        return limit
    return requested


def prepare_data(
    data: str | os.PathLike,
    id2label: Mapping[int, str],
    forget_classes: Sequence[str | int],
    *,
    multi_label: bool = False,
    text_column: str = "text",
    label_column: str = "label",
    split: str | None = None,
    eval_data: str | os.PathLike | None = None,
    eval_split: str | None = None,
    seed: int = 0,
) -> PreparedData:
    """Load training and evaluation texts as ``create`` and ``tokens`` do.

    Evaluation texts come from ``eval_data`` (its ``eval_split``), else from the ``eval_split``
    of ``data``, else 20% of ``data`` is held out, stratified by class, with ``seed``.

    Raises:
        LabelError: a forget class or a label in the data is not a class of the model.
        DataError: a file, column or split is missing or unreadable.
    """
    id2label = {int(class_id): str(name) for class_id, name in id2label.items()}
    forget_ids = tuple(resolve_labels(list(forget_classes), id2label))
    load = dict(id2label=id2label, text_column=text_column, label_column=label_column, multi_label=multi_label,
                forget_label_ids=forget_ids)  # fmt: skip
    if eval_data is None and eval_split is not None:
        _check_eval_split(data, split, eval_split)
    texts, report = load_texts(data, split=split, **load)
    if eval_data is not None or eval_split is not None:
        source = data if eval_data is None else eval_data
        eval_texts, _ = load_texts(source, split=eval_split, **load)
        described = EvalSplit(source=str(source), split=eval_split, texts=len(eval_texts))
        return PreparedData(texts, eval_texts, report, described, forget_ids)
    train, eval_texts = stratified_split(texts, eval_fraction=EVAL_FRACTION, seed=seed, forget_label_ids=forget_ids)
    described = EvalSplit(str(data), split, len(eval_texts), held_out_fraction=EVAL_FRACTION, seed=seed)
    return PreparedData(train, eval_texts, report, described, forget_ids)


# ----- checks -----


def _check_eval_split(data: str | os.PathLike, split: str | None, eval_split: str) -> None:
    """Raise :class:`DataError` when ``eval_split`` of ``data`` would be the training texts themselves."""
    if Path(data).is_file():
        raise DataError(
            f"--eval-split {eval_split!r} cannot select evaluation texts from {data}: a single data file has no "
            "splits, so the patch would be evaluated on its training texts. Pass --eval-data with separate texts, "
            "or omit --eval-split to hold out 20% of the data."
        )
    if eval_split == split:
        raise DataError(
            f"--eval-split and --split both name {split!r}, so the patch would be evaluated on its training texts. "
            "Name another split with --eval-split, or omit it to hold out 20% of the data."
        )


def _class_counts(data: LabeledTexts) -> Counter:
    counts: Counter = Counter()
    for labels in data.labels:
        counts.update(labels if data.multi_label else [labels])
    return counts


def check_training_data(train: LabeledTexts, forget_ids: Sequence[int], id2label: Mapping[int, str], min_doc_freq: int) -> None:
    """Raise :class:`DataError` unless ``train`` can teach the model to forget ``forget_ids``.

    Every forget class needs at least ``max(2, min_doc_freq)`` texts, because a token is selected
    only when it occurs in ``min_doc_freq`` forget texts, and some text must carry no forget class.
    """
    counts = _class_counts(train)
    present = [id2label[class_id] for class_id in sorted(counts)]
    if len(present) < 2:
        raise DataError(
            f"The training data contains only the class {present[0] if present else 'none'!r}; a forget patch needs "
            "texts of the forget class(es) and of at least one retained class. Add texts of other classes to the data."
        )
    required = max(MIN_CLASS_TEXTS, min_doc_freq)
    for class_id in forget_ids:
        if counts[class_id] < required:
            raise DataError(
                f"Forget class {id2label[class_id]!r} has {counts[class_id]} training text(s), but at least {required} "
                f"are needed (at least {MIN_CLASS_TEXTS}, and at least --min-doc-freq={min_doc_freq} so that a token can "
                f"be selected). Add texts of {id2label[class_id]!r} to the data or lower --min-doc-freq."
            )
    if all(forget_mask(train, forget_ids)):
        raise DataError(
            f"Every training text carries a forget class ({', '.join(id2label[i] for i in forget_ids)}); add texts of "
            "the retained classes so the model can learn what to keep."
        )


def check_eval_data(eval_data: LabeledTexts, forget_ids: Sequence[int], id2label: Mapping[int, str]) -> None:
    """Raise :class:`DataError` unless forget F1 and retained metrics can be measured on ``eval_data``."""
    counts = _class_counts(eval_data)
    for class_id in forget_ids:
        if counts[class_id] == 0:
            raise DataError(
                f"The evaluation texts ({len(eval_data)}) contain no text of forget class {id2label[class_id]!r}, so "
                "forget F1 cannot be measured. Pass --eval-data with texts of that class, or more data so that the "
                "held-out share includes it."
            )
    if all(forget_mask(eval_data, forget_ids)):
        raise DataError(
            "Every evaluation text carries a forget class, so retained metrics cannot be measured. Pass --eval-data "
            "that also holds texts of the retained classes."
        )


# ----- creating -----


def select_patch_tokens(
    tokenizer: PreTrainedTokenizerBase,
    train: LabeledTexts,
    forget_ids: Sequence[int],
    *,
    top_k: int,
    min_doc_freq: int,
    max_length: int,
    vocab_size: int,
    show_progress: bool = False,
) -> TokenSelection:
    """Rank tokens by PMI with the forget classes over the training texts, as ``create`` selects them."""
    return select_tokens(
        tokenizer, train.texts, forget_mask(train, forget_ids), top_k=top_k, min_doc_freq=min_doc_freq,
        max_length=max_length, vocab_size=vocab_size, show_progress=show_progress,
    )


@contextlib.contextmanager
def values_written(model: nn.Module, parts: EditableParts, token_ids: Sequence[int], values: TouchedValues) -> Iterator[nn.Module]:
    """Write ``values`` into the model's rows and head inside a ``with`` block, then restore the originals."""
    weight = model.get_submodule(parts.embedding_name).weight
    head = dict(model.get_submodule(parts.head_name).named_parameters(recurse=False))
    index = torch.tensor(list(token_ids), dtype=torch.long, device=weight.device)
    original_rows = weight.detach().index_select(0, index).clone()
    original_head = {name: head[name].detach().clone() for name in values.head}
    with torch.no_grad():
        weight.index_copy_(0, index, values.rows.to(weight.device))
        for name, tensor in values.head.items():
            head[name].copy_(tensor.to(head[name].device))
    try:
        yield model
    finally:
        with torch.no_grad():
            weight.index_copy_(0, index, original_rows)
            for name, tensor in original_head.items():
                head[name].copy_(tensor)


def _base_model_info(model: PreTrainedModel, model_name: str | None, revision: str | None) -> dict[str, Any]:
    config = model.config
    return {
        "name_or_path": model_name or getattr(config, "_name_or_path", None) or None,
        "revision": revision,
        "commit_hash": getattr(config, "_commit_hash", None),
        "model_type": getattr(config, "model_type", None),
        "architecture": type(model).__name__,
    }


def _method(options: CreateOptions, selection: TokenSelection, training: TrainingResult, max_length: int, multi_label: bool, accelerator: Accelerator) -> dict[str, Any]:
    return {
        "name": METHOD_NAME,
        "top_k": options.top_k,
        "min_doc_freq": options.min_doc_freq,
        "selected_tokens": len(selection.scores),
        "eligible_tokens": selection.eligible_tokens,
        "epochs": options.epochs,
        "lr": options.learning_rate,
        "batch_size": options.batch_size,
        "max_length": max_length,
        "seed": options.seed,
        "target_forget_f1": options.target_forget_f1,
        "eval_steps": training.eval_steps,
        "stopped_at": training.stopped_at.to_dict(),
        "steps": training.steps,
        "history": [asdict(point) for point in training.history],
        "objective": OBJECTIVES[multi_label],
        "optimizer": "adam",
        "training_dtype": "float32",
        "num_processes": accelerator.num_processes,
    }


@dataclass(frozen=True)
class _Run:
    """The model-side settings of one :func:`create_patch` call, shared by its steps."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    parts: EditableParts
    id2label: dict[int, str]
    forget_ids: list[int]
    multi_label: bool
    max_length: int
    options: CreateOptions
    accelerator: Accelerator

    def measure(self, data: LabeledTexts, token_ids: Sequence[int] = (), values: TouchedValues | None = None) -> ClassificationMetrics:
        """Compute metrics on ``data`` of the model, with ``values`` written into it when given."""
        if values is None:
            context = contextlib.nullcontext()
        else:
            context = values_written(self.model, self.parts, token_ids, values)
        with context:
            logits = predict_sharded(
                self.model, self.tokenizer, data.texts, num_labels=len(self.id2label), max_length=self.max_length,
                batch_size=self.options.batch_size, accelerator=self.accelerator,
                show_progress=self.options.show_progress, desc="Evaluating",
            )
        return compute_metrics(
            logits, data.labels, id2label=self.id2label, forget_ids=self.forget_ids, multi_label=self.multi_label
        )


@contextlib.contextmanager
def _timed(timings: dict[str, float], phase: str) -> Iterator[None]:
    started = time.perf_counter()
    yield
    timings[phase] = time.perf_counter() - started


def create_patch(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    train: LabeledTexts,
    eval: LabeledTexts,
    forget_classes: Sequence[str | int],
    options: CreateOptions = CreateOptions(),
    *,
    model_name: str | None = None,
    revision: str | None = None,
    data_report: DataReport | None = None,
    eval_split: EvalSplit | None = None,
    accelerator: Accelerator | None = None,
) -> CreateResult:
    """Create a forget patch for ``forget_classes`` of ``model``; ``model`` is left unchanged.

    Args:
        model: a trained sequence classifier, in its checkpoint dtype, on the device to use.
        train: texts for token selection and training; ``eval``: texts for the metrics and the
            early stop. Both carry the model's class ids.
        forget_classes: class names or ids of ``model.config.id2label``.
        model_name, revision: recorded as the base model; default ``config._name_or_path``.
        data_report, eval_split: recorded in the manifest's metrics.

    Raises:
        LabelError: a forget class is unknown (the message lists the known classes).
        DataError: the data cannot support the patch (see :func:`check_training_data`), or
            ``top_k`` exceeds the vocabulary.
        UnsupportedModelError: the model lacks editable embeddings or head.
    """
    started = time.perf_counter()
    id2label = {int(class_id): str(name) for class_id, name in model.config.id2label.items()}
    forget_ids = resolve_labels(list(forget_classes), id2label)
    check_training_data(train, forget_ids, id2label, options.min_doc_freq)
    check_eval_data(eval, forget_ids, id2label)
    run = _Run(
        model, tokenizer, find_editable_parts(model, options.head), id2label, forget_ids,
        getattr(model.config, "problem_type", None) == "multi_label_classification",
        resolve_max_length(tokenizer, model.config, options.max_length), options, accelerator or make_accelerator(),
    )  # fmt: skip
    timings: dict[str, float] = {}

    with _timed(timings, "selection"):
        selection = select_patch_tokens(
            tokenizer, train, forget_ids, top_k=options.top_k, min_doc_freq=options.min_doc_freq,
            max_length=run.max_length, vocab_size=model.get_submodule(run.parts.embedding_name).weight.shape[0],
            show_progress=options.show_progress and run.accelerator.is_local_main_process,
        )
    with _timed(timings, "evaluation_before"):
        before = run.measure(eval)
    training = train_forget_patch(
        model, tokenizer, train, selection.token_ids, run.parts, forget_ids, options.training_options(run.max_length),
        eval_data=eval, accelerator=run.accelerator,
    )
    timings["training"] = training.seconds
    with _timed(timings, "evaluation_after"):
        after = run.measure(eval, selection.token_ids, training.values)
    timings["total"] = time.perf_counter() - started

    metrics = {
        "before": before.to_dict(),
        "after": after.to_dict(),
        "eval_split": None if eval_split is None else eval_split.to_dict(),
        "data": None if data_report is None else data_report.to_dict(),
    }
    patch = _assemble_patch(run, selection, training, metrics, timings, _base_model_info(model, model_name, revision))
    return CreateResult(patch, selection, before, after, training, timings, run.max_length, data_report, eval_split)


def _assemble_patch(
    run: _Run,
    selection: TokenSelection,
    training: TrainingResult,
    metrics: dict[str, Any],
    timings: dict[str, float],
    base_model: dict[str, Any],
) -> ForgetPatch:
    token_ids = selection.token_ids
    weight = run.model.get_submodule(run.parts.embedding_name).weight
    tokens = [
        {"id": s.token_id, "token": s.token, "score": s.score, "forget_doc_count": s.forget_doc_count, "doc_count": s.doc_count}
        for s in selection.scores
    ]
    return build_patch(
        token_ids=token_ids,
        original=_read_originals(run.model, run.parts, token_ids, training.values),
        new=training.values,
        embedding_module=run.parts.embedding_name,
        head_module=run.parts.head_name,
        embedding_shape=tuple(weight.shape),
        base_model=base_model,
        id2label=run.id2label,
        forget_classes=[run.id2label[class_id] for class_id in run.forget_ids],
        parent_patches=get_chain(run.model.config),
        tokens=tokens,
        method=_method(run.options, selection, training, run.max_length, run.multi_label, run.accelerator),
        metrics=metrics,
        total_parameters=count_parameters(run.model),
        extra={"timings": {name: round(seconds, 3) for name, seconds in timings.items()}},
        peft_passthrough=peft_passthrough_values(run.model, run.parts.head_name),
    )


def _read_originals(model: nn.Module, parts: EditableParts, token_ids: Sequence[int], like: TouchedValues) -> TouchedValues:
    parameters = dict(model.named_parameters())
    weight = parameters[f"{parts.embedding_name}.weight"]
    index = torch.tensor(list(token_ids), dtype=torch.long, device=weight.device)
    rows = weight.detach().index_select(0, index).cpu().clone()
    head = {name: parameters[f"{parts.head_name}.{name}"].detach().cpu().clone() for name in like.head}
    return TouchedValues(rows, head)


def create_patch_from_files(
    model: str | os.PathLike,
    data: str | os.PathLike,
    forget_classes: Sequence[str | int],
    output: str | os.PathLike | None = None,
    *,
    options: CreateOptions = CreateOptions(),
    text_column: str = "text",
    label_column: str = "label",
    split: str | None = None,
    eval_data: str | os.PathLike | None = None,
    eval_split: str | None = None,
    revision: str | None = None,
    overwrite: bool = False,
    accelerator: Accelerator | None = None,
) -> CreateResult:
    """Load a classifier and labelled texts, create a forget patch and save it to ``output``.

    ``model`` is a local directory or a Hub model id (at ``revision``). Only the main process of
    a distributed run writes ``output``; every process returns the result.

    Raises:
        FileExistsError: ``output`` exists and is not empty, and ``overwrite`` is false (checked
            before any work, and again when saving).
        ModelNotFoundError, UnsupportedModelError, LabelError, DataError: see
            :func:`load_classifier`, :func:`prepare_data` and :func:`create_patch`.
    """
    accelerator = accelerator or make_accelerator()
    if output is not None:
        _check_output(Path(output), overwrite)
    model_dir = resolve_model_dir(model, revision=revision)
    classifier, tokenizer = load_classifier(model_dir, head=options.head)
    multi_label = getattr(classifier.config, "problem_type", None) == "multi_label_classification"
    prepared = prepare_data(
        data, classifier.config.id2label, forget_classes, multi_label=multi_label, text_column=text_column,
        label_column=label_column, split=split, eval_data=eval_data, eval_split=eval_split, seed=options.seed,
    )
    classifier.to(accelerator.device)
    result = create_patch(
        classifier, tokenizer, prepared.train, prepared.eval, prepared.forget_ids, options,
        model_name=str(model), revision=revision, data_report=prepared.report, eval_split=prepared.eval_split,
        accelerator=accelerator,
    )
    if output is None:
        return result
    if accelerator.is_main_process:
        result.patch.save_pretrained(output, overwrite=overwrite)
    accelerator.wait_for_everyone()
    return replace(result, output_dir=Path(output))


def _check_output(output: Path, overwrite: bool) -> None:
    if output.exists() and not overwrite and (not output.is_dir() or any(output.iterdir())):
        raise FileExistsError(
            f"Output {output} already exists and is not empty. Choose another output path or pass --overwrite "
            "(overwrite=True) to replace it."
        )
