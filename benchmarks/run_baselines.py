"""Compare STEU with what a user would do instead, on the demo's classifier and split.

Usage (from the repository root, in the project's virtual environment)::

    python benchmarks/run_baselines.py --quick                # minutes: a tiny end-to-end check
    python benchmarks/run_baselines.py                        # the full comparison (demo recipe)

The main process builds (or reuses) the cached classifier with ``load_or_build_classifier``,
writes the shared settings, then runs every method in a fresh Python process so that each
method's peak resident set size is its own. Each worker times the method, records its peak RSS,
measures the result and writes ``<work-dir>/<method>/result.json``. The main process adds the
comparisons with the retrained model, writes the results JSON and renders the
"STEU against baselines" section of ``docs/benchmarks.md``.
"""

from __future__ import annotations

import argparse
import csv
import gzip
import json
import logging
import os
import platform
import random
import shlex
import shutil
import subprocess
import sys
import time
from collections import Counter
from dataclasses import asdict
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

BENCHMARK_DIR = Path(__file__).resolve().parent
REPOSITORY = BENCHMARK_DIR.parent
RESULT_NAME = "result.json"
SCHEMA_VERSION = 1

logger = logging.getLogger("run_baselines")


def parse_arguments(argv: list[str] | None) -> argparse.Namespace:
    from unlearning_methods import METHODS

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--quick", action="store_true", help="tiny data subset, max_length 32, 1 epoch: checks that everything runs")
    parser.add_argument("--max-length", type=int, default=None, help="tokens per text for every method (default: the demo recipe's)")
    parser.add_argument("--classifier-epochs", type=float, default=None, help="epochs of the classifier and of retraining (default: the demo recipe's)")
    parser.add_argument("--methods", nargs="+", choices=list(METHODS), default=list(METHODS), help="methods to run (default: all)")
    parser.add_argument("--full-lr", type=float, default=None, help="Adam learning rate of the full-model baseline (default: the classifier's)")
    parser.add_argument("--lora-lr", type=float, default=1e-3, help="Adam learning rate of the LoRA baseline (default 1e-3)")
    parser.add_argument("--probe-retain-texts", type=int, default=366, help="retained training texts in the probe subset (default 366)")
    parser.add_argument("--work-dir", type=Path, default=None, help="artifacts and per-method results (default: under the steu-patch cache)")
    parser.add_argument("--cache-dir", type=Path, default=None, help="classifier cache (default: steu-patch's cache directory)")
    parser.add_argument("--output", type=Path, default=None, help="results JSON (default benchmarks/results/baselines.json; --quick: in the work dir)")
    parser.add_argument("--docs", type=Path, default=None, help="markdown file whose benchmark section is rendered (default docs/benchmarks.md; --quick: none)")
    parser.add_argument("--resume", action="store_true", help="keep per-method results already in the work dir")
    parser.add_argument("--progress", action="store_true", help="draw progress bars on stderr")
    parser.add_argument("--note", action="append", default=[], help="a sentence recorded with the results (repeatable)")
    return parser.parse_args(argv)


# ----- setup -----


def write_quick_data(path: Path, seed: int = 0) -> Path:
    """Write a small prepared-data file: a few texts per class and split, more of the forget class."""
    from steu_patch.demo import DEFAULT_FORGET_CLASS
    from steu_patch.finetune import load_prepared_data

    per_class = {"train": 4, "validation": 2, "test": 2}
    rows = []
    rng = random.Random(seed)
    for split, (texts, labels) in load_prepared_data().items():
        by_class: dict[str, list[str]] = {}
        for text, label in zip(texts, labels):
            by_class.setdefault(label, []).append(text)
        for label, members in sorted(by_class.items()):
            count = per_class[split] * (3 if label == DEFAULT_FORGET_CLASS else 1)
            rows += [(text, label, split) for text in rng.sample(members, min(count, len(members)))]
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(path.name + ".tmp")
    with gzip.open(staging, "wt", encoding="utf-8", newline="") as handle:
        writer = csv.writer(handle)
        writer.writerow(["text", "label", "split"])
        writer.writerows(rows)
    staging.replace(path)
    return path


def build_settings(args: argparse.Namespace, work_dir: Path) -> tuple[Any, dict[str, Any]]:
    """Build or reuse the classifier and return the worker settings and facts about the classifier."""
    from benchmark_setup import BenchmarkSettings
    from steu_patch.create import DEFAULT_BATCH_SIZE, DEFAULT_EPOCHS, DEFAULT_LEARNING_RATE, DEFAULT_TARGET_FORGET_F1
    from steu_patch.demo import DEFAULT_FORGET_CLASS, ClassifierRecipe, cache_root, load_or_build_classifier

    if args.quick:
        recipe = ClassifierRecipe(data=str(write_quick_data(work_dir / "quick_data.csv.gz")), epochs=1, max_length=32)
        cache_dir = work_dir
    else:
        overrides = {"epochs": args.classifier_epochs, "max_length": args.max_length}
        recipe = ClassifierRecipe(**{key: value for key, value in overrides.items() if value is not None})
        cache_dir = args.cache_dir or cache_root()
    started = time.perf_counter()
    classifier_dir, cached, finetune_seconds = load_or_build_classifier(recipe, cache_dir, rebuild=False, show_progress=args.progress)
    settings = BenchmarkSettings(
        classifier_dir=str(copy_classifier(classifier_dir, work_dir / "classifier", recipe.cache_key())), data_path=str(recipe.resolved_data()), forget_class=DEFAULT_FORGET_CLASS,
        recipe=asdict(recipe), max_length=recipe.max_length, seed=recipe.seed,
        steu_epochs=DEFAULT_EPOCHS, steu_learning_rate=DEFAULT_LEARNING_RATE, batch_size=DEFAULT_BATCH_SIZE,
        target_forget_f1=DEFAULT_TARGET_FORGET_F1,
        full_learning_rate=args.full_lr if args.full_lr is not None else recipe.learning_rate,
        lora_learning_rate=args.lora_lr, lora_rank=8, lora_alpha=16, random_tokens=256,
        probe_retain_texts=16 if args.quick else args.probe_retain_texts,
        show_progress=args.progress, notes=list(args.note),
    )
    classifier = {
        "cache_key": recipe.cache_key(), "was_cached": cached, "finetune_seconds": round(finetune_seconds, 1),
        "setup_seconds": round(time.perf_counter() - started, 1),
    }
    return settings, classifier


def copy_classifier(source: Path, target: Path, cache_key: str) -> Path:
    """Copy the cached classifier into the work directory, so a cache change during the run cannot reach the workers."""
    marker = target / "cache_key.txt"
    if marker.is_file() and marker.read_text(encoding="utf-8") == cache_key:
        return target
    staging = target.with_name(target.name + ".tmp")
    shutil.rmtree(staging, ignore_errors=True)
    shutil.copytree(source, staging)
    (staging / "cache_key.txt").write_text(cache_key, encoding="utf-8")
    shutil.rmtree(target, ignore_errors=True)
    staging.replace(target)
    return target


# ----- one method in a fresh process -----


def run_worker(method_key: str, work_dir: Path) -> None:
    """Run one method, time it, record its peak RSS, measure the result and write ``result.json``."""
    from benchmark_setup import BenchmarkSettings, load_benchmark_data
    from measurements import count_modified_values, measure_unlearned, notes_with_tokens, peak_rss_mib
    from steu_patch.create import load_classifier
    from steu_patch.models import count_parameters
    from unlearning_methods import METHODS, MethodContext

    settings = BenchmarkSettings.load(work_dir)
    model, tokenizer = load_classifier(settings.classifier_dir)
    model = model.float().eval()
    data = load_benchmark_data(settings, {int(key): name for key, name in model.config.id2label.items()})
    output_dir = work_dir / method_key
    output_dir.mkdir(parents=True, exist_ok=True)
    context = MethodContext(model, tokenizer, data, settings, output_dir)

    rss_before = peak_rss_mib()
    started = time.perf_counter()
    unlearned = METHODS[method_key].run(context)
    seconds = time.perf_counter() - started
    rss_peak = peak_rss_mib()
    logger.info("%s finished in %.1f s, peak RSS %.0f MiB", method_key, seconds, rss_peak)

    result = {
        "method": method_key, "seconds": seconds, "peak_rss_mib": rss_peak, "rss_before_method_mib": rss_before,
        "artifact_dir": None if unlearned.artifact_dir is None else str(unlearned.artifact_dir),
        "artifact_bytes": unlearned.artifact_bytes, "weights_bytes": unlearned.weights_bytes,
        "trainable_parameters": unlearned.trainable_parameters,
        "modified_values": count_modified_values(model, unlearned.model), "total_parameters": count_parameters(model),
        "details": unlearned.details,
    }
    token_ids = unlearned.details.get("token_ids")
    if token_ids:
        result["token_coverage"] = notes_with_tokens(tokenizer, data.train, data.forget_ids, token_ids, settings.max_length)
    result.update(measure_unlearned(unlearned, tokenizer, data, settings))
    write_json(output_dir / RESULT_NAME, result)


def write_json(path: Path, content: Any) -> None:
    """Write JSON through a temporary file renamed into place."""
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(path.name + ".tmp")
    staging.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")
    staging.replace(path)


def launch_worker(method_key: str, work_dir: Path) -> dict[str, Any]:
    """Run ``method_key`` in a fresh interpreter and return its result, or a record of the failure."""
    result_path = work_dir / method_key / RESULT_NAME
    result_path.unlink(missing_ok=True)
    load_before = os.getloadavg()
    started = time.perf_counter()
    completed = subprocess.run([sys.executable, str(Path(__file__).resolve()), "_worker", method_key, str(work_dir)], check=False)
    process = {
        "exit_code": completed.returncode, "process_seconds": round(time.perf_counter() - started, 1),
        "load_average_before": [round(value, 2) for value in load_before],
        "load_average_after": [round(value, 2) for value in os.getloadavg()],
    }
    if completed.returncode != 0 or not result_path.is_file():
        logger.error("Method %s failed with exit code %d; see the log above.", method_key, completed.returncode)
        return {"method": method_key, "error": f"worker exited with code {completed.returncode}", "process": process}
    result = json.loads(result_path.read_text(encoding="utf-8"))
    result["process"] = process
    write_json(result_path, result)
    return result


# ----- comparisons and the results file -----


def recompute_metrics(result: dict[str, Any], test_labels: list[int], id2label: dict[int, str], forget_ids: tuple[int, ...]) -> None:
    """Recompute the test metrics from the stored predictions with this process's ``compute_metrics``.

    One-hot logits have the predictions as their argmax, so the metrics equal those of the model's
    logits, and every method of a resumed run is scored by the same library version.
    """
    import torch

    from steu_patch.evaluation import compute_metrics

    logits = torch.nn.functional.one_hot(torch.tensor(result["test_predictions"]), len(id2label)).float()
    metrics = compute_metrics(logits, test_labels, id2label=id2label, forget_ids=forget_ids)
    result["metrics"] = {
        "forget_f1": metrics.forget_f1,
        "retain_macro_f1": metrics.retain_macro_f1,
        "retain_accuracy": metrics.retain_accuracy,
        # Present when the library reports macro-F1 over all texts next to the retain-set value.
        "retain_macro_f1_all_texts": getattr(metrics, "retain_macro_f1_all_texts", None),
        "per_class_f1": {name: values["f1"] for name, values in metrics.per_class.items()},
    }


def add_comparisons(results: dict[str, dict[str, Any]], test_labels: list[int], id2label: dict[int, str], forget_ids: tuple[int, ...]) -> None:
    """Add test metrics, agreement with the retrained model, forget-note destinations and time relative to retraining."""
    retrain = results.get("retrain")
    retrain_ok = retrain is not None and "error" not in retrain
    forget_rows = [row for row, label in enumerate(test_labels) if label in forget_ids]
    retained_rows = [row for row, label in enumerate(test_labels) if label not in forget_ids]
    for result in results.values():
        if "error" in result:
            continue
        recompute_metrics(result, test_labels, id2label, forget_ids)
        predictions = result["test_predictions"]
        destinations = Counter(id2label[predictions[row]] for row in forget_rows)
        result["forget_notes_predicted_as"] = dict(destinations.most_common())
        result["modified_fraction"] = result["modified_values"] / result["total_parameters"]
        if not retrain_ok:
            continue
        reference = retrain["test_predictions"]
        for name, rows in (("retained", retained_rows), ("forget", forget_rows)):
            result[f"agreement_with_retrain_{name}"] = sum(predictions[row] == reference[row] for row in rows) / len(rows)
        result["seconds_vs_retrain"] = result["seconds"] / retrain["seconds"]


def hardware_facts() -> dict[str, Any]:
    """CPU model, core count and memory as ``lscpu`` and ``/proc/meminfo`` report them."""
    facts: dict[str, Any] = {"machine": platform.machine(), "cpu_count": os.cpu_count()}
    try:
        lscpu = subprocess.run(["lscpu"], capture_output=True, text=True, check=True).stdout
    except (OSError, subprocess.CalledProcessError) as error:
        logger.warning("lscpu failed (%s); the CPU model is not recorded.", error)
        lscpu = ""
    for line in lscpu.splitlines():
        key, _, value = line.partition(":")
        if key.strip() in ("Model name", "CPU(s)", "Thread(s) per core", "Core(s) per socket"):
            facts[key.strip()] = value.strip()
    meminfo = Path("/proc/meminfo")
    if meminfo.is_file():
        total_kib = next((int(line.split()[1]) for line in meminfo.read_text().splitlines() if line.startswith("MemTotal:")), None)
        facts["memory_gib"] = None if total_kib is None else round(total_kib / 1024**2, 1)
    return facts


def software_versions() -> dict[str, str]:
    import peft
    import torch
    import transformers

    import steu_patch

    return {"python": platform.python_version(), "torch": torch.__version__, "transformers": transformers.__version__,
            "peft": peft.__version__, "steu_patch": steu_patch.__version__}


def run_benchmark(args: argparse.Namespace) -> dict[str, Any]:
    """Run every requested method and return the results document."""
    from benchmark_setup import load_benchmark_data
    from steu_patch.demo import cache_root
    from transformers import AutoConfig
    from unlearning_methods import METHODS

    work_dir = (args.work_dir or cache_root() / "benchmarks" / ("quick" if args.quick else "full")).resolve()
    work_dir.mkdir(parents=True, exist_ok=True)
    started = time.perf_counter()
    started_at = datetime.now(timezone.utc)
    load_start = os.getloadavg()
    settings, classifier = build_settings(args, work_dir)
    settings.save(work_dir)

    results: dict[str, dict[str, Any]] = {}
    for method_key in args.methods:
        existing = work_dir / method_key / RESULT_NAME
        if args.resume and existing.is_file():
            logger.info("Reusing %s", existing)
            results[method_key] = json.loads(existing.read_text(encoding="utf-8"))
            continue
        logger.info("Running %s", method_key)
        results[method_key] = launch_worker(method_key, work_dir)

    for key, result in results.items():
        result.update(label=METHODS[key].label, description=METHODS[key].description)
    id2label = {int(key): name for key, name in AutoConfig.from_pretrained(settings.classifier_dir).id2label.items()}
    data = load_benchmark_data(settings, id2label)
    add_comparisons(results, data.test.labels, id2label, data.forget_ids)
    return {
        "schema_version": SCHEMA_VERSION,
        "command": "python " + " ".join(shlex.quote(part) for part in [os.path.relpath(__file__, REPOSITORY), *sys.argv[1:]]),
        "started_at": started_at.isoformat(timespec="seconds"),
        "total_seconds": round(time.perf_counter() - started, 1),
        "quick": args.quick,
        "hardware": hardware_facts(),
        "load_average_start": [round(value, 2) for value in load_start],
        "load_average_end": [round(value, 2) for value in os.getloadavg()],
        "software": software_versions(),
        "settings": asdict(settings),
        "classifier": classifier,
        "data": data.counts(),
        "methods": [results[key] for key in args.methods],
    }


def main(argv: list[str] | None = None) -> int:
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s %(message)s", stream=sys.stderr)
    sys.path.insert(0, str(BENCHMARK_DIR))
    arguments = sys.argv[1:] if argv is None else argv
    if arguments[:1] == ["_worker"]:
        run_worker(arguments[1], Path(arguments[2]))
        return 0

    args = parse_arguments(arguments)
    document = run_benchmark(args)
    output = args.output or document_default_output(args)
    write_json(output, document)
    logger.info("Wrote %s", output)
    docs = args.docs or (None if args.quick else REPOSITORY / "docs" / "benchmarks.md")
    if docs is not None:
        from render_docs import update_document

        update_document(docs, document, results_path=output)
        logger.info("Rendered the benchmark section of %s", docs)
    failed = [result["method"] for result in document["methods"] if "error" in result]
    return 1 if failed else 0


def document_default_output(args: argparse.Namespace) -> Path:
    if args.quick:
        from steu_patch.demo import cache_root

        return (args.work_dir or cache_root() / "benchmarks" / "quick") / "baselines-quick.json"
    return BENCHMARK_DIR / "results" / "baselines.json"


if __name__ == "__main__":
    sys.exit(main())
