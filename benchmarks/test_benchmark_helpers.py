"""Unit tests of the benchmark's helpers on tiny models built from configs (``pytest benchmarks``)."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch
from torch import nn
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

from benchmark_setup import probe_rows
from measurements import count_modified_values
from render_docs import HEADING, replace_section
from run_baselines import add_comparisons
from unlearning_methods import MASKED_LOGIT, expand_head, expand_logits, mask_logits, random_token_ids


def tiny_classifier(num_labels: int = 3, seed: int = 0) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2,
                        intermediate_size=32, num_labels=num_labels)
    return BertForSequenceClassification(config).eval()


def test_expand_logits_places_kept_columns():
    logits = torch.tensor([[1.0, 2.0], [3.0, -4.0]])
    expanded = expand_logits(logits, kept_ids=[0, 2], num_labels=3)
    assert torch.equal(expanded[:, [0, 2]], logits)
    assert torch.all(expanded[:, 1] == MASKED_LOGIT)
    assert expanded.argmax(dim=1).tolist() == [2, 0]


def test_expand_head_keeps_kept_outputs_and_zeroes_forget_row():
    head = nn.Linear(4, 2)
    layer = expand_head(head, kept_ids=[0, 2], num_labels=3)
    features = torch.randn(5, 4)
    with torch.no_grad():
        assert torch.allclose(layer(features)[:, [0, 2]], head(features))
        assert torch.all(layer(features)[:, 1] == 0)


def test_mask_logits_leaves_input_unchanged():
    logits = torch.tensor([[5.0, 1.0, 0.0]])
    masked = mask_logits(logits, forget_ids=(0,))
    assert logits[0, 0] == 5.0
    assert masked[0, 0] == MASKED_LOGIT
    assert torch.equal(masked[:, 1:], logits[:, 1:])


def test_count_modified_values_identical_is_zero():
    assert count_modified_values(tiny_classifier(), tiny_classifier()) == 0


def test_count_modified_values_counts_each_changed_value():
    base, model = tiny_classifier(), tiny_classifier()
    with torch.no_grad():
        model.classifier.weight[0, 0] += 1.0
        model.bert.embeddings.word_embeddings.weight[3, :5] += 1.0
    assert count_modified_values(base, model) == 6


def test_count_modified_values_counts_reshaped_head_in_full():
    base, retrained = tiny_classifier(num_labels=3), tiny_classifier(num_labels=2)
    head_values = retrained.classifier.weight.numel() + retrained.classifier.bias.numel()
    assert count_modified_values(base, retrained) == head_values


def test_probe_rows_keeps_every_forget_row():
    labels = [0, 1, 1, 2, 0, 2, 2, 1]
    rows = probe_rows(labels, (0,), retain_texts=3, seed=1)
    assert {0, 4} <= set(rows)
    assert len(rows) == 5
    assert rows == probe_rows(labels, (0,), retain_texts=3, seed=1)


def test_random_token_ids_skip_special_tokens(tmp_path):
    words = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"] + [f"word{i}" for i in range(35)]
    (tmp_path / "vocab.txt").write_text("\n".join(words) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast.from_pretrained(tmp_path)
    context = SimpleNamespace(tokenizer=tokenizer, model=tiny_classifier(), settings=SimpleNamespace(seed=0, random_tokens=30))
    chosen = random_token_ids(context)
    assert len(set(chosen)) == 30
    assert not set(chosen) & set(tokenizer.all_special_ids)
    assert chosen == random_token_ids(context)


def test_replace_section_appends_when_missing():
    text = "# Benchmarks\n\n## Demo timing\n\nabc\n"
    updated = replace_section(text, f"{HEADING}\n\nnew\n")
    assert updated.startswith(text.rstrip("\n"))
    assert updated.endswith(f"{HEADING}\n\nnew\n")


def test_replace_section_keeps_other_sections():
    text = f"# Benchmarks\n\n## Before\n\nx\n\n{HEADING}\n\nold\n\n### Sub\n\nold too\n\n## After\n\ny\n"
    updated = replace_section(text, f"{HEADING}\n\nnew\n")
    assert "old" not in updated
    assert "## Before\n\nx\n" in updated
    assert updated.endswith("## After\n\ny\n")
    assert f"{HEADING}\n\nnew\n" in updated


def result(method: str, predictions: list[int], seconds: float) -> dict:
    return {"method": method, "test_predictions": predictions, "seconds": seconds, "modified_values": 1, "total_parameters": 4}


def test_add_comparisons_agreement_and_time_ratio():
    results = {"retrain": result("retrain", [1, 1, 2, 2], 100.0), "steu": result("steu", [1, 2, 2, 0], 25.0)}
    add_comparisons(results, test_labels=[0, 0, 1, 2], id2label={0: "a", 1: "b", 2: "c"}, forget_ids=(0,))
    steu = results["steu"]
    assert steu["agreement_with_retrain_forget"] == pytest.approx(0.5)
    assert steu["agreement_with_retrain_retained"] == pytest.approx(0.5)
    assert steu["seconds_vs_retrain"] == pytest.approx(0.25)
    assert steu["forget_notes_predicted_as"] == {"b": 1, "c": 1}
    assert steu["modified_fraction"] == pytest.approx(0.25)


def test_add_comparisons_without_retrain_skips_agreement():
    results = {"steu": result("steu", [1, 2], 25.0)}
    add_comparisons(results, test_labels=[0, 1], id2label={0: "a", 1: "b", 2: "c"}, forget_ids=(0,))
    assert "agreement_with_retrain_forget" not in results["steu"]
    assert "seconds_vs_retrain" not in results["steu"]
