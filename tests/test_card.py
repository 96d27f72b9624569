"""Tests for the model card of a forget patch (steu_patch.card)."""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pytest
import torch
from huggingface_hub import ModelCard

from steu_patch.card import build_model_card, hub_model_id, metrics_table
from steu_patch.patch import ForgetPatch, TouchedValues, build_patch

TOKEN_IDS = [4, 9, 11]
TOKENS = [{"id": 4, "token": "murmurword"}, {"id": 9, "token": "valveword"}, {"id": 11, "token": "stenosisword"}]
METRICS = {
    "before": {"forget_f1": 0.91, "retain_macro_f1": 0.8, "retain_accuracy": 0.85},
    "after": {"forget_f1": 0.02, "retain_macro_f1": 0.79, "retain_accuracy": 0.84},
}


def make_patch(base_model: Mapping[str, Any], *, metrics: Mapping[str, Any] | None = METRICS) -> ForgetPatch:
    """Build an in-memory patch over a 32-row, 6-wide embedding and a 3-class head."""
    generator = torch.Generator().manual_seed(0)

    def values() -> TouchedValues:
        head = {"weight": torch.randn(3, 6, generator=generator), "bias": torch.randn(3, generator=generator)}
        return TouchedValues(torch.randn(len(TOKEN_IDS), 6, generator=generator), head)

    return build_patch(
        token_ids=TOKEN_IDS,
        original=values(),
        new=values(),
        embedding_module="bert.embeddings.word_embeddings",
        head_module="classifier",
        embedding_shape=(32, 6),
        base_model=base_model,
        id2label={0: "cardio", 1: "neuro", 2: "ortho"},
        forget_classes=["cardio"],
        tokens=TOKENS,
        metrics=metrics,
        total_parameters=1000,
    )


def card_metadata(text: str) -> dict[str, Any]:
    return ModelCard(text).data.to_dict()


@pytest.fixture()
def hub_patch() -> ForgetPatch:
    return make_patch({"name_or_path": "owner/tiny-bert", "revision": "abc123"})


def test_metadata_marks_peft_adapter(hub_patch: ForgetPatch) -> None:
    metadata = card_metadata(build_model_card(hub_patch, repo_id="owner/forget-cardio"))
    assert metadata["library_name"] == "peft"
    assert metadata["base_model"] == "owner/tiny-bert"
    assert "unlearning" in metadata["tags"]
    assert "steu-patch" in metadata["tags"]
    assert metadata["forget_classes"] == ["cardio"]
    assert metadata["steu_patch"]["base_fingerprint"] == hub_patch.fingerprint


def test_local_base_model_omitted_from_metadata(tmp_path: Path) -> None:
    local = tmp_path / "runs" / "my-classifier"
    local.mkdir(parents=True)
    text = build_model_card(make_patch({"name_or_path": str(local)}), repo_id="owner/forget-cardio")
    assert "base_model" not in card_metadata(text)
    assert "a local model directory named `my-classifier`" in text
    assert str(tmp_path) not in text
    assert "path/to/my-classifier" in text


def test_base_on_hub_false_omits_base_model(hub_patch: ForgetPatch) -> None:
    text = build_model_card(hub_patch, repo_id="owner/forget-cardio", base_on_hub=False)
    assert "base_model" not in card_metadata(text)
    assert "a local model directory named `tiny-bert`" in text


def test_card_body_states_patch_facts(hub_patch: ForgetPatch) -> None:
    text = build_model_card(hub_patch, repo_id="owner/forget-cardio")
    assert hub_patch.fingerprint in text
    assert "Parameters modified: 39 of 1,000 (3.9000% of the model)" in text
    assert "3 input-embedding rows" in text
    assert "[owner/tiny-bert](https://huggingface.co/owner/tiny-bert) (revision `abc123`)" in text
    assert "| Forget F1 | 0.9100 | 0.0200 |" in text
    assert "| Retain macro-F1 | 0.8000 | 0.7900 |" in text
    assert "| Retain accuracy | 0.8500 | 0.8400 |" in text


def test_usage_names_repo_and_base(hub_patch: ForgetPatch) -> None:
    text = build_model_card(hub_patch, repo_id="owner/forget-cardio")
    assert "steu-patch apply owner/tiny-bert owner/forget-cardio --revision abc123 --output patched-model" in text
    assert 'PatchedModel.from_pretrained(model, "owner/forget-cardio")' in text
    assert 'from_pretrained("owner/tiny-bert", revision="abc123")' in text
    assert 'PeftModel.from_pretrained(model, "owner/forget-cardio")' in text


def test_usage_passes_branch_revision(hub_patch: ForgetPatch) -> None:
    text = build_model_card(hub_patch, repo_id="owner/forget-cardio", revision="v2")
    assert "owner/forget-cardio --revision abc123 --patch-revision v2 --output patched-model" in text
    assert 'PatchedModel.from_pretrained(model, "owner/forget-cardio", revision="v2")' in text


def test_main_revision_adds_no_option(hub_patch: ForgetPatch) -> None:
    text = build_model_card(hub_patch, repo_id="owner/forget-cardio", revision="main")
    assert "--patch-revision" not in text


def test_tokens_hidden_by_default(hub_patch: ForgetPatch) -> None:
    text = build_model_card(hub_patch, repo_id="owner/forget-cardio")
    for token in TOKENS:
        assert token["token"] not in text
    assert "necessarily contain their token ids" in text
    assert "left out of this card" in text


def test_show_tokens_lists_strings(hub_patch: ForgetPatch) -> None:
    text = build_model_card(hub_patch, repo_id="owner/forget-cardio", show_tokens=True)
    assert "`murmurword`, `valveword`, `stenosisword`" in text
    assert "left out of this card" not in text


def test_card_without_repo_uses_placeholder(hub_patch: ForgetPatch) -> None:
    text = build_model_card(hub_patch)
    assert 'PatchedModel.from_pretrained(model, "path/to/patch")' in text


def test_metrics_table_without_metrics() -> None:
    assert metrics_table({}) == "No metrics were recorded for this patch."


def test_metrics_table_marks_missing_values() -> None:
    table = metrics_table({"after": {"forget_f1": 0.5}})
    assert "| Forget F1 | – | 0.5000 |" in table
    assert "| Retain accuracy | – | – |" in table


@pytest.mark.parametrize(
    ("name", "expected"),
    [
        ("owner/tiny-bert", "owner/tiny-bert"),
        ("bert-base-uncased", "bert-base-uncased"),
        ("/abs/path/model", None),
        ("./relative/model", None),
        ("~/models/bert", None),
        ("a/b/c", None),
        ("owner/bad--name", None),
        ("", None),
        (None, None),
    ],
)
def test_hub_model_id_forms(name: str | None, expected: str | None) -> None:
    assert hub_model_id(name) == expected


def test_hub_model_id_rejects_existing_path(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    (tmp_path / "owner" / "model").mkdir(parents=True)
    monkeypatch.chdir(tmp_path)
    assert hub_model_id("owner/model") is None


def test_pushed_card_mentions_manifest(hub_patch: ForgetPatch) -> None:
    pushed = build_model_card(hub_patch, repo_id="owner/forget-cardio")
    local = build_model_card(hub_patch)
    assert "left out of this card and of the published `steu_patch.json`" in pushed
    assert "published `steu_patch.json`" not in local
