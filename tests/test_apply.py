"""Tests of in-memory apply and revert: bit-exact round trips, stacking, and every rejection."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from conftest import (
    ARCHITECTURES,
    DTYPES,
    PATCH_TOKEN_IDS,
    differing_keys,
    logits,
    make_patch,
    make_tiny_classifier,
    model_digests,
    sample_input_ids,
    save_and_load,
    tensor_digest,
)
from torch import nn
from transformers import BertConfig, BertModel

from steu_patch.apply import CHAIN_ATTRIBUTE, PatchedModel, apply_patch, chain_entry, get_chain, revert_patch
from steu_patch.errors import (
    FingerprintMismatchError,
    PatchFormatError,
    PatchStateError,
    UnsupportedModelError,
)
from steu_patch.models import find_editable_parts
from steu_patch.patch import load_patch

CASES = [(arch, dtype_id) for arch in ARCHITECTURES for dtype_id in DTYPES]


def touched_keys(model: nn.Module) -> set[str]:
    parts = find_editable_parts(model)
    return {parts.embedding_weight_key, *parts.head_parameter_keys(model)}


# ----- round trips -----


@pytest.mark.parametrize(("arch", "dtype_id"), CASES)
def test_apply_then_revert_restores_every_tensor(arch: str, dtype_id: str, tmp_path: Path) -> None:
    model = make_tiny_classifier(arch, DTYPES[dtype_id])
    base = model_digests(model)
    patch = save_and_load(make_patch(model), tmp_path / "patch")

    apply_patch(model, patch)
    assert differing_keys(base, model_digests(model)) == touched_keys(model)
    revert_patch(model, patch)
    assert model_digests(model) == base


@pytest.mark.parametrize(("arch", "dtype_id"), CASES)
def test_apply_changes_only_declared_rows(arch: str, dtype_id: str, tmp_path: Path) -> None:
    model = make_tiny_classifier(arch, DTYPES[dtype_id])
    parts = find_editable_parts(model)
    before = model.get_submodule(parts.embedding_name).weight.detach().clone()
    patch = save_and_load(make_patch(model), tmp_path / "patch")

    apply_patch(model, patch)
    after = model.get_submodule(parts.embedding_name).weight.detach()
    changed_rows = [row for row in range(before.shape[0]) if tensor_digest(before[row]) != tensor_digest(after[row])]
    assert changed_rows == sorted(PATCH_TOKEN_IDS)
    assert tensor_digest(after[list(PATCH_TOKEN_IDS)]) == tensor_digest(patch.new_rows)


@pytest.mark.parametrize("dtype_id", DTYPES)
def test_apply_writes_head_bias(dtype_id: str, tmp_path: Path) -> None:
    model = make_tiny_classifier("roberta", DTYPES[dtype_id])
    head = model.classifier.out_proj
    original_bias = tensor_digest(head.bias)
    patch = save_and_load(make_patch(model), tmp_path / "patch")

    apply_patch(model, patch)
    assert tensor_digest(head.bias) == tensor_digest(patch.new_head["bias"])
    revert_patch(model, patch)
    assert tensor_digest(head.bias) == original_bias


def test_apply_records_chain_in_config(bert_patch_dir: Path) -> None:
    model = make_tiny_classifier("bert")
    patch = load_patch(bert_patch_dir)
    apply_patch(model, patch)
    assert get_chain(model.config) == [{"patch_id": patch.patch_id, "forget_classes": ["cardiology"]}]
    revert_patch(model, patch)
    assert not hasattr(model.config, CHAIN_ATTRIBUTE)


def test_apply_twice_rejected(bert_patch_dir: Path) -> None:
    model = make_tiny_classifier("bert")
    patch = load_patch(bert_patch_dir)
    apply_patch(model, patch)
    patched = model_digests(model)
    with pytest.raises(PatchStateError, match="already carries patch"):
        apply_patch(model, patch)
    assert model_digests(model) == patched


def test_unsaved_patch_applied_twice_rejected() -> None:
    model = make_tiny_classifier("bert")
    patch = make_patch(model)
    apply_patch(model, patch)
    with pytest.raises(PatchStateError, match=r"already carries an unsaved patch \(forgets cardiology\)"):
        apply_patch(model, patch)


def test_unsaved_patch_forced_onto_other_model() -> None:
    patch = make_patch(make_tiny_classifier("bert"))
    other = make_tiny_classifier("bert", seed=5)
    apply_patch(other, patch, force=True)
    assert tensor_digest(other.classifier.bias) == tensor_digest(patch.new_head["bias"])


# ----- PatchedModel -----


@pytest.fixture
def patched_bert(bert_patch_dir: Path) -> tuple[nn.Module, PatchedModel, dict[str, str]]:
    model = make_tiny_classifier("bert")
    base = model_digests(model)
    return model, PatchedModel.from_pretrained(model, str(bert_patch_dir)), base


def test_patched_model_forward_matches_apply(patched_bert, bert_patch_dir: Path) -> None:
    _, patched, _ = patched_bert
    reference = make_tiny_classifier("bert")
    PatchedModel.from_pretrained(reference, str(bert_patch_dir))
    input_ids = sample_input_ids()
    assert torch.equal(logits(patched, input_ids), logits(reference, input_ids))
    assert not torch.equal(logits(patched, input_ids), logits(make_tiny_classifier("bert"), input_ids))


def test_patched_model_disable_patch_runs_base(patched_bert) -> None:
    model, patched, base = patched_bert
    patched_digests = model_digests(model)
    input_ids = sample_input_ids()
    with patched.disable_patch() as bare:
        assert model_digests(bare) == base
        assert torch.equal(logits(bare, input_ids), logits(make_tiny_classifier("bert"), input_ids))
    assert model_digests(model) == patched_digests
    assert len(get_chain(model.config)) == 1


def test_patched_model_disable_patch_twice_rejected(patched_bert) -> None:
    _, patched, _ = patched_bert
    with patched.disable_patch():
        with pytest.raises(PatchStateError, match="already disabled"):
            with patched.disable_patch():
                pass


def test_patched_model_unload_restores_originals(patched_bert) -> None:
    model, patched, base = patched_bert
    bare = patched.unload()
    assert bare is model
    assert model_digests(bare) == base
    assert get_chain(bare.config) == []


def test_patched_model_merge_and_unload_keeps_patch(patched_bert) -> None:
    model, patched, base = patched_bert
    merged = patched.merge_and_unload()
    assert differing_keys(base, model_digests(merged)) == touched_keys(merged)
    assert len(get_chain(merged.config)) == 1


def test_patched_model_accepts_forget_patch(bert_patch_dir: Path) -> None:
    patch = load_patch(bert_patch_dir)
    patched = PatchedModel.from_pretrained(make_tiny_classifier("bert"), patch)
    assert patched.patch is patch
    assert patched.config.steu_patch_chain[0]["patch_id"] == patch.patch_id


# ----- stacking -----


@pytest.fixture
def stacked(tmp_path: Path):
    """A model, its base digests, patch A built on the base, and patch B built on the A-applied model."""
    model = make_tiny_classifier("bert")
    base = model_digests(model)
    patch_a = save_and_load(make_patch(model, seed=1, forget_classes=["cardiology"]), tmp_path / "a")
    apply_patch(model, patch_a)
    # B overlaps A on row 42 and on the whole head, so it must restore A's values, not the base's.
    patch_b = make_patch(model, (42, 50, 60), seed=2, parent_patches=[chain_entry(patch_a)], forget_classes=["urology"])
    patch_b = save_and_load(patch_b, tmp_path / "b")
    revert_patch(model, patch_a)
    return model, base, patch_a, patch_b


def test_stacked_round_trip_restores_base(stacked) -> None:
    model, base, patch_a, patch_b = stacked
    apply_patch(model, patch_a)
    with_a = model_digests(model)
    apply_patch(model, patch_b)
    assert [entry["patch_id"] for entry in get_chain(model.config)] == [patch_a.patch_id, patch_b.patch_id]

    revert_patch(model, patch_b)
    assert model_digests(model) == with_a
    revert_patch(model, patch_a)
    assert model_digests(model) == base


def test_stacked_child_records_parent(stacked) -> None:
    _, _, patch_a, patch_b = stacked
    assert patch_b.parent_patch_ids == [patch_a.patch_id]
    assert patch_b.manifest["parent_patches"] == [{"patch_id": patch_a.patch_id, "forget_classes": ["cardiology"]}]


def test_stacked_child_before_parent_rejected(stacked) -> None:
    model, base, patch_a, patch_b = stacked
    with pytest.raises(PatchStateError, match=f"carrying patch {patch_a.patch_id[:12]} \\(forgets cardiology\\)"):
        apply_patch(model, patch_b)
    assert model_digests(model) == base


def test_stacked_parent_revert_under_child_rejected(stacked) -> None:
    model, _, patch_a, patch_b = stacked
    apply_patch(model, patch_a)
    apply_patch(model, patch_b)
    both = model_digests(model)
    with pytest.raises(PatchStateError, match=f"Revert patch {patch_b.patch_id[:12]} \\(forgets urology\\) first"):
        revert_patch(model, patch_a)
    assert model_digests(model) == both


def test_stacked_round_trip_allows_reapply(stacked) -> None:
    model, _, patch_a, patch_b = stacked
    apply_patch(model, patch_a)
    apply_patch(model, patch_b)
    revert_patch(model, patch_b)
    revert_patch(model, patch_a)
    apply_patch(model, patch_a)
    assert [entry["patch_id"] for entry in get_chain(model.config)] == [patch_a.patch_id]


def test_sibling_patch_on_child_rejected(stacked, tmp_path: Path) -> None:
    model, _, patch_a, patch_b = stacked
    sibling = save_and_load(make_patch(model, seed=3), tmp_path / "sibling")
    apply_patch(model, patch_a)
    with pytest.raises(PatchStateError, match=f"also carries patch {patch_a.patch_id[:12]}"):
        apply_patch(model, sibling)


# ----- fingerprint and force -----


@pytest.fixture
def other_model() -> nn.Module:
    """A BERT of the same shape as ``bert_model`` but other weights (seed 5)."""
    return make_tiny_classifier("bert", seed=5)


def test_fingerprint_mismatch_message(other_model, bert_patch_dir: Path) -> None:
    patch = load_patch(bert_patch_dir)
    before = model_digests(other_model)
    with pytest.raises(FingerprintMismatchError) as caught:
        apply_patch(other_model, patch)
    message = str(caught.value)
    assert patch.fingerprint in message
    assert make_patch(other_model).fingerprint in message
    assert "--force" in message
    assert "Reverting a forced patch writes the patch's recorded original values" in message
    assert "5 embedding row(s) (token ids 7, 19, 42 and 2 more)" in message
    assert model_digests(other_model) == before


def test_force_applies_and_reverts(other_model, bert_patch_dir: Path) -> None:
    patch = load_patch(bert_patch_dir)
    before = model_digests(other_model)
    apply_patch(other_model, patch, force=True)
    assert tensor_digest(other_model.bert.embeddings.word_embeddings.weight[list(PATCH_TOKEN_IDS)]) == tensor_digest(patch.new_rows)

    revert_patch(other_model, patch)
    after = model_digests(other_model)
    # Revert writes the patch's recorded originals, which belong to the patch's base model.
    assert differing_keys(before, after) == touched_keys(other_model)
    assert tensor_digest(other_model.classifier.weight) == tensor_digest(patch.original_head["weight"])
    assert get_chain(other_model.config) == []


# ----- rejected models -----


def test_revert_model_without_patch_rejected(bert_patch_dir: Path) -> None:
    model = make_tiny_classifier("bert")
    before = model_digests(model)
    with pytest.raises(PatchStateError, match="does not carry the values of patch .*5 embedding row"):
        revert_patch(model, load_patch(bert_patch_dir))
    assert model_digests(model) == before


def test_revert_model_recording_other_patch_rejected(bert_patch_dir: Path, tmp_path: Path) -> None:
    model = make_tiny_classifier("bert")
    other = save_and_load(make_patch(model, seed=9), tmp_path / "other")
    apply_patch(model, other)
    with pytest.raises(PatchStateError, match="does not carry patch"):
        revert_patch(model, load_patch(bert_patch_dir))


def test_shape_mismatch_rejected(bert_patch_dir: Path) -> None:
    model = make_tiny_classifier("bert", vocab_size=130)
    with pytest.raises(PatchFormatError, match=r"shape \(130, 32\) but the patch was made for \(120, 32\)"):
        apply_patch(model, load_patch(bert_patch_dir))


def test_num_labels_mismatch_rejected(bert_patch_dir: Path) -> None:
    model = make_tiny_classifier("bert", num_labels=4)
    with pytest.raises(PatchFormatError, match=r"classifier.bias has shape \(4,\) in the model but \(3,\) in the patch"):
        apply_patch(model, load_patch(bert_patch_dir))


def test_dtype_mismatch_rejected(tmp_path: Path) -> None:
    half_patch = save_and_load(make_patch(make_tiny_classifier("bert", torch.float16)), tmp_path / "patch")
    model = make_tiny_classifier("bert", torch.float32)
    before = model_digests(model)
    with pytest.raises(PatchFormatError, match="The model is float32 but the patch holds float16 values") as caught:
        apply_patch(model, half_patch)
    assert "Load the model with dtype=torch.float16" in str(caught.value)
    assert model_digests(model) == before


def test_model_without_head_rejected(bert_patch_dir: Path) -> None:
    encoder = BertModel(BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64))
    with pytest.raises(UnsupportedModelError, match="No classification head found in BertModel"):
        find_editable_parts(encoder)
    with pytest.raises(UnsupportedModelError, match="has no module"):
        apply_patch(encoder, load_patch(bert_patch_dir))


class _NoEmbeddings(nn.Module):
    def __init__(self) -> None:
        super().__init__()
        self.classifier = nn.Linear(4, 3)


def test_model_without_input_embeddings_rejected(bert_patch_dir: Path) -> None:
    with pytest.raises(UnsupportedModelError, match="has no nn.Embedding input embeddings"):
        find_editable_parts(_NoEmbeddings())
    with pytest.raises(UnsupportedModelError, match="input embeddings"):
        apply_patch(_NoEmbeddings(), load_patch(bert_patch_dir))


def test_head_of_wrong_type_rejected() -> None:
    model = make_tiny_classifier("bert")
    with pytest.raises(UnsupportedModelError, match="'bert.pooler' of BertForSequenceClassification is BertPooler"):
        find_editable_parts(model, head="bert.pooler")
