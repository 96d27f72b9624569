"""Render an audit report as plain-text tables or as one self-contained HTML file.

The HTML file embeds its plots as base64 PNG images drawn with matplotlib's Agg renderer and
loads no external resource, so it can be archived or mailed as it is. The JSON form is
:meth:`steu_patch.audit.AuditReport.to_dict`.
"""

from __future__ import annotations

import base64
import html
import io
import logging
import math
import os
import uuid
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from matplotlib.figure import Figure

from .audit import AuditReport

logger = logging.getLogger(__name__)

# Maximum number of edited rows whose change-norm bars get token labels. More labels would overlap.
MAX_LABELED_BARS = 40


# ----- plain text -----


def format_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    """Return rows as a left-aligned plain-text table with a header rule."""
    cells = [[str(header) for header in headers]] + [[_cell(value) for value in row] for row in rows]
    widths = [max(len(row[column]) for row in cells) for column in range(len(headers))]
    lines = ["  ".join(cell.ljust(widths[column]) for column, cell in enumerate(row)).rstrip() for row in cells]
    lines.insert(1, "  ".join("-" * width for width in widths))
    return "\n".join(lines)


def _cell(value: Any) -> str:
    if value is None:
        return "-"
    if isinstance(value, bool):
        return "yes" if value else "no"
    if isinstance(value, float):
        return "n/a" if math.isnan(value) else f"{value:.4g}"
    return str(value)


def _number(value: float | None, digits: int = 4) -> str:
    return "-" if value is None else f"{value:.{digits}f}"


def render_text(report: AuditReport) -> str:
    """Return the human-readable report: verdict, checks, patch, edits, models and data measurements."""
    content = report.to_dict()
    sections = [
        f"steu-patch audit: {content['verdict'].upper()}",
        "Checks\n" + format_table(
            [(check["name"], "pass" if check["passed"] else "FAIL", check["detail"]) for check in content["checks"]],
            ("check", "result", "detail"),
        ),
        "Patch\n" + format_table(_patch_rows(content["patch"]), ("field", "value")),
        "Edits\n" + format_table(_edit_rows(content["edits"]), ("kind", "tensor", "row", "token id", "token", "label", "L2 change", "max |change|", "cosine")),
    ]
    if content["base"] is not None:
        sections.append("Base model\n" + format_table(_base_rows(content["base"]), ("field", "value")))
    if content["model"] is not None:
        sections.append(_model_text(content["model"]))
    if content["data"] is not None:
        sections.append(_data_text(content["data"]))
    return "\n\n".join(sections)


def _patch_rows(patch: dict[str, Any]) -> list[tuple[str, Any]]:
    modified = patch["parameters_modified"]
    share = f" of {modified['total']} ({modified['fraction']:.4%}, total from the {modified['total_source']})" if modified["total"] else ""
    rows = [
        ("path", patch["path"]),
        ("patch id", patch["patch_id"]),
        ("format version", patch["format_version"]),
        ("created", f"steu-patch {patch['tool_version']} at {patch['created_at']}"),
        ("base model", patch["base_model"].get("name_or_path")),
        ("base fingerprint", patch["base_fingerprint"]["sha256"]),
        ("forget classes", ", ".join(patch["forget_classes"])),
        ("embedding", patch["embedding_module"]),
        ("head", f"{patch['head_module']} ({', '.join(patch['head_parameters'])})"),
        ("tokens edited", f"{patch['tokens_edited']}" + (" (token strings redacted)" if patch["tokens_redacted"] else "")),
        ("values modified", f"{modified['count']}{share}"),
    ]
    for name, entry in patch["files"].items():
        state = "matches manifest" if entry["matches"] else f"DIFFERS (manifest {entry['manifest_sha256']})"
        rows.append((f"sha256 {name}", f"{entry['actual_sha256']} {state}"))
    return rows


def _edit_rows(edits: list[dict[str, Any]]) -> list[tuple[Any, ...]]:
    return [
        (edit["kind"], edit["tensor"], edit["row"], edit["token_id"], edit["token"], edit["label"],
         edit["l2_change"], edit["max_abs_change"], edit["cosine_similarity"])
        for edit in edits
    ]  # fmt: skip


def _base_rows(base: dict[str, Any]) -> list[tuple[str, Any]]:
    rows = [
        ("path", base["path"]),
        ("expected fingerprint", base["expected_fingerprint"]),
        ("actual fingerprint", base["actual_fingerprint"]),
        ("matches", base["fingerprint_matches"]),
    ]
    if base["differing"]:
        rows.append(("differing", "; ".join(base["differing"])))
    if base["error"]:
        rows.append(("error", base["error"]))
    return rows


DIFFERENCE_HEADERS = ("tensor", "kind", "changed values", "detail")


def _model_rows(model: dict[str, Any]) -> list[tuple[str, Any]]:
    rows = [("path", model["path"]), ("config records the patch", model["records_patch"])]
    if model["error"]:
        rows.append(("error", model["error"]))
    comparison = model["comparison"]
    if comparison is not None:
        rows += [
            ("tensors compared", comparison["tensors_compared"]),
            ("missing tensors", ", ".join(comparison["missing_keys"]) or "none"),
            ("extra tensors", ", ".join(comparison["extra_keys"]) or "none"),
            ("differences", len(comparison["differences"])),
        ]
    return rows


def _difference_rows(model: dict[str, Any]) -> list[tuple[Any, ...]]:
    differences = (model["comparison"] or {}).get("differences", [])
    return [(entry["tensor"], entry["kind"], entry["changed_values"], entry["detail"]) for entry in differences]


def _model_text(model: dict[str, Any]) -> str:
    text = "Patched model\n" + format_table(_model_rows(model), ("field", "value"))
    differences = _difference_rows(model)
    if differences:
        text += "\n\n" + format_table(differences, DIFFERENCE_HEADERS)
    return text


def _data_text(data: dict[str, Any]) -> str:
    lines = [f"Data: {data['source']}", data["statement"]]
    if data["status"] != "measured":
        lines.append(f"Measurements skipped: {data['reason']}.")
        return "\n".join(lines)
    split = data["split"]
    lines.append(
        f"Split: {split['description']}; {split['train_texts']} training texts ({split['forget_train_texts']} forget), "
        f"{split['eval_texts']} evaluation texts ({split['forget_eval_texts']} forget); max_length {data['max_length']}."
    )
    lines.append("")
    lines.append(format_table(_measurement_rows(data), ("measurement", "measures", "before (base)", "after (patched)")))
    relearning = data["relearning"]["result"]
    lines.append("")
    lines.append(
        f"Relearning (measures {data['relearning']['measures']}): {relearning['summary']}; head-only Adam, lr "
        f"{relearning['learning_rate']}, {relearning['forget_texts']} forget + {relearning['retain_texts']} retain texts."
    )
    lines.append("")
    lines.append(format_table(_per_class_rows(data), ("class", "F1 before", "F1 after")))
    return "\n".join(lines)


def _measurement_rows(data: dict[str, Any]) -> list[tuple[str, str, str, str]]:
    metrics, probe, attack = data["metrics"], data["probe"], data["membership_inference"]
    return [
        ("forget F1", metrics["measures"], _number(metrics["before"]["forget_f1"]), _number(metrics["after"]["forget_f1"])),
        ("retain macro-F1", metrics["measures"], _number(metrics["before"]["retain_macro_f1"]), _number(metrics["after"]["retain_macro_f1"])),
        ("probe forget F1", probe["measures"], _number(probe["before"]["forget_f1"]), _number(probe["after"]["forget_f1"])),
        ("probe chance F1", probe["measures"], _number(probe["before"]["chance_f1"]), _number(probe["after"]["chance_f1"])),
        ("membership AUC", attack["measures"], _number(attack["before"]["auc"]), _number(attack["after"]["auc"])),
    ]


def _per_class_rows(data: dict[str, Any]) -> list[tuple[str, str, str]]:
    before, after = data["metrics"]["before"], data["metrics"]["after"]
    return [
        (name + (" (forget)" if name in before["forget_labels"] else ""),
         _number(before["per_class"][name]["f1"]), _number(after["per_class"][name]["f1"]))
        for name in before["labels"]
    ]  # fmt: skip


# ----- figures -----


def _png(figure: Figure) -> str:
    buffer = io.BytesIO()
    figure.savefig(buffer, format="png", dpi=100, bbox_inches="tight")
    return base64.b64encode(buffer.getvalue()).decode("ascii")


def plot_change_norms(edits: list[dict[str, Any]]) -> str:
    """Draw the L2 change of each edited embedding row; return a base64 PNG."""
    rows = [edit for edit in edits if edit["kind"] == "embedding_row"]
    names = [edit["token"] if edit["token"] is not None else f"id {edit['token_id']}" for edit in rows]
    figure = Figure(figsize=(min(max(6.0, 0.25 * len(rows)), 16.0), 3.5))
    axes = figure.add_subplot()
    axes.bar(range(len(rows)), [edit["l2_change"] for edit in rows], color="#4c72b0")
    if len(rows) <= MAX_LABELED_BARS:
        axes.set_xticks(range(len(rows)), names, rotation=90, fontsize=8)
    else:
        axes.set_xlabel(f"edited rows in patch order ({len(rows)})")
    axes.set_ylabel("L2 change")
    axes.set_title("Change norm of each edited embedding row")
    return _png(figure)


def plot_per_class_f1(data: dict[str, Any]) -> str:
    """Draw per-class F1 before and after the patch as grouped bars; return a base64 PNG."""
    before, after = data["metrics"]["before"], data["metrics"]["after"]
    labels = before["labels"]
    figure = Figure(figsize=(max(6.0, 0.6 * len(labels)), 3.8))
    axes = figure.add_subplot()
    positions = range(len(labels))
    axes.bar([p - 0.2 for p in positions], [before["per_class"][n]["f1"] for n in labels], width=0.4, label="before (base)")
    axes.bar([p + 0.2 for p in positions], [after["per_class"][n]["f1"] for n in labels], width=0.4, label="after (patched)")
    names = [name + (" *" if name in before["forget_labels"] else "") for name in labels]
    axes.set_xticks(list(positions), names, rotation=45, ha="right", fontsize=8)
    axes.set_ylim(0, 1.05)
    axes.set_ylabel("F1")
    axes.set_title("Per-class F1 on the evaluation portion (* forget class)")
    axes.legend(fontsize=8)
    return _png(figure)


def plot_confusion_matrices(data: dict[str, Any]) -> str | None:
    """Draw the confusion matrices before and after the patch; None for multi-label data."""
    before, after = data["metrics"]["before"], data["metrics"]["after"]
    if before["confusion_matrix"] is None:
        return None
    labels = before["labels"]
    size = max(4.0, 0.45 * len(labels) + 2)
    figure = Figure(figsize=(2 * size, size), layout="constrained")
    for index, (title, metrics) in enumerate((("before (base)", before), ("after (patched)", after))):
        axes = figure.add_subplot(1, 2, index + 1)
        matrix = metrics["confusion_matrix"]
        axes.imshow(matrix, cmap="Blues")
        largest = max(max(values) for values in matrix)
        for row, values in enumerate(matrix):
            for column, count in enumerate(values):
                color = "white" if count > largest / 2 else "black"
                axes.text(column, row, str(count), ha="center", va="center", fontsize=7, color=color)
        axes.set_xticks(range(len(labels)), labels, rotation=90, fontsize=7)
        # Both matrices share the class order, so only the left one repeats the class names.
        axes.set_yticks(range(len(labels)), labels if index == 0 else [], fontsize=7)
        axes.set_xlabel("predicted")
        axes.set_ylabel("true" if index == 0 else "")
        axes.set_title(f"Confusion matrix, {title}")
    return _png(figure)


def plot_probe_and_membership(data: dict[str, Any]) -> str:
    """Draw probe forget F1 and membership-inference AUC before and after; return a base64 PNG."""
    probe, attack = data["probe"], data["membership_inference"]
    figure = Figure(figsize=(9.0, 3.5))
    phases = ("before", "after")
    names = ("base", "patched")
    left = figure.add_subplot(1, 2, 1)
    left.bar(names, [probe[phase]["forget_f1"] for phase in phases], color=["#4c72b0", "#dd8452"])
    left.axhline(probe["before"]["chance_f1"], color="gray", linestyle="--", label="chance")
    left.set_ylim(0, 1.05)
    left.set_title("Linear probe forget F1 (representation)")
    left.legend(fontsize=8)
    right = figure.add_subplot(1, 2, 2)
    right.bar(names, [attack[phase]["auc"] or 0.0 for phase in phases], color=["#4c72b0", "#dd8452"])
    right.axhline(0.5, color="gray", linestyle="--", label="no separation")
    right.set_ylim(0, 1.05)
    right.set_title("Membership-inference AUC (behaviour)")
    right.legend(fontsize=8)
    return _png(figure)


def plot_relearning(data: dict[str, Any]) -> str:
    """Draw forget F1 against head-only relearning steps; return a base64 PNG."""
    result = data["relearning"]["result"]
    figure = Figure(figsize=(6.0, 3.5))
    axes = figure.add_subplot()
    curve = [value if value is not None else float("nan") for value in result["forget_f1_by_step"]]
    axes.plot(range(len(curve)), curve, marker="." if len(curve) < 50 else None)
    axes.axhline(result["threshold"], color="gray", linestyle="--", label="threshold")
    axes.set_xlabel("head-only optimizer steps")
    axes.set_ylabel("forget F1 (evaluation)")
    axes.set_ylim(0, 1.05)
    axes.set_title("Relearning (representation)")
    axes.legend(fontsize=8)
    return _png(figure)


# ----- HTML -----

_STYLE = """
body { font-family: sans-serif; margin: 2em; color: #222; }
table { border-collapse: collapse; margin: 0.5em 0 1.5em; font-size: 0.9em; }
th, td { border: 1px solid #ccc; padding: 0.25em 0.6em; text-align: left; vertical-align: top; }
th { background: #f0f0f0; }
.pass { color: #1a7f37; font-weight: bold; }
.fail { color: #cf222e; font-weight: bold; }
.note { background: #fff8c5; padding: 0.6em; border: 1px solid #d4a72c; }
img { max-width: 100%; display: block; margin: 0.5em 0 1.5em; }
"""


def _html_table(rows: Sequence[Sequence[Any]], headers: Sequence[str]) -> str:
    head = "".join(f"<th>{html.escape(str(header))}</th>" for header in headers)
    body = "".join("<tr>" + "".join(f"<td>{html.escape(_cell(value))}</td>" for value in row) + "</tr>" for row in rows)
    return f"<table><thead><tr>{head}</tr></thead><tbody>{body}</tbody></table>"


def _image(encoded: str, alt: str) -> str:
    return f'<img alt="{html.escape(alt)}" src="data:image/png;base64,{encoded}">'


def render_html(report: AuditReport) -> str:
    """Return the report as one self-contained HTML document."""
    content = report.to_dict()
    verdict = content["verdict"]
    checks = "".join(
        f"<tr><td>{html.escape(check['name'])}</td><td class=\"{'pass' if check['passed'] else 'fail'}\">"
        f"{'pass' if check['passed'] else 'FAIL'}</td><td>{html.escape(check['detail'])}</td></tr>"
        for check in content["checks"]
    )
    parts = [
        f"<h1>steu-patch audit: <span class=\"{'pass' if verdict == 'verified' else 'fail'}\">{verdict}</span></h1>",
        "<h2>Checks</h2>",
        f"<table><thead><tr><th>check</th><th>result</th><th>detail</th></tr></thead><tbody>{checks}</tbody></table>",
        "<h2>Patch</h2>",
        _html_table(_patch_rows(content["patch"]), ("field", "value")),
        "<h2>Edits</h2>",
        _image(plot_change_norms(content["edits"]), "L2 change of each edited embedding row"),
        _html_table(_edit_rows(content["edits"]), ("kind", "tensor", "row", "token id", "token", "label", "L2 change", "max |change|", "cosine")),
    ]
    if content["base"] is not None:
        parts += ["<h2>Base model</h2>", _html_table(_base_rows(content["base"]), ("field", "value"))]
    if content["model"] is not None:
        parts += ["<h2>Patched model</h2>", _html_table(_model_rows(content["model"]), ("field", "value"))]
        differences = _difference_rows(content["model"])
        if differences:
            parts.append(_html_table(differences, DIFFERENCE_HEADERS))
    if content["data"] is not None:
        parts += _data_html(content["data"])
    body = "\n".join(parts)
    return (
        "<!DOCTYPE html>\n<html lang=\"en\"><head><meta charset=\"utf-8\">"
        f"<title>steu-patch audit {html.escape(content['patch']['patch_id'][:12])}</title>"
        f"<style>{_STYLE}</style></head><body>\n{body}\n</body></html>\n"
    )


def _data_html(data: dict[str, Any]) -> list[str]:
    parts = [f"<h2>Data: {html.escape(data['source'])}</h2>", f"<p class=\"note\">{html.escape(data['statement'])}</p>"]
    if data["status"] != "measured":
        return parts + [f"<p>Measurements skipped: {html.escape(data['reason'])}.</p>"]
    split = data["split"]
    parts.append(
        f"<p>Split: {html.escape(split['description'])}; {split['train_texts']} training texts "
        f"({split['forget_train_texts']} forget), {split['eval_texts']} evaluation texts ({split['forget_eval_texts']} forget).</p>"
    )
    parts.append(_html_table(_measurement_rows(data), ("measurement", "measures", "before (base)", "after (patched)")))
    for key in ("metrics", "probe", "membership_inference"):
        parts.append(f"<p><b>{html.escape(key.replace('_', ' '))}</b> ({html.escape(data[key]['measures'])}): {html.escape(data[key]['description'])}</p>")
    parts += [_image(plot_per_class_f1(data), "Per-class F1 before and after"), _html_table(_per_class_rows(data), ("class", "F1 before", "F1 after"))]
    confusion = plot_confusion_matrices(data)
    if confusion is not None:
        parts.append(_image(confusion, "Confusion matrices before and after"))
    parts.append(_image(plot_probe_and_membership(data), "Probe forget F1 and membership-inference AUC"))
    relearning = data["relearning"]
    parts += [
        "<h3>Relearning</h3>",
        f"<p>({html.escape(relearning['measures'])}) {html.escape(relearning['description'])} Result: "
        f"{html.escape(relearning['result']['summary'])}.</p>",
        _image(plot_relearning(data), "Forget F1 during head-only relearning"),
    ]
    return parts


def write_html(report: AuditReport, path: str | os.PathLike) -> Path:
    """Write the HTML report to ``path`` through a temporary file renamed into place."""
    path = Path(path)
    document = render_html(report)
    # A named file opened with "x" gets the umask's permissions, unlike tempfile.mkstemp (0600).
    temporary = path.with_name(f".{path.name}.tmp-{os.getpid()}-{uuid.uuid4().hex[:8]}")
    try:
        with open(temporary, "x", encoding="utf-8") as handle:
            handle.write(document)
        os.replace(temporary, path)
    except BaseException:
        temporary.unlink(missing_ok=True)
        raise
    logger.info("Wrote the HTML audit report to %s", path)
    return path
