"""Load labeled texts for creating and auditing forget patches.

One entry point, :func:`load_texts`, reads CSV, TSV, JSON Lines and Parquet files (optionally
gzip-compressed), directories written by ``datasets`` ``save_to_disk``, and Hub datasets, always
through the ``datasets`` library. It maps labels onto the model's ``id2label``, drops empty texts,
counts duplicated and conflicting texts, and returns the texts with a :class:`DataReport`.
:func:`stratified_split` divides the result into training and evaluation sets so that no text
appears on both sides.
"""

from __future__ import annotations

import contextlib

import json
import logging
import math
import re
import tempfile
from collections import Counter
from collections.abc import Iterable, Iterator, Sequence
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

import datasets
import numpy as np
import torch
from datasets.exceptions import DatasetsError
from sklearn.model_selection import train_test_split

from .errors import DataError, LabelError

logger = logging.getLogger(__name__)

# Builder name and extra ``load_dataset`` arguments by file suffix.
_FILE_FORMATS: dict[str, tuple[str, dict[str, Any]]] = {
    ".csv": ("csv", {}),
    ".tsv": ("csv", {"sep": "\t"}),
    ".tab": ("csv", {"sep": "\t"}),
    ".jsonl": ("json", {}),
    ".json": ("json", {}),
    ".parquet": ("parquet", {}),
}
# Parquet compresses its pages internally, so only the text formats may carry a ``.gz`` suffix.
_GZIP_FORMATS = (".csv", ".tsv", ".tab", ".jsonl", ".json")
SUPPORTED_FORMATS = (
    ".csv, .tsv, .tab, .jsonl, .json, .parquet, the text formats gzip-compressed (.csv.gz, ...), "
    "a directory written by datasets' save_to_disk, or a Hub dataset id"
)
# Suffixes that mark a source as a file name rather than a Hub dataset id.
_FILE_LIKE_SUFFIXES = {*_FILE_FORMATS, ".gz", ".txt", ".xls", ".xlsx", ".arrow", ".zip"}
_HUB_ID_PATTERN = re.compile(r"^[A-Za-z0-9][\w.-]*(/[A-Za-z0-9][\w.-]*)?$")
_MULTI_LABEL_SEPARATORS = (";", "|")
_EXAMPLE_CHARS = 80
_MAX_CONFLICT_EXAMPLES = 3


@dataclass(frozen=True)
class DataReport:
    """Summary of a loaded data source, printed by the CLI and stored in the patch manifest.

    ``duplicate_texts`` counts rows whose text already appeared in an earlier row under any label.
    ``conflicting_texts`` counts distinct texts that carry a forget class in one row and only
    retained classes in another. Texts are compared after collapsing whitespace.
    """

    source: str
    rows_read: int
    empty_texts_dropped: int
    duplicate_texts: int
    conflicting_texts: int
    conflict_examples: tuple[str, ...]
    label_counts: dict[str, int]

    def to_dict(self) -> dict:
        result = asdict(self)
        result["conflict_examples"] = list(self.conflict_examples)
        result["label_counts"] = dict(self.label_counts)
        return result


@dataclass(frozen=True)
class LabeledTexts:
    """Texts with class ids: one id per text, or a list of ids per text when ``multi_label``."""

    texts: list[str]
    labels: list[int] | list[list[int]]
    multi_label: bool

    def __post_init__(self) -> None:
        if len(self.texts) != len(self.labels):
            raise DataError(
                f"LabeledTexts got {len(self.texts)} texts but {len(self.labels)} labels. "
                "Pass one label entry per text."
            )

    def __len__(self) -> int:
        return len(self.texts)

    def label_matrix(self, num_labels: int) -> torch.Tensor:
        """Return an ``(n, num_labels)`` float tensor with 1.0 at each text's classes."""
        rows = _label_lists(self)
        out_of_range = sorted({i for ids in rows for i in ids if not 0 <= i < num_labels})
        if out_of_range:
            raise DataError(
                f"label ids {out_of_range} are outside 0..{num_labels - 1}. Pass the model's "
                "num_labels, or reload the data with that model's id2label."
            )
        matrix = torch.zeros(len(rows), num_labels, dtype=torch.float32)
        for row, ids in enumerate(rows):
            matrix[row, ids] = 1.0
        return matrix

    def subset(self, indices: Iterable[int]) -> LabeledTexts:
        """Return the rows at ``indices``, in that order."""
        positions = [int(i) for i in indices]
        return LabeledTexts(
            texts=[self.texts[i] for i in positions],
            labels=[self.labels[i] for i in positions],
            multi_label=self.multi_label,
        )


class _LabelResolver:
    """Maps a label value (name, integer id or digit string) to a class id of ``id2label``.

    Names match exactly first, then case-insensitively when only one label matches. Digit strings
    are read as ids only when they match no name, so a model whose labels are named "1".."5" maps
    "1" to the label named "1".
    """

    def __init__(self, id2label: dict[int, str]) -> None:
        if not id2label:
            raise LabelError(
                "the model's id2label is empty. Set config.id2label on the model first."
            )
        self.id2label = {int(i): str(name) for i, name in id2label.items()}
        self._by_name = {name: i for i, name in self.id2label.items()}
        folded = Counter(name.casefold() for name in self.id2label.values())
        self._by_folded_name = {
            name.casefold(): i for i, name in self.id2label.items() if folded[name.casefold()] == 1
        }

    def lookup(self, value: Any) -> int | None:
        """Return the class id for ``value``, or None when it names no class."""
        if isinstance(value, (bool, np.bool_)):
            return None
        if isinstance(value, (float, np.floating)):
            value = int(value) if float(value).is_integer() else None
        if isinstance(value, (int, np.integer)):
            return int(value) if int(value) in self.id2label else None
        if not isinstance(value, str):
            return None
        name = value.strip()
        if name in self._by_name:
            return self._by_name[name]
        if name.casefold() in self._by_folded_name:
            return self._by_folded_name[name.casefold()]
        if re.fullmatch(r"\d+", name) and int(name) in self.id2label:
            return int(name)
        return None

    def describe_known(self) -> str:
        return ", ".join(f"{i}={name!r}" for i, name in sorted(self.id2label.items()))

    def unknown_error(self, values: Sequence[Any], where: str) -> LabelError:
        listed_values = ", ".join(repr(value) for value in values[:5])
        more = f" and {len(values) - 5} more" if len(values) > 5 else ""
        return LabelError(
            f"unknown label {listed_values}{more} {where}. "
            f"Known labels (id=name): {self.describe_known()}. "
            "Use these names or ids (names match exactly, then case-insensitively), or check that "
            "the data belongs to this model."
        )


def resolve_labels(values: Sequence[str | int], id2label: dict[int, str]) -> list[int]:
    """Map class names or ids, such as the forget classes given on the command line, to class ids.

    Duplicates are removed and the first-seen order is kept.

    Raises:
        LabelError: a value names no class of ``id2label``. The message lists the known labels.
    """
    resolver = _LabelResolver(id2label)
    resolved: list[int] = []
    unknown: list[Any] = []
    for value in values:
        class_id = resolver.lookup(value)
        if class_id is None:
            unknown.append(value)
        elif class_id not in resolved:
            resolved.append(class_id)
    if unknown:
        raise resolver.unknown_error(unknown, "in the requested classes")
    return resolved


def load_texts(
    source: str | Path,
    *,
    id2label: dict[int, str],
    text_column: str = "text",
    label_column: str = "label",
    split: str | None = None,
    revision: str | None = None,
    multi_label: bool = False,
    forget_label_ids: Sequence[int] = (),
) -> tuple[LabeledTexts, DataReport]:
    """Read labeled texts from a file, a saved dataset directory or a Hub dataset.

    Args:
        source: a data file, a ``save_to_disk`` directory, or a Hub dataset id (used when no local
            path of that name exists).
        id2label: the model's class names by id, onto which the data's labels are mapped.
        split: the split of a saved ``DatasetDict`` or Hub dataset (Hub default: ``"train"``).
        revision: the Hub dataset revision, ignored for local sources.
        multi_label: accept lists of labels per row (``["A", "B"]``, ``"A;B"`` or ``"A|B"``).
        forget_label_ids: the forget classes, used to count conflicting texts.

    Returns:
        The texts with their class ids, and a report of what loading found.

    Raises:
        DataError: the source is missing or unreadable, a column is missing, a label is null or
            list-valued for a single-label model, or no text remains.
        LabelError: a label or forget class id is unknown to ``id2label``.
    """
    resolver = _LabelResolver(id2label)
    unknown_forget = [i for i in forget_label_ids if int(i) not in resolver.id2label]
    if unknown_forget:
        raise resolver.unknown_error(unknown_forget, "in the forget classes")
    source_name = str(source)

    dataset = _read_dataset(
        source_name, split=split, revision=revision, columns=(text_column, label_column)
    )
    _check_columns(dataset, source_name, text_column, label_column)
    raw_texts = list(dataset[text_column])
    raw_labels = _label_values(dataset, label_column, resolver)

    texts, labels, dropped = _parse_rows(
        raw_texts, raw_labels, resolver, multi_label=multi_label, source=source_name
    )
    data = LabeledTexts(texts=texts, labels=labels, multi_label=multi_label)
    forget_ids = {int(i) for i in forget_label_ids}
    duplicates, conflicts = _count_duplicates_and_conflicts(data, forget_ids)
    examples = conflicts[:_MAX_CONFLICT_EXAMPLES]
    report = DataReport(
        source=source_name,
        rows_read=len(raw_texts),
        empty_texts_dropped=dropped,
        duplicate_texts=duplicates,
        conflicting_texts=len(conflicts),
        conflict_examples=tuple(text[:_EXAMPLE_CHARS] for text in examples),
        label_counts=_count_labels(data, resolver.id2label),
    )
    _log_report(report, [resolver.id2label[int(i)] for i in forget_label_ids])
    return data, report


def _log_report(report: DataReport, forget_names: list[str]) -> None:
    logger.info(
        "Read %d rows from %s (%d empty texts dropped, %d duplicate texts, %d conflicting texts)",
        report.rows_read, report.source, report.empty_texts_dropped,
        report.duplicate_texts, report.conflicting_texts,
    )
    for name in forget_names:
        if report.label_counts.get(name, 0) == 0:
            logger.warning("No row of %s has the forget class %r", report.source, name)


# Reading sources


def _read_dataset(
    source: str, *, split: str | None, revision: str | None, columns: tuple[str, str]
) -> datasets.Dataset:
    path = Path(source).expanduser()
    if path.is_dir():
        _warn_ignored(source, revision=revision)
        return _read_saved_dataset(path, split)
    if path.is_file():
        _warn_ignored(source, revision=revision, split=split)
        return _read_data_file(path, columns)
    if _looks_like_hub_id(source):
        return _read_hub_dataset(source, split=split, revision=revision)
    raise DataError(
        f"data file not found: {source}. Check the path, or pass an existing file "
        f"({SUPPORTED_FORMATS})."
    )


def _warn_ignored(source: str, *, revision: str | None, split: str | None = None) -> None:
    if revision is not None:
        logger.warning("Ignoring revision %r: %s is a local source", revision, source)
    if split is not None:
        logger.warning("Ignoring split %r: %s is a single data file", split, source)


def _looks_like_hub_id(source: str) -> bool:
    suffix = Path(source).suffix.lower()
    return bool(_HUB_ID_PATTERN.fullmatch(source)) and suffix not in _FILE_LIKE_SUFFIXES


def _file_format(path: Path) -> tuple[str, dict[str, Any]]:
    suffixes = [suffix.lower() for suffix in path.suffixes]
    suffix = suffixes[-1] if suffixes else ""
    if suffix == ".gz" and len(suffixes) >= 2 and suffixes[-2] in _GZIP_FORMATS:
        suffix = suffixes[-2]
    elif suffix == ".gz" and len(suffixes) >= 2:
        suffix = suffixes[-2] + suffix
    if suffix not in _FILE_FORMATS:
        raise DataError(
            f"unsupported data file format {suffix or '(no suffix)'!r}: {path}. "
            f"Supported: {SUPPORTED_FORMATS}. Convert the file or rename it to its format's suffix."
        )
    return _FILE_FORMATS[suffix]


def _read_data_file(path: Path, columns: tuple[str, str]) -> datasets.Dataset:
    """Read one data file into memory through a temporary cache, so the HF cache stays untouched."""
    builder, options = _file_format(path)
    if builder == "csv":
        # Read the text and label cells as strings, so ids are not parsed into floats next to
        # empty cells and texts such as "NA" or "123" stay texts. _LabelResolver converts ids.
        converters = {column: str for column in columns}
        options = {**options, "converters": converters, "keep_default_na": False}
    with tempfile.TemporaryDirectory(prefix="steu-patch-data-") as cache_dir, _no_download_count():
        try:
            return datasets.load_dataset(
                builder, data_files=str(path), split="train",
                cache_dir=cache_dir, keep_in_memory=True, **options,
            )
        except (DatasetsError, ValueError, OSError, StopIteration) as error:
            raise _read_error(path, builder, error) from error


@contextlib.contextmanager
def _no_download_count() -> Iterator[None]:
    """Keep ``datasets`` from reporting a local file load to the Hub's download counter.

    datasets 5.2 sends a HEAD request for every ``load_dataset`` of a packaged builder such as
    ``csv`` unless ``HF_UPDATE_DOWNLOAD_COUNTS`` is off; a local clinical file must not cause
    any network traffic.
    """
    previous = datasets.config.HF_UPDATE_DOWNLOAD_COUNTS
    datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = False
    try:
        yield
    finally:
        datasets.config.HF_UPDATE_DOWNLOAD_COUNTS = previous


def _read_error(path: Path, builder: str, error: Exception) -> DataError:
    # datasets 5.2 reports a file without data rows as this ValueError, and an empty JSON file
    # as a bare StopIteration.
    if isinstance(error, StopIteration) or "corresponds to no data" in str(error):
        return DataError(
            f"no usable rows in {path}: the file has no data rows. Pass a file with labeled texts."
        )
    cause = error.__cause__ or error
    return DataError(
        f"failed to read {path} as {builder}: {cause}. Check that the file is valid "
        f"{builder} with a header row or field names."
    )


def _read_saved_dataset(path: Path, split: str | None) -> datasets.Dataset:
    try:
        loaded = datasets.load_from_disk(str(path), keep_in_memory=True)
    except FileNotFoundError as error:
        raise DataError(
            f"{path} is a directory but not one written by datasets' save_to_disk. "
            f"Pass a data file ({SUPPORTED_FORMATS}) or a saved dataset directory."
        ) from error
    if isinstance(loaded, datasets.Dataset):
        _warn_ignored(str(path), revision=None, split=split)
        return loaded
    return _pick_split(loaded, split, str(path))


def _pick_split(splits: datasets.DatasetDict, split: str | None, source: str) -> datasets.Dataset:
    names = list(splits)
    if split is None and len(names) == 1:
        return splits[names[0]]
    if split is None:
        raise DataError(
            f"{source} has several splits: {', '.join(names)}. Choose one with --split."
        )
    if split not in splits:
        raise DataError(
            f"split {split!r} not found in {source}. Available splits: {', '.join(names)}."
        )
    return splits[split]


def _read_hub_dataset(
    dataset_id: str, *, split: str | None, revision: str | None
) -> datasets.Dataset:
    try:
        return datasets.load_dataset(dataset_id, split=split or "train", revision=revision)
    except (DatasetsError, ValueError, OSError) as error:
        if datasets.config.HF_HUB_OFFLINE:
            hint = (
                "HF_HUB_OFFLINE is set and the dataset is not in the local cache: pass a local "
                "data file, or unset HF_HUB_OFFLINE to download it."
            )
        else:
            hint = (
                "Check the dataset id, --split and --revision, or pass a local data file "
                f"({SUPPORTED_FORMATS})."
            )
        raise DataError(
            f"failed to load Hub dataset {dataset_id!r} (no local file or directory of that name "
            f"exists): {error}. {hint}"
        ) from error


# Columns and rows


def _check_columns(
    dataset: datasets.Dataset, source: str, text_column: str, label_column: str
) -> None:
    available = ", ".join(dataset.column_names) or "(none)"
    for column, option in ((text_column, "--text-column"), (label_column, "--label-column")):
        if column not in dataset.column_names:
            raise DataError(
                f"column {column!r} not found in {source}. Available columns: {available}. "
                f"Pass the right name with {option}."
            )


def _label_values(
    dataset: datasets.Dataset, label_column: str, resolver: _LabelResolver
) -> list[Any]:
    """Return the label column, with ``ClassLabel`` ids replaced by the dataset's class names.

    Names are matched against the model's labels, so a dataset whose classes are ordered
    differently from the model's still maps correctly. If any dataset class name is unknown to
    the model, the integer ids are kept as they are.
    """
    values = list(dataset[label_column])
    feature = dataset.features[label_column]
    inner = getattr(feature, "feature", None)
    class_label = feature if isinstance(feature, datasets.ClassLabel) else inner
    if not isinstance(class_label, datasets.ClassLabel):
        return values
    unknown_names = [name for name in class_label.names if resolver.lookup(name) is None]
    if unknown_names:
        # NOTE: ids are then trusted to follow the model's order, which nothing here can verify.
        logger.warning(
            "Dataset class names %s are not labels of the model (%s), so the dataset's integer "
            "ids are used as model class ids", unknown_names, resolver.describe_known(),
        )
        return values

    def to_name(value: Any) -> Any:
        if isinstance(value, list):
            return [to_name(item) for item in value]
        return class_label.int2str(value) if value is not None and value >= 0 else None

    return [to_name(value) for value in values]


def _parse_rows(
    raw_texts: list[Any],
    raw_labels: list[Any],
    resolver: _LabelResolver,
    *,
    multi_label: bool,
    source: str,
) -> tuple[list[str], list[Any], int]:
    """Drop empty texts and map labels to class ids.

    Returns:
        The kept texts, their class ids, and the number of rows dropped for an empty text.
    """
    texts: list[str] = []
    labels: list[Any] = []
    unknown: dict[str, int] = {}  # repr of an unknown label value -> first row number
    dropped = 0
    for row, (text, value) in enumerate(zip(raw_texts, raw_labels), start=1):
        text = _text_value(text, row, source)
        if not text.strip():
            dropped += 1
            continue
        if _is_null(value):
            raise DataError(
                f"row {row} of {source} has no label (null or empty). Fill in the label or remove "
                "the row."
            )
        if multi_label:
            ids = _label_ids_multi(value, resolver, unknown, row)
        else:
            ids = _label_id_single(value, resolver, unknown, row, source)
        texts.append(text)
        labels.append(ids)

    if unknown:
        first_row = min(unknown.values())
        raise resolver.unknown_error(list(unknown), f"in {source} (first at row {first_row})")
    if not texts:
        raise DataError(
            f"no usable rows in {source}: {len(raw_texts)} rows read, {dropped} with empty text. "
            "Pass a source with non-empty texts, or check --text-column."
        )
    return texts, labels, dropped


def _text_value(value: Any, row: int, source: str) -> str:
    if value is None:
        return ""
    if isinstance(value, (list, dict)):
        raise DataError(
            f"row {row} of {source} has a {type(value).__name__} in the text column, not a string. "
            "Point --text-column at a column of plain texts."
        )
    return str(value)


def _is_null(value: Any) -> bool:
    if value is None:
        return True
    if isinstance(value, float) and math.isnan(value):
        return True
    return isinstance(value, str) and not value.strip()


def _label_id_single(
    value: Any, resolver: _LabelResolver, unknown: dict[str, int], row: int, source: str
) -> int:
    if not isinstance(value, (list, tuple)):
        class_id = resolver.lookup(value)
        if class_id is not None:
            return class_id
    items = _split_label_list(value)
    if items is not None:
        raise DataError(
            f"row {row} of {source} has a list of labels ({value!r}), but the model's problem_type "
            "is single-label classification, so each text needs exactly one label. Give one label "
            "per row, or use a model whose config sets problem_type='multi_label_classification'."
        )
    unknown.setdefault(repr(value), row)
    return -1


def _label_ids_multi(
    value: Any, resolver: _LabelResolver, unknown: dict[str, int], row: int
) -> list[int]:
    """Map one row's labels to sorted unique ids. An explicit empty list means no class."""
    whole = None if isinstance(value, (list, tuple)) else resolver.lookup(value)
    if whole is not None:
        return [whole]
    items = _split_label_list(value)
    ids: set[int] = set()
    for item in [value] if items is None else items:
        class_id = resolver.lookup(item)
        if class_id is None:
            unknown.setdefault(repr(item), row)
        else:
            ids.add(class_id)
    return sorted(ids)


def _split_label_list(value: Any) -> list[Any] | None:
    """Return the items of a list-valued label, or None when ``value`` is a single label."""
    if isinstance(value, (list, tuple)):
        return list(value)
    if not isinstance(value, str):
        return None
    text = value.strip()
    if text.startswith("[") and text.endswith("]"):
        try:
            parsed = json.loads(text)
        except json.JSONDecodeError:
            parsed = None
        if isinstance(parsed, list):
            return parsed
    for separator in _MULTI_LABEL_SEPARATORS:
        if separator in text:
            return [part.strip() for part in text.split(separator) if part.strip()]
    return None


# Report counts


def _text_key(text: str) -> str:
    """Return the text with runs of whitespace collapsed, the identity used for duplicates."""
    return " ".join(text.split())


def _label_lists(data: LabeledTexts) -> list[list[int]]:
    """Return each row's class ids as a list, for single-label and multi-label data alike."""
    return [labels if data.multi_label else [labels] for labels in data.labels]


def _count_duplicates_and_conflicts(
    data: LabeledTexts, forget_ids: set[int]
) -> tuple[int, list[str]]:
    """Count rows that repeat an earlier text, and list texts whose rows disagree on forgetting."""
    first_text: dict[str, str] = {}
    forget_flags: dict[str, set[bool]] = {}
    duplicates = 0
    for text, ids in zip(data.texts, _label_lists(data)):
        key = _text_key(text)
        if key in first_text:
            duplicates += 1
        else:
            first_text[key] = text
        forget_flags.setdefault(key, set()).add(any(i in forget_ids for i in ids))
    conflicts = [first_text[key] for key, flags in forget_flags.items() if len(flags) == 2]
    return duplicates, conflicts


def _count_labels(data: LabeledTexts, id2label: dict[int, str]) -> dict[str, int]:
    """Count rows per class name, including classes with no rows, in id order."""
    counts = Counter(i for ids in _label_lists(data) for i in ids)
    return {id2label[i]: counts.get(i, 0) for i in sorted(id2label)}


# Splitting


def stratified_split(
    data: LabeledTexts,
    *,
    eval_fraction: float = 0.2,
    seed: int = 0,
    forget_label_ids: Sequence[int] = (),
) -> tuple[LabeledTexts, LabeledTexts]:
    """Split into training and evaluation sets, stratified by class, with no text on both sides.

    Rows with the same text (after collapsing whitespace) form one group, and groups are split,
    because a duplicated text on both sides would leak evaluation data into training. Groups are
    stratified by the first row's class, or for multi-label data by forget-class membership when
    ``forget_label_ids`` is given, else by each row's lowest class id. When a class is too rare to
    stratify, rare classes are pooled, and as a last resort the split is random (logged).

    Returns:
        ``(train, eval)``, each in the original row order. The same seed gives the same split.

    Raises:
        DataError: ``eval_fraction`` is not between 0 and 1, or there are too few distinct texts
            to put at least one on each side.
    """
    if not 0.0 < eval_fraction < 1.0:
        raise DataError(f"eval_fraction must be between 0 and 1 (exclusive), got {eval_fraction}.")
    groups: dict[str, list[int]] = {}
    for row, text in enumerate(data.texts):
        groups.setdefault(_text_key(text), []).append(row)
    group_rows = list(groups.values())
    if len(group_rows) < 2:
        raise DataError(
            f"cannot split {len(data)} rows with {len(group_rows)} distinct text(s) into training "
            "and evaluation sets. Provide at least 2 distinct texts, or pass separate "
            "evaluation data."
        )

    forget_ids = {int(i) for i in forget_label_ids}
    strata = [_stratum(data, rows[0], forget_ids) for rows in group_rows]
    train_groups, eval_groups = _split_groups(strata, eval_fraction, seed)
    train_rows = sorted(row for g in train_groups for row in group_rows[g])
    eval_rows = sorted(row for g in eval_groups for row in group_rows[g])
    return data.subset(train_rows), data.subset(eval_rows)


def _stratum(data: LabeledTexts, row: int, forget_ids: set[int]) -> int:
    labels = data.labels[row]
    if not data.multi_label:
        return labels
    if forget_ids:
        return int(any(i in forget_ids for i in labels))
    return min(labels, default=-1)


def _split_groups(
    strata: list[int], eval_fraction: float, seed: int
) -> tuple[list[int], list[int]]:
    """Split group indices: stratified if possible, else with rare strata pooled, else at random."""
    indices = np.arange(len(strata))
    errors: list[ValueError] = []
    for stratify in (strata, _pool_rare_strata(strata), None):
        try:
            train, evaluation = train_test_split(
                indices, test_size=eval_fraction, random_state=seed, stratify=stratify
            )
        except ValueError as error:
            errors.append(error)
            continue
        if errors:
            logger.warning(
                "Could not stratify %d texts by class (%s), so the split used %s instead",
                len(strata), errors[0], "pooled rare classes" if stratify else "a random split",
            )
        return train.tolist(), evaluation.tolist()
    raise DataError(
        f"cannot split {len(strata)} distinct texts with eval_fraction={eval_fraction}: "
        f"{errors[-1]}. Use more data or a different eval fraction."
    )


def _pool_rare_strata(strata: list[int]) -> list[str]:
    """Merge strata of one group into a shared stratum, or into the largest if only one is rare."""
    counts = Counter(strata)
    rare = {stratum for stratum, count in counts.items() if count < 2}
    target = "rare" if len(rare) >= 2 else str(counts.most_common(1)[0][0])
    return [target if stratum in rare else str(stratum) for stratum in strata]
