"""Tiny classifiers and corpora for the tests of ``create``, ``tokens`` and the training loop.

Each class has its own distinctive words; every text also contains one word of another class and
shared filler words. A
word-level BERT tokenizer maps each word to one token, so the distinctive words are exactly the
tokens a forget patch should select. The classifiers are trained here in about a second and
cached for the session.
"""

from __future__ import annotations

import csv
import json
import random
from pathlib import Path

import torch
from transformers import BertConfig, BertForSequenceClassification, BertTokenizerFast

SPECIAL_TOKENS = ["[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]"]
CLASS_WORDS = {
    "cardio": ["heart", "valve", "aorta", "atrial", "murmur", "stent"],
    "neuro": ["brain", "nerve", "seizure", "cortex", "migraine", "spinal"],
    "ortho": ["bone", "knee", "fracture", "tendon", "cartilage", "hip"],
    "derma": ["skin", "rash", "lesion", "eczema", "mole", "itch"],
    "gastro": ["stomach", "liver", "colon", "bowel", "ulcer", "reflux"],
}
FILLER_WORDS = [
    "patient", "history", "presents", "with", "the", "and", "was", "noted", "exam", "normal",
    "follow", "up", "plan", "reports", "denies", "pain", "today", "visit", "of", "left",
    "right", "mild", "stable", "review", "clinic", "medication", "again", "week", "prior", "note",
]
LABELS = list(CLASS_WORDS)
TEXTS_PER_CLASS = 60

_CACHE: dict[str, Path] = {}


def write_vocab(path: Path) -> Path:
    words = [word for words in CLASS_WORDS.values() for word in words] + FILLER_WORDS
    path.write_text("\n".join(SPECIAL_TOKENS + words) + "\n", encoding="utf-8")
    return path


def make_text(rng: random.Random, classes: list[str], *, other_class_word: bool = True) -> str:
    """Join three words of each class, optionally one word of another class, and six to ten filler words."""
    words = [word for name in classes for word in rng.sample(CLASS_WORDS[name], 3)]
    if other_class_word:
        words.append(rng.choice(CLASS_WORDS[rng.choice([name for name in LABELS if name not in classes])]))
    words += rng.sample(FILLER_WORDS, rng.randint(6, 10))
    rng.shuffle(words)
    return " ".join(words)


def single_label_rows(seed: int = 0, per_class: int = TEXTS_PER_CLASS, counts: dict[str, int] | None = None) -> list[tuple[str, str]]:
    """Return ``(text, label)`` rows, ``per_class`` for each class unless ``counts`` names another number."""
    rng = random.Random(seed)
    counts = {name: (counts or {}).get(name, per_class) for name in LABELS}
    return [(make_text(rng, [name]), name) for name in LABELS for _ in range(counts[name])]


def multi_label_rows(seed: int = 0, count: int = 300) -> list[tuple[str, list[str]]]:
    """Return ``(text, labels)`` rows with one or two labels each."""
    rng = random.Random(seed)
    rows = []
    for index in range(count):
        first = LABELS[index % len(LABELS)]
        classes = [first] if index % 3 else [first, rng.choice([name for name in LABELS if name != first])]
        rows.append((make_text(rng, classes, other_class_word=False), classes))
    return rows


def write_csv(path: Path, rows: list[tuple[str, object]], *, text_column: str = "text", label_column: str = "label") -> Path:
    with open(path, "w", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow([text_column, label_column])
        for text, label in rows:
            writer.writerow([text, ";".join(label) if isinstance(label, list) else label])
    return path


def write_jsonl(path: Path, rows: list[tuple[str, object]]) -> Path:
    with open(path, "w", encoding="utf-8") as handle:
        for text, label in rows:
            handle.write(json.dumps({"text": text, "label": label}) + "\n")
    return path


def tiny_config(multi_label: bool = False, **overrides) -> BertConfig:
    settings = dict(
        vocab_size=len(SPECIAL_TOKENS) + sum(len(words) for words in CLASS_WORDS.values()) + len(FILLER_WORDS),
        hidden_size=32, num_hidden_layers=1, num_attention_heads=2, intermediate_size=64,
        max_position_embeddings=64, hidden_dropout_prob=0.0, attention_probs_dropout_prob=0.0,
        num_labels=len(LABELS), id2label=dict(enumerate(LABELS)), label2id={name: i for i, name in enumerate(LABELS)},
    )
    if multi_label:
        settings["problem_type"] = "multi_label_classification"
    settings.update(overrides)
    return BertConfig(**settings)


def train_classifier(model: BertForSequenceClassification, tokenizer: BertTokenizerFast, texts: list[str], targets: torch.Tensor, *, steps: int = 200) -> None:
    """Train every parameter full-batch with Adam; ``targets`` are class ids or a 0/1 matrix."""
    encoded = tokenizer(texts, padding=True, return_tensors="pt")
    optimizer = torch.optim.Adam(model.parameters(), lr=3e-3)
    model.train()
    for _ in range(steps):
        loss = model(**encoded, labels=targets).loss
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
    model.eval()


def build_classifier(root: Path, *, multi_label: bool = False, dtype: torch.dtype = torch.float32) -> Path:
    """Train a tiny BERT classifier on the synthetic corpus and save it with its tokenizer to ``root``."""
    root.mkdir(parents=True, exist_ok=True)
    tokenizer = BertTokenizerFast(vocab=str(write_vocab(root / "vocab.txt")), do_lower_case=True)
    torch.manual_seed(0)
    model = BertForSequenceClassification(tiny_config(multi_label))
    if multi_label:
        rows = multi_label_rows(seed=1)
        targets = torch.zeros(len(rows), len(LABELS))
        for row, (_, classes) in enumerate(rows):
            targets[row, [LABELS.index(name) for name in classes]] = 1.0
    else:
        rows = single_label_rows(seed=1)
        targets = torch.tensor([LABELS.index(label) for _, label in rows])
    # The multi-label model needs more steps before every label is predicted with confidence.
    train_classifier(model, tokenizer, [text for text, _ in rows], targets, steps=500 if multi_label else 200)
    model.to(dtype).save_pretrained(root)
    tokenizer.save_pretrained(root)
    return root


def cached_classifier(tmp_path_factory, kind: str = "single") -> Path:
    """Return the directory of a tiny classifier of ``kind`` (single, multi or float16), built once per session."""
    if kind not in _CACHE:
        root = tmp_path_factory.mktemp(f"classifier-{kind}") / "model"
        if kind == "float16":
            _CACHE[kind] = build_classifier(root, dtype=torch.float16)
        else:
            _CACHE[kind] = build_classifier(root, multi_label=kind == "multi")
    return _CACHE[kind]
