"""The end-to-end demo: real clinical notes, a real encoder, create, apply, evaluate, revert.

:func:`run_demo` loads or builds a cached MTSamples specialty classifier, creates a forget patch
for one specialty, applies it in memory, evaluates before and after on the test split, reverts it
and checks that every tensor is bit-identical to the original.

The classifier is cached under :func:`cache_root` in a directory named by a hash of its recipe
(encoder weights, data file, training settings and library versions), so a second run skips
fine-tuning and a changed recipe never reuses a stale model.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import torch
from torch import nn

from .errors import DataError
from .patch import file_sha256, tensor_sha256

logger = logging.getLogger(__name__)

DEFAULT_FORGET_CLASS = "Cardiovascular / Pulmonary"
CACHE_ENV = "STEU_PATCH_CACHE"


def cache_root() -> Path:
    """Return steu-patch's cache directory: ``$STEU_PATCH_CACHE``, else ``$XDG_CACHE_HOME/steu-patch``, else ``~/.cache/steu-patch``."""
    if os.environ.get(CACHE_ENV):
        return Path(os.environ[CACHE_ENV]).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base).expanduser() / "steu-patch"


@dataclass(frozen=True)
class ClassifierRecipe:
    """Everything that determines the demo classifier's weights.

    The defaults fit a first demo run into minutes on 2 CPU cores: 128 tokens cover the opening
    sections of a note (history, procedure), which name the specialty in most notes.

    Attributes:
        encoder: local directory or Hub id of the pretrained encoder; ``None`` is the bundled
            all-MiniLM-L6-v2.
        data: prepared ``text,label,split`` gzip CSV; ``None`` is the bundled MTSamples subset.
    """

    encoder: str | None = None
    data: str | None = None
    epochs: float = 3.0
    learning_rate: float = 1e-4
    batch_size: int = 16
    max_length: int = 128
    seed: int = 0

    def resolved_encoder(self) -> str:
        from .finetune import embedded_encoder_path

        return self.encoder or str(embedded_encoder_path())

    def resolved_data(self) -> Path:
        from .finetune import prepared_data_path

        return Path(self.data) if self.data else prepared_data_path()

    def cache_key(self) -> str:
        """Return a hash of the recipe, the encoder's and data's bytes, and the library versions."""
        import transformers

        encoder = self.resolved_encoder()
        weights = Path(encoder) / "model.safetensors"
        recipe = {key: value for key, value in asdict(self).items() if key not in ("encoder", "data")}
        # The CLI passes floats, the dataclass defaults may be ints: 3 and 3.0 must share a key.
        recipe.update(epochs=float(self.epochs), learning_rate=float(self.learning_rate))
        identity = {
            "recipe": recipe,
            "encoder": file_sha256(weights) if weights.is_file() else encoder,
            "data": file_sha256(self.resolved_data()),
            "torch": torch.__version__.split("+")[0],
            "transformers": transformers.__version__,
        }
        return hashlib.sha256(json.dumps(identity, sort_keys=True).encode()).hexdigest()[:16]


@dataclass(frozen=True)
class DemoOptions:
    """Settings of :func:`run_demo`; STEU settings left ``None`` use ``create``'s defaults."""

    forget_classes: tuple[str, ...] = (DEFAULT_FORGET_CLASS,)
    recipe: ClassifierRecipe = field(default_factory=ClassifierRecipe)
    cache_dir: Path | None = None
    output: Path | None = None
    top_k: int | None = None
    epochs: int | None = None
    learning_rate: float | None = None
    rebuild: bool = False
    show_progress: bool = True


@dataclass(frozen=True)
class DemoResult:
    """Numbers the demo reports; ``to_dict`` gives the ``--json`` object."""

    forget_classes: list[str]
    forget_f1_before: float
    forget_f1_after: float
    retain_macro_f1_before: float
    retain_macro_f1_after: float
    retain_accuracy_before: float
    retain_accuracy_after: float
    retain_macro_f1_all_texts_before: float
    retain_macro_f1_all_texts_after: float
    params_modified: int
    params_modified_fraction: float
    tokens: int
    patch_bytes: int
    roundtrip_bit_exact: bool
    classifier_cached: bool
    finetune_seconds: float
    create_seconds: float
    apply_seconds: float
    evaluate_seconds: float
    revert_seconds: float
    total_seconds: float
    test_texts: int
    classifier_dir: str
    patch_dir: str

    def to_dict(self) -> dict[str, Any]:
        return asdict(self)


def state_hashes(model: nn.Module) -> dict[str, str]:
    """Return the SHA-256 of every parameter and buffer of ``model``."""
    return {name: tensor_sha256(tensor) for name, tensor in model.state_dict().items()}


def finetune_recipe(recipe: ClassifierRecipe, output_dir: Path, *, overwrite: bool, show_progress: bool) -> Any:
    """Fine-tune ``recipe``'s encoder on the train split of its data; return the ``FinetuneResult``.

    Classes are numbered in sorted name order; validation accuracy is measured when the data has
    a validation split.
    """
    from .finetune import finetune_classifier, load_prepared_data

    splits = load_prepared_data(recipe.resolved_data())
    texts, names = splits["train"]
    label_names = sorted(set(names))
    index = {name: position for position, name in enumerate(label_names)}
    validation_texts, validation_names = splits.get("validation", ([], []))
    result = finetune_classifier(
        recipe.resolved_encoder(), texts, [index[name] for name in names], label_names, output_dir,
        epochs=recipe.epochs, learning_rate=recipe.learning_rate, batch_size=recipe.batch_size,
        max_length=recipe.max_length, seed=recipe.seed,
        eval_texts=validation_texts or None,
        eval_labels=[index[name] for name in validation_names] or None,
        show_progress=show_progress, overwrite=overwrite,
    )
    (Path(output_dir) / "steu_patch_recipe.json").write_text(json.dumps(asdict(recipe), indent=2) + "\n", encoding="utf-8")
    return result


def load_or_build_classifier(recipe: ClassifierRecipe, cache_dir: Path, *, rebuild: bool, show_progress: bool) -> tuple[Path, bool, float]:
    """Return the cached classifier directory of ``recipe``, fine-tuning it first if needed.

    Returns:
        ``(directory, was_cached, fine-tuning seconds)``.
    """
    directory = cache_dir / "classifiers" / recipe.cache_key()
    if (directory / "config.json").is_file() and not rebuild:
        logger.info("Using the cached classifier in %s", directory)
        return directory, True, 0.0
    started = time.perf_counter()
    finetune_recipe(recipe, directory, overwrite=True, show_progress=show_progress)
    return directory, False, time.perf_counter() - started


def _labeled(texts: Sequence[str], names: Sequence[str], label2id: dict[str, int]) -> Any:
    from .data import LabeledTexts

    unknown = sorted(set(names) - set(label2id))
    if unknown:
        raise DataError(f"The demo data has label(s) {unknown} that the cached classifier does not know; pass --rebuild.")
    return LabeledTexts(texts=list(texts), labels=[label2id[name] for name in names], multi_label=False)


def run_demo(options: DemoOptions = DemoOptions()) -> DemoResult:
    """Run the whole demo and return its measurements (see the module docstring)."""
    from .apply import PatchedModel
    from .create import CreateOptions, create_patch, load_classifier
    from .evaluation import compute_metrics, predict_logits
    from .finetune import load_prepared_data

    started = time.perf_counter()
    cache_dir = options.cache_dir or cache_root()
    classifier_dir, cached, finetune_seconds = load_or_build_classifier(
        options.recipe, cache_dir, rebuild=options.rebuild, show_progress=options.show_progress
    )
    model, tokenizer = load_classifier(classifier_dir)
    label2id = {name: int(class_id) for class_id, name in model.config.id2label.items()}
    splits = load_prepared_data(options.recipe.resolved_data())
    train, validation, test = (_labeled(*splits[name], label2id) for name in ("train", "validation", "test"))

    create_options = CreateOptions(
        **{key: value for key, value in (("top_k", options.top_k), ("epochs", options.epochs), ("learning_rate", options.learning_rate)) if value is not None},
        max_length=options.recipe.max_length, seed=options.recipe.seed, show_progress=options.show_progress,
    )
    step = time.perf_counter()
    result = create_patch(model, tokenizer, train, validation, list(options.forget_classes), create_options, model_name=str(classifier_dir))
    patch_dir = options.output or cache_dir / "demo" / "patch"
    result.patch.save_pretrained(patch_dir, overwrite=True)
    create_seconds = time.perf_counter() - step

    forget_ids = [label2id[name] for name in result.patch.forget_classes]
    id2label = {int(class_id): name for class_id, name in model.config.id2label.items()}

    def evaluate() -> Any:
        logits = predict_logits(model, tokenizer, test.texts, max_length=options.recipe.max_length, show_progress=options.show_progress, desc="Evaluating")
        return compute_metrics(logits, test.labels, id2label=id2label, forget_ids=forget_ids)

    step = time.perf_counter()
    before = evaluate()
    evaluate_seconds = time.perf_counter() - step
    original = state_hashes(model)

    step = time.perf_counter()
    patched = PatchedModel(model, result.patch)
    apply_seconds = time.perf_counter() - step
    step = time.perf_counter()
    after = evaluate()
    evaluate_seconds += time.perf_counter() - step

    step = time.perf_counter()
    patched.unload()
    revert_seconds = time.perf_counter() - step
    roundtrip = state_hashes(model) == original

    modified = result.patch.manifest["parameters_modified"]
    return DemoResult(
        forget_classes=result.patch.forget_classes,
        forget_f1_before=before.forget_f1, forget_f1_after=after.forget_f1,
        retain_macro_f1_before=before.retain_macro_f1, retain_macro_f1_after=after.retain_macro_f1,
        retain_accuracy_before=before.retain_accuracy, retain_accuracy_after=after.retain_accuracy,
        retain_macro_f1_all_texts_before=before.retain_macro_f1_all_texts,
        retain_macro_f1_all_texts_after=after.retain_macro_f1_all_texts,
        params_modified=modified["count"], params_modified_fraction=modified["fraction"],
        tokens=len(result.patch.token_ids),
        patch_bytes=sum(path.stat().st_size for path in Path(patch_dir).iterdir() if path.is_file()),
        roundtrip_bit_exact=roundtrip, classifier_cached=cached,
        finetune_seconds=finetune_seconds, create_seconds=create_seconds, apply_seconds=apply_seconds,
        evaluate_seconds=evaluate_seconds, revert_seconds=revert_seconds,
        total_seconds=time.perf_counter() - started, test_texts=len(test),
        classifier_dir=str(classifier_dir), patch_dir=str(patch_dir),
    )
