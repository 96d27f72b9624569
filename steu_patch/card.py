"""Model card (README.md) of a forget patch, built with huggingface_hub's ``ModelCard``.

The YAML metadata marks the repository as a PEFT adapter (``library_name: peft``) of its base
model, so the Hub lists it under that model's adapters. Token strings are left out unless asked
for because they can reveal what was forgotten.
"""

from __future__ import annotations

import os
from collections.abc import Mapping
from pathlib import PurePath
from typing import TYPE_CHECKING, Any

from huggingface_hub import ModelCard, ModelCardData
from huggingface_hub.errors import HFValidationError
from huggingface_hub.utils import validate_repo_id

from .patch import MANIFEST_NAME

if TYPE_CHECKING:
    from .patch import ForgetPatch

CARD_TAGS = ("unlearning", "steu-patch", "forget-patch")

_METRIC_ROWS = (
    ("Forget F1", "forget_f1"),
    ("Retain macro-F1", "retain_macro_f1"),
    ("Retain accuracy", "retain_accuracy"),
)

_TEMPLATE = """---
{{ card_data }}
---

# Forget patch: {{ forget_classes }}

This repository contains a **forget patch** made by [steu-patch](https://pypi.org/project/steu-patch/) with
Sparse Token Embedding Unlearning (STEU). Applied to its base model, it suppresses the class(es)
**{{ forget_classes }}** by overwriting {{ num_tokens }} input-embedding rows and the final classification
layer `{{ head_module }}`. The encoder is untouched.

- Base model: {{ base_model_text }}
- Base fingerprint (SHA-256 of the original values the patch overwrites): `{{ fingerprint }}`
- Parameters modified: {{ params_text }}
- Patch id: `{{ patch_id }}`

steu-patch applies the patch only to a model whose fingerprint matches, and every overwritten value is
stored in `original_values.safetensors`, so the patch can be reverted bit for bit.

## Metrics

{{ metrics_table }}

Forget F1 measures behaviour: whether the classifier still predicts the forgotten class. It does not show
that the class is gone from the model's representations.

## Tokens

{{ tokens_section }}

## How to use

From the command line:

```bash
steu-patch inspect {{ patch_ref }}{{ patch_revision_option }}
steu-patch apply {{ model_ref }} {{ patch_ref }}{{ model_revision_option }}{{ patch_revision_option }} --output patched-model
steu-patch revert patched-model {{ patch_ref }}{{ patch_revision_option }} --output original-model
```

From Python with steu-patch:

```python
from transformers import AutoModelForSequenceClassification
from steu_patch import PatchedModel

model = AutoModelForSequenceClassification.from_pretrained("{{ model_ref }}"{{ model_revision_argument }})
patched = PatchedModel.from_pretrained(model, "{{ patch_ref }}"{{ patch_revision_argument }})
original = patched.unload()  # restores every original value bit for bit
```

With stock PEFT (no steu-patch needed, and no fingerprint check):

```python
from peft import PeftModel

patched = PeftModel.from_pretrained(model, "{{ patch_ref }}"{{ patch_revision_argument }})
```
"""


def hub_model_id(name_or_path: str | None) -> str | None:
    """Return ``name_or_path`` when it has the form of a Hub model id and is not a local path, else None.

    NOTE: a relative path that does not exist on this machine (``out/model`` written elsewhere) has
    the form of a Hub id too, so :func:`steu_patch.hub.push_patch` checks that it exists on the Hub.
    """
    if not name_or_path or os.path.exists(name_or_path):
        return None
    if name_or_path.startswith((".", "~", "/")) or "\\" in name_or_path or PurePath(name_or_path).is_absolute():
        return None
    try:
        validate_repo_id(name_or_path)
    except HFValidationError:
        return None
    return name_or_path


def _local_name(name_or_path: str) -> str:
    return PurePath(name_or_path.rstrip("/\\")).name or name_or_path


def _number(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "–"


def metrics_table(metrics: Mapping[str, Any]) -> str:
    """Render before/after forget F1, retain macro-F1 and retain accuracy as a Markdown table."""
    before = metrics.get("before") or {}
    after = metrics.get("after") or {}
    if not before and not after:
        return "No metrics were recorded for this patch."
    lines = ["| metric | before | after |", "| --- | ---: | ---: |"]
    for title, key in _METRIC_ROWS:
        lines.append(f"| {title} | {_number(before.get(key))} | {_number(after.get(key))} |")
    return "\n".join(lines)


def _tokens_section(patch: ForgetPatch, show_tokens: bool, published_manifest: bool) -> str:
    ids_note = (
        f"The patch edits {len(patch.token_ids)} embedding rows. `adapter_model.safetensors` and "
        "`adapter_config.json` necessarily contain their token ids, which the base model's tokenizer maps back "
        "to token strings."
    )
    if not show_tokens:
        published = f" and of the published `{MANIFEST_NAME}`" if published_manifest else ""
        return f"{ids_note} The token strings are left out of this card{published} because they can reveal what was forgotten."
    strings = ", ".join(f"`{token.get('token', token['id'])}`" for token in patch.manifest["tokens"])
    return f"{ids_note}\n\nEdited tokens, highest score first: {strings}"


def _parameters_text(patch: ForgetPatch) -> str:
    modified = patch.manifest.get("parameters_modified") or {}
    count = modified.get("count") or patch.parameters_modified()
    fraction = modified.get("fraction")
    if not fraction:
        return f"{count:,}"
    return f"{count:,} of {modified.get('total'):,} ({fraction:.4%} of the model)"


def _base_model_text(name: str | None, hub_id: str | None, revision: str | None) -> str:
    at_revision = f" (revision `{revision}`)" if revision else ""
    if hub_id:
        return f"[{hub_id}](https://huggingface.co/{hub_id}){at_revision}"
    if name:
        return (
            f"a local model directory named `{_local_name(name)}`{at_revision}. It is not a Hub repository, so this "
            "card's metadata names no `base_model`."
        )
    return "not recorded in the patch."


def build_card_data(patch: ForgetPatch, base_model_id: str | None) -> ModelCardData:
    """Return the YAML metadata of the card: PEFT adapter of ``base_model_id``, tags, forget classes."""
    modified = patch.manifest.get("parameters_modified") or {}
    return ModelCardData(
        library_name="peft",
        base_model=base_model_id,
        pipeline_tag="text-classification",
        tags=list(CARD_TAGS),
        forget_classes=patch.forget_classes,
        steu_patch={
            "format_version": patch.manifest["format_version"],
            "patch_id": patch.manifest.get("patch_id"),
            "base_fingerprint": patch.fingerprint,
            "parameters_modified": modified.get("count"),
            "parameters_modified_fraction": modified.get("fraction"),
        },
    )


def build_model_card(
    patch: ForgetPatch,
    *,
    repo_id: str | None = None,
    revision: str | None = None,
    show_tokens: bool = False,
    base_on_hub: bool | None = None,
) -> str:
    """Render the model card text of ``patch``.

    Args:
        repo_id: Hub repository the card is for; usage examples name it (a placeholder otherwise). A
            card with a ``repo_id`` is the one :func:`steu_patch.hub.push_patch` uploads together with a
            manifest without token strings, and its token section states this.
        revision: branch the patch is pushed to; usage examples pass it when it is not ``main``.
        show_tokens: list the token strings of the edited rows.
        base_on_hub: whether the base model's recorded name is a Hub repository. ``None`` decides
            from its form (see :func:`hub_model_id`); ``False`` keeps ``base_model`` out of the metadata.
    """
    base = patch.manifest["base_model"]
    name = base.get("name_or_path")
    hub_id = hub_model_id(name) if base_on_hub is not False else None
    if hub_id:
        model_ref = hub_id
    else:
        model_ref = f"path/to/{_local_name(name)}" if name else "path/to/base-model"
    patch_ref = repo_id or "path/to/patch"
    on_branch = bool(repo_id and revision and revision != "main")

    card = ModelCard.from_template(
        build_card_data(patch, hub_id),
        template_str=_TEMPLATE,
        forget_classes=", ".join(patch.forget_classes),
        num_tokens=len(patch.token_ids),
        head_module=patch.head_module,
        base_model_text=_base_model_text(name, hub_id, base.get("revision")),
        fingerprint=patch.fingerprint,
        params_text=_parameters_text(patch),
        patch_id=patch.manifest.get("patch_id") or "assigned when saved",
        metrics_table=metrics_table(patch.manifest.get("metrics") or {}),
        tokens_section=_tokens_section(patch, show_tokens, published_manifest=repo_id is not None),
        model_ref=model_ref,
        patch_ref=patch_ref,
        patch_revision_option=f" --patch-revision {revision}" if on_branch else "",
        patch_revision_argument=f', revision="{revision}"' if on_branch else "",
        model_revision_option=f" --revision {base['revision']}" if hub_id and base.get("revision") else "",
        model_revision_argument=f', revision="{base["revision"]}"' if hub_id and base.get("revision") else "",
    )
    return str(card)
