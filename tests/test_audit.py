"""Tests for ``steu-patch audit``: patch integrity, base fingerprint, bit-exact model comparison,
data measurements, JSON schema, redaction and the HTML report, on a tiny BERT built from a config."""

from __future__ import annotations

import csv
import json
import os
import random
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from click.testing import CliRunner
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

from steu_patch.audit import TOP_LEVEL_KEYS, AuditOptions, audit_patch
from steu_patch.checkpoint import write_patched_model
from steu_patch.patch import TouchedValues, build_patch, read_touched_values
from steu_patch.report import render_html
from steu_patch_cli.main import cli

ID2LABEL = {0: "cardio", 1: "ortho", 2: "neuro"}
CLASS_WORDS = {
    0: ["tachycardia", "stenosis", "murmur", "echocardiogram"],
    1: ["fracture", "femur", "cast", "tendon"],
    2: ["seizure", "migraine", "aura", "neuropathy"],
}
COMMON_WORDS = ["patient", "reports", "with", "severe", "mild", "and", "a", "history", "of"]
FORGET_TOKENS = CLASS_WORDS[0]
EMBEDDING = "bert.embeddings.word_embeddings"
EMBEDDING_KEY = f"{EMBEDDING}.weight"
OTHER_KEY = "bert.encoder.layer.0.attention.self.query.weight"
SCRIPT = Path(__file__).resolve().parents[1] / "scripts" / "check_report_html.py"


def make_texts(per_class: int, seed: int) -> list[tuple[str, str]]:
    rng = random.Random(seed)
    rows = []
    for class_id, words in CLASS_WORDS.items():
        for _ in range(per_class):
            chosen = rng.sample(words, 2) + rng.sample(COMMON_WORDS, 3)
            rng.shuffle(chosen)
            rows.append((" ".join(chosen), ID2LABEL[class_id]))
    return rows


def write_csv(path: Path, rows: list[tuple], header: tuple[str, ...] = ("text", "label")) -> Path:
    with open(path, "w", newline="", encoding="utf-8") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def build_workspace(root: Path, problem_type: str | None = None) -> dict[str, Path]:
    """Save a tiny base classifier, a patch for its "cardio" class and the patched model under ``root``."""
    base_dir = root / "base"
    base_dir.mkdir()
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *COMMON_WORDS, *(w for ws in CLASS_WORDS.values() for w in ws)]
    (base_dir / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast.from_pretrained(base_dir)
    tokenizer.save_pretrained(base_dir)

    torch.manual_seed(0)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32,
        max_position_embeddings=32, num_labels=3, id2label=ID2LABEL, label2id={v: k for k, v in ID2LABEL.items()},
        problem_type=problem_type,
    )
    model = BertForSequenceClassification(config).eval()
    model.save_pretrained(base_dir)

    token_ids = tokenizer.convert_tokens_to_ids(FORGET_TOKENS)
    parameters = dict(model.named_parameters())
    patch_like = type("PatchLike", (), {"embedding_module": EMBEDDING, "head_module": "classifier", "token_ids": token_ids, "new_head": {"weight": None, "bias": None}})
    original = read_touched_values(patch_like, parameters.__getitem__)
    generator = torch.Generator().manual_seed(1)
    new = TouchedValues(
        rows=original.rows + 0.5 * torch.randn(original.rows.shape, generator=generator),
        head={name: tensor + 0.1 * torch.randn(tensor.shape, generator=generator) for name, tensor in original.head.items()},
    )
    patch = build_patch(
        token_ids=token_ids, original=original, new=new, embedding_module=EMBEDDING, head_module="classifier",
        embedding_shape=tuple(parameters[EMBEDDING_KEY].shape), base_model={"name_or_path": str(base_dir)},
        id2label=ID2LABEL, forget_classes=["cardio"],
        tokens=[{"id": token_id, "token": word} for token_id, word in zip(token_ids, FORGET_TOKENS)],
        method={"max_length": 16}, total_parameters=sum(p.numel() for p in model.parameters()),
    )
    patch_dir = patch.save_pretrained(root / "patch")
    patched_dir = write_patched_model(base_dir, patch, root / "patched")
    return {"root": root, "base": base_dir, "patch": patch_dir, "patched": patched_dir}


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    """A tiny base classifier, a patch for its "cardio" class, the patched model and a data file."""
    paths = build_workspace(tmp_path_factory.mktemp("audit"))
    paths["data"] = write_csv(paths["root"] / "data.csv", make_texts(12, seed=3))
    return paths


def run_audit(*args: str) -> tuple[int, str]:
    result = CliRunner().invoke(cli, ["audit", *args, "--no-progress"])
    if result.exception is not None and not isinstance(result.exception, SystemExit):
        raise result.exception
    return result.exit_code, result.stdout


def audit_json(*args: str) -> tuple[int, dict]:
    code, output = run_audit(*args, "--json")
    return code, json.loads(output)


def check(report: dict, name: str) -> dict:
    matches = [entry for entry in report["checks"] if entry["name"] == name]
    assert len(matches) == 1, f"expected one check named {name}, got {report['checks']}"
    return matches[0]


def copy_model(source: Path, target: Path) -> Path:
    shutil.copytree(source, target)
    return target


def rewrite_tensors(model_dir: Path, edit) -> None:
    """Load model.safetensors, let ``edit`` change the dict of tensors in place, save it back."""
    path = model_dir / "model.safetensors"
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(str(path))
    edit(tensors)
    save_file(tensors, str(path), metadata=metadata)


def flip_bit(tensors: dict, key: str, index: tuple[int, ...]) -> None:
    tensor = tensors[key].clone()
    tensor.view(torch.int32)[index] ^= 1
    tensors[key] = tensor


# ----- verification -----


def test_correct_patched_model_verifies(workspace):
    code, report = audit_json(str(workspace["patch"]), "--base", str(workspace["base"]), "--model", str(workspace["patched"]))

    assert code == 0
    assert report["verdict"] == "verified"
    assert [entry["name"] for entry in report["checks"]] == [
        "patch_files", "patch_id", "base_fingerprint", "model_keys", "model_patched_values", "model_unpatched_values",
    ]
    assert all(entry["passed"] for entry in report["checks"])
    assert report["model"]["comparison"]["differences"] == []
    assert report["model"]["records_patch"] is True


def test_patch_alone_verifies(workspace):
    code, report = audit_json(str(workspace["patch"]))

    assert code == 0
    assert report["base"] is None
    assert report["model"] is None
    assert report["data"] is None


@pytest.mark.parametrize(
    ("key", "index", "failing", "kind"),
    [
        (OTHER_KEY, (3, 5), "model_unpatched_values", "unpatched_values"),
        ("bert.pooler.dense.bias", (0,), "model_unpatched_values", "unpatched_values"),
        (EMBEDDING_KEY, (0, 2), "model_unpatched_values", "unpatched_values"),
        (EMBEDDING_KEY, "patched-row", "model_patched_values", "patched_rows"),
        ("classifier.weight", (0, 1), "model_patched_values", "head"),
    ],
    ids=["other-tensor", "other-bias", "embedding-outside-rows", "embedding-patched-row", "head"],
)
def test_single_flipped_value_fails(workspace, tmp_path, key, index, failing, kind):
    model_dir = copy_model(workspace["patched"], tmp_path / "tampered")
    if index == "patched-row":
        tokenizer = BertTokenizerFast.from_pretrained(workspace["base"])
        index = (tokenizer.convert_tokens_to_ids(FORGET_TOKENS[1]), 7)
    rewrite_tensors(model_dir, lambda tensors: flip_bit(tensors, key, index))

    code, report = audit_json(str(workspace["patch"]), "--base", str(workspace["base"]), "--model", str(model_dir))

    assert code == 1
    assert report["verdict"] == "failed"
    assert check(report, failing)["passed"] is False
    assert key in check(report, failing)["detail"]
    differences = report["model"]["comparison"]["differences"]
    assert [(entry["tensor"], entry["kind"], entry["changed_values"]) for entry in differences] == [(key, kind, 1)]
    other = {"model_patched_values", "model_unpatched_values"} - {failing}
    assert check(report, other.pop())["passed"] is True


def test_unpatched_model_names_original_rows(workspace):
    code, report = audit_json(str(workspace["patch"]), "--base", str(workspace["base"]), "--model", str(workspace["base"]))

    assert code == 1
    detail = check(report, "model_patched_values")["detail"]
    assert "4 of these rows still hold the base model's values" in detail
    assert "classifier.weight" in detail
    assert check(report, "model_unpatched_values")["passed"] is True


def test_missing_and_extra_tensors_fail(workspace, tmp_path):
    model_dir = copy_model(workspace["patched"], tmp_path / "renamed")

    def rename(tensors):
        tensors["bert.pooler.dense.renamed"] = tensors.pop("bert.pooler.dense.bias")

    rewrite_tensors(model_dir, rename)
    code, report = audit_json(str(workspace["patch"]), "--base", str(workspace["base"]), "--model", str(model_dir))

    assert code == 1
    assert report["model"]["comparison"]["missing_keys"] == ["bert.pooler.dense.bias"]
    assert report["model"]["comparison"]["extra_keys"] == ["bert.pooler.dense.renamed"]
    assert check(report, "model_keys")["passed"] is False
    assert "bert.pooler.dense.bias" in check(report, "model_keys")["detail"]


def test_changed_dtype_fails(workspace, tmp_path):
    model_dir = copy_model(workspace["patched"], tmp_path / "half")

    def to_half(tensors):
        tensors[OTHER_KEY] = tensors[OTHER_KEY].half()

    rewrite_tensors(model_dir, to_half)
    code, report = audit_json(str(workspace["patch"]), "--base", str(workspace["base"]), "--model", str(model_dir))

    assert code == 1
    assert report["model"]["comparison"]["differences"][0]["kind"] == "dtype"
    assert OTHER_KEY in check(report, "model_unpatched_values")["detail"]


def test_differently_sharded_model_verifies(workspace, tmp_path):
    model_dir = copy_model(workspace["patched"], tmp_path / "sharded")
    tensors = load_file(str(model_dir / "model.safetensors"))
    (model_dir / "model.safetensors").unlink()
    keys = sorted(tensors)
    shards = {"model-00001-of-00002.safetensors": keys[::2], "model-00002-of-00002.safetensors": keys[1::2]}
    for name, shard_keys in shards.items():
        save_file({key: tensors[key] for key in shard_keys}, str(model_dir / name), metadata={"format": "pt"})
    index = {"metadata": {}, "weight_map": {key: name for name, shard_keys in shards.items() for key in shard_keys}}
    (model_dir / "model.safetensors.index.json").write_text(json.dumps(index), encoding="utf-8")

    code, report = audit_json(str(workspace["patch"]), "--base", str(workspace["base"]), "--model", str(model_dir))

    assert code == 0
    assert report["model"]["comparison"]["tensors_compared"] == len(keys)


def test_wrong_base_fails_fingerprint(workspace):
    code, report = audit_json(str(workspace["patch"]), "--base", str(workspace["patched"]))

    assert code == 1
    fingerprint = check(report, "base_fingerprint")
    assert fingerprint["passed"] is False
    assert "4 embedding row(s)" in fingerprint["detail"]
    assert report["base"]["fingerprint_matches"] is False


def test_incompatible_base_fails(workspace, tmp_path):
    config = BertConfig(vocab_size=40, hidden_size=16, num_hidden_layers=1, num_attention_heads=2, intermediate_size=32, num_labels=3)
    BertForSequenceClassification(config).save_pretrained(tmp_path / "other")
    args = [str(workspace["patch"]), "--base", str(tmp_path / "other"), "--model", str(workspace["patched"])]

    code, report = audit_json(*args)
    text_code, text = run_audit(*args)

    assert code == 1
    assert "belongs to another model" in check(report, "base_fingerprint")["detail"]
    assert report["base"]["error"] is not None
    assert check(report, "model_patched_values")["passed"] is False
    assert report["model"]["comparison"] is None
    assert text_code == 1
    assert "steu-patch audit: FAILED" in text


def test_wrong_base_skips_data(workspace):
    code, report = audit_json(str(workspace["patch"]), "--base", str(workspace["patched"]), "--data", str(workspace["data"]))

    assert code == 1
    assert report["data"]["status"] == "skipped"
    assert "fingerprint" in report["data"]["reason"]
    assert report["data"]["metrics"] is None


def test_modified_patch_file_fails_with_report(workspace, tmp_path):
    patch_dir = copy_model(workspace["patch"], tmp_path / "patch")
    path = patch_dir / "adapter_model.safetensors"
    tensors = load_file(str(path))
    key = next(key for key in tensors if key.endswith("trainable_tokens_delta"))
    flip_bit(tensors, key, (0, 0))
    save_file(tensors, str(path), metadata={"format": "pt"})

    code, report = audit_json(str(patch_dir))

    assert code == 1
    files = check(report, "patch_files")
    assert files["passed"] is False
    assert "adapter_model.safetensors" in files["detail"]
    assert report["patch"]["files"]["adapter_model.safetensors"]["matches"] is False
    assert report["patch"]["files"]["original_values.safetensors"]["matches"] is True
    assert len([edit for edit in report["edits"] if edit["kind"] == "embedding_row"]) == 4


def test_edited_patch_id_fails(workspace, tmp_path):
    patch_dir = copy_model(workspace["patch"], tmp_path / "patch")
    manifest = json.loads((patch_dir / "steu_patch.json").read_text())
    manifest["patch_id"] = "0" * 64
    (patch_dir / "steu_patch.json").write_text(json.dumps(manifest))

    code, report = audit_json(str(patch_dir))

    assert code == 1
    assert check(report, "patch_id")["passed"] is False
    assert check(report, "patch_files")["passed"] is True


def test_text_report_printed_on_failure(workspace):
    code, output = run_audit(str(workspace["patch"]), "--base", str(workspace["patched"]))

    assert code == 1
    assert "steu-patch audit: FAILED" in output
    assert "base_fingerprint" in output
    assert "Edits" in output


# ----- edits -----


def test_edits_describe_rows_and_head(workspace):
    report = audit_patch(workspace["patch"]).to_dict()
    rows = [edit for edit in report["edits"] if edit["kind"] == "embedding_row"]
    patch = json.loads((workspace["patch"] / "steu_patch.json").read_text())

    assert [edit["token"] for edit in rows] == FORGET_TOKENS
    assert [edit["token_id"] for edit in rows] == [token["id"] for token in patch["tokens"]]
    assert {edit["tensor"] for edit in report["edits"] if edit["kind"] == "head_tensor"} == {"classifier.weight", "classifier.bias"}
    assert [edit["label"] for edit in report["edits"] if edit["kind"] == "head_row"] == ["cardio", "ortho", "neuro"]


def test_edit_statistics_match_values(workspace):
    from steu_patch.patch import load_patch

    patch = load_patch(workspace["patch"])
    edit = audit_patch(workspace["patch"]).edits[0]
    delta = patch.new_rows[0].double() - patch.original_rows[0].double()
    cosine = torch.nn.functional.cosine_similarity(patch.new_rows[0].double(), patch.original_rows[0].double(), dim=0)

    assert edit["l2_change"] == pytest.approx(float(delta.norm()), rel=1e-12)
    assert edit["max_abs_change"] == pytest.approx(float(delta.abs().max()), rel=1e-12)
    assert edit["cosine_similarity"] == pytest.approx(float(cosine), rel=1e-9)
    assert -1.0 <= edit["cosine_similarity"] <= 1.0


def test_parameters_modified_share(workspace):
    report = audit_patch(workspace["patch"], AuditOptions(base=str(workspace["base"]))).to_dict()
    modified = report["patch"]["parameters_modified"]
    model = BertForSequenceClassification.from_pretrained(workspace["base"])

    assert modified["count"] == 4 * 16 + 3 * 16 + 3
    assert modified["total"] == sum(p.numel() for p in model.parameters())
    assert modified["fraction"] == pytest.approx(modified["count"] / modified["total"])
    assert modified["total_source"] == "base checkpoint"


# ----- JSON schema -----


def test_json_schema_is_stable(workspace):
    code, report = audit_json(
        str(workspace["patch"]), "--base", str(workspace["base"]), "--model", str(workspace["patched"]),
        "--data", str(workspace["data"]),
    )

    assert code == 0
    assert tuple(report) == TOP_LEVEL_KEYS
    assert report["schema_version"] == 1
    assert report["verdict"] in ("verified", "failed")
    for entry in report["checks"]:
        assert set(entry) == {"name", "passed", "detail"}
        assert isinstance(entry["name"], str)
        assert isinstance(entry["passed"], bool)
        assert isinstance(entry["detail"], str)
    assert isinstance(report["patch"]["patch_id"], str)
    assert isinstance(report["patch"]["parameters_modified"]["count"], int)
    for edit in report["edits"]:
        assert set(edit) == {"kind", "tensor", "row", "token_id", "token", "label", "values", "l2_change", "max_abs_change", "cosine_similarity"}
        assert isinstance(edit["l2_change"], float)
    assert set(report["base"]) == {"path", "expected_fingerprint", "actual_fingerprint", "fingerprint_matches", "differing", "error", "patches_recorded"}
    assert set(report["model"]) == {"path", "records_patch", "comparison", "error"}
    assert set(report["data"]) == {
        "source", "status", "reason", "statement", "forget_classes", "multi_label", "max_length", "split", "loading",
        "metrics", "probe", "membership_inference", "relearning",
    }


# ----- data measurements -----


@pytest.fixture(scope="module")
def data_report(workspace) -> dict:
    options = AuditOptions(base=str(workspace["base"]), data=str(workspace["data"]), relearn_max_steps=30)
    return audit_patch(workspace["patch"], options).to_dict()


def test_data_metrics_in_range(data_report):
    data = data_report["data"]

    assert data["status"] == "measured"
    for phase in ("before", "after"):
        metrics = data["metrics"][phase]
        assert 0.0 <= metrics["forget_f1"] <= 1.0
        assert 0.0 <= metrics["retain_macro_f1"] <= 1.0
        assert sum(map(sum, metrics["confusion_matrix"])) == data["split"]["eval_texts"]


def test_data_probe_and_membership_in_range(data_report):
    data = data_report["data"]

    for phase in ("before", "after"):
        assert 0.0 <= data["probe"][phase]["forget_f1"] <= 1.0
        assert 0.0 <= data["probe"][phase]["chance_f1"] <= 1.0
        assert 0.0 <= data["membership_inference"][phase]["auc"] <= 1.0
        assert data["membership_inference"][phase]["members"] == data["split"]["forget_train_texts"]
        assert data["membership_inference"][phase]["non_members"] == data["split"]["forget_eval_texts"]


def test_data_relearning_in_range(data_report):
    result = data_report["data"]["relearning"]["result"]

    assert result["steps_to_recover"] is None or 0 <= result["steps_to_recover"] <= 30
    assert len(result["forget_f1_by_step"]) == (31 if result["steps_to_recover"] is None else result["steps_to_recover"] + 1)
    assert result["forget_texts"] == min(16, data_report["data"]["split"]["forget_train_texts"])


def test_data_states_what_is_measured(data_report):
    data = data_report["data"]

    assert "behavioural forgetting, not representational" in data["statement"]
    assert data["metrics"]["measures"] == "behaviour"
    assert data["membership_inference"]["measures"] == "behaviour"
    assert data["probe"]["measures"] == "representation"
    assert data["relearning"]["measures"] == "representation"


def test_data_default_split_is_stratified(data_report):
    split = data_report["data"]["split"]

    assert split["method"] == "stratified"
    assert split["train_texts"] + split["eval_texts"] == 36
    assert split["forget_eval_texts"] >= 1


def test_data_split_column_used(workspace, tmp_path):
    rows = [(text, label, "test" if index % 4 == 0 else "train") for index, (text, label) in enumerate(make_texts(12, seed=3))]
    data = write_csv(tmp_path / "split.csv", rows, ("text", "label", "split"))
    options = AuditOptions(base=str(workspace["base"]), data=str(data), relearn_max_steps=5)

    split = audit_patch(workspace["patch"], options).data["split"]

    assert split["method"] == "column"
    assert split["eval_texts"] == 9
    assert split["train_texts"] == 27


def test_data_eval_column_used(workspace, tmp_path):
    rows = [(text, label, index % 3 == 0) for index, (text, label) in enumerate(make_texts(12, seed=3))]
    data = write_csv(tmp_path / "eval.csv", rows, ("text", "label", "eval"))
    options = AuditOptions(base=str(workspace["base"]), data=str(data), relearn_max_steps=5)

    split = audit_patch(workspace["patch"], options).data["split"]

    assert split["description"] == "column 'eval' of the data"
    assert split["eval_texts"] == 12


def test_data_multi_label_model(tmp_path, workspace):
    paths = build_workspace(tmp_path, problem_type="multi_label_classification")
    rows = [(text, label if index % 5 else f"{label};neuro") for index, (text, label) in enumerate(make_texts(12, seed=3))]
    data = write_csv(tmp_path / "multi.csv", rows)
    options = AuditOptions(base=str(paths["base"]), data=str(data), relearn_max_steps=5)

    report = audit_patch(paths["patch"], options)
    data_section = report.data

    assert data_section["multi_label"] is True
    assert data_section["metrics"]["after"]["confusion_matrix"] is None
    assert 0.0 <= data_section["probe"]["after"]["forget_f1"] <= 1.0
    assert 0.0 <= data_section["membership_inference"]["after"]["auc"] <= 1.0
    assert render_html(report).count("data:image/png;base64,") == 4


def test_data_invalid_split_value(workspace, tmp_path):
    rows = [(text, label, "somewhere") for text, label in make_texts(4, seed=3)]
    data = write_csv(tmp_path / "split.csv", rows, ("text", "label", "split"))

    result = CliRunner().invoke(cli, ["audit", str(workspace["patch"]), "--base", str(workspace["base"]), "--data", str(data), "--no-progress"])

    assert result.exit_code == 1
    assert "'somewhere'" in result.output
    assert result.stdout == ""


def test_data_unknown_label_fails(workspace, tmp_path):
    data = write_csv(tmp_path / "bad.csv", [("patient with aura", "dermatology")] * 4)

    result = CliRunner().invoke(cli, ["audit", str(workspace["patch"]), "--base", str(workspace["base"]), "--data", str(data), "--no-progress"])

    assert result.exit_code == 1
    assert "dermatology" in result.output


# ----- usage -----


@pytest.mark.parametrize(
    "extra",
    [["--model", "x"], ["--data", "x.csv"], ["--json", "--html", "out.html"]],
    ids=["model-without-base", "data-without-base", "json-and-html"],
)
def test_usage_errors_exit_2(workspace, extra, tmp_path):
    extra = [str(tmp_path / part) if part == "out.html" else part for part in extra]

    code, _ = run_audit(str(workspace["patch"]), *extra)

    assert code == 2


def test_html_parent_missing_exit_2(workspace, tmp_path):
    code, _ = run_audit(str(workspace["patch"]), "--html", str(tmp_path / "missing" / "audit.html"))

    assert code == 2


def test_missing_patch_exit_1(tmp_path):
    result = CliRunner().invoke(cli, ["audit", str(tmp_path / "nothing")])

    assert result.exit_code == 1
    assert "does not exist" in result.output


def test_help_documents_exit_codes():
    result = CliRunner().invoke(cli, ["audit", "--help"])

    assert result.exit_code == 0
    assert "Exit codes:" in result.output
    assert "0  every check passed" in result.output
    assert "2  usage error" in result.output


# ----- redaction -----


def test_redaction_removes_every_token_string(workspace, tmp_path):
    args = [str(workspace["patch"]), "--base", str(workspace["base"]), "--model", str(workspace["patched"]), "--redact-tokens"]
    html_path = tmp_path / "redacted.html"
    outputs = {
        "json": run_audit(*args, "--json")[1],
        "text": run_audit(*args)[1],
        "html": (run_audit(*args, "--html", str(html_path)), html_path.read_text(encoding="utf-8"))[1],
    }
    for name, output in outputs.items():
        for token in FORGET_TOKENS:
            assert token not in output, f"{token!r} appears in the {name} report"


def test_redaction_with_data(workspace, tmp_path):
    rows = make_texts(12, seed=3)
    rows += [(rows[0][0], "ortho")]  # a conflicting forget-class text appears in the loading report
    data = write_csv(tmp_path / "conflict.csv", rows)
    shown = AuditOptions(base=str(workspace["base"]), data=str(data), relearn_max_steps=5)
    redacted = AuditOptions(base=str(workspace["base"]), data=str(data), relearn_max_steps=5, redact_tokens=True)

    conflicts = audit_patch(workspace["patch"], shown).data["loading"]["conflict_examples"]
    document = json.dumps(audit_patch(workspace["patch"], redacted).to_dict())

    assert conflicts == [rows[0][0]]
    for token in FORGET_TOKENS:
        assert token not in document


def test_without_redaction_tokens_shown(workspace):
    code, output = run_audit(str(workspace["patch"]))

    assert code == 0
    for token in FORGET_TOKENS:
        assert token in output


# ----- HTML -----


def test_html_report_self_contained(workspace, data_report, tmp_path):
    html_path = tmp_path / "audit.html"
    code, output = run_audit(
        str(workspace["patch"]), "--base", str(workspace["base"]), "--model", str(workspace["patched"]),
        "--data", str(workspace["data"]), "--html", str(html_path),
    )
    document = html_path.read_text(encoding="utf-8")

    assert code == 0
    assert "verified" in output
    assert str(html_path) in output
    assert document.count('src="data:image/png;base64,') == 5
    assert "http://" not in document
    assert "https://" not in document
    assert "<script" not in document
    assert [path.name for path in tmp_path.iterdir()] == ["audit.html"]
    umask = os.umask(0)
    os.umask(umask)
    assert html_path.stat().st_mode & 0o777 == 0o666 & ~umask


def test_html_report_opens_in_chromium(workspace, tmp_path):
    if shutil.which("chromium") is None:
        pytest.skip("chromium is not installed")
    html_path = tmp_path / "audit.html"
    options = AuditOptions(base=str(workspace["base"]), data=str(workspace["data"]), relearn_max_steps=5)
    html_path.write_text(render_html(audit_patch(workspace["patch"], options)), encoding="utf-8")

    result = subprocess.run(
        [sys.executable, str(SCRIPT), str(html_path), "--screenshot", str(tmp_path / "shot.png")],
        capture_output=True, text=True, timeout=120,
    )

    assert result.returncode == 0, result.stdout + result.stderr
    assert (tmp_path / "shot.png").stat().st_size > 0
