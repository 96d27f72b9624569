"""Settings and data that the benchmark's main process and every method worker share.

The main process writes :class:`BenchmarkSettings` to ``settings.json`` in the work directory.
Each worker reads it back, loads the same classifier and splits, and draws the same probe subset,
so every method is measured on identical inputs.
"""

from __future__ import annotations

import json
import random
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

from steu_patch.data import LabeledTexts
from steu_patch.finetune import load_prepared_data

SETTINGS_NAME = "settings.json"


@dataclass(frozen=True)
class BenchmarkSettings:
    """Everything a method worker needs besides the method's name.

    Attributes:
        classifier_dir: the fine-tuned classifier every method starts from.
        data_path: the prepared ``text,label,split`` gzip CSV the classifier was trained on.
        recipe: the ``ClassifierRecipe`` fields, reused for retraining without the forget class.
        steu_epochs / steu_learning_rate / batch_size / target_forget_f1: STEU's training
            settings (``create_patch`` defaults), also used by the head, rows and random methods.
        full_learning_rate / lora_learning_rate: Adam learning rates of the full-model and LoRA
            baselines, which train far more values than STEU.
        random_tokens: embedding rows of the random-token baseline.
        probe_retain_texts: retained training texts in the probe's training subset (all
            forget-class training texts are always in it).
        relearn_*: budget of the head-only relearning check (the audit's defaults).
    """

    classifier_dir: str
    data_path: str
    forget_class: str
    recipe: dict[str, Any]
    max_length: int
    seed: int
    steu_epochs: int
    steu_learning_rate: float
    batch_size: int
    target_forget_f1: float
    full_learning_rate: float
    lora_learning_rate: float
    lora_rank: int
    lora_alpha: int
    random_tokens: int
    probe_retain_texts: int
    relearn_forget_texts: int = 16
    relearn_retain_texts: int = 16
    relearn_max_steps: int = 200
    relearn_learning_rate: float = 1e-3
    relearn_threshold: float = 0.5
    eval_batch_size: int = 32
    show_progress: bool = False
    notes: list[str] = field(default_factory=list)

    def save(self, work_dir: Path) -> None:
        path = work_dir / SETTINGS_NAME
        staging = path.with_suffix(".json.tmp")
        staging.write_text(json.dumps(asdict(self), indent=2) + "\n", encoding="utf-8")
        staging.replace(path)

    @classmethod
    def load(cls, work_dir: Path) -> BenchmarkSettings:
        return cls(**json.loads((work_dir / SETTINGS_NAME).read_text(encoding="utf-8")))


@dataclass(frozen=True)
class BenchmarkData:
    """The splits with the classifier's class ids, and the probe's training subset.

    ``probe_train`` contains every forget-class training text (the membership-inference members)
    and a seeded sample of retained training texts.
    """

    train: LabeledTexts
    validation: LabeledTexts
    test: LabeledTexts
    probe_train: LabeledTexts
    id2label: dict[int, str]
    forget_ids: tuple[int, ...]

    def counts(self) -> dict[str, Any]:
        """Texts and forget-class texts per split, for the results file."""
        forget = set(self.forget_ids)
        return {
            name: {"texts": len(part), "forget_texts": sum(label in forget for label in part.labels)}
            for name, part in (("train", self.train), ("validation", self.validation), ("test", self.test),
                               ("probe_train", self.probe_train))
        }


def load_benchmark_data(settings: BenchmarkSettings, id2label: dict[int, str]) -> BenchmarkData:
    """Load the splits with ``id2label``'s class ids and draw the probe subset.

    Raises:
        KeyError: the data has a label the classifier does not know, or the forget class is
            unknown; rebuild the classifier from the same data.
    """
    label2id = {name: class_id for class_id, name in id2label.items()}
    splits = load_prepared_data(settings.data_path)
    parts = {
        name: LabeledTexts(texts=list(texts), labels=[label2id[label] for label in labels], multi_label=False)
        for name, (texts, labels) in splits.items()
    }
    forget_ids = (label2id[settings.forget_class],)
    train = parts["train"]
    return BenchmarkData(
        train=train,
        validation=parts["validation"],
        test=parts["test"],
        probe_train=train.subset(probe_rows(train.labels, forget_ids, settings.probe_retain_texts, settings.seed)),
        id2label=dict(id2label),
        forget_ids=forget_ids,
    )


def probe_rows(labels: list[int], forget_ids: tuple[int, ...], retain_texts: int, seed: int) -> list[int]:
    """Return every forget-class row and ``retain_texts`` retained rows drawn with ``seed``, sorted."""
    forget_rows = [row for row, label in enumerate(labels) if label in forget_ids]
    retain_rows = [row for row, label in enumerate(labels) if label not in forget_ids]
    sample = random.Random(seed).sample(retain_rows, min(retain_texts, len(retain_rows)))
    return sorted(forget_rows + sample)
