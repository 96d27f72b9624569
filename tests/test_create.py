"""Tests for ``steu-patch create`` and ``steu-patch tokens`` and their Python API, on tiny classifiers."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from _create_helpers import (
    CLASS_WORDS,
    LABELS,
    build_classifier,
    cached_classifier,
    multi_label_rows,
    single_label_rows,
    tiny_config,
    write_csv,
)
from click.testing import CliRunner
from safetensors import safe_open
from transformers import AutoModelForSequenceClassification, AutoTokenizer, BertForMaskedLM, BertModel

from steu_patch.apply import apply_patch
from steu_patch.checkpoint import write_patched_model
from steu_patch.create import CreateOptions, create_patch, create_patch_from_files, load_classifier, resolve_max_length
from steu_patch.data import LabeledTexts
from steu_patch.errors import UnsupportedModelError
from steu_patch.patch import ForgetPatch
from steu_patch.training import DEFAULT_BATCH_SIZE, DEFAULT_EPOCHS, DEFAULT_LEARNING_RATE, DEFAULT_TARGET_FORGET_F1
from steu_patch_cli.main import cli

# The forget classes are minorities, as they usually are: 30 texts each against 60 per retained class.
COUNTS = {"cardio": 30, "neuro": 30}
# The tiny classifiers are trained from scratch and have larger weights than a fine-tuned
# pretrained encoder, so with the default learning rate they need more than the default epochs.
TINY_LEARNING_RATE = 5e-3


@pytest.fixture(autouse=True, scope="module")
def one_thread():
    # Tiny models run faster on one thread than on cores shared with other processes.
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> Path:
    return cached_classifier(tmp_path_factory, "single")


@pytest.fixture(scope="module")
def data_file(tmp_path_factory) -> Path:
    return write_csv(tmp_path_factory.mktemp("data") / "notes.csv", single_label_rows(seed=3, per_class=60, counts=COUNTS))


@pytest.fixture(scope="module")
def created(tmp_path_factory, model_dir, data_file):
    """Run ``create`` once through the CLI; several tests inspect its output."""
    output = tmp_path_factory.mktemp("created") / "patch"
    result = invoke("create", str(model_dir), "--data", str(data_file), "--forget-class", "cardio", "--top-k", "12", "-o", str(output), "--json")
    return result, output


def invoke(*args: str):
    """Run a command; create gets the tiny models' learning rate unless a later --lr overrides it."""
    if args[0] == "create":
        args = (args[0], "--lr", str(TINY_LEARNING_RATE), *args[1:])
    return CliRunner().invoke(cli, [*args, "--no-progress"])


def manifest_of(patch_dir: Path) -> dict:
    return json.loads((patch_dir / "steu_patch.json").read_text(encoding="utf-8"))


def load_model(path: Path):
    return AutoModelForSequenceClassification.from_pretrained(path, dtype="auto").eval()


def logits_of(model, tokenizer, texts: list[str]) -> torch.Tensor:
    with torch.no_grad():
        return model(**tokenizer(texts, padding=True, return_tensors="pt")).logits


def labeled(rows, multi_label: bool = False) -> LabeledTexts:
    if multi_label:
        return LabeledTexts([text for text, _ in rows], [[LABELS.index(name) for name in names] for _, names in rows], True)
    return LabeledTexts([text for text, _ in rows], [LABELS.index(name) for _, name in rows], False)


# ----- tokens -----


def test_tokens_ranks_forget_words_first(model_dir, data_file):
    result = invoke("tokens", str(model_dir), "--data", str(data_file), "--forget-class", "cardio", "--top-k", "10", "--json")
    ranked = json.loads(result.stdout.strip().splitlines()[-1])["scores"]

    assert result.exit_code == 0, result.output
    assert {entry["token"] for entry in ranked[:6]} == set(CLASS_WORDS["cardio"])
    assert all(entry["forget_doc_count"] >= 5 for entry in ranked)


def test_tokens_table_shows_counts(model_dir, data_file):
    result = invoke("tokens", str(model_dir), "--data", str(data_file), "--forget-class", "cardio", "--top-k", "3")
    header = result.stdout.splitlines()[1]

    assert result.exit_code == 0, result.output
    assert header.split() == ["rank", "id", "token", "score", "forget", "texts", "texts"]
    assert len(result.stdout.strip().splitlines()) == 2 + 1 + 3


# ----- create through the CLI -----


def test_create_forgets_class(created):
    result, output = created
    metrics = manifest_of(output)["metrics"]

    assert result.exit_code == 0, result.output
    assert metrics["before"]["forget_f1"] >= 0.9
    assert metrics["after"]["forget_f1"] <= 0.05
    assert metrics["after"]["retain_macro_f1"] >= 0.9 * metrics["before"]["retain_macro_f1"]


def test_create_prints_table_and_share(created):
    result, output = created
    stdout = result.stdout

    assert "forget F1" in stdout
    assert "F1 cardio (forget)" in stdout
    assert "Parameters modified:" in stdout
    assert f"-> {output}" in stdout


def test_create_json_summary_is_last_line(created):
    result, output = created
    summary = json.loads(result.stdout.strip().splitlines()[-1])

    assert summary["output"] == str(output)
    assert summary["patch_id"] == manifest_of(output)["patch_id"]
    assert summary["forget_classes"] == ["cardio"]
    assert summary["metrics"]["after"]["forget_f1"] <= 0.05


def test_create_manifest_records_method(created, model_dir):
    manifest = manifest_of(created[1])
    method = manifest["method"]

    assert method["name"] == "steu"
    assert (method["top_k"], method["min_doc_freq"], method["seed"]) == (12, 5, 0)
    assert (method["epochs"], method["lr"], method["batch_size"]) == (DEFAULT_EPOCHS, TINY_LEARNING_RATE, DEFAULT_BATCH_SIZE)
    assert method["max_length"] == 64  # the tiny model's max_position_embeddings
    assert method["stopped_at"]["reason"] == "target_forget_f1"
    assert method["target_forget_f1"] == DEFAULT_TARGET_FORGET_F1


def test_create_manifest_records_tokens(created):
    tokens = manifest_of(created[1])["tokens"]

    assert len(tokens) == 12
    assert {token["token"] for token in tokens[:6]} == set(CLASS_WORDS["cardio"])
    assert set(tokens[0]) == {"id", "token", "score", "forget_doc_count", "doc_count"}


def test_create_manifest_records_base_and_data(created, model_dir):
    manifest = manifest_of(created[1])
    base = manifest["base_model"]
    model = load_model(model_dir)

    assert base["name_or_path"] == str(model_dir)
    assert (base["model_type"], base["architecture"]) == ("bert", "BertForSequenceClassification")
    assert manifest["parameters_modified"]["total"] == sum(p.numel() for p in model.parameters())
    assert manifest["parent_patches"] == []
    assert manifest["metrics"]["eval_split"]["held_out_fraction"] == 0.2
    assert manifest["metrics"]["data"]["label_counts"]["cardio"] == 30


def test_create_changes_only_rows_and_head(created, model_dir):
    patch = ForgetPatch.from_pretrained(created[1])
    base = load_model(model_dir)
    patched = apply_patch(load_model(model_dir), patch)
    base_state, patched_state = base.state_dict(), patched.state_dict()
    untouched = [row for row in range(base.config.vocab_size) if row not in patch.token_ids]
    embedding_key = "bert.embeddings.word_embeddings.weight"

    assert torch.equal(patched_state[embedding_key][untouched], base_state[embedding_key][untouched])
    assert not torch.equal(patched_state[embedding_key][patch.token_ids], base_state[embedding_key][patch.token_ids])
    assert not torch.equal(patched_state["classifier.weight"], base_state["classifier.weight"])
    for key in base_state:
        if key not in (embedding_key, "classifier.weight", "classifier.bias"):
            assert torch.equal(patched_state[key], base_state[key]), key


def test_create_originals_are_base_values(created, model_dir):
    patch = ForgetPatch.from_pretrained(created[1])
    base = load_model(model_dir)

    assert torch.equal(patch.original_rows, base.get_input_embeddings().weight[patch.token_ids])
    assert torch.equal(patch.original_head["weight"], base.classifier.weight)


def test_stock_peft_reproduces_patched_logits(created, model_dir):
    from peft import PeftModel

    tokenizer = AutoTokenizer.from_pretrained(model_dir)
    texts = [text for text, _ in single_label_rows(seed=9, per_class=4)]
    patched = apply_patch(load_model(model_dir), ForgetPatch.from_pretrained(created[1]))
    peft_model = PeftModel.from_pretrained(load_model(model_dir), str(created[1])).eval()

    assert torch.equal(logits_of(peft_model, tokenizer, texts), logits_of(patched, tokenizer, texts))


def test_create_two_forget_classes(model_dir, data_file, tmp_path):
    output = tmp_path / "patch"
    result = invoke(
        "create", str(model_dir), "--data", str(data_file), "--forget-class", "cardio", "--forget-class", "neuro",
        "--top-k", "24", "-o", str(output),
    )
    manifest = manifest_of(output)
    after, before = manifest["metrics"]["after"], manifest["metrics"]["before"]

    assert result.exit_code == 0, result.output
    assert manifest["forget_classes"] == ["cardio", "neuro"]
    assert after["per_class"]["cardio"]["f1"] <= 0.05
    assert after["per_class"]["neuro"]["f1"] <= 0.05
    # Retained classes absorb the forget texts, which lowers their precision, so retention is
    # measured as accuracy on texts of retained classes.
    assert after["retain_accuracy"] >= 0.9 * before["retain_accuracy"]


def test_create_multi_label(tmp_path_factory, tmp_path):
    model_dir = cached_classifier(tmp_path_factory, "multi")
    data = write_csv(tmp_path / "multi.csv", multi_label_rows(seed=3, count=300))
    output = tmp_path / "patch"
    # The sigmoid head of this tiny model is confident, so it takes more than the default epochs.
    result = invoke(
        "create", str(model_dir), "--data", str(data), "--forget-class", "cardio", "--top-k", "12", "--epochs", "15",
        "-o", str(output),
    )
    metrics = manifest_of(output)["metrics"]

    assert result.exit_code == 0, result.output
    assert metrics["after"]["forget_f1"] <= 0.05
    assert metrics["after"]["retain_macro_f1"] >= 0.9 * metrics["before"]["retain_macro_f1"]


def test_create_on_patched_model_records_parent(created, model_dir, data_file, tmp_path):
    first = ForgetPatch.from_pretrained(created[1])
    patched_dir = write_patched_model(model_dir, first, tmp_path / "patched")
    output = tmp_path / "second"
    result = invoke("create", str(patched_dir), "--data", str(data_file), "--forget-class", "neuro", "--top-k", "12", "-o", str(output))

    assert result.exit_code == 0, result.output
    assert manifest_of(output)["parent_patches"] == [{"patch_id": first.patch_id, "forget_classes": ["cardio"]}]


def test_create_float16_keeps_checkpoint_values(tmp_path_factory, data_file, tmp_path):
    model_dir = cached_classifier(tmp_path_factory, "float16")
    output = tmp_path / "patch"
    result = invoke("create", str(model_dir), "--data", str(data_file), "--forget-class", "cardio", "--top-k", "12", "-o", str(output))
    patch = ForgetPatch.from_pretrained(output)
    with safe_open(str(model_dir / "model.safetensors"), framework="pt") as checkpoint:
        embeddings = checkpoint.get_tensor("bert.embeddings.word_embeddings.weight")
        head_bias = checkpoint.get_tensor("classifier.bias")

    assert result.exit_code == 0, result.output
    assert patch.dtype == torch.float16
    assert patch.new_rows.dtype == torch.float16
    assert torch.equal(patch.original_rows, embeddings[patch.token_ids])
    assert torch.equal(patch.original_head["bias"], head_bias)


def test_create_is_deterministic(model_dir, data_file, tmp_path, created):
    output = tmp_path / "again"
    invoke("create", str(model_dir), "--data", str(data_file), "--forget-class", "cardio", "--top-k", "12", "-o", str(output))

    # The patch ids may differ: safetensors writes the header metadata in varying key order.
    assert ForgetPatch.from_pretrained(output).new_values().equals(ForgetPatch.from_pretrained(created[1]).new_values())
    assert manifest_of(output)["method"]["stopped_at"] == manifest_of(created[1])["method"]["stopped_at"]


def test_create_overwrite_replaces_output(model_dir, data_file, tmp_path):
    output = tmp_path / "patch"
    output.mkdir()
    (output / "old.txt").write_text("old", encoding="utf-8")
    args = ("create", str(model_dir), "--data", str(data_file), "--forget-class", "cardio", "--top-k", "12", "-o", str(output))

    refused = invoke(*args)
    assert refused.exit_code == 1
    assert "already exists" in refused.output
    assert (output / "old.txt").exists()

    replaced = invoke(*args, "--overwrite")
    assert replaced.exit_code == 0, replaced.output
    assert not (output / "old.txt").exists()
    assert (output / "steu_patch.json").is_file()


def test_create_eval_data_file(model_dir, data_file, tmp_path):
    eval_file = write_csv(tmp_path / "eval.csv", single_label_rows(seed=5, per_class=8))
    output = tmp_path / "patch"
    result = invoke(
        "create", str(model_dir), "--data", str(data_file), "--eval-data", str(eval_file), "--forget-class", "cardio",
        "--top-k", "12", "-o", str(output),
    )
    eval_split = manifest_of(output)["metrics"]["eval_split"]

    assert result.exit_code == 0, result.output
    assert eval_split["source"] == str(eval_file)
    assert eval_split["texts"] == 8 * len(LABELS)
    assert eval_split["held_out_fraction"] is None


def test_create_dataset_splits(model_dir, tmp_path):
    from datasets import Dataset, DatasetDict

    def split(rows):
        return Dataset.from_dict({"text": [text for text, _ in rows], "label": [label for _, label in rows]})

    data = tmp_path / "dataset"
    DatasetDict({
        "train": split(single_label_rows(seed=3, per_class=40, counts=COUNTS)),
        "validation": split(single_label_rows(seed=4, per_class=10)),
    }).save_to_disk(str(data))  # fmt: skip
    output = tmp_path / "patch"
    result = invoke(
        "create", str(model_dir), "--data", str(data), "--split", "train", "--eval-split", "validation",
        "--forget-class", "cardio", "--top-k", "12", "-o", str(output),
    )
    metrics = manifest_of(output)["metrics"]

    assert result.exit_code == 0, result.output
    assert metrics["eval_split"]["split"] == "validation"
    assert metrics["eval_split"]["texts"] == 10 * len(LABELS)
    assert metrics["data"]["label_counts"]["cardio"] == 30


# ----- create through the Python API -----


def test_api_create_patch(model_dir):
    model, tokenizer = load_classifier(model_dir)
    train = labeled(single_label_rows(seed=3, per_class=40, counts={"cardio": 20}))
    evaluation = labeled(single_label_rows(seed=4, per_class=12, counts={"cardio": 6}))
    options = CreateOptions(top_k=12, learning_rate=TINY_LEARNING_RATE, show_progress=False)
    result = create_patch(model, tokenizer, train, evaluation, ["cardio"], options)

    assert result.after.forget_f1 <= 0.05
    assert result.after.retain_macro_f1 >= 0.9 * result.before.retain_macro_f1
    assert result.patch.forget_classes == ["cardio"]
    assert result.patch.token_ids == result.selection.token_ids
    assert set(result.timings) == {"selection", "evaluation_before", "training", "evaluation_after", "total"}


def test_api_from_files_saves_patch(model_dir, data_file, tmp_path):
    options = CreateOptions(top_k=12, learning_rate=TINY_LEARNING_RATE, show_progress=False)
    result = create_patch_from_files(model_dir, data_file, ["cardio"], tmp_path / "patch", options=options)

    assert result.output_dir == tmp_path / "patch"
    assert ForgetPatch.from_pretrained(tmp_path / "patch").patch_id == result.patch.patch_id


def test_api_leaves_model_unchanged(model_dir):
    model, tokenizer = load_classifier(model_dir)
    before = {name: tensor.clone() for name, tensor in model.state_dict().items()}
    train = labeled(single_label_rows(seed=3, per_class=20))
    evaluation = labeled(single_label_rows(seed=4, per_class=6))
    create_patch(model, tokenizer, train, evaluation, ["cardio"], CreateOptions(top_k=8, epochs=1, show_progress=False))

    for name, tensor in model.state_dict().items():
        assert torch.equal(tensor, before[name]), name


def test_max_length_defaults_and_clamps(model_dir):
    _, tokenizer = load_classifier(model_dir)

    assert resolve_max_length(tokenizer, tiny_config()) == 64
    assert resolve_max_length(tokenizer, tiny_config(max_position_embeddings=2048)) == 512
    assert resolve_max_length(tokenizer, tiny_config(), 32) == 32
    assert resolve_max_length(tokenizer, tiny_config(), 100) == 64


# ----- bad input: exit 1, a message naming the value and the fix, nothing written -----


def assert_failed_cleanly(result, output: Path, *fragments: str) -> None:
    assert result.exit_code == 1, result.output
    for fragment in fragments:
        assert fragment in result.output
    assert "Traceback" not in result.output
    assert not output.exists()
    assert [path.name for path in output.parent.iterdir() if path.name.startswith(f".{output.name}")] == []


def test_unknown_forget_class(model_dir, data_file, tmp_path):
    output = tmp_path / "patch"
    result = invoke("create", str(model_dir), "--data", str(data_file), "--forget-class", "cardiology", "-o", str(output))

    assert_failed_cleanly(result, output, "'cardiology'", "'cardio'", "'gastro'")


def test_missing_text_column(model_dir, data_file, tmp_path):
    output = tmp_path / "patch"
    result = invoke("create", str(model_dir), "--data", str(data_file), "--text-column", "note", "--forget-class", "cardio", "-o", str(output))

    assert_failed_cleanly(result, output, "note")


def test_too_few_forget_texts(model_dir, tmp_path):
    data = write_csv(tmp_path / "few.csv", single_label_rows(seed=3, per_class=20, counts={"cardio": 4}))
    output = tmp_path / "patch"
    result = invoke("create", str(model_dir), "--data", str(data), "--forget-class", "cardio", "-o", str(output))

    assert_failed_cleanly(result, output, "'cardio'", "--min-doc-freq")


def test_eval_split_of_single_file(model_dir, data_file, tmp_path):
    output = tmp_path / "patch"
    result = invoke("create", str(model_dir), "--data", str(data_file), "--eval-split", "test", "--forget-class", "cardio", "-o", str(output))

    assert_failed_cleanly(result, output, "--eval-split 'test'", "--eval-data")


def test_top_k_larger_than_vocabulary(model_dir, data_file, tmp_path):
    output = tmp_path / "patch"
    result = invoke("create", str(model_dir), "--data", str(data_file), "--forget-class", "cardio", "--top-k", "5000", "-o", str(output))

    assert_failed_cleanly(result, output, "5000", "at most")


def test_single_class_data(model_dir, tmp_path):
    data = write_csv(tmp_path / "one.csv", [(text, "cardio") for text, _ in single_label_rows(seed=3, per_class=20)])
    output = tmp_path / "patch"
    result = invoke("create", str(model_dir), "--data", str(data), "--forget-class", "cardio", "-o", str(output))

    assert_failed_cleanly(result, output, "only the class 'cardio'")


@pytest.mark.parametrize("architecture", [BertModel, BertForMaskedLM])
def test_not_a_sequence_classifier(architecture, data_file, tmp_path):
    model_dir = tmp_path / "model"
    architecture(tiny_config()).save_pretrained(model_dir)
    AutoTokenizer.from_pretrained(build_classifier(tmp_path / "tokenizer-source")).save_pretrained(model_dir)
    output = tmp_path / "patch"
    result = invoke("create", str(model_dir), "--data", str(data_file), "--forget-class", "cardio", "-o", str(output))

    assert_failed_cleanly(result, output, architecture.__name__, "classifier.weight", "finetune")


def test_not_a_sequence_classifier_api(tmp_path):
    BertForMaskedLM(tiny_config()).save_pretrained(tmp_path)

    with pytest.raises(UnsupportedModelError, match="BertForMaskedLM"):
        load_classifier(tmp_path)


def test_missing_model_directory(data_file, tmp_path):
    output = tmp_path / "patch"
    result = invoke("create", str(tmp_path / "no-model"), "--data", str(data_file), "--forget-class", "cardio", "-o", str(output))

    assert_failed_cleanly(result, output, "no-model")


# ----- usage errors: exit 2 -----


@pytest.mark.parametrize(
    "extra",
    [
        ("--top-k", "0"),
        ("--min-doc-freq", "0"),
        ("--batch-size", "1"),
        ("--lr", "0"),
        ("--epochs", "0"),
        ("--target-forget-f1", "2"),
    ],
)
def test_invalid_option_is_usage_error(model_dir, data_file, tmp_path, extra):
    output = tmp_path / "patch"
    result = invoke("create", str(model_dir), "--data", str(data_file), "--forget-class", "cardio", "-o", str(output), *extra)

    assert result.exit_code == 2, result.output
    assert extra[0] in result.output
    assert not output.exists()


def test_missing_forget_class_is_usage_error(model_dir, data_file, tmp_path):
    result = invoke("create", str(model_dir), "--data", str(data_file), "-o", str(tmp_path / "patch"))

    assert result.exit_code == 2
    assert "--forget-class" in result.output


def test_help_states_library_defaults():
    help_text = " ".join(CliRunner().invoke(cli, ["create", "--help"]).output.split())

    assert f"[default: {DEFAULT_EPOCHS}]" in help_text
    assert f"[default: {DEFAULT_LEARNING_RATE:g}]" in help_text
    assert f"[default: {DEFAULT_BATCH_SIZE}]" in help_text
    assert f"[default: {DEFAULT_TARGET_FORGET_F1:g}]" in help_text


def test_pickle_only_model_not_loaded(tmp_path):
    model_dir = build_classifier(tmp_path / "model")
    model = AutoModelForSequenceClassification.from_pretrained(model_dir)
    for path in model_dir.glob("*.safetensors"):
        path.unlink()
    torch.save(model.state_dict(), model_dir / "pytorch_model.bin")

    with pytest.raises(FileNotFoundError, match="safetensors"):
        load_classifier(model_dir)
