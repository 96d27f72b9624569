"""``steu-patch apply``, ``revert`` and ``inspect``."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import click

from .output import echo_json, echo_table

REVISION_HELP = "Branch, tag or commit of MODEL when it is a Hub repository id."
PATCH_REVISION_HELP = "Branch, tag or commit of PATCH when it is a Hub repository id."


def _write(model: str, patch: str, output: Path, *, revert: bool, force: bool, overwrite: bool, revision: str | None, patch_revision: str | None) -> None:
    from steu_patch.checkpoint import write_patched_model
    from steu_patch.hub import resolve_model_dir
    from steu_patch.patch import ForgetPatch

    forget_patch = ForgetPatch.from_pretrained(patch, revision=patch_revision)
    model_dir = resolve_model_dir(model, revision=revision)
    write_patched_model(model_dir, forget_patch, output, revert=revert, force=force, overwrite=overwrite)
    action = "Reverted" if revert else "Applied"
    classes = ", ".join(forget_patch.forget_classes)
    click.echo(f"{action} patch {forget_patch.patch_id[:12]} (forgets {classes}) -> {output}")


@click.command()
@click.argument("model")
@click.argument("patch")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Directory to write the patched model to.")
@click.option("--force", is_flag=True, help="Apply even if the model's fingerprint differs from the patch's base model.")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it already exists.")
@click.option("--revision", default=None, help=REVISION_HELP)
@click.option("--patch-revision", default=None, help=PATCH_REVISION_HELP)
def apply(model: str, patch: str, output: Path, force: bool, overwrite: bool, revision: str | None, patch_revision: str | None) -> None:
    """Write MODEL with PATCH applied to OUTPUT.

    MODEL is a model directory (or Hub id) in safetensors format; PATCH a patch directory or Hub id.
    The checkpoint is streamed shard by shard and only the patched rows and head tensors change.
    """
    _write(model, patch, output, revert=False, force=force, overwrite=overwrite, revision=revision, patch_revision=patch_revision)


@click.command()
@click.argument("model")
@click.argument("patch")
@click.option("-o", "--output", type=click.Path(path_type=Path), required=True, help="Directory to write the reverted model to.")
@click.option("--overwrite", is_flag=True, help="Replace OUTPUT if it already exists.")
@click.option("--revision", default=None, help=REVISION_HELP)
@click.option("--patch-revision", default=None, help=PATCH_REVISION_HELP)
def revert(model: str, patch: str, output: Path, overwrite: bool, revision: str | None, patch_revision: str | None) -> None:
    """Write MODEL with PATCH removed to OUTPUT, restoring the original values bit for bit.

    MODEL must carry PATCH's values; with stacked patches, revert the newest first.
    """
    _write(model, patch, output, revert=True, force=False, overwrite=overwrite, revision=revision, patch_revision=patch_revision)


@click.command()
@click.argument("patch")
@click.option("--json", "as_json", is_flag=True, help="Print the manifest as JSON.")
@click.option("--patch-revision", "--revision", "patch_revision", default=None, help=PATCH_REVISION_HELP)
def inspect(patch: str, as_json: bool, patch_revision: str | None) -> None:
    """Show the manifest of PATCH: base model, fingerprint, classes, tokens and metrics."""
    from steu_patch.patch import ForgetPatch

    forget_patch = ForgetPatch.from_pretrained(patch, revision=patch_revision)
    if as_json:
        echo_json(forget_patch.manifest)
        return
    echo_table(_summary_rows(forget_patch.manifest), headers=("field", "value"))


def _summary_rows(manifest: dict[str, Any]) -> list[tuple[str, str]]:
    base = manifest["base_model"]
    modified = manifest.get("parameters_modified") or {}
    fraction = modified.get("fraction")
    tokens = manifest["tokens"]
    shown = ", ".join(str(token.get("token", token["id"])) for token in tokens[:10])
    rows = [
        ("patch id", manifest["patch_id"]),
        ("format version", str(manifest["format_version"])),
        ("created with", f"steu-patch {manifest['tool']['version']} at {manifest.get('created_at', '?')}"),
        ("base model", f"{base.get('name_or_path')}" + (f" @ {base['revision']}" if base.get("revision") else "")),
        ("base fingerprint", manifest["base_fingerprint"]["sha256"]),
        ("embedding", f"{manifest['embedding_module']} {manifest['base_fingerprint']['embedding_shape']} {manifest['base_fingerprint']['dtype']}"),
        ("head", f"{manifest['head_module']} ({', '.join(manifest['head_parameters'])})"),
        ("forget classes", ", ".join(manifest["forget_classes"])),
        ("labels", ", ".join(manifest["id2label"].values())),
        ("parent patches", ", ".join(parent["patch_id"][:12] for parent in manifest.get("parent_patches", [])) or "none"),
        ("tokens", f"{len(tokens)}: {shown}" + (", …" if len(tokens) > 10 else "")),
        ("parameters modified", f"{modified.get('count')}" + (f" ({fraction:.4%})" if fraction else "")),
    ]
    method = manifest.get("method") or {}
    if method:
        rows.append(("method", json.dumps(method, sort_keys=True)))
    for phase in ("before", "after"):
        values = (manifest.get("metrics") or {}).get(phase)
        if values:
            summary = ", ".join(f"{key}={values[key]:.4f}" for key in ("forget_f1", "retain_macro_f1") if key in values)
            rows.append((f"metrics {phase}", summary))
    return rows
