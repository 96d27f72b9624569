"""Tests for steu_patch.probes: head inputs, linear probe, membership inference and relearning."""

from __future__ import annotations

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

from steu_patch.errors import DataError, UnsupportedModelError
from steu_patch.evaluation import compute_metrics
from steu_patch.probes import (
    BEHAVIOUR,
    REPRESENTATION,
    encode_texts,
    fit_linear_probe,
    forget_f1,
    membership_auc,
    membership_inference,
    per_example_loss,
    probe_forget_class,
    relearn_head,
    relearning_check,
    select_relearning_texts,
)

ID2LABEL = {0: "cardio", 1: "ortho", 2: "neuro"}
WORDS = ["heart", "valve", "bone", "knee", "brain", "nerve", "the", "patient", "has"]
TEXTS = [
    "the patient has heart valve", "heart valve", "the heart", "valve heart the",
    "the patient has bone knee", "knee bone", "the bone", "bone knee the",
    "the patient has brain nerve", "nerve brain", "the brain", "brain nerve the",
]
LABELS = [0, 0, 0, 0, 1, 1, 1, 1, 2, 2, 2, 2]


@pytest.fixture(scope="module")
def classifier(tmp_path_factory: pytest.TempPathFactory):
    directory = tmp_path_factory.mktemp("probe-model")
    (directory / "vocab.txt").write_text("\n".join(["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]) + "\n")
    tokenizer = BertTokenizerFast.from_pretrained(directory)
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=14, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=32, num_labels=3, id2label=ID2LABEL, label2id={v: k for k, v in ID2LABEL.items()},
    )
    return BertForSequenceClassification(config).eval(), tokenizer


def separable_features(labels: list[int], forget_id: int = 0, seed: int = 0) -> torch.Tensor:
    """Random 8-dim features with a large offset on dimension 0 for texts of ``forget_id``."""
    generator = torch.Generator().manual_seed(seed)
    features = torch.randn(len(labels), 8, generator=generator)
    features[:, 0] += torch.tensor([5.0 if label == forget_id else -5.0 for label in labels])
    return features


# ----- encode_texts -----


def test_encode_texts_shapes(classifier):
    model, tokenizer = classifier
    inputs = encode_texts(model, tokenizer, TEXTS, max_length=16, batch_size=5)

    assert inputs.features.shape == (12, 16)
    assert inputs.logits.shape == (12, 3)
    assert inputs.features.dtype == torch.float32


def test_encode_texts_features_feed_head(classifier):
    model, tokenizer = classifier
    inputs = encode_texts(model, tokenizer, TEXTS, max_length=16, batch_size=5)

    with torch.no_grad():
        recomputed = model.classifier(inputs.features)
    assert torch.allclose(recomputed, inputs.logits, atol=1e-6)


def test_encode_texts_features_are_pooled_output(classifier):
    model, tokenizer = classifier
    inputs = encode_texts(model, tokenizer, TEXTS[:3], max_length=16)
    encoded = tokenizer(TEXTS[:3], padding=True, truncation=True, max_length=16, return_tensors="pt")

    with torch.no_grad():
        pooled = model.bert(**encoded).pooler_output
    assert torch.allclose(pooled, inputs.features, atol=1e-6)


def test_encode_texts_removes_hook(classifier):
    model, tokenizer = classifier
    encode_texts(model, tokenizer, TEXTS[:2], max_length=16)

    assert len(model.classifier._forward_pre_hooks) == 0


def test_encode_texts_missing_head(classifier):
    model, tokenizer = classifier

    with pytest.raises(UnsupportedModelError, match="no module 'score'"):
        encode_texts(model, tokenizer, TEXTS[:2], head_module="score")


def test_encode_texts_head_not_linear(classifier):
    model, tokenizer = classifier

    with pytest.raises(UnsupportedModelError, match="not nn.Linear"):
        encode_texts(model, tokenizer, TEXTS[:2], head_module="bert.pooler")


def test_head_inputs_subset(classifier):
    model, tokenizer = classifier
    inputs = encode_texts(model, tokenizer, TEXTS, max_length=16)
    subset = inputs.subset([3, 0])

    assert torch.equal(subset.features[0], inputs.features[3])
    assert torch.equal(subset.logits[1], inputs.logits[0])


# ----- linear probe -----


def test_probe_recovers_separable_class():
    labels = [0, 1, 2] * 10
    result = fit_linear_probe(separable_features(labels), labels, separable_features(labels, seed=1), labels, [0])

    assert result.forget_f1 == 1.0
    assert result.per_class_f1 == {0: 1.0}
    assert result.measures == REPRESENTATION


def test_probe_chance_f1():
    labels = [0, 1, 2, 1] * 5
    result = fit_linear_probe(separable_features(labels), labels, separable_features(labels, seed=1), labels, [0])

    # A quarter of the evaluation texts are forget texts: F1 of "always forget" = 2 * 0.25 / 1.25.
    assert result.chance_f1 == pytest.approx(0.4)
    assert result.train_texts == 20
    assert result.eval_texts == 20


def test_probe_noise_features_below_separable():
    labels = [0, 1, 2] * 10
    generator = torch.Generator().manual_seed(3)
    noise_train, noise_eval = torch.randn(30, 8, generator=generator), torch.randn(30, 8, generator=generator)
    result = fit_linear_probe(noise_train, labels, noise_eval, labels, [0])

    assert 0.0 <= result.forget_f1 < 1.0


def test_probe_two_forget_classes():
    labels = [0, 1, 2] * 10
    features = separable_features(labels)
    result = fit_linear_probe(features, labels, features, labels, [0, 2])

    assert set(result.per_class_f1) == {0, 2}
    assert result.forget_f1 == pytest.approx((result.per_class_f1[0] + result.per_class_f1[2]) / 2)


def test_probe_multi_label():
    labels = [[0], [1], [0, 2], [2]] * 6
    forget = [0 if 0 in text_labels else 1 for text_labels in labels]
    features = separable_features(forget)
    result = fit_linear_probe(features, labels, features, labels, [0], multi_label=True)

    assert result.forget_f1 == 1.0


def test_probe_without_forget_training_texts():
    with pytest.raises(DataError, match="training texts contain no text of forget class 0"):
        fit_linear_probe(torch.randn(4, 8), [1, 2, 1, 2], torch.randn(4, 8), [0, 1, 2, 0], [0])


def test_probe_only_forget_evaluation_texts():
    with pytest.raises(DataError, match="evaluation texts contain only texts of forget class 0"):
        fit_linear_probe(torch.randn(4, 8), [0, 1, 0, 2], torch.randn(2, 8), [0, 0], [0])


def test_probe_feature_label_mismatch():
    with pytest.raises(DataError, match=r"shape \(3, 8\) for 4 labels"):
        fit_linear_probe(torch.randn(3, 8), [0, 1, 0, 2], torch.randn(4, 8), [0, 1, 0, 2], [0])


def test_probe_without_forget_ids():
    with pytest.raises(DataError, match="No forget class"):
        fit_linear_probe(torch.randn(4, 8), [0, 1, 0, 2], torch.randn(4, 8), [0, 1, 0, 2], [])


def test_probe_forget_class_on_model(classifier):
    model, tokenizer = classifier
    result = probe_forget_class(model, tokenizer, TEXTS, LABELS, TEXTS, LABELS, [0], max_length=16)

    assert 0.0 <= result.forget_f1 <= 1.0
    assert result.train_texts == 12


# ----- membership inference -----


def test_per_example_loss_cross_entropy():
    logits = torch.tensor([[2.0, 0.0, -1.0], [0.0, 1.0, 0.0]])
    expected = -torch.log_softmax(logits.double(), dim=1)[[0, 1], [0, 2]]

    assert torch.allclose(per_example_loss(logits, [0, 2]), expected)


def test_per_example_loss_multi_label():
    logits = torch.tensor([[3.0, -3.0], [0.0, 0.0]])
    loss = per_example_loss(logits, [[0], [0, 1]], multi_label=True)
    expected_first = (torch.nn.functional.softplus(torch.tensor(-3.0, dtype=torch.float64)) * 2) / 2

    assert loss[0] == pytest.approx(float(expected_first))
    assert loss[1] == pytest.approx(float(torch.log(torch.tensor(2.0, dtype=torch.float64))))


def test_membership_auc_separates():
    confident = torch.tensor([[5.0, 0.0, 0.0]] * 4)
    unsure = torch.tensor([[0.0, 1.0, 1.0]] * 3)
    result = membership_auc(confident, [0] * 4, unsure, [0] * 3)

    assert result.auc == 1.0
    assert result.members == 4
    assert result.non_members == 3
    assert result.member_loss_mean < result.non_member_loss_mean
    assert result.measures == BEHAVIOUR


def test_membership_auc_reversed():
    confident = torch.tensor([[5.0, 0.0, 0.0]] * 2)
    unsure = torch.tensor([[0.0, 1.0, 1.0]] * 2)

    assert membership_auc(unsure, [0, 0], confident, [0, 0]).auc == 0.0


def test_membership_auc_indistinguishable():
    logits = torch.tensor([[1.0, 0.0, 0.0]] * 3)

    assert membership_auc(logits, [0] * 3, logits, [0] * 3).auc == 0.5


def test_membership_auc_needs_both_groups():
    with pytest.raises(DataError, match="0 held-out"):
        membership_auc(torch.zeros(2, 3), [0, 0], torch.zeros(0, 3), [])


def test_membership_inference_on_model(classifier):
    model, tokenizer = classifier
    result = membership_inference(model, tokenizer, TEXTS[:2], [0, 0], TEXTS[2:4], [0, 0], max_length=16)

    assert 0.0 <= result.auc <= 1.0
    assert result.members == 2


# ----- forget F1 -----


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_forget_f1_matches_compute_metrics(seed):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(20, 3, generator=generator)
    labels = torch.randint(0, 3, (20,), generator=generator).tolist()
    expected = compute_metrics(logits, labels, id2label=ID2LABEL, forget_ids=[0, 2]).forget_f1

    assert forget_f1(logits, labels, [0, 2]) == pytest.approx(expected, abs=1e-12)


def test_forget_f1_multi_label_matches_compute_metrics():
    generator = torch.Generator().manual_seed(4)
    logits = torch.randn(20, 3, generator=generator)
    labels = [[i % 3] if i % 4 else [0, 1] for i in range(20)]
    expected = compute_metrics(logits, labels, id2label=ID2LABEL, forget_ids=[0], multi_label=True).forget_f1

    assert forget_f1(logits, labels, [0], multi_label=True) == pytest.approx(expected, abs=1e-12)


# ----- relearning -----


def suppressed_head() -> nn.Linear:
    """A head over 8-dim features that never predicts class 0 but keeps classes 1 and 2 apart."""
    head = nn.Linear(8, 3)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.copy_(torch.tensor([-10.0, 0.0, 0.0]))
        head.weight[1, 1] = 1.0
        head.weight[2, 1] = -1.0
    return head


def test_relearning_recovers_hidden_class():
    labels = [0, 1, 2] * 8
    features = separable_features(labels)
    head = suppressed_head()
    result = relearn_head(head, features, labels, features, labels, forget_ids=[0], id2label=ID2LABEL, learning_rate=0.1)

    assert result.initial_forget_f1 == 0.0
    assert result.recovered
    assert 1 <= result.steps_to_recover <= 200
    assert result.final_forget_f1 > 0.5
    assert len(result.forget_f1_by_step) == result.steps_to_recover + 1
    assert result.measures == REPRESENTATION


def test_relearning_leaves_head_unchanged():
    labels = [0, 1, 2] * 8
    head = suppressed_head()
    before = {name: tensor.clone() for name, tensor in head.state_dict().items()}
    relearn_head(head, separable_features(labels), labels, separable_features(labels), labels, forget_ids=[0], id2label=ID2LABEL, max_steps=5)

    for name, tensor in head.state_dict().items():
        assert torch.equal(tensor, before[name])


def test_relearning_not_within_steps():
    labels = [0, 1, 2] * 8
    features = separable_features(labels)
    result = relearn_head(
        suppressed_head(), features, labels, features, labels, forget_ids=[0], id2label=ID2LABEL,
        max_steps=3, learning_rate=1e-6,
    )

    assert result.steps_to_recover is None
    assert not result.recovered
    assert len(result.forget_f1_by_step) == 4
    assert "not within 3 steps" in result.summary()


def test_relearning_already_recovered():
    labels = [0, 1, 2] * 8
    features = separable_features(labels)
    head = nn.Linear(8, 3)
    with torch.no_grad():
        head.weight.zero_()
        head.bias.zero_()
        head.weight[0, 0] = 1.0
    result = relearn_head(head, features, labels, features, labels, forget_ids=[0], id2label=ID2LABEL)

    assert result.steps_to_recover == 0
    assert result.forget_f1_by_step == (result.initial_forget_f1,)


def test_relearning_counts_texts():
    labels = [0, 1, 2, 1]
    result = relearn_head(suppressed_head(), separable_features(labels), labels, separable_features(labels), labels, forget_ids=[0], id2label=ID2LABEL, max_steps=1)

    assert result.forget_texts == 1
    assert result.retain_texts == 3


@pytest.mark.parametrize(("max_steps", "learning_rate"), [(0, 1e-3), (5, 0.0)])
def test_relearning_invalid_budget(max_steps, learning_rate):
    labels = [0, 1]
    with pytest.raises(DataError, match="max_steps >= 1 and learning_rate > 0"):
        relearn_head(suppressed_head(), torch.zeros(2, 8), labels, torch.zeros(2, 8), labels, forget_ids=[0], id2label=ID2LABEL, max_steps=max_steps, learning_rate=learning_rate)


def test_select_relearning_texts_counts():
    labels = [0] * 20 + [1] * 30
    rows = select_relearning_texts(labels, [0], forget_texts=16, retain_texts=16)

    assert len(rows) == 32
    assert sum(labels[row] == 0 for row in rows) == 16
    assert rows == sorted(rows)


def test_select_relearning_texts_capped():
    labels = [0] * 3 + [1] * 5

    assert len(select_relearning_texts(labels, [0], forget_texts=16, retain_texts=16)) == 8


def test_select_relearning_texts_deterministic():
    labels = [0] * 40 + [1] * 40

    assert select_relearning_texts(labels, [0], seed=1) == select_relearning_texts(labels, [0], seed=1)
    assert select_relearning_texts(labels, [0], seed=1) != select_relearning_texts(labels, [0], seed=2)


def test_select_relearning_texts_without_forget():
    with pytest.raises(DataError, match="No training text carries a forget class"):
        select_relearning_texts([1, 2, 1], [0])


def test_relearning_check_on_model(classifier):
    model, tokenizer = classifier
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    result = relearning_check(model, tokenizer, TEXTS, LABELS, TEXTS, LABELS, [0], max_steps=5, max_length=16)

    assert result.steps_to_recover is None or 0 <= result.steps_to_recover <= 5
    assert result.forget_texts == 4
    assert result.retain_texts == 8
    assert all(torch.equal(tensor, before[name]) for name, tensor in model.state_dict().items())
