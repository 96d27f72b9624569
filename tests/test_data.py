"""Tests for loading labeled texts (steu_patch.data) from files, saved datasets and Hub ids."""

from __future__ import annotations

import gzip
import json
import socket

import datasets
import huggingface_hub
import pytest
import torch

from steu_patch.data import DataReport, LabeledTexts, load_texts, resolve_labels, stratified_split
from steu_patch.errors import DataError, LabelError

ID2LABEL = {0: "Cardiology", 1: "Neurology", 2: "Urology"}
ROWS = [
    ("chest pain radiating to the left arm", "Cardiology"),
    ("seizure with loss of consciousness", "Neurology"),
    ("kidney stone in the left ureter", "Urology"),
    ("atrial fibrillation with rapid rate", "Cardiology"),
]
EXPECTED_TEXTS = [text for text, _ in ROWS]
EXPECTED_LABELS = [0, 1, 2, 0]
COLUMNS = {"text": EXPECTED_TEXTS, "label": [label for _, label in ROWS]}


@pytest.fixture(autouse=True)
def isolated_hf_cache(tmp_path, monkeypatch):
    """Point the datasets cache into tmp_path, so a test can check that loading leaves it alone."""
    cache = tmp_path / "hf-datasets-cache"
    monkeypatch.setattr(datasets.config, "HF_DATASETS_CACHE", cache)
    return cache


def write_csv(path, rows, header=("text", "label"), sep=","):
    lines = [sep.join(header)]
    for row in rows:
        cells = []
        for cell in row:
            cell = str(cell)
            if sep in cell or '"' in cell:
                cell = '"' + cell.replace('"', '""') + '"'
            cells.append(cell)
        lines.append(sep.join(cells))
    path.write_text("\n".join(lines) + "\n", encoding="utf-8")
    return path


def write_jsonl(path, records):
    path.write_text("".join(json.dumps(record) + "\n" for record in records), encoding="utf-8")
    return path


def load(source, **kwargs):
    kwargs.setdefault("id2label", ID2LABEL)
    return load_texts(source, **kwargs)


# Formats


def make_csv(tmp_path):
    return write_csv(tmp_path / "notes.csv", ROWS)


def make_tsv(tmp_path):
    return write_csv(tmp_path / "notes.tsv", ROWS, sep="\t")


def make_tab(tmp_path):
    return write_csv(tmp_path / "notes.tab", ROWS, sep="\t")


def make_jsonl(tmp_path):
    return write_jsonl(tmp_path / "notes.jsonl", [{"text": t, "label": l} for t, l in ROWS])


def make_json_array(tmp_path):
    path = tmp_path / "notes.json"
    path.write_text(json.dumps([{"text": t, "label": l} for t, l in ROWS]), encoding="utf-8")
    return path


def make_parquet(tmp_path):
    path = tmp_path / "notes.parquet"
    datasets.Dataset.from_dict(COLUMNS).to_parquet(path)
    return path


def make_csv_gz(tmp_path):
    plain = make_csv(tmp_path)
    path = tmp_path / "notes.csv.gz"
    path.write_bytes(gzip.compress(plain.read_bytes()))
    plain.unlink()
    return path


def make_jsonl_gz(tmp_path):
    plain = make_jsonl(tmp_path)
    path = tmp_path / "notes.jsonl.gz"
    path.write_bytes(gzip.compress(plain.read_bytes()))
    plain.unlink()
    return path


def make_saved_dataset(tmp_path):
    path = tmp_path / "saved"
    datasets.Dataset.from_dict(COLUMNS).save_to_disk(path)
    return path


@pytest.mark.parametrize(
    "make_source",
    [make_csv, make_tsv, make_tab, make_jsonl, make_json_array, make_parquet, make_csv_gz,
     make_jsonl_gz, make_saved_dataset],
)
def test_load_every_format(tmp_path, make_source):
    data, report = load(make_source(tmp_path))

    assert data.texts == EXPECTED_TEXTS
    assert data.labels == EXPECTED_LABELS
    assert data.multi_label is False
    assert report.rows_read == 4
    assert report.label_counts == {"Cardiology": 2, "Neurology": 1, "Urology": 1}


def test_local_file_offline_leaves_hf_cache_untouched(tmp_path, monkeypatch, isolated_hf_cache):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)

    data, _ = load(make_csv_gz(tmp_path))

    assert data.texts == EXPECTED_TEXTS
    assert not isolated_hf_cache.exists()


def test_saved_dataset_dict_picks_split(tmp_path):
    train = datasets.Dataset.from_dict({"text": ["a b", "c d"], "label": ["Urology", "Neurology"]})
    test = datasets.Dataset.from_dict({"text": ["e f"], "label": ["Cardiology"]})
    datasets.DatasetDict({"train": train, "test": test}).save_to_disk(tmp_path / "dd")

    data, _ = load(tmp_path / "dd", split="test")

    assert data.texts == ["e f"]
    assert data.labels == [0]


def test_saved_dataset_dict_single_split_needs_no_split(tmp_path):
    train = datasets.Dataset.from_dict({"text": ["a b"], "label": ["Urology"]})
    datasets.DatasetDict({"train": train}).save_to_disk(tmp_path / "dd")

    data, _ = load(tmp_path / "dd")

    assert data.labels == [2]


def test_saved_dataset_dict_several_splits_error(tmp_path):
    part = datasets.Dataset.from_dict({"text": ["a b"], "label": ["Urology"]})
    datasets.DatasetDict({"train": part, "validation": part}).save_to_disk(tmp_path / "dd")

    with pytest.raises(DataError) as caught:
        load(tmp_path / "dd")

    message = str(caught.value)
    assert "train" in message
    assert "validation" in message
    assert "--split" in message


def test_saved_dataset_dict_unknown_split_error(tmp_path):
    part = datasets.Dataset.from_dict({"text": ["a b"], "label": ["Urology"]})
    datasets.DatasetDict({"train": part, "validation": part}).save_to_disk(tmp_path / "dd")

    with pytest.raises(DataError) as caught:
        load(tmp_path / "dd", split="test")

    message = str(caught.value)
    assert "'test' not found" in message
    assert "train, validation" in message


def test_directory_not_saved_dataset_error(tmp_path):
    (tmp_path / "plain").mkdir()

    with pytest.raises(DataError) as caught:
        load(tmp_path / "plain")

    message = str(caught.value)
    assert "not one written by datasets' save_to_disk" in message
    assert ".csv" in message


def test_class_label_feature_mapped_by_name(tmp_path):
    # The dataset orders its classes differently from the model, so ids must go through names.
    features = datasets.Features(
        {"text": datasets.Value("string"),
         "label": datasets.ClassLabel(names=["Urology", "Cardiology", "Neurology"])}
    )
    saved = datasets.Dataset.from_dict({"text": ["x y", "z w"], "label": [0, 1]}, features=features)
    saved.save_to_disk(tmp_path / "saved")

    data, _ = load(tmp_path / "saved")

    assert data.labels == [2, 0]


# Labels


def test_integer_ids_in_csv_and_jsonl(tmp_path):
    csv_path = write_csv(tmp_path / "ids.csv", [("first note", 2), ("second note", 0)])
    jsonl_path = write_jsonl(
        tmp_path / "ids.jsonl",
        [{"text": "first note", "label": 2}, {"text": "second note", "label": 0}],
    )

    csv_data, _ = load(csv_path)
    jsonl_data, _ = load(jsonl_path)

    assert csv_data.labels == [2, 0]
    assert jsonl_data.labels == [2, 0]


def test_mixed_names_and_ids_in_jsonl(tmp_path):
    records = [{"text": "a", "label": 1}, {"text": "b", "label": "Urology"}]
    path = write_jsonl(tmp_path / "mixed.jsonl", records)

    data, _ = load(path)

    assert data.labels == [1, 2]


def test_names_match_case_insensitively(tmp_path):
    rows = [("a", "cardiology"), ("b", "NEUROLOGY"), ("c", " Urology ")]
    path = write_csv(tmp_path / "case.csv", rows)

    data, _ = load(path)

    assert data.labels == [0, 1, 2]


def test_ambiguous_case_insensitive_name_is_unknown(tmp_path):
    path = write_csv(tmp_path / "ambiguous.csv", [("a", "pos")])

    with pytest.raises(LabelError) as caught:
        load(path, id2label={0: "Pos", 1: "POS"})

    assert "'pos'" in str(caught.value)


def test_digit_names_take_precedence_over_ids(tmp_path):
    path = write_csv(tmp_path / "stars.csv", [("great", "5"), ("poor", "1")])

    data, _ = load(path, id2label={0: "1", 1: "2", 2: "3", 3: "4", 4: "5"})

    assert data.labels == [4, 0]


def test_unknown_label_error_lists_known(tmp_path):
    path = write_csv(tmp_path / "unknown.csv", [("a", "Cardiology"), ("b", "Oncology"), ("c", "7")])

    with pytest.raises(LabelError) as caught:
        load(path)

    message = str(caught.value)
    assert "'Oncology'" in message
    assert "'7'" in message
    assert "first at row 2" in message
    assert "0='Cardiology', 1='Neurology', 2='Urology'" in message


def test_label_error_catch_classes(tmp_path):
    path = write_csv(tmp_path / "unknown.csv", [("a", "Oncology")])

    with pytest.raises(DataError):
        load(path)
    with pytest.raises(ValueError):
        load(path)


def test_unknown_forget_id_error(tmp_path):
    with pytest.raises(LabelError) as caught:
        load(make_csv(tmp_path), forget_label_ids=[5])

    message = str(caught.value)
    assert "5" in message
    assert "forget classes" in message
    assert "2='Urology'" in message


def test_null_label_error_names_row(tmp_path):
    path = write_csv(tmp_path / "null.csv", [("a", "Cardiology"), ("b", "")])

    with pytest.raises(DataError) as caught:
        load(path)

    message = str(caught.value)
    assert "row 2" in message
    assert "no label" in message
    assert "Fill in the label or remove the row" in message


def test_null_label_in_jsonl_error(tmp_path):
    records = [{"text": "a", "label": None}, {"text": "b", "label": 1}]
    path = write_jsonl(tmp_path / "null.jsonl", records)

    with pytest.raises(DataError) as caught:
        load(path)

    assert "row 1" in str(caught.value)


def test_resolve_labels_names_and_ids():
    assert resolve_labels(["Urology", "cardiology"], ID2LABEL) == [2, 0]
    assert resolve_labels([1, "1", "Neurology"], ID2LABEL) == [1]


def test_resolve_labels_unknown_lists_known():
    with pytest.raises(LabelError) as caught:
        resolve_labels(["Oncology", 3], ID2LABEL)

    message = str(caught.value)
    assert "'Oncology', 3" in message
    assert "1='Neurology'" in message


# Columns and texts


def test_missing_text_column_error(tmp_path):
    path = write_csv(tmp_path / "cols.csv", [("a", "Urology")], header=("note", "label"))

    with pytest.raises(DataError) as caught:
        load(path)

    message = str(caught.value)
    assert "'text' not found" in message
    assert "Available columns: note, label" in message
    assert "--text-column" in message


def test_missing_label_column_error(tmp_path):
    path = write_csv(tmp_path / "cols.csv", [("a", "Urology")], header=("text", "specialty"))

    with pytest.raises(DataError) as caught:
        load(path)

    message = str(caught.value)
    assert "'label' not found" in message
    assert "text, specialty" in message
    assert "--label-column" in message


def test_custom_column_names(tmp_path):
    header = ("transcription", "specialty")
    path = write_csv(tmp_path / "cols.csv", [("a b", "Urology")], header=header)

    data, _ = load(path, text_column="transcription", label_column="specialty")

    assert data.texts == ["a b"]
    assert data.labels == [2]


def test_csv_texts_stay_strings(tmp_path):
    rows = [("NA", "Urology"), ("0123", "Urology"), ("null", 1)]
    path = write_csv(tmp_path / "strings.csv", rows)

    data, _ = load(path)

    assert data.texts == ["NA", "0123", "null"]


def test_empty_texts_dropped_and_counted(tmp_path):
    path = write_jsonl(
        tmp_path / "empty.jsonl",
        [{"text": "kept", "label": 0}, {"text": "", "label": 1}, {"text": "   \n", "label": 1},
         {"text": None, "label": 2}, {"text": "also kept", "label": 2}],
    )

    data, report = load(path)

    assert data.texts == ["kept", "also kept"]
    assert report.rows_read == 5
    assert report.empty_texts_dropped == 3
    assert report.label_counts == {"Cardiology": 1, "Neurology": 0, "Urology": 1}


def test_empty_data_error(tmp_path):
    path = write_csv(tmp_path / "blank.csv", [("", "Urology"), ("  ", "Neurology")])

    with pytest.raises(DataError) as caught:
        load(path)

    message = str(caught.value)
    assert "no usable rows" in message
    assert "2 with empty text" in message
    assert "--text-column" in message


def test_header_only_file_error(tmp_path):
    path = write_csv(tmp_path / "header.csv", [])

    with pytest.raises(DataError) as caught:
        load(path)

    assert "no usable rows" in str(caught.value)


@pytest.mark.parametrize("name", ["empty.jsonl", "empty.jsonl.gz"])
def test_empty_jsonl_error(tmp_path, name):
    path = tmp_path / name
    path.write_bytes(gzip.compress(b"") if name.endswith(".gz") else b"")

    with pytest.raises(DataError) as caught:
        load(path)

    message = str(caught.value)
    assert "no usable rows" in message
    assert "Pass a file with labeled texts" in message


def test_duplicates_and_conflicts_counted(tmp_path):
    long_text = "patient presents with " + "x" * 100
    path = write_csv(
        tmp_path / "dups.csv",
        [("same note", "Cardiology"), ("same  note", "Cardiology"), (long_text, "Cardiology"),
         (long_text, "Urology"), ("other", "Neurology"), ("other", "Urology"), ("solo", "Urology")],
    )

    data, report = load(path, forget_label_ids=[0])

    assert len(data) == 7
    assert report.duplicate_texts == 3
    assert report.conflicting_texts == 1
    assert report.conflict_examples == (long_text[:80],)


def test_conflicts_between_forget_classes_not_counted(tmp_path):
    path = write_csv(tmp_path / "dups.csv", [("note", "Cardiology"), ("note", "Neurology")])

    _, report = load(path, forget_label_ids=[0, 1])

    assert report.duplicate_texts == 1
    assert report.conflicting_texts == 0


def test_conflict_examples_at_most_three(tmp_path):
    rows = []
    for i in range(5):
        rows += [(f"note {i}", "Cardiology"), (f"note {i}", "Urology")]
    path = write_csv(tmp_path / "dups.csv", rows)

    _, report = load(path, forget_label_ids=[0])

    assert report.conflicting_texts == 5
    assert report.conflict_examples == ("note 0", "note 1", "note 2")


def test_report_to_dict_is_json_ready(tmp_path):
    _, report = load(make_csv(tmp_path), forget_label_ids=[0])

    restored = json.loads(json.dumps(report.to_dict()))

    assert restored["source"] == str(tmp_path / "notes.csv")
    assert restored["conflict_examples"] == []
    assert DataReport(**{**restored, "conflict_examples": ()}) == report


# Multi-label


def test_multi_label_from_jsonl_lists(tmp_path):
    path = write_jsonl(
        tmp_path / "multi.jsonl",
        [{"text": "a", "label": ["Cardiology", "Urology"]}, {"text": "b", "label": [1]},
         {"text": "c", "label": "Neurology"}, {"text": "d", "label": []}],
    )

    data, report = load(path, multi_label=True)

    assert data.multi_label is True
    assert data.labels == [[0, 2], [1], [1], []]
    assert report.label_counts == {"Cardiology": 1, "Neurology": 2, "Urology": 1}


def test_multi_label_from_csv_strings(tmp_path):
    path = write_csv(
        tmp_path / "multi.csv",
        [("a", "Cardiology;Urology"), ("b", "Neurology|cardiology"), ("c", '["Urology", 1]'),
         ("d", "2")],
    )

    data, _ = load(path, multi_label=True)

    assert data.labels == [[0, 2], [0, 1], [1, 2], [2]]


def test_multi_label_from_parquet_lists(tmp_path):
    path = tmp_path / "multi.parquet"
    columns = {"text": ["a", "b"], "label": [["Urology"], ["Cardiology", "Neurology"]]}
    datasets.Dataset.from_dict(columns).to_parquet(path)

    data, _ = load(path, multi_label=True)

    assert data.labels == [[2], [0, 1]]


def test_multi_label_unknown_item_error(tmp_path):
    path = write_csv(tmp_path / "multi.csv", [("a", "Cardiology;Oncology")])

    with pytest.raises(LabelError) as caught:
        load(path, multi_label=True)

    message = str(caught.value)
    assert "'Oncology'" in message
    assert "0='Cardiology'" in message


def test_multi_label_conflicts_use_forget_membership(tmp_path):
    path = write_jsonl(
        tmp_path / "multi.jsonl",
        [{"text": "a", "label": ["Cardiology", "Urology"]}, {"text": "a", "label": ["Urology"]},
         {"text": "b", "label": ["Cardiology", "Urology"]}, {"text": "b", "label": ["Cardiology"]}],
    )

    _, report = load(path, multi_label=True, forget_label_ids=[0])

    assert report.duplicate_texts == 2
    assert report.conflicting_texts == 1
    assert report.conflict_examples == ("a",)


@pytest.mark.parametrize("label", ["Cardiology;Urology", "Cardiology|Urology", '["Cardiology"]'])
def test_list_label_on_single_label_model_error(tmp_path, label):
    path = write_csv(tmp_path / "multi.csv", [("a", "Neurology"), ("b", label)])

    with pytest.raises(DataError) as caught:
        load(path)

    message = str(caught.value)
    assert "row 2" in message
    assert "single-label" in message
    assert "multi_label_classification" in message


def test_jsonl_list_label_on_single_label_model_error(tmp_path):
    records = [{"text": "a", "label": ["Cardiology", "Urology"]}]
    path = write_jsonl(tmp_path / "multi.jsonl", records)

    with pytest.raises(DataError) as caught:
        load(path)

    assert "single-label" in str(caught.value)


def test_label_names_with_separators_stay_single(tmp_path):
    path = write_csv(tmp_path / "slash.csv", [("a", "Cardiovascular | Pulmonary")])

    data, _ = load(path, id2label={0: "Cardiovascular | Pulmonary", 1: "Other"})

    assert data.labels == [0]


# Sources that cannot be read


def test_missing_file_error(tmp_path):
    missing = tmp_path / "absent.csv"

    with pytest.raises(DataError) as caught:
        load(missing)

    message = str(caught.value)
    assert "not found" in message
    assert str(missing) in message
    assert "Check the path" in message


def test_missing_file_in_folder_not_hub_id(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)

    with pytest.raises(DataError) as caught:
        load("exports/notes.csv")

    message = str(caught.value)
    assert "data file not found: exports/notes.csv" in message
    assert "Hub dataset 'exports" not in message


def test_unsupported_extension_error(tmp_path):
    path = tmp_path / "notes.xlsx"
    path.write_bytes(b"not really a spreadsheet")

    with pytest.raises(DataError) as caught:
        load(path)

    message = str(caught.value)
    assert "'.xlsx'" in message
    assert ".parquet" in message
    assert "Convert the file" in message


def test_gzip_parquet_unsupported(tmp_path):
    path = tmp_path / "notes.parquet.gz"
    path.write_bytes(gzip.compress(b"x"))

    with pytest.raises(DataError) as caught:
        load(path)

    assert "'.parquet.gz'" in str(caught.value)


def test_malformed_jsonl_error(tmp_path):
    path = tmp_path / "broken.jsonl"
    path.write_text('{"text": "a", "label": 1}\n{"text": "b",\n', encoding="utf-8")

    with pytest.raises(DataError) as caught:
        load(path)

    message = str(caught.value)
    assert "failed to read" in message
    assert "valid json" in message


def test_hub_id_offline_error(tmp_path, monkeypatch):
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.setattr(datasets.config, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(huggingface_hub.constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setenv("HF_HOME", str(tmp_path / "hf-home"))
    monkeypatch.chdir(tmp_path)

    def refuse_connection(*args, **kwargs):
        raise AssertionError("loading a Hub dataset offline opened a network connection")

    monkeypatch.setattr(socket.socket, "connect", refuse_connection)

    with pytest.raises(DataError) as caught:
        load("someone/clinical-notes")

    message = str(caught.value)
    assert "'someone/clinical-notes'" in message
    assert "pass a local data file" in message
    assert "unset HF_HUB_OFFLINE" in message


# LabeledTexts


def test_label_matrix_single_and_multi():
    single = LabeledTexts(texts=["a", "b"], labels=[2, 0], multi_label=False)
    multi = LabeledTexts(texts=["a", "b"], labels=[[0, 2], []], multi_label=True)

    assert torch.equal(single.label_matrix(3), torch.tensor([[0.0, 0.0, 1.0], [1.0, 0.0, 0.0]]))
    assert torch.equal(multi.label_matrix(3), torch.tensor([[1.0, 0.0, 1.0], [0.0, 0.0, 0.0]]))


def test_label_matrix_out_of_range_error():
    data = LabeledTexts(texts=["a"], labels=[4], multi_label=False)

    with pytest.raises(DataError) as caught:
        data.label_matrix(3)

    assert "[4]" in str(caught.value)


def test_subset_keeps_order():
    data = LabeledTexts(texts=["a", "b", "c"], labels=[0, 1, 2], multi_label=False)

    part = data.subset([2, 0])

    assert part.texts == ["c", "a"]
    assert part.labels == [2, 0]
    assert len(part) == 2


def test_mismatched_lengths_error():
    with pytest.raises(DataError):
        LabeledTexts(texts=["a", "b"], labels=[0], multi_label=False)


# Splitting


def make_split_data(n_per_class=10, duplicates=True):
    texts, labels = [], []
    for label in range(3):
        for i in range(n_per_class):
            texts.append(f"class {label} note {i}")
            labels.append(label)
    if duplicates:
        for i in range(0, n_per_class, 2):
            texts.append(f"class 0 note {i}")
            labels.append(1)
    return LabeledTexts(texts=texts, labels=labels, multi_label=False)


def test_split_is_deterministic():
    data = make_split_data()

    first = stratified_split(data, eval_fraction=0.3, seed=7)
    second = stratified_split(data, eval_fraction=0.3, seed=7)
    other_seed = stratified_split(data, eval_fraction=0.3, seed=8)

    assert first == second
    assert first[1].texts != other_seed[1].texts


def test_split_keeps_duplicate_texts_on_one_side():
    data = make_split_data()

    for seed in range(5):
        train, evaluation = stratified_split(data, eval_fraction=0.3, seed=seed)
        assert not set(train.texts) & set(evaluation.texts)
        assert len(train) + len(evaluation) == len(data)


def test_split_stratifies_by_class():
    data = make_split_data(n_per_class=10, duplicates=False)

    train, evaluation = stratified_split(data, eval_fraction=0.2, seed=0)

    assert sorted(evaluation.labels) == [0, 0, 1, 1, 2, 2]
    assert len(train) == 24


def test_split_single_example_class_falls_back(caplog):
    data = LabeledTexts(
        texts=[f"note {i}" for i in range(9)], labels=[0, 0, 0, 0, 1, 1, 1, 1, 2], multi_label=False
    )

    with caplog.at_level("WARNING", logger="steu_patch.data"):
        train, evaluation = stratified_split(data, eval_fraction=0.34, seed=0)

    assert len(train) + len(evaluation) == 9
    assert len(evaluation) == 4
    assert "Could not stratify 9 texts" in caplog.text


def test_split_multi_label_by_forget_membership():
    labels = [[0, 2], [1], [0], [2], [1, 2], [0], [2], [1], [0, 1], [2]]
    data = LabeledTexts(texts=[f"note {i}" for i in range(10)], labels=labels, multi_label=True)

    train, evaluation = stratified_split(data, eval_fraction=0.4, seed=3, forget_label_ids=[0])

    assert sum(0 in ids for ids in evaluation.labels) == 2
    assert train.multi_label is True


def test_split_too_few_distinct_texts_error():
    data = LabeledTexts(texts=["same", "same ", "same"], labels=[0, 1, 0], multi_label=False)

    with pytest.raises(DataError) as caught:
        stratified_split(data)

    message = str(caught.value)
    assert "1 distinct text" in message
    assert "at least 2 distinct texts" in message


@pytest.mark.parametrize("fraction", [0.0, 1.0, -0.1, 1.5])
def test_split_invalid_fraction_error(fraction):
    with pytest.raises(DataError) as caught:
        stratified_split(make_split_data(), eval_fraction=fraction)

    assert str(fraction) in str(caught.value)
