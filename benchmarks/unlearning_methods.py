"""The unlearning methods the benchmark compares with STEU, and the training loop they share.

Every method starts from the same fine-tuned classifier and returns an :class:`UnlearnedModel`.
It carries a plain transformers classifier to measure, a logit transform where the method changes
the outputs rather than the weights, the final linear layer that the relearning check fine-tunes,
and the files a user would ship.

The trained baselines (full model, head, rows, random rows, LoRA) use STEU's objective from
:mod:`steu_patch.training`. Its soft targets are the teacher's softmax renormalised over the
retained classes, and each batch holds half forget and half retained texts. Training uses Adam
with dropout off and stops once forget F1 on the validation split is at or below STEU's target.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Callable
from dataclasses import asdict, dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import numpy as np
import torch
from accelerate.utils import set_seed
from peft import LoraConfig, get_peft_model
from torch import nn
from tqdm.auto import tqdm
from transformers import AutoModelForSequenceClassification, PreTrainedModel, PreTrainedTokenizerBase

from benchmark_setup import BenchmarkData, BenchmarkSettings
from steu_patch.apply import apply_patch
from steu_patch.create import DEFAULT_MIN_DOC_FREQ, DEFAULT_TOP_K, CreateOptions, create_patch, select_patch_tokens
from steu_patch.demo import ClassifierRecipe
from steu_patch.evaluation import compute_metrics, predict_logits
from steu_patch.finetune import finetune_classifier
from steu_patch.models import EditableParts, count_parameters, find_editable_parts
from steu_patch.patch import ADAPTER_WEIGHTS_NAME, NO_LORA_TARGETS, atomic_directory
from steu_patch.training import (
    DEFAULT_CHECKS_PER_EPOCH,
    STOP_EPOCHS_DONE,
    STOP_TARGET_REACHED,
    TrainingOptions,
    build_loader,
    forget_mask,
    unlearning_loss,
    unlearning_targets,
    wrap_for_training,
)

logger = logging.getLogger(__name__)

# Logit given to a class a method never predicts (masking, and the forget class of the retrained
# 12-class model). It is finite so that per-text cross-entropy, and with it membership inference,
# stays finite; it is far below any logit these classifiers produce.
MASKED_LOGIT = -1.0e4
SAFETENSORS_NAME = "model.safetensors"
# Attention projections that the LoRA baseline adapts, as BERT names them.
LORA_TARGET_MODULES = ("query", "value")


@dataclass(frozen=True)
class MethodContext:
    """Inputs of every method. ``model`` is the float32 classifier in eval mode, and methods train copies of it."""

    model: PreTrainedModel
    tokenizer: PreTrainedTokenizerBase
    data: BenchmarkData
    settings: BenchmarkSettings
    output_dir: Path

    @property
    def parts(self) -> EditableParts:
        return find_editable_parts(self.model)


@dataclass
class UnlearnedModel:
    """A method's outcome.

    Attributes:
        model: a plain sequence classifier whose logits (after ``logits_transform``) are measured.
        relearn_head: the final linear layer with one output per class of the original classifier.
        artifact_dir: the directory a user would ship, or None when nothing is written.
        artifact_bytes: bytes of that artifact (see the benchmark README for what each includes).
        weights_bytes: bytes of its tensor file holding the new values alone.
        trainable_parameters: values the optimizer updated (0 without training).
        details: method-specific facts (stop point, steps, token ids, learning rate).
    """

    model: nn.Module
    relearn_head: nn.Linear
    logits_transform: Callable[[torch.Tensor], torch.Tensor] | None = None
    artifact_dir: Path | None = None
    artifact_bytes: int | None = None
    weights_bytes: int | None = None
    trainable_parameters: int = 0
    details: dict[str, Any] = field(default_factory=dict)


def head_of(model: nn.Module) -> nn.Linear:
    return model.get_submodule(find_editable_parts(model).head_name)


def directory_bytes(path: Path) -> int:
    """Return the total size of the regular files directly inside ``path``."""
    return sum(entry.stat().st_size for entry in Path(path).iterdir() if entry.is_file())


# ----- the shared training loop -----


@dataclass(frozen=True)
class LoopResult:
    """Stop point of the forget-loss loop and the validation forget F1 at each check."""

    epochs: int
    steps: int
    stop_reason: str
    learning_rate: float
    check_interval: int
    history: tuple[dict[str, float], ...]

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def train_with_forget_loss(model: nn.Module, ctx: MethodContext, learning_rate: float) -> LoopResult:
    """Train the parameters of ``model`` that require gradients with STEU's objective, in place.

    Epochs, batch size, seed, early-stop target and check schedule are STEU's: forget F1 on the
    validation split is checked ``DEFAULT_CHECKS_PER_EPOCH`` times per epoch and at its end. The
    teacher is ``ctx.model``, whose logits on the training texts are computed once, as STEU does.
    """
    settings = ctx.settings
    options = TrainingOptions(
        epochs=settings.steu_epochs, learning_rate=learning_rate, batch_size=settings.batch_size,
        max_length=settings.max_length, seed=settings.seed, target_forget_f1=settings.target_forget_f1,
        show_progress=settings.show_progress,
    )
    set_seed(options.seed)
    train, forget_ids = ctx.data.train, ctx.data.forget_ids
    teacher_logits = predict_logits(ctx.model, ctx.tokenizer, train.texts, max_length=options.max_length, batch_size=options.batch_size)
    targets = unlearning_targets(teacher_logits, forget_ids, multi_label=False)
    loader = build_loader(ctx.tokenizer, train, targets, forget_mask(train, forget_ids), options)
    optimizer = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=learning_rate)
    interval = max(1, math.ceil(len(loader) / DEFAULT_CHECKS_PER_EPOCH))
    model.eval()  # dropout off, as steu_patch.training trains

    history: list[dict[str, float]] = []
    steps, losses = 0, []
    bar = tqdm(total=options.epochs * len(loader), desc="Training", unit="step", disable=not options.show_progress)
    with bar:
        for epoch in range(1, options.epochs + 1):
            for batch in loader:
                losses.append(_train_step(model, optimizer, batch))
                steps += 1
                bar.update(1)
                if steps % interval == 0 and _check(model, ctx, epoch, steps, losses, history):
                    return LoopResult(epoch, steps, STOP_TARGET_REACHED, learning_rate, interval, tuple(history))
            if (not history or history[-1]["step"] != steps) and _check(model, ctx, epoch, steps, losses, history):
                return LoopResult(epoch, steps, STOP_TARGET_REACHED, learning_rate, interval, tuple(history))
    return LoopResult(options.epochs, steps, STOP_EPOCHS_DONE, learning_rate, interval, tuple(history))


def _train_step(model: nn.Module, optimizer: torch.optim.Optimizer, batch: dict[str, torch.Tensor]) -> float:
    targets = batch.pop("targets")
    loss = unlearning_loss(model(**batch).logits, targets, multi_label=False)
    loss.backward()
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    return float(loss.detach())


def _check(model: nn.Module, ctx: MethodContext, epoch: int, steps: int, losses: list[float], history: list[dict[str, float]]) -> bool:
    """Record validation forget F1 and the mean loss since the last check; return True once the target is reached."""
    forget_f1 = validation_forget_f1(model, ctx)
    history.append({"epoch": epoch, "step": steps, "forget_f1": forget_f1, "train_loss": float(np.mean(losses))})
    losses.clear()
    logger.info("Epoch %d, step %d: validation forget F1 %.4f", epoch, steps, forget_f1)
    return forget_f1 <= ctx.settings.target_forget_f1


def validation_forget_f1(model: nn.Module, ctx: MethodContext) -> float:
    validation = ctx.data.validation
    logits = predict_logits(model, ctx.tokenizer, validation.texts, max_length=ctx.settings.max_length, batch_size=ctx.settings.batch_size)
    return compute_metrics(logits, validation.labels, id2label=ctx.data.id2label, forget_ids=ctx.data.forget_ids).forget_f1


def trainable_count(model: nn.Module) -> int:
    return sum(parameter.numel() for parameter in model.parameters() if parameter.requires_grad)


# ----- methods without training -----


def run_original(ctx: MethodContext) -> UnlearnedModel:
    """The fine-tuned classifier itself: the reference every method starts from."""
    return UnlearnedModel(model=ctx.model, relearn_head=head_of(ctx.model))


def mask_logits(logits: torch.Tensor, forget_ids: tuple[int, ...]) -> torch.Tensor:
    masked = logits.clone()
    masked[:, list(forget_ids)] = MASKED_LOGIT
    return masked


def run_masking(ctx: MethodContext) -> UnlearnedModel:
    """Set the forget logits to ``MASKED_LOGIT`` at inference; no parameter changes.

    The relearning check fine-tunes the unchanged head, because the mask is not in the weights.
    """
    return UnlearnedModel(
        model=ctx.model, relearn_head=head_of(ctx.model),
        logits_transform=partial(mask_logits, forget_ids=ctx.data.forget_ids),
        artifact_bytes=0, weights_bytes=0,
    )


# ----- retraining without the forget class -----


def expand_logits(logits: torch.Tensor, kept_ids: list[int], num_labels: int) -> torch.Tensor:
    """Place the retrained model's logits at the original class ids; the forget ids get ``MASKED_LOGIT``."""
    expanded = torch.full((logits.shape[0], num_labels), MASKED_LOGIT, dtype=logits.dtype)
    expanded[:, kept_ids] = logits
    return expanded


def expand_head(head: nn.Linear, kept_ids: list[int], num_labels: int) -> nn.Linear:
    """Return a copy of ``head`` with one output per original class; the forget rows start at zero.

    A zero row is a new class output before any training, so relearning starts from a logit of 0.
    """
    layer = nn.Linear(head.in_features, num_labels)
    with torch.no_grad():
        layer.weight.zero_()
        layer.bias.zero_()
        layer.weight[kept_ids] = head.weight.detach().float()
        layer.bias[kept_ids] = head.bias.detach().float()
    return layer


def run_retrain(ctx: MethodContext) -> UnlearnedModel:
    """Fine-tune the pretrained encoder with the classifier's recipe on the training texts of the retained classes."""
    id2label, forget_ids = ctx.data.id2label, ctx.data.forget_ids
    kept_ids = [class_id for class_id in sorted(id2label) if class_id not in forget_ids]
    new_ids = {class_id: position for position, class_id in enumerate(kept_ids)}
    train = ctx.data.train
    rows = [row for row, label in enumerate(train.labels) if label not in forget_ids]

    recipe = ClassifierRecipe(**ctx.settings.recipe)
    model_dir = ctx.output_dir / "model"
    finetune_classifier(
        recipe.resolved_encoder(), [train.texts[row] for row in rows], [new_ids[train.labels[row]] for row in rows],
        [id2label[class_id] for class_id in kept_ids], model_dir,
        epochs=recipe.epochs, learning_rate=recipe.learning_rate, batch_size=recipe.batch_size,
        max_length=recipe.max_length, seed=recipe.seed, show_progress=ctx.settings.show_progress, overwrite=True,
    )
    model = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    size = (model_dir / SAFETENSORS_NAME).stat().st_size
    return UnlearnedModel(
        model=model,
        relearn_head=expand_head(head_of(model), kept_ids, len(id2label)),
        logits_transform=partial(expand_logits, kept_ids=kept_ids, num_labels=len(id2label)),
        artifact_dir=model_dir, artifact_bytes=size, weights_bytes=size,
        trainable_parameters=count_parameters(model),
        details={"training_texts": len(rows), "epochs": recipe.epochs, "learning_rate": recipe.learning_rate},
    )


# ----- STEU -----


def run_steu(ctx: MethodContext) -> UnlearnedModel:
    """Create a forget patch with ``create_patch``'s defaults, save it and apply it to a copy.

    The training settings are passed explicitly, as the defaults were read when the run started,
    so every method of one run uses the same values.
    """
    settings = ctx.settings
    options = CreateOptions(
        epochs=settings.steu_epochs, learning_rate=settings.steu_learning_rate, batch_size=settings.batch_size,
        target_forget_f1=settings.target_forget_f1, max_length=settings.max_length, seed=settings.seed,
        show_progress=settings.show_progress,
    )
    result = create_patch(
        ctx.model, ctx.tokenizer, ctx.data.train, ctx.data.validation, [ctx.settings.forget_class], options,
        model_name=ctx.settings.classifier_dir,
    )
    patch_dir = ctx.output_dir / "patch"
    result.patch.save_pretrained(patch_dir, overwrite=True)
    model = apply_patch(copy.deepcopy(ctx.model), result.patch)
    return UnlearnedModel(
        model=model, relearn_head=head_of(model), artifact_dir=patch_dir,
        artifact_bytes=directory_bytes(patch_dir), weights_bytes=(patch_dir / ADAPTER_WEIGHTS_NAME).stat().st_size,
        trainable_parameters=result.patch.parameters_modified(),
        details={
            "token_ids": list(result.patch.token_ids),
            "stopped_at": result.training.stopped_at.to_dict(),
            "steps": result.training.steps,
            "check_interval": result.training.eval_steps,
            "learning_rate": options.learning_rate,
            "timings": {name: round(seconds, 3) for name, seconds in result.timings.items()},
        },
    )


# ----- trained baselines -----


def run_full(ctx: MethodContext) -> UnlearnedModel:
    """Train every parameter of a copy with STEU's objective and save the whole checkpoint."""
    student = copy.deepcopy(ctx.model).float()
    for parameter in student.parameters():
        parameter.requires_grad_(True)
    loop = train_with_forget_loss(student, ctx, ctx.settings.full_learning_rate)
    model_dir = ctx.output_dir / "model"
    with atomic_directory(model_dir, overwrite=True) as staging:
        student.save_pretrained(staging)
    size = (model_dir / SAFETENSORS_NAME).stat().st_size
    return UnlearnedModel(
        model=student.eval(), relearn_head=head_of(student), artifact_dir=model_dir, artifact_bytes=size,
        weights_bytes=size, trainable_parameters=count_parameters(student), details=loop.to_dict(),
    )


def train_adapter(ctx: MethodContext, wrap: Callable[[nn.Module], nn.Module], learning_rate: float, details: dict[str, Any]) -> UnlearnedModel:
    """Wrap a float32 copy with a PEFT adapter, train it, save the adapter and merge it into the copy."""
    set_seed(ctx.settings.seed)  # LoRA initialises its A matrices randomly
    peft_model = wrap(copy.deepcopy(ctx.model).float())
    trainable = trainable_count(peft_model)
    loop = train_with_forget_loss(peft_model, ctx, learning_rate)
    adapter_dir = ctx.output_dir / "adapter"
    with atomic_directory(adapter_dir, overwrite=True) as staging:
        peft_model.save_pretrained(staging)
    merged = peft_model.merge_and_unload().eval()
    return UnlearnedModel(
        model=merged, relearn_head=head_of(merged), artifact_dir=adapter_dir,
        artifact_bytes=directory_bytes(adapter_dir), weights_bytes=(adapter_dir / ADAPTER_WEIGHTS_NAME).stat().st_size,
        trainable_parameters=trainable, details={**details, **loop.to_dict()},
    )


def peft_wrapper(config: LoraConfig) -> Callable[[nn.Module], nn.Module]:
    return lambda model: get_peft_model(model, config)


def run_head(ctx: MethodContext) -> UnlearnedModel:
    """Train only the final classification layer, with STEU's epochs and learning rate."""
    config = LoraConfig(r=1, target_modules=NO_LORA_TARGETS, modules_to_save=[ctx.parts.head_name])
    return train_adapter(ctx, peft_wrapper(config), ctx.settings.steu_learning_rate, {})


def steu_token_ids(ctx: MethodContext) -> list[int]:
    """Select tokens exactly as ``create_patch`` does with its defaults."""
    selection = select_patch_tokens(
        ctx.tokenizer, ctx.data.train, ctx.data.forget_ids, top_k=DEFAULT_TOP_K, min_doc_freq=DEFAULT_MIN_DOC_FREQ,
        max_length=ctx.settings.max_length, vocab_size=ctx.model.get_input_embeddings().weight.shape[0],
    )
    return selection.token_ids


def run_rows(ctx: MethodContext) -> UnlearnedModel:
    """Train only the embedding rows STEU selects; the head stays frozen."""
    token_ids = steu_token_ids(ctx)
    config = LoraConfig(r=1, target_modules=NO_LORA_TARGETS, trainable_token_indices={ctx.parts.embedding_name: token_ids})
    return train_adapter(ctx, peft_wrapper(config), ctx.settings.steu_learning_rate, {"token_ids": token_ids})


def random_token_ids(ctx: MethodContext) -> list[int]:
    """Draw ``settings.random_tokens`` distinct non-special token ids with the benchmark's seed."""
    rows = min(len(ctx.tokenizer), ctx.model.get_input_embeddings().weight.shape[0])
    candidates = np.setdiff1d(np.arange(rows), np.asarray(ctx.tokenizer.all_special_ids, dtype=np.int64))
    chosen = np.random.default_rng(ctx.settings.seed).choice(candidates, size=ctx.settings.random_tokens, replace=False)
    return sorted(int(token_id) for token_id in chosen)


def run_random(ctx: MethodContext) -> UnlearnedModel:
    """Train random embedding rows plus the head with STEU's adapter, epochs and learning rate."""
    token_ids = random_token_ids(ctx)
    parts = ctx.parts
    return train_adapter(
        ctx, lambda model: wrap_for_training(model, parts, token_ids), ctx.settings.steu_learning_rate,
        {"token_ids": token_ids},
    )


def run_lora(ctx: MethodContext) -> UnlearnedModel:
    """Train LoRA matrices on the attention query and value projections plus the head."""
    settings = ctx.settings
    config = LoraConfig(
        r=settings.lora_rank, lora_alpha=settings.lora_alpha, lora_dropout=0.0,
        target_modules=list(LORA_TARGET_MODULES), modules_to_save=[ctx.parts.head_name],
    )
    details = {"rank": settings.lora_rank, "alpha": settings.lora_alpha, "target_modules": list(LORA_TARGET_MODULES)}
    return train_adapter(ctx, peft_wrapper(config), settings.lora_learning_rate, details)


@dataclass(frozen=True)
class Method:
    """A benchmarked method: its key, its name in the table and what it does."""

    key: str
    label: str
    description: str
    run: Callable[[MethodContext], UnlearnedModel]


METHODS: dict[str, Method] = {
    method.key: method
    for method in (
        Method("original", "Original classifier", "the fine-tuned classifier, unchanged (reference)", run_original),
        Method("retrain", "Retrain without class", "fine-tune the pretrained encoder again without forget-class texts (gold standard)", run_retrain),
        Method("masking", "Logit masking", "set the forget logit to -1e4 at inference; no parameter changes", run_masking),
        Method("steu", "STEU", "create_patch defaults: PMI-selected embedding rows + head", run_steu),
        Method("head", "Head only", "STEU's objective, only the final classification layer trains", run_head),
        Method("rows", "Rows only", "STEU's objective, only STEU's selected embedding rows train", run_rows),
        Method("random", "Random rows + head", "STEU's objective on random non-special embedding rows + head", run_random),
        Method("full", "Full model", "STEU's objective on every parameter", run_full),
        Method("lora", "LoRA + head", "STEU's objective on LoRA (query, value) + head", run_lora),
    )
}
