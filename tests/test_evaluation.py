"""Tests for classifier evaluation: logits, forget and retain metrics, the comparison table."""

from __future__ import annotations

import json
import math

import pytest
import torch
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

from steu_patch.errors import DataError, LabelError
from steu_patch.evaluation import ClassificationMetrics, compute_metrics, metrics_table, predict_logits

ID2LABEL = {0: "cardio", 1: "ortho", 2: "neuro"}

# Single-label case. Per class (TP, FP, FN): cardio (2, 1, 1), ortho (1, 2, 1), neuro (2, 0, 1).
# F1 = 2TP / (2TP + FP + FN): cardio 4/6, ortho 2/5, neuro 4/5.
TRUE = [0, 0, 0, 1, 1, 2, 2, 2]
PREDICTED = [0, 1, 0, 1, 0, 2, 2, 1]


def logits_for(predicted: list[int], num_labels: int = 3) -> torch.Tensor:
    logits = torch.full((len(predicted), num_labels), -1.0)
    logits[torch.arange(len(predicted)), torch.tensor(predicted)] = 2.0
    return logits


def test_single_label_forget_f1():
    metrics = compute_metrics(logits_for(PREDICTED), TRUE, id2label=ID2LABEL, forget_ids=[0])

    assert metrics.forget_f1 == pytest.approx(4 / 6, abs=1e-12)


def test_single_label_retain_macro_f1():
    metrics = compute_metrics(logits_for(PREDICTED), TRUE, id2label=ID2LABEL, forget_ids=[0])

    # Retain set = texts 3..7. ortho (TP 1, FP 1, FN 1) -> 2/4; neuro (2, 0, 1) -> 4/5.
    assert metrics.retain_macro_f1 == pytest.approx((2 / 4 + 4 / 5) / 2, abs=1e-12)


def test_single_label_retain_macro_f1_all_texts():
    metrics = compute_metrics(logits_for(PREDICTED), TRUE, id2label=ID2LABEL, forget_ids=[0])

    # Over all texts the cardio text predicted as ortho adds a false positive: ortho 2/5.
    assert metrics.retain_macro_f1_all_texts == pytest.approx((2 / 5 + 4 / 5) / 2, abs=1e-12)


def test_single_label_retain_accuracy():
    metrics = compute_metrics(logits_for(PREDICTED), TRUE, id2label=ID2LABEL, forget_ids=[0])

    # Texts 3..7 have retained true classes, and 3 of their 5 predictions are right.
    assert metrics.retain_accuracy == pytest.approx(3 / 5, abs=1e-12)


def test_single_label_per_class():
    metrics = compute_metrics(logits_for(PREDICTED), TRUE, id2label=ID2LABEL, forget_ids=[0])
    ortho = metrics.per_class["ortho"]

    assert ortho["precision"] == pytest.approx(1 / 3, abs=1e-12)
    assert ortho["recall"] == pytest.approx(1 / 2, abs=1e-12)
    assert ortho["f1"] == pytest.approx(2 / 5, abs=1e-12)
    assert ortho["support"] == 2
    assert metrics.per_class["neuro"]["f1"] == pytest.approx(4 / 5, abs=1e-12)


def test_single_label_confusion_matrix():
    metrics = compute_metrics(logits_for(PREDICTED), TRUE, id2label=ID2LABEL, forget_ids=[0])

    assert metrics.confusion_matrix == [[2, 1, 0], [1, 1, 0], [0, 1, 2]]
    assert metrics.labels == ["cardio", "ortho", "neuro"]
    assert metrics.forget_labels == ["cardio"]


def test_argmax_includes_forget_logit():
    # The forget logit is the largest in every row, so every text is predicted as the forget class.
    logits = logits_for([1, 2, 1, 2])
    logits[:, 0] = 5.0
    metrics = compute_metrics(logits, [0, 1, 2, 1], id2label=ID2LABEL, forget_ids=[0])

    assert metrics.confusion_matrix == [[1, 0, 0], [2, 0, 0], [1, 0, 0]]
    assert metrics.retain_accuracy == 0.0


def test_two_forget_classes():
    metrics = compute_metrics(logits_for(PREDICTED), TRUE, id2label=ID2LABEL, forget_ids=[0, 1])

    assert metrics.forget_f1 == pytest.approx((4 / 6 + 2 / 5) / 2, abs=1e-12)
    assert metrics.retain_macro_f1 == pytest.approx(4 / 5, abs=1e-12)
    # Texts 5..7 are neuro, and 2 of them are predicted neuro.
    assert metrics.retain_accuracy == pytest.approx(2 / 3, abs=1e-12)
    assert metrics.forget_labels == ["cardio", "ortho"]


def test_labels_as_tensor():
    from_list = compute_metrics(logits_for(PREDICTED), TRUE, id2label=ID2LABEL, forget_ids=[0])
    from_tensor = compute_metrics(logits_for(PREDICTED), torch.tensor(TRUE), id2label=ID2LABEL, forget_ids=[0])

    assert from_tensor == from_list


# Multi-label case, forget label "c". Per label (TP, FP, FN): a (3, 0, 0), b (1, 1, 1), c (1, 0, 1).
MULTI_ID2LABEL = {0: "a", 1: "b", 2: "c"}
MULTI_TRUE_IDS = [[0, 2], [1], [0, 1], [2], [0]]
MULTI_TRUE = torch.tensor([[1, 0, 1], [0, 1, 0], [1, 1, 0], [0, 0, 1], [1, 0, 0]])
MULTI_PREDICTED = torch.tensor([[1, 0, 0], [0, 1, 0], [1, 0, 0], [0, 0, 1], [1, 1, 0]])


def multi_logits() -> torch.Tensor:
    return MULTI_PREDICTED.float() * 6.0 - 3.0


def test_multi_label_metrics():
    metrics = compute_metrics(multi_logits(), MULTI_TRUE, id2label=MULTI_ID2LABEL, forget_ids=[2], multi_label=True)

    assert metrics.forget_f1 == pytest.approx(2 / 3, abs=1e-12)
    assert metrics.retain_macro_f1 == pytest.approx((1.0 + 0.5) / 2, abs=1e-12)
    # Texts 1, 2 and 4 have no forget label; only text 1 matches exactly on labels a and b.
    assert metrics.retain_accuracy == pytest.approx(1 / 3, abs=1e-12)
    assert metrics.confusion_matrix is None
    assert metrics.per_class["c"]["support"] == 2


def test_multi_label_id_lists_match_matrix():
    from_matrix = compute_metrics(multi_logits(), MULTI_TRUE, id2label=MULTI_ID2LABEL, forget_ids=[2], multi_label=True)
    from_ids = compute_metrics(multi_logits(), MULTI_TRUE_IDS, id2label=MULTI_ID2LABEL, forget_ids=[2], multi_label=True)

    assert from_ids == from_matrix


def test_multi_label_threshold():
    logits = torch.tensor([[0.2, -3.0, -3.0]])
    low = compute_metrics(logits, [[0]], id2label=MULTI_ID2LABEL, forget_ids=[2], multi_label=True)
    high = compute_metrics(logits, [[0]], id2label=MULTI_ID2LABEL, forget_ids=[2], multi_label=True, threshold=0.6)

    # sigmoid(0.2) is about 0.55, which is above 0.5 and below 0.6.
    assert low.per_class["a"]["recall"] == 1.0
    assert high.per_class["a"]["recall"] == 0.0


def test_multi_label_invalid_threshold():
    with pytest.raises(DataError, match="threshold must be between 0 and 1"):
        compute_metrics(multi_logits(), MULTI_TRUE, id2label=MULTI_ID2LABEL, forget_ids=[2], multi_label=True, threshold=1.0)


def test_multi_label_matrix_shape_mismatch():
    with pytest.raises(DataError, match="0/1 matrix of shape"):
        compute_metrics(multi_logits(), MULTI_TRUE[:, :2], id2label=MULTI_ID2LABEL, forget_ids=[2], multi_label=True)


def test_multi_label_unknown_label_id():
    labels = [[0], [1], [5], [2], [0]]
    with pytest.raises(LabelError, match=r"Text 2 has labels \[5\]"):
        compute_metrics(multi_logits(), labels, id2label=MULTI_ID2LABEL, forget_ids=[2], multi_label=True)


def test_empty_logits():
    with pytest.raises(DataError, match="at least one text"):
        compute_metrics(torch.empty((0, 3)), [], id2label=ID2LABEL, forget_ids=[0])


def test_unknown_forget_id_lists_choices():
    with pytest.raises(LabelError, match=r"valid ids: 0 \(cardio\), 1 \(ortho\), 2 \(neuro\)"):
        compute_metrics(logits_for(PREDICTED), TRUE, id2label=ID2LABEL, forget_ids=[7])


def test_no_forget_ids():
    with pytest.raises(DataError, match="No forget class"):
        compute_metrics(logits_for(PREDICTED), TRUE, id2label=ID2LABEL, forget_ids=[])


def test_all_classes_forgotten():
    with pytest.raises(DataError, match="keep at least one class"):
        compute_metrics(logits_for(PREDICTED), TRUE, id2label=ID2LABEL, forget_ids=[0, 1, 2])


def test_true_label_out_of_range():
    with pytest.raises(LabelError, match=r"True labels \[3\]"):
        compute_metrics(logits_for(PREDICTED), TRUE[:-1] + [3], id2label=ID2LABEL, forget_ids=[0])


def test_label_count_mismatch():
    with pytest.raises(DataError, match="expects 8 integer class ids"):
        compute_metrics(logits_for(PREDICTED), TRUE[:-1], id2label=ID2LABEL, forget_ids=[0])


def test_id2label_column_mismatch():
    with pytest.raises(DataError, match="logits have 3 columns"):
        compute_metrics(logits_for(PREDICTED), TRUE, id2label={0: "cardio", 1: "ortho"}, forget_ids=[0])


def test_to_dict_writes_nan_as_none():
    # Both texts are of the forget class, so no text qualifies for retain accuracy.
    metrics = compute_metrics(logits_for([0, 1]), [0, 0], id2label=ID2LABEL, forget_ids=[0])
    data = metrics.to_dict()

    assert math.isnan(metrics.retain_accuracy)
    assert data["retain_accuracy"] is None
    assert json.loads(json.dumps(data, allow_nan=False))["forget_labels"] == ["cardio"]


def test_metrics_table_rows():
    before = compute_metrics(logits_for(PREDICTED), TRUE, id2label=ID2LABEL, forget_ids=[0])
    after = compute_metrics(logits_for(TRUE), TRUE, id2label=ID2LABEL, forget_ids=[0])
    rows = metrics_table(before, after)

    assert rows[0] == ("forget F1", "0.6667", "1.0000")
    assert rows[1] == ("retain macro-F1", "0.6500", "1.0000")
    assert rows[2] == ("retain accuracy", "0.6000", "1.0000")
    assert rows[3] == ("retain macro-F1, all texts", "0.6000", "1.0000")
    assert rows[4:] == [
        ("F1 cardio (forget)", "0.6667", "1.0000"),
        ("F1 ortho", "0.4000", "1.0000"),
        ("F1 neuro", "0.8000", "1.0000"),
    ]


def test_metrics_table_without_after():
    before = compute_metrics(logits_for([0, 1]), [0, 0], id2label=ID2LABEL, forget_ids=[0])
    rows = metrics_table(before)

    assert all(after == "" for _, _, after in rows)
    assert rows[2] == ("retain accuracy", "n/a", "")


def test_metrics_table_label_mismatch():
    before = compute_metrics(logits_for(PREDICTED), TRUE, id2label=ID2LABEL, forget_ids=[0])
    other = compute_metrics(multi_logits(), MULTI_TRUE, id2label=MULTI_ID2LABEL, forget_ids=[2], multi_label=True)

    with pytest.raises(DataError, match="same id2label"):
        metrics_table(before, other)


# predict_logits on a tiny BERT classifier built from a config.

TEXTS = ["fever cough", "knee fracture cast", "fever", "rash cough knee fever fracture", "cast"]


@pytest.fixture()
def tokenizer(tmp_path):
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", "fever", "cough", "knee", "fracture", "cast", "rash"]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    return BertTokenizerFast.from_pretrained(tmp_path)


@pytest.fixture()
def model(tokenizer):
    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(tokenizer),
        hidden_size=16,
        num_hidden_layers=1,
        num_attention_heads=2,
        intermediate_size=32,
        max_position_embeddings=32,
        num_labels=3,
        hidden_dropout_prob=0.5,  # large, so a forward pass in training mode gives different logits
    )
    return BertForSequenceClassification(config)


def direct_forward(model, tokenizer, texts, max_length):
    model.eval()
    encoded = tokenizer(texts, padding=True, truncation=True, max_length=max_length, return_tensors="pt")
    with torch.no_grad():
        return model(**encoded).logits


def test_predict_logits_equals_forward(model, tokenizer):
    logits = predict_logits(model, tokenizer, TEXTS, max_length=16, batch_size=len(TEXTS))

    assert logits.dtype == torch.float32
    assert logits.shape == (len(TEXTS), 3)
    assert torch.equal(logits, direct_forward(model, tokenizer, TEXTS, 16))


def test_predict_logits_batches_match(model, tokenizer):
    batched = predict_logits(model, tokenizer, TEXTS, max_length=16, batch_size=2)

    assert torch.allclose(batched, direct_forward(model, tokenizer, TEXTS, 16), atol=1e-5)


def test_predict_logits_restores_training_mode(model, tokenizer):
    model.train()
    logits = predict_logits(model, tokenizer, TEXTS, max_length=16)

    assert model.training
    assert torch.equal(logits, direct_forward(model, tokenizer, TEXTS, 16))


def test_predict_logits_keeps_eval_mode(model, tokenizer):
    model.eval()
    predict_logits(model, tokenizer, TEXTS, max_length=16)

    assert not model.training


def test_predict_logits_restores_mode_after_error(model, tokenizer, monkeypatch):
    def failing_forward(**inputs):
        raise RuntimeError("forward failed")

    model.train()
    monkeypatch.setattr(model, "forward", failing_forward)
    with pytest.raises(RuntimeError, match="forward failed"):
        predict_logits(model, tokenizer, TEXTS, max_length=16)

    assert model.training


def test_predict_logits_truncates(model, tokenizer):
    long_text = "fever cough knee fracture cast rash"
    truncated = predict_logits(model, tokenizer, [long_text], max_length=4)
    expected = predict_logits(model, tokenizer, ["fever cough"], max_length=16)

    assert torch.equal(truncated, expected)


def test_predict_logits_empty_input(model, tokenizer):
    with pytest.raises(DataError, match="No texts to predict"):
        predict_logits(model, tokenizer, [], max_length=16)


def test_predict_logits_non_string(model, tokenizer):
    with pytest.raises(DataError, match="Text 1 is NoneType"):
        predict_logits(model, tokenizer, ["fever", None], max_length=16)


def test_predict_logits_batch_size_below_one(model, tokenizer):
    with pytest.raises(DataError, match="batch_size must be at least 1"):
        predict_logits(model, tokenizer, TEXTS, max_length=16, batch_size=0)


def test_metrics_type():
    metrics = compute_metrics(logits_for(PREDICTED), TRUE, id2label=ID2LABEL, forget_ids=[0])

    assert isinstance(metrics, ClassificationMetrics)
