"""Tests of ``steu-patch apply``, ``revert`` and ``inspect`` through click's CliRunner."""

from __future__ import annotations

import json
import re
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner, Result
from conftest import (
    checkpoint_digests,
    copy_tree,
    edit_json,
    leftover_temp_dirs,
    make_patch,
    make_tiny_classifier,
    rewrite_patch_file,
    save_model_dir,
)
from transformers import BertConfig, BertModel

from steu_patch.errors import FingerprintMismatchError, PatchFormatError, PatchStateError
from steu_patch.patch import ADAPTER_WEIGHTS_NAME, MANIFEST_NAME, ORIGINALS_NAME, load_patch
from steu_patch_cli.main import cli

ROWS_KEY = "base_model.model.bert.embeddings.word_embeddings.token_adapter.trainable_tokens_delta"


@pytest.fixture(autouse=True)
def no_debug(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("STEU_DEBUG", raising=False)


def run(*args: str | Path, env: dict[str, str] | None = None) -> Result:
    return CliRunner().invoke(cli, [str(arg) for arg in args], env=env)


def assert_failed(result: Result, *fragments: str) -> None:
    """Check exit code 1, an ``Error:`` line holding every fragment, and no traceback."""
    assert result.exit_code == 1, result.output
    assert "Error: " in result.output
    for fragment in fragments:
        assert fragment in result.output
    assert "Traceback" not in result.output
    assert isinstance(result.exception, SystemExit)


def assert_nothing_written(output: Path) -> None:
    assert not output.exists()
    assert leftover_temp_dirs(output.parent) == []


# ----- success paths -----


def test_apply_then_revert_round_trip(bert_model_dir: Path, bert_patch_dir: Path, tmp_path: Path) -> None:
    patch_id = load_patch(bert_patch_dir).patch_id
    applied = run("apply", bert_model_dir, bert_patch_dir, "-o", tmp_path / "patched")
    assert applied.exit_code == 0, applied.output
    assert applied.output.strip() == f"Applied patch {patch_id[:12]} (forgets cardiology) -> {tmp_path / 'patched'}"

    reverted = run("revert", tmp_path / "patched", bert_patch_dir, "--output", tmp_path / "reverted")
    assert reverted.exit_code == 0, reverted.output
    assert reverted.output.startswith(f"Reverted patch {patch_id[:12]}")
    assert checkpoint_digests(tmp_path / "reverted") == checkpoint_digests(bert_model_dir)


def test_apply_overwrite_replaces_output(bert_model_dir: Path, bert_patch_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "patched"
    output.mkdir()
    (output / "old.txt").write_text("old", encoding="utf-8")
    result = run("apply", bert_model_dir, bert_patch_dir, "-o", output, "--overwrite")
    assert result.exit_code == 0, result.output
    assert not (output / "old.txt").exists()


def test_inspect_json_equals_manifest(bert_patch_dir: Path) -> None:
    result = run("inspect", bert_patch_dir, "--json")
    assert result.exit_code == 0, result.output
    manifest = json.loads((bert_patch_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
    assert json.loads(result.stdout) == manifest


def test_inspect_table_lists_fields(bert_patch_dir: Path) -> None:
    manifest = load_patch(bert_patch_dir).manifest
    result = run("inspect", bert_patch_dir)
    assert result.exit_code == 0, result.output
    assert manifest["patch_id"] in result.output
    assert manifest["base_fingerprint"]["sha256"] in result.output
    assert re.search(r"^forget classes +cardiology$", result.output, re.MULTILINE)
    assert re.search(r"^tokens +5: word007, word019, word042, word088, word101$", result.output, re.MULTILINE)
    assert re.search(r"^parent patches +none$", result.output, re.MULTILINE)


# ----- failures: exit 1, a message, nothing written -----


@pytest.fixture
def other_model_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    return save_model_dir(make_tiny_classifier("bert", seed=5), tmp_path_factory.mktemp("other") / "model")


def test_apply_fingerprint_mismatch(other_model_dir: Path, bert_patch_dir: Path, tmp_path: Path) -> None:
    patch = load_patch(bert_patch_dir)
    result = run("apply", other_model_dir, bert_patch_dir, "-o", tmp_path / "out")
    assert_failed(result, patch.fingerprint, "--force", "does not match the patch's base model")
    actual = make_patch(make_tiny_classifier("bert", seed=5)).fingerprint
    assert actual in result.output
    assert_nothing_written(tmp_path / "out")


def test_apply_force_then_revert(other_model_dir: Path, bert_patch_dir: Path, tmp_path: Path) -> None:
    forced = run("apply", other_model_dir, bert_patch_dir, "-o", tmp_path / "forced", "--force")
    assert forced.exit_code == 0, forced.output
    reverted = run("revert", tmp_path / "forced", bert_patch_dir, "-o", tmp_path / "reverted")
    assert reverted.exit_code == 0, reverted.output
    assert (tmp_path / "reverted" / "model.safetensors").is_file()


def test_revert_model_without_patch(bert_model_dir: Path, bert_patch_dir: Path, tmp_path: Path) -> None:
    result = run("revert", bert_model_dir, bert_patch_dir, "-o", tmp_path / "out")
    assert_failed(result, "does not carry the values of patch")
    assert_nothing_written(tmp_path / "out")


def test_apply_existing_output_without_overwrite(bert_model_dir: Path, bert_patch_dir: Path, tmp_path: Path) -> None:
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("keep", encoding="utf-8")
    result = run("apply", bert_model_dir, bert_patch_dir, "-o", output)
    assert_failed(result, "already exists and is not empty", "--overwrite")
    assert [path.name for path in output.iterdir()] == ["keep.txt"]
    assert leftover_temp_dirs(tmp_path) == []


def test_apply_missing_model_dir(bert_patch_dir: Path, tmp_path: Path) -> None:
    result = run("apply", tmp_path / "no" / "such" / "model", bert_patch_dir, "-o", tmp_path / "out")
    assert_failed(result, "does not exist")
    assert_nothing_written(tmp_path / "out")


def test_apply_missing_patch_dir(bert_model_dir: Path, tmp_path: Path) -> None:
    result = run("apply", bert_model_dir, tmp_path / "no" / "such" / "patch", "-o", tmp_path / "out")
    assert_failed(result, "does not exist", "steu-patch create")
    assert_nothing_written(tmp_path / "out")


def test_apply_shape_mismatch(bert_patch_dir: Path, tmp_path: Path) -> None:
    model_dir = save_model_dir(make_tiny_classifier("bert", vocab_size=130), tmp_path / "wide")
    result = run("apply", model_dir, bert_patch_dir, "-o", tmp_path / "out")
    assert_failed(result, "shape (130, 32) but the patch was made for (120, 32)")
    assert_nothing_written(tmp_path / "out")


def test_apply_dtype_mismatch(bert_model_dir: Path, tmp_path: Path) -> None:
    make_patch(make_tiny_classifier("bert", torch.float16)).save_pretrained(tmp_path / "half-patch")
    result = run("apply", bert_model_dir, tmp_path / "half-patch", "-o", tmp_path / "out")
    assert_failed(result, "The model is float32 but the patch holds float16 values")
    assert_nothing_written(tmp_path / "out")


def test_apply_model_without_head(bert_patch_dir: Path, tmp_path: Path) -> None:
    config = BertConfig(vocab_size=120, hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64)
    BertModel(config).save_pretrained(tmp_path / "encoder")
    result = run("apply", tmp_path / "encoder", bert_patch_dir, "-o", tmp_path / "out")
    assert_failed(result, "no tensor 'classifier.")
    assert_nothing_written(tmp_path / "out")


def _flip_byte(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-5] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    path.write_bytes(path.read_bytes()[:100])


def _nan_row(tensors: dict[str, torch.Tensor]) -> None:
    tensors[ROWS_KEY][2, 5] = float("nan")


PATCH_DAMAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "corrupt": (lambda d: _flip_byte(d / ADAPTER_WEIGHTS_NAME), "does not match the manifest"),
    "truncated": (lambda d: _truncate(d / ORIGINALS_NAME), "is corrupt, truncated or was modified"),
    "nan": (lambda d: rewrite_patch_file(d, ADAPTER_WEIGHTS_NAME, _nan_row), "contain 1 NaN or infinite value(s)"),
    "pickle": (lambda d: (d / "adapter_model.bin").write_bytes(b"\x80\x04N."), "pickle file(s) adapter_model.bin"),
    "ids out of range": (
        lambda d: edit_json(d / MANIFEST_NAME, lambda m: m["tokens"][-1].update(id=120)),
        "Token id(s) [120] are outside the embedding matrix of 120 rows",
    ),
    "manifest missing": (lambda d: (d / MANIFEST_NAME).unlink(), "steu_patch.json is missing"),
    "format version": (lambda d: edit_json(d / MANIFEST_NAME, lambda m: m.update(format_version=99)), "has format version 99"),
    "invalid json": (lambda d: (d / MANIFEST_NAME).write_text("{", encoding="utf-8"), "is not valid JSON"),
}  # fmt: skip


@pytest.fixture(params=list(PATCH_DAMAGES))
def damaged_patch(request: pytest.FixtureRequest, bert_patch_dir: Path, tmp_path: Path) -> tuple[Path, str]:
    damage, message = PATCH_DAMAGES[request.param]
    patch_dir = copy_tree(bert_patch_dir, tmp_path / "patch")
    damage(patch_dir)
    return patch_dir, message


def test_apply_damaged_patch(damaged_patch, bert_model_dir: Path, tmp_path: Path) -> None:
    patch_dir, message = damaged_patch
    result = run("apply", bert_model_dir, patch_dir, "-o", tmp_path / "out")
    assert_failed(result, message)
    assert_nothing_written(tmp_path / "out")


def test_revert_damaged_patch(damaged_patch, bert_model_dir: Path, bert_patch_dir: Path, tmp_path: Path) -> None:
    patch_dir, message = damaged_patch
    assert run("apply", bert_model_dir, bert_patch_dir, "-o", tmp_path / "patched").exit_code == 0
    result = run("revert", tmp_path / "patched", patch_dir, "-o", tmp_path / "out")
    assert_failed(result, message)
    assert_nothing_written(tmp_path / "out")


def test_inspect_damaged_patch(damaged_patch) -> None:
    patch_dir, message = damaged_patch
    assert_failed(run("inspect", patch_dir), message)
    assert_failed(run("inspect", patch_dir, "--json"), message)


def test_stacking_order_through_cli(tmp_path: Path) -> None:
    from steu_patch.apply import apply_patch, chain_entry

    model = make_tiny_classifier("bert")
    model_dir = save_model_dir(model, tmp_path / "base")
    patch_a = make_patch(model, seed=1)
    patch_a.save_pretrained(tmp_path / "a")
    apply_patch(model, patch_a)
    make_patch(model, (42, 50), seed=2, parent_patches=[chain_entry(patch_a)]).save_pretrained(tmp_path / "b")

    assert_failed(run("apply", model_dir, tmp_path / "b", "-o", tmp_path / "b-first"), f"carrying patch {patch_a.patch_id[:12]}")
    assert_nothing_written(tmp_path / "b-first")
    assert run("apply", model_dir, tmp_path / "a", "-o", tmp_path / "with-a").exit_code == 0
    assert run("apply", tmp_path / "with-a", tmp_path / "b", "-o", tmp_path / "with-ab").exit_code == 0
    patch_b_id = load_patch(tmp_path / "b").patch_id
    assert_failed(run("revert", tmp_path / "with-ab", tmp_path / "a", "-o", tmp_path / "a-first"), f"Revert patch {patch_b_id[:12]}")
    assert_nothing_written(tmp_path / "a-first")


# ----- usage errors: exit 2 -----


@pytest.mark.parametrize(
    "args",
    [
        ["apply"],
        ["apply", "model-dir"],
        ["apply", "model-dir", "patch-dir"],
        ["revert", "model-dir", "patch-dir"],
        ["inspect"],
        ["apply", "model-dir", "patch-dir", "-o", "out", "--frobnicate"],
        ["inspect", "patch-dir", "--json=yes"],
        ["no-such-command"],
    ],
    ids=["apply-no-args", "apply-no-patch", "apply-no-output", "revert-no-output", "inspect-no-args", "bad-option", "flag-with-value", "bad-command"],
)
def test_usage_errors_exit_2(args: list[str]) -> None:
    result = run(*args)
    assert result.exit_code == 2, result.output
    assert "Error: " in result.output
    assert "Traceback" not in result.output


def test_revert_has_no_force_option(bert_model_dir: Path, bert_patch_dir: Path, tmp_path: Path) -> None:
    result = run("revert", bert_model_dir, bert_patch_dir, "-o", tmp_path / "out", "--force")
    assert result.exit_code == 2
    assert "No such option '--force'" in result.output


# ----- STEU_DEBUG -----


def test_debug_propagates_fingerprint_error(other_model_dir: Path, bert_patch_dir: Path, tmp_path: Path) -> None:
    result = run("apply", other_model_dir, bert_patch_dir, "-o", tmp_path / "out", env={"STEU_DEBUG": "1"})
    assert result.exit_code == 1
    assert isinstance(result.exception, FingerprintMismatchError)
    assert_nothing_written(tmp_path / "out")


def test_debug_propagates_format_error(bert_patch_dir: Path, tmp_path: Path) -> None:
    patch_dir = copy_tree(bert_patch_dir, tmp_path / "patch")
    (patch_dir / MANIFEST_NAME).unlink()
    result = run("inspect", patch_dir, env={"STEU_DEBUG": "1"})
    assert isinstance(result.exception, PatchFormatError)


def test_debug_propagates_state_error(bert_model_dir: Path, bert_patch_dir: Path, tmp_path: Path) -> None:
    result = run("revert", bert_model_dir, bert_patch_dir, "-o", tmp_path / "out", env={"STEU_DEBUG": "1"})
    assert isinstance(result.exception, PatchStateError)


def test_debug_off_wraps_error(bert_model_dir: Path, bert_patch_dir: Path, tmp_path: Path) -> None:
    result = run("revert", bert_model_dir, bert_patch_dir, "-o", tmp_path / "out", env={"STEU_DEBUG": "0"})
    assert result.exit_code == 1
    assert isinstance(result.exception, SystemExit)
    assert "Traceback" not in result.output


def test_apply_output_is_patch_dir_rejected(bert_model_dir: Path, bert_patch_dir: Path, tmp_path: Path) -> None:
    patch_dir = copy_tree(bert_patch_dir, tmp_path / "patch")
    result = CliRunner().invoke(cli, ["apply", str(bert_model_dir), str(patch_dir), "--output", str(patch_dir), "--overwrite"])

    assert result.exit_code == 1
    assert "is the patch directory itself" in result.output
    assert (patch_dir / "steu_patch.json").is_file()
