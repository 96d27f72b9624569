"""Rebuild the prepared MTSamples specialty subset that steu-patch ships.

The raw input is the Kaggle "Medical Transcriptions" file ``mtsamples.csv`` (or a gzip of it) with
at least the columns ``medical_specialty`` and ``transcription``. The recipe:

1. Keep distinct non-empty transcriptions, deduplicated by the stripped text. mtsamples.com files one
   report under several categories, so the raw file repeats most texts under different labels.
2. Drop the document-type labels (``DOCUMENT_TYPE_LABELS``), which are not medical specialties.
3. Keep only texts left with exactly one specialty. A text filed under two specialties is ambiguous.
4. Keep classes with at least ``--min-class-size`` texts.
5. Split 70/15/15 into train, validation and test with scikit-learn's ``train_test_split``, stratified
   by label and seeded, applied twice (train vs. rest, then rest into validation vs. test).

The output is a gzip CSV with the columns ``text,label,split``, sorted by split, label and text, and
written with gzip mtime 0, so the same input always gives the same bytes.

Usage:
    python examples/prepare_mtsamples.py --source path/to/mtsamples.csv.gz
"""

from __future__ import annotations

import argparse
import collections
import csv
import gzip
import hashlib
import io
import os
import sys
import tempfile
from pathlib import Path

from sklearn.model_selection import train_test_split

REPO_ROOT = Path(__file__).resolve().parent.parent
DEFAULT_OUTPUT = REPO_ROOT / "steu_patch" / "data" / "mtsamples_specialties.csv.gz"

DOCUMENT_TYPE_LABELS = frozenset(
    {
        "Surgery",
        "Consult - History and Phy.",
        "SOAP / Chart / Progress Notes",
        "Discharge Summary",
        "Office Notes",
        "Letters",
        "Emergency Room Reports",
        "IME-QME-Work Comp etc.",
    }
)
SPLITS = ("train", "validation", "test")
REQUIRED_COLUMNS = ("medical_specialty", "transcription")


def read_raw_rows(source: Path) -> list[dict[str, str]]:
    """Read the raw CSV, gzip-compressed or plain, and check that it has the required columns."""
    csv.field_size_limit(10**9)  # some transcriptions are about 18,000 characters long
    opener = gzip.open if source.suffix == ".gz" else open
    with opener(source, "rt", encoding="utf-8", newline="") as handle:
        reader = csv.DictReader(handle)
        missing = [column for column in REQUIRED_COLUMNS if column not in (reader.fieldnames or [])]
        if missing:
            raise SystemExit(
                f"{source} is missing the column(s) {', '.join(missing)}. Its columns are {reader.fieldnames}. "
                "Pass the Kaggle mtsamples.csv (or a gzip of it)."
            )
        return list(reader)


def select_single_specialty_texts(rows: list[dict[str, str]], min_class_size: int) -> dict[str, str]:
    """Map each distinct text that has exactly one specialty label to that label.

    Labels are stripped because the Kaggle file pads them with spaces (``" Surgery"``).
    """
    labels_by_text: dict[str, set[str]] = collections.defaultdict(set)
    for row in rows:
        text = row["transcription"].strip()
        label = row["medical_specialty"].strip()
        if text and label:
            labels_by_text[text].add(label)

    single: dict[str, str] = {}
    for text, labels in labels_by_text.items():
        specialties = labels - DOCUMENT_TYPE_LABELS
        if len(specialties) == 1:
            single[text] = next(iter(specialties))

    class_sizes = collections.Counter(single.values())
    return {text: label for text, label in single.items() if class_sizes[label] >= min_class_size}


def split_texts(label_by_text: dict[str, str], seed: int) -> list[tuple[str, str, str]]:
    """Split 70/15/15 stratified by label and return ``(text, label, split)`` rows in sorted order."""
    texts = sorted(label_by_text)  # a fixed input order makes the seeded split reproducible
    labels = [label_by_text[text] for text in texts]
    train_texts, rest_texts, _, rest_labels = train_test_split(
        texts, labels, test_size=0.30, stratify=labels, random_state=seed
    )
    validation_texts, test_texts = train_test_split(
        rest_texts, test_size=0.50, stratify=rest_labels, random_state=seed
    )

    split_by_text = {text: "train" for text in train_texts}
    split_by_text.update({text: "validation" for text in validation_texts})
    split_by_text.update({text: "test" for text in test_texts})
    rows = [(text, label_by_text[text], split_by_text[text]) for text in texts]
    rows.sort(key=lambda row: (SPLITS.index(row[2]), row[1], row[0]))
    return rows


def write_gzip_csv(rows: list[tuple[str, str, str]], output: Path) -> None:
    """Write the rows as a deterministic gzip CSV, through a temporary file renamed into place."""
    buffer = io.StringIO()
    writer = csv.writer(buffer, lineterminator="\n")
    writer.writerow(("text", "label", "split"))
    writer.writerows(rows)

    output.parent.mkdir(parents=True, exist_ok=True)
    descriptor, temporary = tempfile.mkstemp(prefix=f".{output.name}.", dir=output.parent)
    try:
        with os.fdopen(descriptor, "wb") as raw:
            # An empty file name and mtime 0 keep the gzip header free of run-specific bytes.
            with gzip.GzipFile(filename="", mode="wb", fileobj=raw, compresslevel=9, mtime=0) as compressed:
                compressed.write(buffer.getvalue().encode("utf-8"))
        os.chmod(temporary, 0o644)
        os.replace(temporary, output)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def format_counts(rows: list[tuple[str, str, str]]) -> str:
    """Format a table of text counts per class and split, largest class first."""
    counts = collections.Counter((label, split) for _, label, split in rows)
    totals = collections.Counter(label for _, label, _ in rows)
    width = max(len(label) for label in totals)
    lines = [f"{'label':<{width}}  " + "  ".join(f"{split:>10}" for split in SPLITS) + f"  {'total':>6}"]
    for label, total in sorted(totals.items(), key=lambda item: (-item[1], item[0])):
        cells = "  ".join(f"{counts[label, split]:>10}" for split in SPLITS)
        lines.append(f"{label:<{width}}  {cells}  {total:>6}")
    split_totals = "  ".join(f"{sum(counts[label, split] for label in totals):>10}" for split in SPLITS)
    lines.append(f"{'total':<{width}}  {split_totals}  {len(rows):>6}")
    return "\n".join(lines)


def parse_args(argv: list[str] | None = None) -> argparse.Namespace:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n", 1)[0])
    parser.add_argument(
        "--source",
        type=Path,
        required=True,
        help="raw Kaggle mtsamples.csv or mtsamples.csv.gz with columns medical_specialty and transcription",
    )
    parser.add_argument(
        "--output",
        type=Path,
        default=DEFAULT_OUTPUT,
        help=f"gzip CSV to write (default: {DEFAULT_OUTPUT.relative_to(REPO_ROOT)})",
    )
    parser.add_argument("--min-class-size", type=int, default=40, help="minimum number of texts per class (default: 40)")
    parser.add_argument("--seed", type=int, default=0, help="random_state of both train_test_split calls (default: 0)")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> int:
    args = parse_args(argv)
    if not args.source.is_file():
        raise SystemExit(f"Raw file not found: {args.source}. Pass the Kaggle mtsamples.csv (or a gzip of it).")

    rows = read_raw_rows(args.source)
    label_by_text = select_single_specialty_texts(rows, args.min_class_size)
    if not label_by_text:
        raise SystemExit(f"No class in {args.source} has {args.min_class_size} or more texts. Lower --min-class-size.")
    split_rows = split_texts(label_by_text, args.seed)
    write_gzip_csv(split_rows, args.output)

    digest = hashlib.sha256(args.output.read_bytes()).hexdigest()
    print(format_counts(split_rows))
    print(f"wrote {args.output} ({args.output.stat().st_size:,} bytes, sha256 {digest})")
    return 0


if __name__ == "__main__":
    sys.exit(main())
