"""Render the "STEU against baselines" section of docs/benchmarks.md from the results JSON.

Only that section is replaced: it runs from its heading to the next second-level heading, and
the rest of the document stays as it is. Every sentence that compares methods is generated from
the measured numbers, so re-rendering after a new run never leaves a stale claim behind.

Usage: ``python benchmarks/render_docs.py benchmarks/results/baselines.json docs/benchmarks.md``
"""

from __future__ import annotations

import json
import math
import sys
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

HEADING = "## STEU against baselines"
DOCUMENT_TITLE = "# Benchmarks"


Result = dict[str, Any]


@dataclass(frozen=True)
class Criterion:
    """One measured quantity compared between STEU and a baseline.

    Attributes:
        direction: which way is better, in words.
        tolerance: the largest difference that counts as the same, from the results document and
            the two results compared.
    """

    name: str
    direction: str
    value: Callable[[Result], float | None]
    higher_is_better: bool
    tolerance: Callable[[dict[str, Any], Result, Result], float]
    show: Callable[[float | None], str]

    def compare(self, document: dict[str, Any], first: Result, second: Result) -> int | None:
        """Return 1 when ``first`` is better, -1 when worse, 0 within the tolerance, None when either is unmeasured."""
        first_value, second_value = self.value(first), self.value(second)
        if first_value is None or second_value is None:
            return None
        if first_value == second_value:
            return 0
        if abs(first_value - second_value) <= self.tolerance(document, first, second) + 1e-9:
            return 0
        first_is_better = first_value > second_value if self.higher_is_better else first_value < second_value
        return 1 if first_is_better else -1


def one_forget_note(document: dict[str, Any], first: Result, second: Result) -> float:
    return 1 / document["data"]["test"]["forget_texts"]


def one_retained_note(document: dict[str, Any], first: Result, second: Result) -> float:
    test = document["data"]["test"]
    return 1 / (test["texts"] - test["forget_texts"])


def auc_standard_error(result: Result) -> float:
    """Return the Hanley-McNeil (1982) standard error of the membership-inference AUC of ``result``."""
    attack = result["membership_inference"]
    auc, positives, negatives = attack["auc"], attack["members"], attack["non_members"]
    q1 = auc / (2 - auc)
    q2 = 2 * auc**2 / (1 + auc)
    variance = auc * (1 - auc) + (positives - 1) * (q1 - auc**2) + (negatives - 1) * (q2 - auc**2)
    return math.sqrt(max(variance, 0.0) / (positives * negatives))


def larger_auc_error(document: dict[str, Any], first: Result, second: Result) -> float:
    return max(auc_standard_error(first), auc_standard_error(second))


def one_step(document: dict[str, Any], first: Result, second: Result) -> float:
    return 1.0


def exact(document: dict[str, Any], first: Result, second: Result) -> float:
    return 0.0


def tenth_of_time(document: dict[str, Any], first: Result, second: Result) -> float:
    return 0.1 * max(first["seconds"], second["seconds"])


def _fixed(digits: int) -> Callable[[float | None], str]:
    return lambda value: "n/a" if value is None else f"{value:.{digits}f}"


def _relearn_value(result: Result) -> float | None:
    steps = result["relearning"]["steps_to_recover"]
    return float("inf") if steps is None else float(steps)


def _show_steps(value: float | None) -> str:
    if value is None:
        return "n/a"
    return "not within the budget" if value == float("inf") else f"{int(value)}"


CRITERIA = (
    Criterion("forget F1", "lower is better", lambda r: r["metrics"]["forget_f1"], False, one_forget_note, _fixed(3)),
    Criterion("retained macro-F1", "higher is better", lambda r: r["metrics"]["retain_macro_f1"], True, one_retained_note, _fixed(3)),
    Criterion("retained macro-F1 over all texts", "higher is better",
              lambda r: r["metrics"].get("retain_macro_f1_all_texts"), True, one_retained_note, _fixed(3)),
    Criterion("agreement with the retrained model on retained notes", "higher is closer to the gold standard",
              lambda r: r.get("agreement_with_retrain_retained"), True, one_retained_note, _fixed(3)),
    Criterion("agreement with the retrained model on forget-class notes", "higher is closer to the gold standard",
              lambda r: r.get("agreement_with_retrain_forget"), True, one_forget_note, _fixed(3)),
    Criterion("linear-probe forget F1", "lower means the class is less recoverable from the features",
              lambda r: r["probe"]["forget_f1"], False, one_forget_note, _fixed(3)),
    Criterion("membership-inference AUC distance from 0.5", "lower leaks less",
              lambda r: abs(r["membership_inference"]["auc"] - 0.5), False, larger_auc_error, _fixed(3)),
    Criterion("head-only relearning steps", "more is harder to undo", _relearn_value, True, one_step, _show_steps),
    Criterion("share of parameters modified", "lower is better", lambda r: r["modified_fraction"], False, exact, lambda v: f"{v:.4%}"),
    Criterion("artifact bytes", "lower is better", lambda r: r["artifact_bytes"], False, exact, lambda v: _format_bytes(v)),
    Criterion("wall time", "lower is better", lambda r: r["seconds"], False, tenth_of_time, lambda v: f"{v:.0f} s"),
)


def _format_bytes(value: float | None) -> str:
    if value is None:
        return "n/a"
    if value < 1024:
        return f"{int(value)} B"
    if value < 1024**2:
        return f"{value / 1024:.1f} KiB"
    return f"{value / 1024**2:.1f} MiB"


def _format_steps(relearning: dict[str, Any]) -> str:
    steps = relearning["steps_to_recover"]
    if steps is None:
        return f"> {relearning['max_steps']}"
    return str(steps)


def _format_optional(value: float | None, digits: int = 3) -> str:
    return "n/a" if value is None else f"{value:.{digits}f}"


# ----- tables -----


def _time_cell(result: dict[str, Any]) -> str:
    ratio = result.get("seconds_vs_retrain")
    return f"{result['seconds']:.0f} s" + ("" if ratio is None else f" ({ratio:.2f}×)")


def _rss_cell(result: dict[str, Any]) -> str:
    return f"{result['peak_rss_mib']:.0f} MiB (+{result['peak_rss_mib'] - result['rss_before_method_mib']:.0f})"


def _artifact_cell(result: dict[str, Any]) -> str:
    return "n/a" if result["artifact_bytes"] is None else _format_bytes(result["artifact_bytes"])


COLUMNS: tuple[tuple[str, Callable[[dict[str, Any]], str]], ...] = (
    ("forget F1", lambda r: f"{r['metrics']['forget_f1']:.3f}"),
    ("retained macro-F1", lambda r: f"{r['metrics']['retain_macro_f1']:.3f}"),
    ("retained macro-F1, all texts", lambda r: _format_optional(r["metrics"].get("retain_macro_f1_all_texts"))),
    ("agreement with retrain: retained", lambda r: _agreement(r, "retained")),
    ("agreement with retrain: forget notes", lambda r: _agreement(r, "forget")),
    ("probe forget F1", lambda r: f"{r['probe']['forget_f1']:.3f}"),
    ("MIA AUC", lambda r: f"{r['membership_inference']['auc']:.3f}"),
    ("relearning steps", lambda r: _format_steps(r["relearning"])),
    ("values modified (share)", lambda r: f"{r['modified_values']:,} ({r['modified_fraction']:.2%})"),
    ("artifact", _artifact_cell),
    ("time (× retrain)", _time_cell),
    ("peak RSS (+ over the loaded classifier)", _rss_cell),
)


def results_table(document: dict[str, Any]) -> list[str]:
    """Return the main table's markdown lines, one row per method.

    The all-texts retained macro-F1 column appears only when the library reported it.
    """
    measured = [result for result in document["methods"] if "error" not in result]
    has_all_texts = any(result["metrics"].get("retain_macro_f1_all_texts") is not None for result in measured)
    columns = [column for column in COLUMNS if has_all_texts or column[0] != "retained macro-F1, all texts"]
    lines = ["| method | " + " | ".join(name for name, _ in columns) + " |", "|" + " --- |" * (len(columns) + 1)]
    labels = _labels(document)
    for result in document["methods"]:
        label = labels.get(result["method"], result["method"])
        if "error" in result:
            lines.append(f"| {label} | failed: {result['error']} |" + " |" * (len(columns) - 1))
        else:
            lines.append(f"| {label} | " + " | ".join(cell(result) for _, cell in columns) + " |")
    return lines


def _agreement(result: dict[str, Any], notes: str) -> str:
    if result["method"] == "retrain":
        return "reference"
    return _format_optional(result.get(f"agreement_with_retrain_{notes}"))


def destinations_table(document: dict[str, Any], top: int = 3) -> list[str]:
    """Return where each method's predictions put the forget-class test notes."""
    labels = _labels(document)
    lines = ["| method | forget-class test notes predicted as (count) |", "| --- | --- |"]
    for result in document["methods"]:
        if "error" in result:
            continue
        counts = list(result["forget_notes_predicted_as"].items())
        top_destinations = ", ".join(f"{name} ({count})" for name, count in counts[:top])
        rest = sum(count for _, count in counts[top:])
        lines.append(f"| {labels.get(result['method'], result['method'])} | {top_destinations}{f', others ({rest})' if rest else ''} |")
    return lines


def _labels(document: dict[str, Any]) -> dict[str, str]:
    return {result["method"]: result.get("label", result["method"]) for result in document["methods"]}


# ----- comparisons -----


def comparison_lines(document: dict[str, Any], baseline: str) -> list[str]:
    """Compare STEU with ``baseline`` on every criterion, with the measured values."""
    by_key = {result["method"]: result for result in document["methods"] if "error" not in result}
    if "steu" not in by_key or baseline not in by_key:
        return [f"- Not measured: STEU or {baseline} is missing from this run."]
    steu, other = by_key["steu"], by_key[baseline]
    label = _labels(document)[baseline].lower()
    outcomes: dict[int, list[str]] = {1: [], -1: [], 0: []}
    lines = []
    for criterion in CRITERIA:
        verdict = criterion.compare(document, steu, other)
        if verdict is None:
            continue
        outcomes[verdict].append(criterion.name)
        lines.append(
            f"  - {criterion.name} ({criterion.direction}): STEU {criterion.show(criterion.value(steu))}, "
            f"{label} {criterion.show(criterion.value(other))}."
        )
    wins, losses, ties = outcomes[1], outcomes[-1], outcomes[0]
    summary = [
        f"- STEU is better than {label} on: {', '.join(wins) or 'nothing measured'}.",
        f"- {label.capitalize()} is better than STEU on: {', '.join(losses) or 'nothing measured'}.",
        f"- The same within the stated tolerance: {', '.join(ties) or 'nothing'}.",
    ]
    return summary + ["- The values:"] + lines


# ----- the section -----


def render_section(document: dict[str, Any], results_path: str) -> str:
    """Return the whole "STEU against baselines" section as markdown."""
    parts = [HEADING, "", *_introduction(document, results_path), "", *results_table(document), "",
             *_token_lines(document), "", "### Where the forget-class test notes go", "", *destinations_table(document), "",
             "### Where STEU beats head-only training and logit masking, and where it does not", "",
             *_comparison_intro(document), "", "Against head-only training:", "", *comparison_lines(document, "head"), "",
             "Against logit masking:", "", *comparison_lines(document, "masking"), "",
             "### Setup of this run", "", *_setup_lines(document), "", "### How each number is measured", "",
             *_definitions(document)]
    return "\n".join(parts).rstrip() + "\n"


def _introduction(document: dict[str, Any], results_path: str) -> list[str]:
    data = document["data"]
    return [
        "Every method starts from the same fine-tuned all-MiniLM-L6-v2 MTSamples classifier and forgets "
        f"*{document['settings']['forget_class']}*. Numbers are from one run with one seed on the test split "
        f"({data['test']['texts']} notes, {data['test']['forget_texts']} of the forget class), so a difference of one "
        f"forget-class note moves forget F1 by about {1 / max(data['test']['forget_texts'], 1):.3f}. "
        f"Raw results: `{results_path}`.",
    ]


def _token_lines(document: dict[str, Any]) -> list[str]:
    lines = []
    for result in document["methods"]:
        coverage = result.get("token_coverage")
        if result["method"] not in ("steu", "random") or not coverage:
            continue
        token_set = "STEU's selected" if result["method"] == "steu" else "the random"
        lines.append(
            f"- {len(result['details']['token_ids'])} of {token_set} tokens: {coverage['retained_notes_with_token']} of "
            f"{coverage['retained_notes']} retained training notes and {coverage['forget_notes_with_token']} of "
            f"{coverage['forget_notes']} forget-class training notes contain at least one of them within the first "
            f"{document['settings']['max_length']} tokens; {coverage['tokens_in_any_note']} of the tokens occur in "
            "some training note."
        )
    return lines


def _comparison_intro(document: dict[str, Any]) -> list[str]:
    test = document["data"]["test"]
    retained = test["texts"] - test["forget_texts"]
    return [
        "Generated from the table above. A difference counts as the same when it is at most what one test note "
        f"changes: 1/{test['forget_texts']} for forget F1, forget-note agreement and the probe, and 1/{retained} for "
        "the retained measures. For membership inference the bound is the larger Hanley-McNeil standard error of the "
        "two AUCs, for relearning one step, and for wall time 10%. Shares and bytes are compared exactly. "
        "Masking changes no parameter, so the relearning check fine-tunes the original head and needs no step when "
        "the original classifier's forget F1 already exceeds the threshold.",
    ]


def _setup_lines(document: dict[str, Any]) -> list[str]:
    hardware, software, settings = document["hardware"], document["software"], document["settings"]
    recipe = settings["recipe"]
    process_seconds = sum(result.get("process", {}).get("process_seconds", 0) for result in document["methods"])
    lines = [
        f"- Command: `{document['command']}`, started {document['started_at']}, {document['total_seconds'] / 60:.0f} "
        f"minutes in total (classifier setup {document['classifier']['setup_seconds']:.0f} s"
        f"{', reused from the cache' if document['classifier']['was_cached'] else ''}). The method processes, "
        f"interpreter start and measurements included, ran {process_seconds / 60:.0f} minutes together, counting "
        "any result kept from an earlier invocation by `--resume`.",
        f"- Hardware: {hardware.get('Model name', 'unknown CPU')}, {hardware.get('CPU(s)', hardware['cpu_count'])} "
        f"CPU(s), {hardware.get('memory_gib', 'unknown')} GiB RAM, no GPU. Load average (1, 5, 15 min) "
        f"{document['load_average_start']} at the start and {document['load_average_end']} at the end.",
        f"- Software: Python {software['python']}, torch {software['torch']}, transformers {software['transformers']}, "
        f"peft {software['peft']}, steu-patch {software['steu_patch']}.",
        f"- Classifier and retraining recipe: {recipe['epochs']} epochs, learning rate {recipe['learning_rate']}, "
        f"batch size {recipe['batch_size']}, max_length {recipe['max_length']}, seed {recipe['seed']}.",
        f"- STEU, head only, rows only and random rows + head: at most {settings['steu_epochs']} epochs, Adam learning "
        f"rate {settings['steu_learning_rate']}, batch size {settings['batch_size']}, stop once validation forget F1 "
        f"is at most {settings['target_forget_f1']}. Full model: the same, with learning rate "
        f"{settings['full_learning_rate']}. LoRA: rank {settings['lora_rank']}, alpha {settings['lora_alpha']}, "
        f"learning rate {settings['lora_learning_rate']}.",
    ]
    lines += [f"- {note}" for note in settings.get("notes", [])]
    lines += _stop_lines(document)
    return lines


def _stop_lines(document: dict[str, Any]) -> list[str]:
    labels = _labels(document)
    stops = []
    for result in document["methods"]:
        details = result.get("details") or {}
        if "stop_reason" in details:
            stops.append(f"{labels[result['method']]} {details['epochs']} epoch(s), {details['steps']} steps ({details['stop_reason']})")
        elif "stopped_at" in details:
            stop = details["stopped_at"]
            stops.append(f"STEU {stop['epoch']} epoch(s), {stop['step']} steps ({stop['reason']})")
    return [f"- Where training stopped: {'; '.join(stops)}."] if stops else []


def _retained_definition(document: dict[str, Any]) -> str:
    measured = [result for result in document["methods"] if "error" not in result]
    if any(result["metrics"].get("retain_macro_f1_all_texts") is not None for result in measured):
        return (
            "Retained macro-F1 is computed on the notes whose true class is retained; the all-texts variant also "
            "counts forget-class notes that a method sends to a retained class as that class's false positives."
        )
    return "Retained macro-F1 is computed over all test notes."


def _definitions(document: dict[str, Any]) -> list[str]:
    settings = document["settings"]
    return [
        "- Forget F1 and retained macro-F1: `steu_patch.evaluation.compute_metrics` on the test split, argmax over "
        f"all logits. {_retained_definition(document)} Retraining yields a 12-class model; its logits are placed at the original class ids and the "
        "forget class gets the logit -1e4, so it is never predicted. Masking gives the forget logit the same value.",
        "- Agreement with retrain: share of test notes where the method predicts the same class as the retrained "
        "model, separately for retained-class notes and forget-class notes.",
        f"- Probe forget F1: `steu_patch.probes.fit_linear_probe` on the input of the final layer, fitted on all "
        f"forget-class training notes plus {settings['probe_retain_texts']} retained training notes drawn with the seed, "
        "scored on the test split.",
        "- MIA AUC: `steu_patch.probes.membership_auc`, forget-class training notes (members) against forget-class "
        "test notes (non-members), scored by the loss of each note's true class.",
        f"- Relearning steps: `steu_patch.probes.relearn_head`, full-batch Adam (learning rate "
        f"{settings['relearn_learning_rate']}) on the final layer only, from {settings['relearn_forget_texts']} "
        f"forget-class and {settings['relearn_retain_texts']} retained training notes, counting steps until test "
        f"forget F1 exceeds {settings['relearn_threshold']} (at most {settings['relearn_max_steps']}). For the "
        "retrained model the forget class gets a new output row initialised to zero.",
        "- Values modified: parameter values that differ from the original classifier, out of all its parameters "
        "(merged LoRA changes every value of the adapted matrices; retraining changes nearly all).",
        "- Artifact: the STEU patch directory (new values, original values, manifest and card); the PEFT adapter "
        "directory for head only, rows only, random rows + head and LoRA; `model.safetensors` for retraining and the "
        "full model; nothing for masking.",
        "- Time: wall-clock seconds of the method itself in its worker process, from the loaded classifier to the "
        "saved artifact. For STEU this includes token selection, its two evaluations on the validation split and "
        "its forget F1 checks, and for every trained baseline the teacher pass and the same checks. The ratio "
        "divides this time by the retraining time.",
        "- Peak RSS: `resource.getrusage(RUSAGE_SELF).ru_maxrss` of the method's own Python process right after the "
        "method, so it includes the interpreter, torch and the loaded classifier (measured per method because each "
        "runs in a fresh process).",
    ]


# ----- the document -----


def update_document(path: Path, document: dict[str, Any], *, results_path: Path | str) -> None:
    """Replace (or append) the section in ``path``, writing through a temporary file."""
    path = Path(path)
    displayed_path = Path(results_path)
    try:
        displayed_path = displayed_path.resolve().relative_to(path.resolve().parent.parent)
    except ValueError:
        pass  # a results file outside the repository is shown by its full path
    section = render_section(document, str(displayed_path))
    text = path.read_text(encoding="utf-8") if path.is_file() else f"{DOCUMENT_TITLE}\n\n"
    path.parent.mkdir(parents=True, exist_ok=True)
    staging = path.with_name(path.name + ".tmp")
    staging.write_text(replace_section(text, section), encoding="utf-8")
    staging.replace(path)


def replace_section(text: str, section: str) -> str:
    """Return ``text`` with the section under ``HEADING`` replaced by ``section``, or with it appended."""
    lines = text.splitlines(keepends=True)
    start = next((i for i, line in enumerate(lines) if line.rstrip() == HEADING), None)
    if start is None:
        return text.rstrip("\n") + "\n\n" + section
    end = next((i for i in range(start + 1, len(lines)) if lines[i].startswith("## ")), len(lines))
    after = "".join(lines[end:])
    return "".join(lines[:start]) + section + ("\n" + after if after else "")


def main(argv: list[str]) -> int:
    if len(argv) != 2:
        print("usage: python benchmarks/render_docs.py RESULTS_JSON MARKDOWN_FILE", file=sys.stderr)
        return 2
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    update_document(Path(argv[1]), json.loads(Path(argv[0]).read_text(encoding="utf-8")), results_path=argv[0])
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
