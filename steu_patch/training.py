"""Train the embedding rows and the final classification layer that a forget patch overwrites.

The model is wrapped with the adapter that the patch format stores: a PEFT LoRA config without
LoRA layers whose ``trainable_token_indices`` name the selected embedding rows and whose
``modules_to_save`` name the final classification layer. PEFT trains a copy of exactly those
rows and of that layer, so the encoder and every other embedding row stay frozen.

Objective. The model before training is the teacher. Its logits on the training texts are
computed once, up front, and turned into fixed targets:

- Single-label (softmax): the teacher's distribution renormalised over the retained classes, that
  is ``softmax`` of the teacher logits with every forget logit set to ``-inf``. The loss is the
  soft-label cross-entropy against that target on every text. On forget texts it moves the
  probability of the forget class to the classes the teacher ranks next. On retained texts it
  distils the teacher while giving the forget class probability 0.
- Multi-label (sigmoid): binary cross-entropy towards 0 for every forget label and towards the
  teacher's sigmoid for every other label, on every text.

Each batch holds half forget texts and half retained texts. Several times per epoch (every
``eval_steps`` steps) and at its end, forget F1 is measured on the evaluation texts, and training
stops once it is at or below ``target_forget_f1``.

The loop runs on HF Accelerate, so ``accelerate launch`` or ``torchrun`` spreads the batches over
processes; every process then holds the same trained values. Dropout is off during training
because the encoder is frozen and the patch is judged by the model in eval mode; together with
the seeded batch order this makes a run deterministic for a seed, data and process count.
"""

from __future__ import annotations

import copy
import logging
import math
import sys
import time
from collections.abc import Iterator, Sequence
from dataclasses import asdict, dataclass

import numpy as np
import torch
import torch.nn.functional as F
from accelerate import Accelerator
from accelerate.utils import gather_object, set_seed
from torch import nn
from torch.utils.data import DataLoader, Sampler
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from .data import LabeledTexts
from .errors import DataError, UnsupportedModelError
from .evaluation import compute_metrics, predict_logits
from .models import EditableParts
from .patch import NO_LORA_TARGETS, TouchedValues, adapter_weight_keys

logger = logging.getLogger(__name__)

# Defaults sized for a MiniLM/BERT-base classifier fine-tuned on about a thousand documents, with
# up to 256 selected tokens. Adam moves every trained value by about the learning rate per step,
# whatever its gradient, and embedding values and head weights of such models are of order 0.05.
# On all-MiniLM-L6-v2 fine-tuned on the shipped MTSamples subset (13 classes, max_length 128),
# 1e-3 brought forget F1 to 0 within 17 steps for Orthopedic and for Neurology while retained
# macro-F1 moved by at most 0.012. 5e-3 forgot as fast but cost Neurology 0.09 retained macro-F1,
# because every head weight, also those of retained classes, moves by 5e-3 per step.
DEFAULT_EPOCHS = 5
DEFAULT_LEARNING_RATE = 1e-3
DEFAULT_BATCH_SIZE = 16
DEFAULT_TARGET_FORGET_F1 = 0.01
# Forget F1 checks per epoch when eval_steps is not set. Each check predicts the evaluation texts
# once. Checking within the epoch stops training closer to the step where the target is reached,
# because steps past it can lower retained accuracy.
DEFAULT_CHECKS_PER_EPOCH = 4

# PEFT's name for the adapter that get_peft_model creates.
ADAPTER_NAME = "default"

STOP_TARGET_REACHED = "target_forget_f1"
STOP_EPOCHS_DONE = "epochs"


@dataclass(frozen=True)
class TrainingOptions:
    """Settings of the training loop.

    Attributes:
        epochs: maximum passes; one epoch is ``ceil(len(train) / batch_size)`` steps in total.
        learning_rate: Adam learning rate of the embedding rows and the head (constant).
        batch_size: texts per step and process, half forget and half retained; at least 2.
        max_length: tokens per text after truncation.
        seed: seed of the batch order and of every random number generator.
        target_forget_f1: stop once forget F1 on the evaluation texts is at or below this value.
        eval_steps: check forget F1 every this many steps and at the end of each epoch; ``None``
            checks ``DEFAULT_CHECKS_PER_EPOCH`` times per epoch.
        show_progress: draw tqdm progress bars on stderr (main process only).
    """

    epochs: int = DEFAULT_EPOCHS
    learning_rate: float = DEFAULT_LEARNING_RATE
    batch_size: int = DEFAULT_BATCH_SIZE
    max_length: int = 256
    seed: int = 0
    target_forget_f1: float = DEFAULT_TARGET_FORGET_F1
    eval_steps: int | None = None
    show_progress: bool = True

    def __post_init__(self) -> None:
        if not (isinstance(self.epochs, int) and self.epochs >= 1):
            raise ValueError(f"Invalid epochs {self.epochs!r}; pass a positive integer such as {DEFAULT_EPOCHS}.")
        if not (math.isfinite(self.learning_rate) and self.learning_rate > 0):
            raise ValueError(f"Invalid learning rate {self.learning_rate!r}; pass a positive number such as 1e-3.")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 2):
            raise ValueError(
                f"Invalid batch size {self.batch_size!r}; pass an integer of at least 2, because each batch contains "
                "forget and retained texts."
            )
        if not (isinstance(self.max_length, int) and self.max_length >= 2):
            raise ValueError(f"Invalid max_length {self.max_length!r}; pass an integer of at least 2 such as 256.")
        if not 0.0 <= self.target_forget_f1 <= 1.0:
            raise ValueError(f"Invalid target forget F1 {self.target_forget_f1!r}; pass a value from 0 to 1.")
        if self.eval_steps is not None and not (isinstance(self.eval_steps, int) and self.eval_steps >= 1):
            raise ValueError(f"Invalid eval_steps {self.eval_steps!r}; pass a positive integer or None.")


@dataclass(frozen=True)
class EvaluationPoint:
    """Forget F1 on the evaluation texts at one point of training.

    ``train_loss`` is the mean loss of the steps since the previous evaluation.
    """

    epoch: int
    step: int
    forget_f1: float
    train_loss: float


@dataclass(frozen=True)
class StopPoint:
    """Stop point of training. ``reason`` is ``target_forget_f1``, or ``epochs`` when all epochs ran."""

    epoch: int
    step: int
    reason: str
    forget_f1: float | None

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass(frozen=True)
class TrainingResult:
    """Trained values and the course of training.

    Attributes:
        values: the new embedding rows (in token-id order as given) and head tensors, in the
            dtype of the model passed in.
        stopped_at: the epoch and step where training stopped, and why.
        history: every evaluation, in order.
        steps: optimizer steps run on each process.
        seconds: wall-clock time of target computation and training.
        eval_steps: steps between forget F1 checks, or None when there were no evaluation texts.
    """

    values: TouchedValues
    stopped_at: StopPoint
    history: tuple[EvaluationPoint, ...]
    steps: int
    seconds: float
    eval_steps: int | None = None


# ----- objective -----


def forget_mask(data: LabeledTexts, forget_ids: Sequence[int]) -> list[bool]:
    """Mark the texts that carry a forget class (any of their labels, for multi-label data)."""
    forget = {int(class_id) for class_id in forget_ids}
    if data.multi_label:
        return [bool(forget.intersection(labels)) for labels in data.labels]
    return [label in forget for label in data.labels]


def unlearning_targets(teacher_logits: torch.Tensor, forget_ids: Sequence[int], *, multi_label: bool) -> torch.Tensor:
    """Turn teacher logits into training targets with probability 0 for the forget classes.

    Returns:
        Single-label: rows of a probability distribution over the classes. Multi-label: one
        probability per label.
    """
    forget = torch.tensor(sorted({int(class_id) for class_id in forget_ids}), dtype=torch.long)
    logits = teacher_logits.detach().float().cpu()
    if multi_label:
        targets = torch.sigmoid(logits)
        targets[:, forget] = 0.0
        return targets
    masked = logits.clone()
    masked[:, forget] = float("-inf")
    return torch.softmax(masked, dim=-1)


def unlearning_loss(logits: torch.Tensor, targets: torch.Tensor, *, multi_label: bool) -> torch.Tensor:
    """Return the mean loss of ``logits`` against :func:`unlearning_targets`."""
    if multi_label:
        return F.binary_cross_entropy_with_logits(logits.float(), targets)
    return F.cross_entropy(logits.float(), targets)


# ----- the PEFT adapter -----


def trainable_parameter_names(parts: EditableParts, head_parameters: Sequence[str]) -> set[str]:
    """Names of the parameters PEFT creates for the patch's rows and head, in the wrapped model."""
    prefix = "base_model.model"
    names = {f"{prefix}.{parts.embedding_name}.token_adapter.trainable_tokens_delta.{ADAPTER_NAME}"}
    names.update(f"{prefix}.{parts.head_name}.modules_to_save.{ADAPTER_NAME}.{name}" for name in head_parameters)
    return names


def wrap_for_training(model: nn.Module, parts: EditableParts, token_ids: Sequence[int]) -> nn.Module:
    """Wrap ``model`` in place with the patch's PEFT adapter; only the rows and head train.

    PEFT matches ``modules_to_save`` by name suffix, so for DistilBERT ``classifier`` also wraps
    ``pre_classifier``. Every parameter except the rows and the head is frozen again here.

    Raises:
        UnsupportedModelError: if PEFT did not create the expected trainable parameters.
    """
    from peft import LoraConfig, get_peft_model

    head_parameters = [name for name, _ in model.get_submodule(parts.head_name).named_parameters(recurse=False)]
    config = LoraConfig(
        r=1,
        target_modules=NO_LORA_TARGETS,
        trainable_token_indices={parts.embedding_name: [int(token_id) for token_id in token_ids]},
        modules_to_save=[parts.head_name],
    )
    peft_model = get_peft_model(model, config)

    expected = trainable_parameter_names(parts, head_parameters)
    present = set()
    for name, parameter in peft_model.named_parameters():
        parameter.requires_grad_(name in expected)
        present.add(name)
    missing = sorted(expected - present)
    if missing:
        raise UnsupportedModelError(
            f"PEFT did not create the trainable parameter(s) {', '.join(missing)} for embeddings "
            f"{parts.embedding_name!r} and head {parts.head_name!r}. Check that the installed peft version supports "
            "trainable_token_indices (peft >= 0.15), or pass the final linear layer with --head."
        )
    return peft_model


def read_trained_values(peft_model: nn.Module, parts: EditableParts, head_parameters: Sequence[str]) -> TouchedValues:
    """Read the trained rows and head from the adapter state dict that PEFT would save."""
    from peft import get_peft_model_state_dict

    state = get_peft_model_state_dict(peft_model, adapter_name=ADAPTER_NAME)
    keys = adapter_weight_keys(parts.embedding_name, parts.head_name, head_parameters)
    rows = state[keys["rows"]].detach().cpu().clone()
    head = {name: state[keys[f"head.{name}"]].detach().cpu().clone() for name in head_parameters}
    return TouchedValues(rows, head)


# ----- batches -----


class BalancedBatchSampler(Sampler[list[int]]):
    """Yield batches of which the first half are forget texts and the rest retained texts.

    Each half walks through a seeded random permutation of its texts and starts a new one when it
    runs out, so the smaller group repeats within an epoch. Every iteration is one epoch with a
    new order derived from ``(seed, epoch)``; all processes of a distributed run build the same
    sampler and therefore see the same batches before Accelerate shards them.
    """

    def __init__(self, forget_indices: Sequence[int], retain_indices: Sequence[int], *, batch_size: int, steps_per_epoch: int, seed: int) -> None:
        if len(forget_indices) == 0 or len(retain_indices) == 0:
            raise DataError(
                f"Balanced batches need forget and retained texts, but got {len(forget_indices)} forget and "
                f"{len(retain_indices)} retained text(s). Pass training texts of the forget and the retained classes."
            )
        self.forget_indices = np.asarray(forget_indices, dtype=np.int64)
        self.retain_indices = np.asarray(retain_indices, dtype=np.int64)
        self.batch_size = batch_size
        self.drop_last = False
        self.steps_per_epoch = steps_per_epoch
        self.seed = seed
        self.epoch = 0

    def __len__(self) -> int:
        return self.steps_per_epoch

    def __iter__(self) -> Iterator[list[int]]:
        rng = np.random.default_rng([self.seed, self.epoch])
        self.epoch += 1
        forget_count = self.batch_size // 2
        retain_count = self.batch_size - forget_count
        forget = _index_stream(self.forget_indices, forget_count * self.steps_per_epoch, rng)
        retain = _index_stream(self.retain_indices, retain_count * self.steps_per_epoch, rng)
        for step in range(self.steps_per_epoch):
            batch = forget[step * forget_count : (step + 1) * forget_count].tolist()
            batch += retain[step * retain_count : (step + 1) * retain_count].tolist()
            yield batch


def _index_stream(indices: np.ndarray, count: int, rng: np.random.Generator) -> np.ndarray:
    permutations = [rng.permutation(indices) for _ in range(math.ceil(count / len(indices)))]
    return np.concatenate(permutations)[:count]


class _Collator:
    """Pad pre-tokenised texts into a batch and attach their targets."""

    def __init__(self, tokenizer: PreTrainedTokenizerBase, encodings: list[dict], targets: torch.Tensor) -> None:
        self.tokenizer = tokenizer
        self.encodings = encodings
        self.targets = targets

    def __call__(self, indices: list[int]) -> dict[str, torch.Tensor]:
        batch = dict(self.tokenizer.pad([self.encodings[i] for i in indices], return_tensors="pt"))
        batch["targets"] = self.targets[indices]
        return batch


def build_loader(
    tokenizer: PreTrainedTokenizerBase, train: LabeledTexts, targets: torch.Tensor, mask: Sequence[bool], options: TrainingOptions
) -> DataLoader:
    """Return a DataLoader of balanced batches over ``train``, tokenised once up front."""
    encoded = tokenizer(list(train.texts), truncation=True, max_length=options.max_length)
    encodings = [{key: encoded[key][row] for key in encoded.keys()} for row in range(len(train))]
    sampler = BalancedBatchSampler(
        [row for row, is_forget in enumerate(mask) if is_forget],
        [row for row, is_forget in enumerate(mask) if not is_forget],
        batch_size=options.batch_size,
        steps_per_epoch=math.ceil(len(train) / options.batch_size),
        seed=options.seed,
    )
    return DataLoader(list(range(len(train))), batch_sampler=sampler, collate_fn=_Collator(tokenizer, encodings, targets))


# ----- distributed prediction -----


def predict_sharded(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    num_labels: int,
    max_length: int,
    batch_size: int,
    accelerator: Accelerator,
    show_progress: bool = False,
    desc: str = "Predicting",
) -> torch.Tensor:
    """Predict logits with each process scoring a contiguous share of ``texts``; every process gets all.

    Returns:
        A float32 CPU tensor ``(len(texts), num_labels)`` in the order of ``texts``.
    """
    share, extra = divmod(len(texts), accelerator.num_processes)
    start = accelerator.process_index * share + min(accelerator.process_index, extra)
    stop = start + share + (1 if accelerator.process_index < extra else 0)
    if stop > start:
        local = predict_logits(
            model, tokenizer, list(texts[start:stop]), max_length=max_length, batch_size=batch_size,
            show_progress=show_progress and accelerator.is_local_main_process, desc=desc,
        )
    else:
        local = torch.empty((0, num_labels), dtype=torch.float32)
    if accelerator.num_processes == 1:
        return local
    return torch.cat(gather_object([local]))


# ----- the loop -----


def make_accelerator() -> Accelerator:
    """Return the Accelerate handle that training and evaluation use.

    On a machine without GPU or other accelerator, Accelerate (1.16) forms a process group only
    with ``cpu=True``, so it is passed there. Processes started by ``torchrun`` then communicate
    over gloo. With an accelerator, Accelerate uses it.
    """
    if hasattr(torch, "accelerator"):
        has_accelerator = torch.accelerator.is_available()
    else:  # torch < 2.6
        has_accelerator = torch.cuda.is_available()
    return Accelerator(cpu=not has_accelerator)


@dataclass
class _LoopState:
    step: int = 0
    loss_sum: float = 0.0
    loss_count: int = 0

    def take_mean_loss(self, accelerator: Accelerator) -> float:
        """Return the mean loss since the last call, averaged over all processes' batches."""
        totals = torch.tensor([self.loss_sum, float(self.loss_count)], device=accelerator.device)
        totals = accelerator.reduce(totals, "sum")
        self.loss_sum, self.loss_count = 0.0, 0
        return float(totals[0] / totals[1]) if float(totals[1]) else float("nan")


@dataclass(frozen=True)
class _ForgetEvaluator:
    """Measure forget F1 of the model in training on the evaluation texts."""

    accelerator: Accelerator
    tokenizer: PreTrainedTokenizerBase
    data: LabeledTexts
    id2label: dict[int, str]
    forget_ids: tuple[int, ...]
    multi_label: bool
    options: TrainingOptions

    def __call__(self, model: nn.Module, epoch: int, state: _LoopState) -> EvaluationPoint:
        logits = predict_sharded(
            self.accelerator.unwrap_model(model), self.tokenizer, self.data.texts, num_labels=len(self.id2label),
            max_length=self.options.max_length, batch_size=self.options.batch_size, accelerator=self.accelerator,
        )
        metrics = compute_metrics(
            logits, self.data.labels, id2label=self.id2label, forget_ids=self.forget_ids, multi_label=self.multi_label
        )
        point = EvaluationPoint(epoch, state.step, metrics.forget_f1, state.take_mean_loss(self.accelerator))
        logger.info("Epoch %d, step %d: forget F1 %.4f, train loss %.4f", epoch, point.step, point.forget_f1, point.train_loss)
        return point


def train_forget_patch(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    train: LabeledTexts,
    token_ids: Sequence[int],
    parts: EditableParts,
    forget_ids: Sequence[int],
    options: TrainingOptions = TrainingOptions(),
    *,
    eval_data: LabeledTexts | None = None,
    accelerator: Accelerator | None = None,
) -> TrainingResult:
    """Train the rows ``token_ids`` and the head of a copy of ``model`` to forget ``forget_ids``.

    ``model`` itself is not modified. Training runs on a float32 copy on the accelerator's device,
    and the trained values are cast back to the dtype of ``model``.

    Args:
        model: a sequence classifier; ``config.problem_type == "multi_label_classification"``
            selects the sigmoid objective.
        train: training texts; they must include forget and retained texts.
        token_ids: embedding rows to train, in the order the patch stores them.
        parts: the embedding and head modules (see :func:`steu_patch.models.find_editable_parts`).
        forget_ids: class ids to forget.
        eval_data: texts for the early-stopping check; ``None`` trains all epochs.
        accelerator: the Accelerate handle; :func:`make_accelerator` when ``None``.

    Raises:
        DataError: if ``train`` lacks forget or retained texts.
    """
    accelerator = accelerator or make_accelerator()
    set_seed(options.seed)
    started = time.perf_counter()
    config = model.config
    multi_label = getattr(config, "problem_type", None) == "multi_label_classification"
    id2label = {int(class_id): str(name) for class_id, name in config.id2label.items()}
    head_parameters = [name for name, _ in model.get_submodule(parts.head_name).named_parameters(recurse=False)]

    # The teacher is the float32 copy before wrapping, so its logits are those of the untrained student.
    student = copy.deepcopy(model).float().eval().to(accelerator.device)
    teacher_logits = predict_sharded(
        student, tokenizer, train.texts, num_labels=len(id2label), max_length=options.max_length,
        batch_size=options.batch_size, accelerator=accelerator, show_progress=options.show_progress,
        desc="Teacher logits",
    )
    targets = unlearning_targets(teacher_logits, forget_ids, multi_label=multi_label)
    loader = build_loader(tokenizer, train, targets, forget_mask(train, forget_ids), options)

    peft_model = wrap_for_training(student, parts, token_ids)
    trainable = [parameter for parameter in peft_model.parameters() if parameter.requires_grad]
    optimizer = torch.optim.Adam(trainable, lr=options.learning_rate)
    peft_model, optimizer, loader = accelerator.prepare(peft_model, optimizer, loader)

    evaluator, interval = None, None
    if eval_data is not None:
        evaluator = _ForgetEvaluator(
            accelerator, tokenizer, eval_data, id2label, tuple(int(i) for i in forget_ids), multi_label, options
        )
        interval = options.eval_steps or max(1, math.ceil(len(loader) / DEFAULT_CHECKS_PER_EPOCH))
    stopped_at, history = _run_epochs(accelerator, peft_model, optimizer, loader, evaluator, interval, multi_label, options)

    values = read_trained_values(accelerator.unwrap_model(peft_model), parts, head_parameters)
    dtype = model.get_input_embeddings().weight.dtype
    values = TouchedValues(values.rows.to(dtype), {name: tensor.to(dtype) for name, tensor in values.head.items()})
    seconds = time.perf_counter() - started
    logger.info(
        "Training stopped at epoch %d, step %d (%s) after %.1f s",
        stopped_at.epoch, stopped_at.step, stopped_at.reason, seconds,
    )
    return TrainingResult(values, stopped_at, tuple(history), stopped_at.step, seconds, interval)


def _run_epochs(
    accelerator: Accelerator,
    model: nn.Module,
    optimizer: torch.optim.Optimizer,
    loader: DataLoader,
    evaluator: _ForgetEvaluator | None,
    interval: int | None,
    multi_label: bool,
    options: TrainingOptions,
) -> tuple[StopPoint, list[EvaluationPoint]]:
    state = _LoopState()
    history: list[EvaluationPoint] = []
    show = options.show_progress and accelerator.is_local_main_process

    def evaluate_and_check(epoch: int) -> bool:
        history.append(evaluator(model, epoch, state))
        bar.set_postfix(forget_f1=f"{history[-1].forget_f1:.4f}")
        return history[-1].forget_f1 <= options.target_forget_f1

    with tqdm(total=options.epochs * len(loader), desc="Training", unit="step", disable=not show, file=sys.stderr) as bar:
        for epoch in range(1, options.epochs + 1):
            for batch in loader:
                _train_step(accelerator, model, optimizer, batch, multi_label, state)
                bar.update(1)
                if evaluator is not None and state.step % interval == 0 and evaluate_and_check(epoch):
                    return StopPoint(epoch, state.step, STOP_TARGET_REACHED, history[-1].forget_f1), history

            evaluated_now = bool(history) and history[-1].step == state.step
            if evaluator is not None and not evaluated_now and evaluate_and_check(epoch):
                return StopPoint(epoch, state.step, STOP_TARGET_REACHED, history[-1].forget_f1), history

    last_f1 = history[-1].forget_f1 if history else None
    return StopPoint(options.epochs, state.step, STOP_EPOCHS_DONE, last_f1), history


def _train_step(
    accelerator: Accelerator, model: nn.Module, optimizer: torch.optim.Optimizer, batch: dict, multi_label: bool, state: _LoopState
) -> None:
    targets = batch.pop("targets")
    logits = model(**batch).logits
    loss = unlearning_loss(logits, targets, multi_label=multi_label)
    accelerator.backward(loss)
    optimizer.step()
    optimizer.zero_grad(set_to_none=True)
    state.step += 1
    state.loss_sum += float(loss.detach())
    state.loss_count += 1
