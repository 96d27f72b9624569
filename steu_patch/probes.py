"""Measure how much of a forget class a classifier retains beyond its predictions.

STEU promises behavioural forgetting: the patched classifier stops predicting the forget class.
It does not promise representational forgetting: the frozen encoder can still produce
representations from which the class is recoverable. Each result here records in ``measures``
which of the two it measured:

- :func:`fit_linear_probe` (``representation``): a logistic regression on the frozen input of the
  classification head, per forget class, reporting its F1 on held-out texts.
- :func:`membership_auc` (``behaviour``): a loss-based membership-inference attack that tries to
  tell forget-class training texts from held-out forget-class texts by the model's loss.
- :func:`relearn_head` (``representation``): fine-tunes only the final classification layer on a
  few texts and counts the steps until forget F1 returns above a threshold. A class that returns
  after a handful of head-only steps was hidden, not forgotten.

The model-level functions (:func:`probe_forget_class`, :func:`membership_inference`,
:func:`relearning_check`) run the model themselves. Callers that run several checks on one model
encode the texts once with :func:`encode_texts` and pass the results to the functions above.
"""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Mapping, Sequence
from dataclasses import asdict, dataclass
from typing import Any

import numpy as np
import torch
from sklearn.linear_model import LogisticRegression
from sklearn.metrics import f1_score, roc_auc_score
from sklearn.pipeline import make_pipeline
from sklearn.preprocessing import StandardScaler
from torch import nn
from torch.nn import functional
from tqdm.auto import tqdm
from transformers import PreTrainedTokenizerBase

from .errors import DataError, UnsupportedModelError
from .evaluation import compute_metrics, predict_logits
from .models import find_head

logger = logging.getLogger(__name__)

BEHAVIOUR = "behaviour"
REPRESENTATION = "representation"

# Single-label: one class id per text. Multi-label: the class ids of each text.
Labels = Sequence[int] | Sequence[Sequence[int]]


def _json_ready(data: dict[str, Any]) -> dict[str, Any]:
    """Replace NaN floats by None and tuples by lists, so ``json.dumps`` writes valid JSON."""
    ready: dict[str, Any] = {}
    for key, value in data.items():
        if isinstance(value, float) and math.isnan(value):
            value = None
        elif isinstance(value, tuple):
            value = [None if isinstance(item, float) and math.isnan(item) else item for item in value]
        ready[key] = value
    return ready


def _has_class(labels: Labels, class_id: int, multi_label: bool) -> np.ndarray:
    """Return a boolean vector: True for each text labeled with ``class_id``."""
    if multi_label:
        return np.array([class_id in text_labels for text_labels in labels], dtype=bool)
    return np.array([int(label) == class_id for label in labels], dtype=bool)


def _has_any_class(labels: Labels, class_ids: Sequence[int], multi_label: bool) -> np.ndarray:
    mask = np.zeros(len(labels), dtype=bool)
    for class_id in class_ids:
        mask |= _has_class(labels, int(class_id), multi_label)
    return mask


# ----- head inputs -----


@dataclass(frozen=True)
class HeadInputs:
    """A classifier's final-layer inputs and outputs for a list of texts.

    Attributes:
        features: ``(n, d)`` float32 CPU tensor, the input of the final classification layer: the
            representation the layer receives, computed in eval mode (no dropout).
        logits: ``(n, num_labels)`` float32 CPU tensor, the model's output.
    """

    features: torch.Tensor
    logits: torch.Tensor

    def subset(self, indices: Sequence[int]) -> HeadInputs:
        """Return the rows at ``indices``, in that order."""
        index = torch.as_tensor(list(indices), dtype=torch.long)
        return HeadInputs(self.features.index_select(0, index), self.logits.index_select(0, index))


def encode_texts(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    texts: Sequence[str],
    *,
    head_module: str | None = None,
    max_length: int = 256,
    batch_size: int = 32,
    show_progress: bool = False,
    desc: str = "Encoding",
) -> HeadInputs:
    """Run the classifier over ``texts`` and capture the input of its final classification layer.

    A forward pre-hook on the head module records its input, so the features are exactly what the
    head turns into logits, whatever pooling the architecture uses before it.

    Args:
        head_module: module name of the final linear layer; found with :func:`find_head` when None.

    Raises:
        UnsupportedModelError: the head is missing, or its input is not one vector per text (for
            example a head applied to every token position before pooling).
        DataError: as :func:`predict_logits`.
    """
    head = _head_layer(model, head_module)
    captured: list[torch.Tensor] = []

    def capture(module: nn.Module, args: tuple[Any, ...]) -> None:
        captured.append(args[0].detach().float().cpu())

    handle = head.register_forward_pre_hook(capture)
    try:
        logits = predict_logits(
            model, tokenizer, texts, max_length=max_length, batch_size=batch_size,
            show_progress=show_progress, desc=desc,
        )
    finally:
        handle.remove()

    shapes = {tuple(batch.shape[1:]) for batch in captured}
    if any(batch.dim() != 2 for batch in captured) or len(shapes) != 1:
        raise UnsupportedModelError(
            f"The input of the classification head has shape(s) {sorted(shapes)} per batch, not one vector per "
            "text; probes need a head that sees one pooled representation per text. Pass the name of such a "
            "layer as head_module."
        )
    features = torch.cat(captured)
    if features.shape[0] != logits.shape[0]:
        raise UnsupportedModelError(
            f"The classification head ran on {features.shape[0]} rows for {logits.shape[0]} texts; it is "
            "called more than once per forward pass. Pass the name of the final layer as head_module."
        )
    return HeadInputs(features=features, logits=logits)


def _head_layer(model: nn.Module, head_module: str | None) -> nn.Linear:
    name = head_module or find_head(model)
    try:
        head = model.get_submodule(name)
    except AttributeError as error:
        raise UnsupportedModelError(
            f"{type(model).__name__} has no module {name!r}; pass the name of its final classification layer."
        ) from error
    if not isinstance(head, nn.Linear):
        raise UnsupportedModelError(
            f"Module {name!r} of {type(model).__name__} is {type(head).__name__}, not nn.Linear; pass the name "
            "of the final linear classification layer."
        )
    return head


# ----- linear probe -----


@dataclass(frozen=True)
class ProbeResult:
    """Recovery of the forget classes from frozen representations by linear probes.

    One probe per forget class: a standardised logistic regression (balanced class weights) that
    predicts whether a text carries that class, trained on the training features and scored on the
    evaluation features.

    Attributes:
        forget_f1: mean F1 of the probes on the evaluation texts.
        per_class_f1: F1 of each forget class's probe, by class id.
        chance_f1: mean F1 of a baseline that marks every evaluation text as the forget class.
        train_texts / eval_texts: texts used to fit and to score the probes.
        measures: always ``"representation"``.
    """

    forget_f1: float
    per_class_f1: dict[int, float]
    chance_f1: float
    train_texts: int
    eval_texts: int
    measures: str = REPRESENTATION

    def to_dict(self) -> dict[str, Any]:
        data = _json_ready(asdict(self))
        data["per_class_f1"] = {str(class_id): value for class_id, value in self.per_class_f1.items()}
        return data


def fit_linear_probe(
    train_features: torch.Tensor,
    train_labels: Labels,
    eval_features: torch.Tensor,
    eval_labels: Labels,
    forget_ids: Sequence[int],
    *,
    multi_label: bool = False,
    seed: int = 0,
    max_iter: int = 1000,
) -> ProbeResult:
    """Fit one logistic-regression probe per forget class and score it on held-out features.

    Raises:
        DataError: no forget class is given, feature and label counts differ, or the training or
            evaluation texts do not contain both texts with and without a forget class.
    """
    if not forget_ids:
        raise DataError("No forget class given; pass the id of at least one class to probe for.")
    _check_rows("training", train_features, train_labels)
    _check_rows("evaluation", eval_features, eval_labels)
    x_train = train_features.double().numpy()
    x_eval = eval_features.double().numpy()

    per_class: dict[int, float] = {}
    chance: list[float] = []
    for class_id in (int(i) for i in forget_ids):
        y_train = _has_class(train_labels, class_id, multi_label)
        y_eval = _has_class(eval_labels, class_id, multi_label)
        _require_both_outcomes(y_train, class_id, "training")
        _require_both_outcomes(y_eval, class_id, "evaluation")
        probe = make_pipeline(
            StandardScaler(),
            LogisticRegression(max_iter=max_iter, class_weight="balanced", random_state=seed),
        )
        probe.fit(x_train, y_train)
        per_class[class_id] = float(f1_score(y_eval, probe.predict(x_eval), zero_division=0))
        positive_share = float(y_eval.mean())
        chance.append(2 * positive_share / (1 + positive_share))

    return ProbeResult(
        forget_f1=float(np.mean(list(per_class.values()))),
        per_class_f1=per_class,
        chance_f1=float(np.mean(chance)),
        train_texts=len(train_labels),
        eval_texts=len(eval_labels),
    )


def _check_rows(role: str, features: torch.Tensor, labels: Labels) -> None:
    if features.dim() != 2 or features.shape[0] != len(labels):
        raise DataError(
            f"The {role} features have shape {tuple(features.shape)} for {len(labels)} labels; pass one "
            "feature vector per labeled text (the features of encode_texts)."
        )


def _require_both_outcomes(outcomes: np.ndarray, class_id: int, role: str) -> None:
    positives = int(outcomes.sum())
    if positives == 0 or positives == len(outcomes):
        which = "no text" if positives == 0 else "only texts"
        raise DataError(
            f"The {role} texts contain {which} of forget class {class_id}, so a probe for it cannot be "
            f"{'fitted' if role == 'training' else 'scored'}. Use data with texts of that class and of other "
            "classes on both sides of the split."
        )


def probe_forget_class(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    train_texts: Sequence[str],
    train_labels: Labels,
    eval_texts: Sequence[str],
    eval_labels: Labels,
    forget_ids: Sequence[int],
    *,
    multi_label: bool = False,
    head_module: str | None = None,
    max_length: int = 256,
    batch_size: int = 32,
    seed: int = 0,
    show_progress: bool = False,
) -> ProbeResult:
    """Encode the texts with ``model`` and fit linear probes for the forget classes (representation)."""
    options = {"head_module": head_module, "max_length": max_length, "batch_size": batch_size, "show_progress": show_progress}
    train = encode_texts(model, tokenizer, train_texts, desc="Encoding probe training texts", **options)
    evaluation = encode_texts(model, tokenizer, eval_texts, desc="Encoding probe evaluation texts", **options)
    return fit_linear_probe(
        train.features, train_labels, evaluation.features, eval_labels, forget_ids, multi_label=multi_label, seed=seed
    )


# ----- membership inference -----


@dataclass(frozen=True)
class MembershipInferenceResult:
    """A loss-based membership-inference attack on forget-class texts.

    The attack scores each text by its negated loss (a lower loss suggests a training text).

    Attributes:
        auc: ROC AUC of that score with members as positives. 0.5 means the loss does not tell
            training texts from held-out ones; 1.0 means every member has a lower loss than every
            non-member.
        members / non_members: numbers of forget-class training and held-out texts.
        member_loss_mean / non_member_loss_mean: mean per-text loss of each group.
        measures: always ``"behaviour"``, because the loss is computed from the model's outputs.
    """

    auc: float
    members: int
    non_members: int
    member_loss_mean: float
    non_member_loss_mean: float
    measures: str = BEHAVIOUR

    def to_dict(self) -> dict[str, Any]:
        return _json_ready(asdict(self))


def per_example_loss(logits: torch.Tensor, labels: Labels, *, multi_label: bool = False) -> torch.Tensor:
    """Return each text's loss in float64: cross-entropy, or for multi-label the mean binary cross-entropy."""
    logits = logits.double()
    if len(labels) != logits.shape[0]:
        raise DataError(f"Got {len(labels)} labels for {logits.shape[0]} rows of logits; pass one label per text.")
    if multi_label:
        targets = torch.zeros_like(logits)
        for row, text_labels in enumerate(labels):
            targets[row, list(text_labels)] = 1.0
        return functional.binary_cross_entropy_with_logits(logits, targets, reduction="none").mean(dim=1)
    return functional.cross_entropy(logits, torch.as_tensor(list(labels), dtype=torch.long), reduction="none")


def _require_members(members: int, non_members: int) -> None:
    if members == 0 or non_members == 0:
        raise DataError(
            f"Membership inference needs forget-class texts on both sides of the split, got {members} training "
            f"(member) and {non_members} held-out (non-member) texts. Use data with more texts of the forget class."
        )


def membership_auc(
    member_logits: torch.Tensor,
    member_labels: Labels,
    non_member_logits: torch.Tensor,
    non_member_labels: Labels,
    *,
    multi_label: bool = False,
) -> MembershipInferenceResult:
    """Score the loss-based membership-inference attack from precomputed logits (behaviour).

    Raises:
        DataError: either group is empty.
    """
    _require_members(len(member_labels), len(non_member_labels))
    member_loss = per_example_loss(member_logits, member_labels, multi_label=multi_label)
    non_member_loss = per_example_loss(non_member_logits, non_member_labels, multi_label=multi_label)
    outcomes = np.concatenate([np.ones(len(member_loss)), np.zeros(len(non_member_loss))])
    scores = -torch.cat([member_loss, non_member_loss]).numpy()
    return MembershipInferenceResult(
        auc=float(roc_auc_score(outcomes, scores)),
        members=len(member_loss),
        non_members=len(non_member_loss),
        member_loss_mean=float(member_loss.mean()),
        non_member_loss_mean=float(non_member_loss.mean()),
    )


def membership_inference(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    member_texts: Sequence[str],
    member_labels: Labels,
    non_member_texts: Sequence[str],
    non_member_labels: Labels,
    *,
    multi_label: bool = False,
    max_length: int = 256,
    batch_size: int = 32,
    show_progress: bool = False,
) -> MembershipInferenceResult:
    """Run the loss-based membership-inference attack on ``model`` (behaviour).

    Members are forget-class texts the model was trained on; non-members are held-out texts of
    the same class(es).
    """
    _require_members(len(member_texts), len(non_member_texts))
    options = {"max_length": max_length, "batch_size": batch_size, "show_progress": show_progress}
    member_logits = predict_logits(model, tokenizer, member_texts, desc="Scoring members", **options)
    non_member_logits = predict_logits(model, tokenizer, non_member_texts, desc="Scoring non-members", **options)
    return membership_auc(member_logits, member_labels, non_member_logits, non_member_labels, multi_label=multi_label)


# ----- relearning -----


@dataclass(frozen=True)
class RelearningResult:
    """Head-only fine-tuning on a few texts, stopped once forget F1 exceeds ``threshold``.

    Attributes:
        steps_to_recover: the first step after which forget F1 on the evaluation texts exceeds
            ``threshold``; 0 when it already does before training; None when it does not within
            ``max_steps``.
        forget_f1_by_step: forget F1 before training (index 0) and after each step run.
        forget_texts / retain_texts: training texts with and without a forget class.
        measures: always ``"representation"``, because only the head on top of the frozen
            representations is trained.
    """

    steps_to_recover: int | None
    max_steps: int
    threshold: float
    learning_rate: float
    forget_texts: int
    retain_texts: int
    initial_forget_f1: float
    final_forget_f1: float
    forget_f1_by_step: tuple[float, ...]
    measures: str = REPRESENTATION

    @property
    def recovered(self) -> bool:
        return self.steps_to_recover is not None

    def summary(self) -> str:
        """Describe the outcome in one sentence."""
        if self.steps_to_recover is None:
            return f"forget F1 stayed at or below {self.threshold} (not within {self.max_steps} steps)"
        if self.steps_to_recover == 0:
            return f"forget F1 already exceeded {self.threshold} before any step"
        return f"forget F1 exceeded {self.threshold} after {self.steps_to_recover} step(s)"

    def to_dict(self) -> dict[str, Any]:
        data = _json_ready(asdict(self))
        data["recovered"] = self.recovered
        data["summary"] = self.summary()
        return data


def select_relearning_texts(
    labels: Labels,
    forget_ids: Sequence[int],
    *,
    multi_label: bool = False,
    forget_texts: int = 16,
    retain_texts: int = 16,
    seed: int = 0,
) -> list[int]:
    """Draw up to ``forget_texts`` texts with a forget class and ``retain_texts`` without, reproducibly.

    Returns:
        Row indices into ``labels``, sorted.

    Raises:
        DataError: no text carries a forget class, or a requested count is negative.
    """
    if forget_texts < 1 or retain_texts < 0:
        raise DataError(
            f"Relearning needs at least 1 forget text and 0 or more retain texts, got {forget_texts} and "
            f"{retain_texts}."
        )
    forget_mask = _has_any_class(labels, forget_ids, multi_label)
    forget_rows = np.flatnonzero(forget_mask)
    retain_rows = np.flatnonzero(~forget_mask)
    if len(forget_rows) == 0:
        raise DataError(
            f"No training text carries a forget class ({list(forget_ids)}), so relearning has nothing to relearn "
            "from. Use data that contains texts of the forget class."
        )
    rng = np.random.default_rng(seed)
    chosen = [
        rng.choice(forget_rows, size=min(forget_texts, len(forget_rows)), replace=False),
        rng.choice(retain_rows, size=min(retain_texts, len(retain_rows)), replace=False),
    ]
    return sorted(int(row) for rows in chosen for row in rows)


def relearn_head(
    head: nn.Linear,
    train_features: torch.Tensor,
    train_labels: Labels,
    eval_features: torch.Tensor,
    eval_labels: Labels,
    *,
    forget_ids: Sequence[int],
    id2label: Mapping[int, str],
    multi_label: bool = False,
    max_steps: int = 200,
    learning_rate: float = 1e-3,
    threshold: float = 0.5,
    show_progress: bool = False,
) -> RelearningResult:
    """Fine-tune a float32 copy of ``head`` on frozen features with Adam, full batch, until forget F1 recovers.

    ``head`` itself is not modified. The features are the head's inputs (see
    :func:`encode_texts`), so training the copy equals fine-tuning only the model's final layer
    with the encoder frozen and dropout off.

    Raises:
        DataError: ``max_steps`` or ``learning_rate`` is not positive, or the labels do not fit.
    """
    if max_steps < 1 or not learning_rate > 0:
        raise DataError(
            f"Relearning needs max_steps >= 1 and learning_rate > 0, got {max_steps} and {learning_rate}."
        )
    _check_rows("training", train_features, train_labels)
    _check_rows("evaluation", eval_features, eval_labels)
    layer = copy.deepcopy(head).float().train()
    for parameter in layer.parameters():
        parameter.requires_grad_(True)
    optimizer = torch.optim.Adam(layer.parameters(), lr=learning_rate)
    train_x, eval_x = train_features.float(), eval_features.float()
    id2label = {int(class_id): name for class_id, name in id2label.items()}

    # compute_metrics() validates the ids and labels once, so the steps can use the cheaper forget_f1().
    compute_metrics(layer(eval_x).detach(), eval_labels, id2label=id2label, forget_ids=forget_ids, multi_label=multi_label)

    def evaluate() -> float:
        with torch.no_grad():
            return forget_f1(layer(eval_x), eval_labels, forget_ids, multi_label=multi_label)

    curve = [evaluate()]
    steps_to_recover = 0 if curve[0] > threshold else None
    progress = tqdm(total=max_steps, desc="Relearning", unit="step", disable=not show_progress)
    with torch.enable_grad(), progress:
        step = 0
        while steps_to_recover is None and step < max_steps:
            step += 1
            optimizer.zero_grad()
            _head_loss(layer(train_x), train_labels, multi_label).backward()
            optimizer.step()
            progress.update()
            curve.append(evaluate())
            if curve[-1] > threshold:
                steps_to_recover = step

    forget_count = int(_has_any_class(train_labels, forget_ids, multi_label).sum())
    return RelearningResult(
        steps_to_recover=steps_to_recover,
        max_steps=max_steps,
        threshold=threshold,
        learning_rate=learning_rate,
        forget_texts=forget_count,
        retain_texts=len(train_labels) - forget_count,
        initial_forget_f1=curve[0],
        final_forget_f1=curve[-1],
        forget_f1_by_step=tuple(curve),
    )


def forget_f1(logits: torch.Tensor, labels: Labels, forget_ids: Sequence[int], *, multi_label: bool = False) -> float:
    """Return the mean one-vs-rest F1 of the forget classes, as ``compute_metrics(...).forget_f1`` defines it.

    Single-label predictions are the argmax; multi-label predictions are the labels whose sigmoid
    exceeds 0.5. A class with no true and no predicted text scores 0.
    """
    if multi_label:
        predicted = torch.sigmoid(logits.double()) > 0.5
    else:
        predicted = functional.one_hot(logits.argmax(dim=1), logits.shape[1]).bool()
    scores = []
    for class_id in (int(i) for i in forget_ids):
        truth = torch.from_numpy(_has_class(labels, class_id, multi_label))
        guess = predicted[:, class_id]
        true_positives = int((truth & guess).sum())
        denominator = int(truth.sum()) + int(guess.sum())
        scores.append(2 * true_positives / denominator if denominator else 0.0)
    return float(np.mean(scores))


def _head_loss(logits: torch.Tensor, labels: Labels, multi_label: bool) -> torch.Tensor:
    if multi_label:
        targets = torch.zeros_like(logits)
        for row, text_labels in enumerate(labels):
            targets[row, list(text_labels)] = 1.0
        return functional.binary_cross_entropy_with_logits(logits, targets)
    return functional.cross_entropy(logits, torch.as_tensor(list(labels), dtype=torch.long))


def relearning_check(
    model: nn.Module,
    tokenizer: PreTrainedTokenizerBase,
    train_texts: Sequence[str],
    train_labels: Labels,
    eval_texts: Sequence[str],
    eval_labels: Labels,
    forget_ids: Sequence[int],
    *,
    multi_label: bool = False,
    head_module: str | None = None,
    forget_texts: int = 16,
    retain_texts: int = 16,
    max_steps: int = 200,
    learning_rate: float = 1e-3,
    threshold: float = 0.5,
    seed: int = 0,
    max_length: int = 256,
    batch_size: int = 32,
    show_progress: bool = False,
) -> RelearningResult:
    """Fine-tune only the head of ``model`` on a few training texts and count the steps until forget F1 recovers.

    Draws the texts with :func:`select_relearning_texts` and trains with :func:`relearn_head`;
    ``model`` is not modified. Forget F1 is measured on all evaluation texts.
    """
    rows = select_relearning_texts(
        train_labels, forget_ids, multi_label=multi_label, forget_texts=forget_texts, retain_texts=retain_texts, seed=seed
    )
    options = {"head_module": head_module, "max_length": max_length, "batch_size": batch_size, "show_progress": show_progress}
    train = encode_texts(model, tokenizer, [train_texts[row] for row in rows], desc="Encoding relearning texts", **options)
    evaluation = encode_texts(model, tokenizer, eval_texts, desc="Encoding evaluation texts", **options)
    id2label = {int(class_id): name for class_id, name in model.config.id2label.items()}
    return relearn_head(
        _head_layer(model, head_module), train.features, [train_labels[row] for row in rows],
        evaluation.features, eval_labels, forget_ids=forget_ids, id2label=id2label, multi_label=multi_label,
        max_steps=max_steps, learning_rate=learning_rate, threshold=threshold, show_progress=show_progress,
    )
