"""Tests for the training loop of forget patches: objective, batches, PEFT adapter, stopping."""

from __future__ import annotations

import pytest
import torch
from _create_helpers import LABELS, cached_classifier, multi_label_rows, single_label_rows, tiny_config
from transformers import (
    DistilBertConfig,
    DistilBertForSequenceClassification,
    RobertaConfig,
    RobertaForSequenceClassification,
)

from steu_patch.create import load_classifier
from steu_patch.data import LabeledTexts
from steu_patch.errors import DataError
from steu_patch.models import find_editable_parts
from steu_patch.selection import select_tokens
from steu_patch.training import (
    STOP_EPOCHS_DONE,
    STOP_TARGET_REACHED,
    BalancedBatchSampler,
    TrainingOptions,
    forget_mask,
    train_forget_patch,
    unlearning_loss,
    unlearning_targets,
    wrap_for_training,
)

CARDIO = LABELS.index("cardio")


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny models run faster on one thread than on cores shared with other processes.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


def labeled(rows, multi_label: bool = False) -> LabeledTexts:
    if multi_label:
        return LabeledTexts([text for text, _ in rows], [[LABELS.index(name) for name in names] for _, names in rows], True)
    return LabeledTexts([text for text, _ in rows], [LABELS.index(name) for _, name in rows], False)


@pytest.fixture(scope="module")
def classifier(tmp_path_factory):
    return load_classifier(cached_classifier(tmp_path_factory, "single"))


@pytest.fixture(scope="module")
def train_texts():
    return labeled(single_label_rows(seed=3, per_class=30))


@pytest.fixture(scope="module")
def eval_texts():
    return labeled(single_label_rows(seed=4, per_class=10))


def selected_ids(tokenizer, data: LabeledTexts, top_k: int = 8) -> list[int]:
    return select_tokens(tokenizer, data.texts, forget_mask(data, [CARDIO]), top_k=top_k, min_doc_freq=3).token_ids


def options(**overrides) -> TrainingOptions:
    # The tiny classifiers have larger weights than a fine-tuned pretrained encoder and need a
    # higher learning rate than the default to forget within a few epochs.
    settings = dict(max_length=32, show_progress=False, learning_rate=5e-3)
    settings.update(overrides)
    return TrainingOptions(**settings)


# ----- objective -----


def test_targets_single_label_zero_forget_probability():
    teacher = torch.tensor([[3.0, 1.0, 0.0, -1.0], [0.0, 2.0, 2.0, 0.0]])
    targets = unlearning_targets(teacher, [0], multi_label=False)

    assert torch.all(targets[:, 0] == 0.0)
    assert torch.allclose(targets.sum(dim=1), torch.ones(2))


def test_targets_single_label_keep_teacher_ratios():
    teacher = torch.tensor([[3.0, 1.0, 0.0, -1.0]])
    targets = unlearning_targets(teacher, [0], multi_label=False)
    expected = torch.softmax(teacher[0, 1:], dim=0)

    assert torch.allclose(targets[0, 1:], expected)


def test_targets_single_label_extreme_teacher():
    # The teacher is certain of the forget class; the target is still a finite distribution.
    targets = unlearning_targets(torch.tensor([[200.0, -50.0, -60.0]]), [0], multi_label=False)

    assert torch.isfinite(targets).all()
    assert targets[0, 1] > targets[0, 2]


def test_targets_multi_label():
    teacher = torch.tensor([[2.0, -1.0, 0.5], [-3.0, 4.0, 0.0]])
    targets = unlearning_targets(teacher, [1], multi_label=True)

    assert torch.all(targets[:, 1] == 0.0)
    assert torch.allclose(targets[:, [0, 2]], torch.sigmoid(teacher[:, [0, 2]]))


def test_loss_falls_as_forget_logit_falls():
    targets = unlearning_targets(torch.tensor([[3.0, 1.0, 0.0]]), [0], multi_label=False)
    high = unlearning_loss(torch.tensor([[3.0, 1.0, 0.0]]), targets, multi_label=False)
    low = unlearning_loss(torch.tensor([[-3.0, 1.0, 0.0]]), targets, multi_label=False)

    assert low < high


def test_forget_mask_single_and_multi_label():
    single = LabeledTexts(["a", "b", "c"], [0, 1, 2], False)
    multi = LabeledTexts(["a", "b", "c"], [[1], [0, 2], [2]], True)

    assert forget_mask(single, [0, 2]) == [True, False, True]
    assert forget_mask(multi, [0]) == [False, True, False]


# ----- batches -----


def sampler(seed: int = 0) -> BalancedBatchSampler:
    return BalancedBatchSampler([0, 1, 2], list(range(3, 20)), batch_size=6, steps_per_epoch=4, seed=seed)


def test_sampler_batches_are_half_forget():
    batches = list(sampler())

    assert len(batches) == 4
    for batch in batches:
        assert len(batch) == 6
        assert sum(index < 3 for index in batch) == 3


def test_sampler_cycles_all_forget_texts():
    forget_seen = [index for batch in sampler() for index in batch if index < 3]

    # 4 steps x 3 forget slots walk through 4 permutations of the 3 forget texts.
    assert sorted(forget_seen) == sorted([0, 1, 2] * 4)


def test_sampler_deterministic_for_seed():
    assert list(sampler(seed=5)) == list(sampler(seed=5))


def test_sampler_new_order_each_epoch():
    epochs = sampler(seed=5)

    assert list(epochs) != list(epochs)


def test_sampler_rejects_missing_group():
    with pytest.raises(DataError, match="0 forget"):
        BalancedBatchSampler([], [1, 2], batch_size=4, steps_per_epoch=1, seed=0)


# ----- the PEFT adapter -----


def trainable_names(model, parts, token_ids) -> set[str]:
    wrapped = wrap_for_training(model, parts, token_ids)
    return {name for name, parameter in wrapped.named_parameters() if parameter.requires_grad}


def test_adapter_trains_rows_and_head_only():
    from transformers import BertForSequenceClassification

    model = BertForSequenceClassification(tiny_config())
    names = trainable_names(model, find_editable_parts(model), [5, 9])

    assert names == {
        "base_model.model.bert.embeddings.word_embeddings.token_adapter.trainable_tokens_delta.default",
        "base_model.model.classifier.modules_to_save.default.weight",
        "base_model.model.classifier.modules_to_save.default.bias",
    }


def test_adapter_keeps_distilbert_pre_classifier_frozen():
    config = DistilBertConfig(vocab_size=60, dim=32, n_layers=1, n_heads=2, hidden_dim=64, num_labels=3)
    model = DistilBertForSequenceClassification(config)
    names = trainable_names(model, find_editable_parts(model), [5, 9])

    assert not any("pre_classifier" in name for name in names)
    assert "base_model.model.classifier.modules_to_save.default.weight" in names


def test_adapter_keeps_roberta_dense_frozen():
    config = RobertaConfig(vocab_size=60, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64, num_labels=3)
    model = RobertaForSequenceClassification(config)
    names = trainable_names(model, find_editable_parts(model), [5, 9])

    assert not any("classifier.dense" in name for name in names)
    assert "base_model.model.classifier.out_proj.modules_to_save.default.weight" in names


# ----- the loop -----


def test_training_leaves_model_unchanged(classifier, train_texts):
    model, tokenizer = classifier
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    train_forget_patch(model, tokenizer, train_texts, selected_ids(tokenizer, train_texts), find_editable_parts(model), [CARDIO], options(epochs=1))

    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_training_changes_rows_and_head(classifier, train_texts):
    model, tokenizer = classifier
    token_ids = selected_ids(tokenizer, train_texts)
    parts = find_editable_parts(model)
    result = train_forget_patch(model, tokenizer, train_texts, token_ids, parts, [CARDIO], options(epochs=1))
    original_rows = model.get_input_embeddings().weight[token_ids]

    assert result.values.rows.shape == original_rows.shape
    assert not torch.equal(result.values.rows, original_rows)
    assert not torch.equal(result.values.head["bias"], model.classifier.bias)


def test_training_deterministic_for_seed(classifier, train_texts):
    model, tokenizer = classifier
    token_ids = selected_ids(tokenizer, train_texts)
    parts = find_editable_parts(model)
    first = train_forget_patch(model, tokenizer, train_texts, token_ids, parts, [CARDIO], options(epochs=1, seed=3))
    second = train_forget_patch(model, tokenizer, train_texts, token_ids, parts, [CARDIO], options(epochs=1, seed=3))

    assert first.values.equals(second.values)


def test_training_stops_at_target(classifier, train_texts, eval_texts):
    model, tokenizer = classifier
    result = train_forget_patch(
        model, tokenizer, train_texts, selected_ids(tokenizer, train_texts), find_editable_parts(model), [CARDIO],
        options(epochs=20), eval_data=eval_texts,
    )

    assert result.stopped_at.reason == STOP_TARGET_REACHED
    assert result.stopped_at.epoch < 20
    assert result.stopped_at.forget_f1 <= 0.01
    assert result.history[-1].step == result.stopped_at.step


def test_training_without_eval_runs_all_epochs(classifier, train_texts):
    model, tokenizer = classifier
    result = train_forget_patch(
        model, tokenizer, train_texts, selected_ids(tokenizer, train_texts), find_editable_parts(model), [CARDIO],
        options(epochs=2, batch_size=30),
    )

    assert result.stopped_at.reason == STOP_EPOCHS_DONE
    assert result.stopped_at.epoch == 2
    assert result.steps == 2 * 5  # ceil(150 texts / 30) steps per epoch
    assert result.history == ()


def test_training_eval_steps_checks_mid_epoch(classifier, train_texts, eval_texts):
    model, tokenizer = classifier
    result = train_forget_patch(
        model, tokenizer, train_texts, selected_ids(tokenizer, train_texts), find_editable_parts(model), [CARDIO],
        options(epochs=1, eval_steps=3, target_forget_f1=0.0, learning_rate=1e-5), eval_data=eval_texts,
    )

    # ceil(150 / 16) = 10 steps with checks after steps 3, 6 and 9 and at the end of the epoch; the
    # tiny learning rate keeps forget F1 above 0, so no check stops training.
    assert [point.step for point in result.history] == [3, 6, 9, 10]
    assert result.stopped_at.reason == STOP_EPOCHS_DONE


def test_training_multi_label(tmp_path_factory):
    model, tokenizer = load_classifier(cached_classifier(tmp_path_factory, "multi"))
    train = labeled(multi_label_rows(seed=3, count=120), multi_label=True)
    evaluation = labeled(multi_label_rows(seed=4, count=60), multi_label=True)
    token_ids = select_tokens(tokenizer, train.texts, forget_mask(train, [CARDIO]), top_k=8, min_doc_freq=3).token_ids
    result = train_forget_patch(
        model, tokenizer, train, token_ids, find_editable_parts(model), [CARDIO], options(epochs=20), eval_data=evaluation
    )

    assert result.stopped_at.reason == STOP_TARGET_REACHED


def test_training_float16_values_keep_dtype(tmp_path_factory, train_texts):
    model, tokenizer = load_classifier(cached_classifier(tmp_path_factory, "float16"))
    result = train_forget_patch(
        model, tokenizer, train_texts, selected_ids(tokenizer, train_texts), find_editable_parts(model), [CARDIO], options(epochs=1)
    )

    assert model.get_input_embeddings().weight.dtype == torch.float16
    assert result.values.rows.dtype == torch.float16
    assert result.values.head["weight"].dtype == torch.float16


@pytest.mark.parametrize(
    ("field", "value"),
    [("epochs", 0), ("learning_rate", 0.0), ("batch_size", 1), ("max_length", 1), ("target_forget_f1", 1.5), ("eval_steps", 0)],
)
def test_options_reject_invalid(field, value):
    with pytest.raises(ValueError, match="Invalid"):
        TrainingOptions(**{field: value})
