"""Tests of patched model directories written by ``write_patched_model`` (single-file and sharded)."""

from __future__ import annotations

import hashlib
import json
import logging
from pathlib import Path

import pytest
import torch
from conftest import (
    ARCHITECTURES,
    DTYPES,
    checkpoint_digests,
    copy_tree,
    differing_keys,
    leftover_temp_dirs,
    make_patch,
    make_tiny_classifier,
    model_digests,
    save_and_load,
    save_model_dir,
    tensor_digest,
)
from safetensors.torch import load_file
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertConfig, BertModel

from steu_patch.apply import CHAIN_ATTRIBUTE, apply_patch, chain_entry
from steu_patch.checkpoint import INDEX_FILE, SINGLE_FILE, write_patched_model
from steu_patch.errors import (
    FingerprintMismatchError,
    ModelNotFoundError,
    PatchFormatError,
    PatchStateError,
    UnsupportedModelError,
)
from steu_patch.models import find_editable_parts
from steu_patch.patch import load_patch

CASES = [(arch, dtype_id) for arch in ARCHITECTURES for dtype_id in DTYPES]
SHARD_SIZE = "40KB"


def file_digest(path: Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def read_config(model_dir: Path) -> dict:
    return json.loads((model_dir / "config.json").read_text(encoding="utf-8"))


def touched_checkpoint_keys(model) -> set[str]:
    parts = find_editable_parts(model)
    return {parts.embedding_weight_key, *parts.head_parameter_keys(model)}


# ----- round trips -----


@pytest.mark.parametrize(("arch", "dtype_id"), CASES)
def test_disk_apply_revert_restores_every_tensor(arch: str, dtype_id: str, tmp_path: Path) -> None:
    model = make_tiny_classifier(arch, DTYPES[dtype_id])
    model_dir = save_model_dir(model, tmp_path / "base")
    patch = save_and_load(make_patch(model), tmp_path / "patch")
    base = checkpoint_digests(model_dir)

    write_patched_model(model_dir, patch, tmp_path / "patched")
    assert differing_keys(base, checkpoint_digests(tmp_path / "patched")) == touched_checkpoint_keys(model)
    write_patched_model(tmp_path / "patched", patch, tmp_path / "reverted", revert=True)
    assert checkpoint_digests(tmp_path / "reverted") == base
    assert leftover_temp_dirs(tmp_path) == []


@pytest.mark.parametrize(("arch", "dtype_id"), [("bert", "fp32"), ("roberta", "bf16"), ("modernbert", "fp16"), ("distilbert", "fp32")])
def test_disk_patched_model_loads_like_memory(arch: str, dtype_id: str, tmp_path: Path) -> None:
    dtype = DTYPES[dtype_id]
    model = make_tiny_classifier(arch, dtype)
    model_dir = save_model_dir(model, tmp_path / "base")
    patch = save_and_load(make_patch(model), tmp_path / "patch")

    write_patched_model(model_dir, patch, tmp_path / "patched")
    loaded = AutoModelForSequenceClassification.from_pretrained(tmp_path / "patched", dtype=dtype)
    apply_patch(model, patch)
    assert loaded.get_input_embeddings().weight.dtype == dtype
    assert model_digests(loaded) == model_digests(model)
    assert loaded.config.steu_patch_chain == [chain_entry(patch)]


@pytest.mark.parametrize(("arch", "dtype_id"), [("bert", "fp32"), ("roberta", "bf16"), ("deberta-v2", "fp16"), ("modernbert", "fp32")])
def test_sharded_round_trip(arch: str, dtype_id: str, tmp_path: Path) -> None:
    model = make_tiny_classifier(arch, DTYPES[dtype_id])
    model_dir = save_model_dir(model, tmp_path / "base", shard_size=SHARD_SIZE)
    shards = sorted(model_dir.glob("model-*.safetensors"))
    assert len(shards) >= 2, "the test needs a sharded checkpoint"
    patch = save_and_load(make_patch(model), tmp_path / "patch")
    base = checkpoint_digests(model_dir)

    write_patched_model(model_dir, patch, tmp_path / "patched")
    assert differing_keys(base, checkpoint_digests(tmp_path / "patched")) == touched_checkpoint_keys(model)
    write_patched_model(tmp_path / "patched", patch, tmp_path / "reverted", revert=True)
    assert checkpoint_digests(tmp_path / "reverted") == base


def test_sharded_untouched_shards_copied_byte_for_byte(tmp_path: Path) -> None:
    model = make_tiny_classifier("bert")
    model_dir = save_model_dir(model, tmp_path / "base", shard_size=SHARD_SIZE)
    patch = save_and_load(make_patch(model), tmp_path / "patch")
    index = json.loads((model_dir / INDEX_FILE).read_text(encoding="utf-8"))["weight_map"]
    touched = {index[key] for key in touched_checkpoint_keys(model)}
    untouched = sorted(set(index.values()) - touched)
    assert untouched, "the test needs a shard without touched tensors"

    write_patched_model(model_dir, patch, tmp_path / "patched")
    for name in untouched:
        assert file_digest(tmp_path / "patched" / name) == file_digest(model_dir / name), name
    assert file_digest(tmp_path / "patched" / INDEX_FILE) == file_digest(model_dir / INDEX_FILE)


def test_rewritten_shard_keeps_metadata(tmp_path: Path) -> None:
    from safetensors import safe_open

    model = make_tiny_classifier("bert")
    model_dir = save_model_dir(model, tmp_path / "base")
    patch = save_and_load(make_patch(model), tmp_path / "patch")
    write_patched_model(model_dir, patch, tmp_path / "patched")
    with safe_open(str(model_dir / SINGLE_FILE), framework="pt") as handle:
        before = handle.metadata()
    with safe_open(str(tmp_path / "patched" / SINGLE_FILE), framework="pt") as handle:
        after = handle.metadata()
    assert after == before


def test_tokenizer_files_copied(bert_model_dir: Path, bert_patch_dir: Path, tmp_path: Path) -> None:
    write_patched_model(bert_model_dir, load_patch(bert_patch_dir), tmp_path / "patched")
    tokenizer_files = ["tokenizer.json", "tokenizer_config.json", "vocab.txt"]
    for name in tokenizer_files:
        assert file_digest(tmp_path / "patched" / name) == file_digest(bert_model_dir / name), name
    tokenizer = AutoTokenizer.from_pretrained(tmp_path / "patched")
    assert tokenizer("word042 word007")["input_ids"] == [2, 42, 7, 3]


def test_output_lists_same_files(bert_model_dir: Path, bert_patch_dir: Path, tmp_path: Path) -> None:
    write_patched_model(bert_model_dir, load_patch(bert_patch_dir), tmp_path / "patched")
    assert sorted(path.name for path in (tmp_path / "patched").iterdir()) == sorted(path.name for path in bert_model_dir.iterdir())


def test_output_inside_model_dir(bert_model_dir: Path, bert_patch_dir: Path, tmp_path: Path) -> None:
    model_dir = copy_tree(bert_model_dir, tmp_path / "model")
    patch = load_patch(bert_patch_dir)
    write_patched_model(model_dir, patch, model_dir / "patched")
    write_patched_model(model_dir, patch, model_dir / "patched", overwrite=True)
    names = sorted(path.name for path in (model_dir / "patched").iterdir())
    assert names == sorted(path.name for path in bert_model_dir.iterdir())
    assert leftover_temp_dirs(model_dir) == []


def test_in_place_apply_and_revert(bert_model_dir: Path, bert_patch_dir: Path, tmp_path: Path) -> None:
    model_dir = copy_tree(bert_model_dir, tmp_path / "model")
    patch = load_patch(bert_patch_dir)
    write_patched_model(model_dir, patch, model_dir, overwrite=True)
    assert read_config(model_dir)[CHAIN_ATTRIBUTE] == [chain_entry(patch)]
    write_patched_model(model_dir, patch, model_dir, revert=True, overwrite=True)
    assert checkpoint_digests(model_dir) == checkpoint_digests(bert_model_dir)
    assert leftover_temp_dirs(tmp_path) == []


def test_config_chain_written_and_removed(bert_model_dir: Path, bert_patch_dir: Path, tmp_path: Path) -> None:
    patch = load_patch(bert_patch_dir)
    write_patched_model(bert_model_dir, patch, tmp_path / "patched")
    assert read_config(tmp_path / "patched")[CHAIN_ATTRIBUTE] == [chain_entry(patch)]
    write_patched_model(tmp_path / "patched", patch, tmp_path / "reverted", revert=True)
    assert CHAIN_ATTRIBUTE not in read_config(tmp_path / "reverted")
    base_config = read_config(bert_model_dir)
    assert read_config(tmp_path / "reverted") == base_config


def test_memory_patched_save_reverts_on_disk(bert_model_dir: Path, bert_patch_dir: Path, tmp_path: Path) -> None:
    patch = load_patch(bert_patch_dir)
    model = AutoModelForSequenceClassification.from_pretrained(bert_model_dir)
    apply_patch(model, patch)
    model.save_pretrained(tmp_path / "saved")
    write_patched_model(tmp_path / "saved", patch, tmp_path / "reverted", revert=True)
    assert checkpoint_digests(tmp_path / "reverted") == checkpoint_digests(bert_model_dir)


def test_disk_stacked_round_trip(tmp_path: Path) -> None:
    model = make_tiny_classifier("electra")
    model_dir = save_model_dir(model, tmp_path / "base", shard_size=SHARD_SIZE)
    patch_a = save_and_load(make_patch(model, seed=1), tmp_path / "a")
    apply_patch(model, patch_a)
    patch_b = save_and_load(make_patch(model, (42, 50), seed=2, parent_patches=[chain_entry(patch_a)]), tmp_path / "b")

    write_patched_model(model_dir, patch_a, tmp_path / "with-a")
    write_patched_model(tmp_path / "with-a", patch_b, tmp_path / "with-ab")
    assert read_config(tmp_path / "with-ab")[CHAIN_ATTRIBUTE] == [chain_entry(patch_a), chain_entry(patch_b)]
    write_patched_model(tmp_path / "with-ab", patch_b, tmp_path / "back-a", revert=True)
    assert checkpoint_digests(tmp_path / "back-a") == checkpoint_digests(tmp_path / "with-a")
    write_patched_model(tmp_path / "back-a", patch_a, tmp_path / "back-base", revert=True)
    assert checkpoint_digests(tmp_path / "back-base") == checkpoint_digests(model_dir)


def test_disk_stacking_order_enforced(tmp_path: Path) -> None:
    model = make_tiny_classifier("bert")
    model_dir = save_model_dir(model, tmp_path / "base")
    patch_a = save_and_load(make_patch(model, seed=1), tmp_path / "a")
    apply_patch(model, patch_a)
    patch_b = save_and_load(make_patch(model, (42, 50), seed=2, parent_patches=[chain_entry(patch_a)]), tmp_path / "b")

    with pytest.raises(PatchStateError, match=f"carrying patch {patch_a.patch_id[:12]}"):
        write_patched_model(model_dir, patch_b, tmp_path / "b-first")
    assert not (tmp_path / "b-first").exists()

    write_patched_model(model_dir, patch_a, tmp_path / "with-a")
    write_patched_model(tmp_path / "with-a", patch_b, tmp_path / "with-ab")
    with pytest.raises(PatchStateError, match=f"Revert patch {patch_b.patch_id[:12]}"):
        write_patched_model(tmp_path / "with-ab", patch_a, tmp_path / "a-first", revert=True)
    assert not (tmp_path / "a-first").exists()
    assert leftover_temp_dirs(tmp_path) == []


# ----- overwrite -----


def test_existing_output_rejected(bert_model_dir: Path, bert_patch_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "patched"
    output.mkdir()
    (output / "notes.txt").write_text("keep", encoding="utf-8")
    with pytest.raises(FileExistsError, match="already exists and is not empty.*--overwrite"):
        write_patched_model(bert_model_dir, load_patch(bert_patch_dir), output)
    assert [path.name for path in output.iterdir()] == ["notes.txt"]
    assert leftover_temp_dirs(tmp_path) == []


def test_overwrite_replaces_output(bert_model_dir: Path, bert_patch_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "patched"
    output.mkdir()
    (output / "notes.txt").write_text("old", encoding="utf-8")
    write_patched_model(bert_model_dir, load_patch(bert_patch_dir), output, overwrite=True)
    assert not (output / "notes.txt").exists()
    assert (output / SINGLE_FILE).is_file()
    assert leftover_temp_dirs(tmp_path) == []


# ----- rejections: nothing is written -----


def assert_nothing_written(output: Path) -> None:
    assert not output.exists()
    assert leftover_temp_dirs(output.parent) == []


def test_fingerprint_mismatch_writes_nothing(bert_patch_dir: Path, tmp_path: Path) -> None:
    other_dir = save_model_dir(make_tiny_classifier("bert", seed=5), tmp_path / "other")
    patch = load_patch(bert_patch_dir)
    with pytest.raises(FingerprintMismatchError) as caught:
        write_patched_model(other_dir, patch, tmp_path / "out")
    assert patch.fingerprint in str(caught.value)
    assert "--force" in str(caught.value)
    assert_nothing_written(tmp_path / "out")


def test_force_writes_and_reverts(bert_patch_dir: Path, tmp_path: Path) -> None:
    other_dir = save_model_dir(make_tiny_classifier("bert", seed=5), tmp_path / "other")
    patch = load_patch(bert_patch_dir)
    write_patched_model(other_dir, patch, tmp_path / "forced", force=True)
    rows = load_file(tmp_path / "forced" / SINGLE_FILE)["bert.embeddings.word_embeddings.weight"][list(patch.token_ids)]
    assert tensor_digest(rows) == tensor_digest(patch.new_rows)

    write_patched_model(tmp_path / "forced", patch, tmp_path / "reverted", revert=True)
    reverted = load_file(tmp_path / "reverted" / SINGLE_FILE)
    assert tensor_digest(reverted["classifier.weight"]) == tensor_digest(patch.original_head["weight"])
    assert differing_keys(checkpoint_digests(other_dir), checkpoint_digests(tmp_path / "reverted")) == {
        "bert.embeddings.word_embeddings.weight", "classifier.weight", "classifier.bias",
    }  # fmt: skip


def test_revert_without_patch_writes_nothing(bert_model_dir: Path, bert_patch_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(PatchStateError, match="does not carry the values of patch"):
        write_patched_model(bert_model_dir, load_patch(bert_patch_dir), tmp_path / "out", revert=True)
    assert_nothing_written(tmp_path / "out")


def test_shape_mismatch_writes_nothing(bert_patch_dir: Path, tmp_path: Path) -> None:
    model_dir = save_model_dir(make_tiny_classifier("bert", vocab_size=130), tmp_path / "wide")
    with pytest.raises(PatchFormatError, match="belongs to another model"):
        write_patched_model(model_dir, load_patch(bert_patch_dir), tmp_path / "out")
    assert_nothing_written(tmp_path / "out")


def test_dtype_mismatch_writes_nothing(bert_model_dir: Path, tmp_path: Path) -> None:
    half_patch = save_and_load(make_patch(make_tiny_classifier("bert", torch.float16)), tmp_path / "patch")
    with pytest.raises(PatchFormatError, match="The model is float32 but the patch holds float16 values"):
        write_patched_model(bert_model_dir, half_patch, tmp_path / "out")
    assert_nothing_written(tmp_path / "out")


def test_model_without_head_writes_nothing(bert_patch_dir: Path, tmp_path: Path) -> None:
    encoder = BertModel(BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64))
    encoder.save_pretrained(tmp_path / "encoder")
    with pytest.raises(UnsupportedModelError, match="no tensor 'classifier.bias'|no tensor 'classifier.weight'"):
        write_patched_model(tmp_path / "encoder", load_patch(bert_patch_dir), tmp_path / "out")
    assert_nothing_written(tmp_path / "out")


def test_missing_model_dir(bert_patch_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        write_patched_model(tmp_path / "absent", load_patch(bert_patch_dir), tmp_path / "out")
    assert_nothing_written(tmp_path / "out")


def test_model_dir_without_config(bert_model_dir: Path, bert_patch_dir: Path, tmp_path: Path) -> None:
    model_dir = copy_tree(bert_model_dir, tmp_path / "model")
    (model_dir / "config.json").unlink()
    with pytest.raises(ModelNotFoundError, match="has no config.json"):
        write_patched_model(model_dir, load_patch(bert_patch_dir), tmp_path / "out")
    assert_nothing_written(tmp_path / "out")


def test_model_dir_with_only_pickle_weights(bert_model_dir: Path, bert_patch_dir: Path, tmp_path: Path) -> None:
    model_dir = copy_tree(bert_model_dir, tmp_path / "model")
    (model_dir / SINGLE_FILE).rename(model_dir / "pytorch_model.bin")
    with pytest.raises(ModelNotFoundError, match=r"pickle weights \(pytorch_model.bin\)"):
        write_patched_model(model_dir, load_patch(bert_patch_dir), tmp_path / "out")
    assert_nothing_written(tmp_path / "out")


def test_truncated_model_weights(bert_model_dir: Path, bert_patch_dir: Path, tmp_path: Path) -> None:
    model_dir = copy_tree(bert_model_dir, tmp_path / "model")
    data = (model_dir / SINGLE_FILE).read_bytes()
    (model_dir / SINGLE_FILE).write_bytes(data[: len(data) // 2])
    with pytest.raises(ModelNotFoundError, match="is not a readable safetensors file"):
        write_patched_model(model_dir, load_patch(bert_patch_dir), tmp_path / "out")
    assert_nothing_written(tmp_path / "out")


def test_stale_pickle_weights_skipped(bert_model_dir: Path, bert_patch_dir: Path, tmp_path: Path, caplog) -> None:
    model_dir = copy_tree(bert_model_dir, tmp_path / "model")
    (model_dir / "pytorch_model.bin").write_bytes(b"stale")
    with caplog.at_level(logging.WARNING, logger="steu_patch.checkpoint"):
        write_patched_model(model_dir, load_patch(bert_patch_dir), tmp_path / "out")
    assert not (tmp_path / "out" / "pytorch_model.bin").exists()
    assert "Skipped pytorch_model.bin" in caplog.text
