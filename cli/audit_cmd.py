"""``steu-patch audit``."""

from __future__ import annotations

from pathlib import Path

import click

from .output import echo_json

EXIT_CODES = """\b
Exit codes:
  0  every check passed (verdict "verified")
  1  a check failed (patch file hash or patch id, base fingerprint, patched
     model differs from base plus patch), or the audit could not run; the
     full report is still printed when a check fails
  2  usage error (for example --model or --data without --base)"""


def _check_html_path(ctx: click.Context, param: click.Parameter, value: Path | None) -> Path | None:
    if value is not None and not value.parent.is_dir():
        raise click.BadParameter(f"directory {value.parent} does not exist; create it or choose another path.", ctx, param)
    if value is not None and value.is_dir():
        raise click.BadParameter(f"{value} is a directory; pass a file name such as audit.html.", ctx, param)
    return value


@click.command(epilog=EXIT_CODES)
@click.argument("patch")
@click.option("--base", default=None, help="Base model directory or Hub id: verify the patch's base fingerprint.")
@click.option("--model", "patched_model", default=None, help="Patched model directory or Hub id: verify bit for bit that it equals base plus patch. Needs --base.")
@click.option("--data", default=None, help="Labeled data (CSV, TSV, JSONL, Parquet, save_to_disk directory or Hub dataset): measure forgetting before and after. Needs --base.")
@click.option("--text-column", default="text", show_default=True, help="Column of --data holding the texts.")
@click.option("--label-column", default="label", show_default=True, help="Column of --data holding the labels.")
@click.option("--split", default=None, help="Split of --data when it is a saved DatasetDict or a Hub dataset.")
@click.option("--max-length", type=click.IntRange(min=1), default=None, help="Tokens per text for the data measurements [default: the patch's recorded max_length, else 256].")
@click.option("--batch-size", type=click.IntRange(min=1), default=32, show_default=True, help="Texts per forward pass for the data measurements.")
@click.option("--redact-tokens", is_flag=True, help="Leave token strings out of the report; token ids stay.")
@click.option("--json", "as_json", is_flag=True, help="Print the report as one JSON document (schema_version 1).")
@click.option("--html", "html_path", type=click.Path(path_type=Path, dir_okay=True), callback=_check_html_path, default=None, help="Write a self-contained HTML report with plots to this file.")
@click.option("--revision", default=None, help="Branch, tag or commit of --base when it is a Hub repository id.")
@click.option("--patch-revision", default=None, help="Branch, tag or commit of PATCH when it is a Hub repository id.")
@click.option("--no-progress", is_flag=True, help="Do not draw progress bars on stderr.")
def audit(
    patch: str,
    base: str | None,
    patched_model: str | None,
    data: str | None,
    text_column: str,
    label_column: str,
    split: str | None,
    max_length: int | None,
    batch_size: int,
    redact_tokens: bool,
    as_json: bool,
    html_path: Path | None,
    revision: str | None,
    patch_revision: str | None,
    no_progress: bool,
) -> None:
    """Verify PATCH and measure how deeply it forgets.

    Always: checks the SHA-256 of the patch files against the manifest and lists every edited
    embedding row and head tensor with its L2 and max-abs change and cosine similarity to the
    original. With --base: verifies the base fingerprint. With --model: verifies, streaming the
    safetensors shards, that the model equals base plus patch bit for bit and names every other
    difference. With --data: forget/retain metrics, a linear probe, membership inference and a
    relearning check, before and after the patch.

    The JSON report has the top-level keys schema_version, verdict, checks, patch, edits, base,
    model and data.
    """
    if patched_model is not None and base is None:
        raise click.UsageError("--model needs --base: the patched model is compared with base plus patch.")
    if data is not None and base is None:
        raise click.UsageError("--data needs --base: forgetting is measured on the base model before and after the patch.")
    if as_json and html_path is not None:
        raise click.UsageError("--json and --html are exclusive; choose one report format.")

    from steu_patch.audit import AuditOptions, audit_patch
    from steu_patch.report import render_text, write_html

    options = AuditOptions(
        base=base, model=patched_model, data=data, text_column=text_column, label_column=label_column, split=split,
        revision=revision, patch_revision=patch_revision, redact_tokens=redact_tokens, show_progress=not no_progress,
        max_length=max_length, batch_size=batch_size,
    )
    report = audit_patch(patch, options)
    if as_json:
        echo_json(report.to_dict())
    elif html_path is not None:
        write_html(report, html_path)
        failed = ", ".join(check.name for check in report.failed_checks)
        click.echo(f"Audit {report.verdict}" + (f" (failed: {failed})" if failed else "") + f"; wrote {html_path}")
    else:
        click.echo(render_text(report))
    if not report.passed:
        raise click.exceptions.Exit(1)
