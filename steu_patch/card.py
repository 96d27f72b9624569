"""Model card (README.md) of a forget patch, built with huggingface_hub's ``ModelCard``."""

from __future__ import annotations

from typing import TYPE_CHECKING

from huggingface_hub import ModelCard, ModelCardData

if TYPE_CHECKING:
    from .patch import ForgetPatch

_TEMPLATE = """---
{{ card_data }}
---

# Forget patch: {{ forget_classes }}

This repository holds a **forget patch** made by [steu-patch](https://pypi.org/project/steu-patch/) with
Sparse Token Embedding Unlearning (STEU). Applied to its base model, it suppresses the class(es)
**{{ forget_classes }}** by overwriting {{ num_tokens }} input-embedding rows and the final classification
layer `{{ head_module }}`. The encoder is untouched.

- Base model: `{{ base_model }}`{% if revision %} (revision `{{ revision }}`){% endif %}
- Base fingerprint (SHA-256 of the original values the patch overwrites): `{{ fingerprint }}`
- Parameters modified: {{ params_count }}{% if params_fraction %} ({{ params_fraction }} of the model){% endif %}
- Patch id: `{{ patch_id }}`

## Metrics

{{ metrics_table }}

Forget F1 measures behaviour: whether the classifier still predicts the forgotten class. It does not show
that the class is gone from the model's representations; `steu-patch audit --data` measures that with a
linear probe, a membership-inference test and a relearning check.

## Tokens

{{ tokens_section }}

## How to use

From the command line:

```bash
steu-patch apply {{ base_model }} {{ repo_hint }} --output patched-model
steu-patch revert patched-model {{ repo_hint }} --output original-model
steu-patch audit {{ repo_hint }} --base {{ base_model }}
```

From Python with steu-patch:

```python
from transformers import AutoModelForSequenceClassification
from steu_patch import PatchedModel

model = AutoModelForSequenceClassification.from_pretrained("{{ base_model }}")
patched = PatchedModel.from_pretrained(model, "{{ repo_hint }}")
original = patched.unload()  # restores every original value bit for bit
```

With stock PEFT (no steu-patch needed):

```python
from peft import PeftModel

patched = PeftModel.from_pretrained(model, "{{ repo_hint }}")
```
"""


def _metrics_table(metrics: dict) -> str:
    before = metrics.get("before") or {}
    after = metrics.get("after") or {}
    rows = [
        ("Forget F1", "forget_f1"),
        ("Retain macro-F1", "retain_macro_f1"),
        ("Retain accuracy", "retain_accuracy"),
    ]
    if not before and not after:
        return "No metrics were recorded for this patch."
    lines = ["| metric | before | after |", "| --- | ---: | ---: |"]
    for title, key in rows:
        lines.append(f"| {title} | {_number(before.get(key))} | {_number(after.get(key))} |")
    return "\n".join(lines)


def _number(value: object) -> str:
    return f"{value:.4f}" if isinstance(value, (int, float)) else "–"


def _tokens_section(patch: ForgetPatch, show_tokens: bool) -> str:
    ids_note = (
        f"The patch edits {len(patch.token_ids)} embedding rows. `adapter_model.safetensors` and "
        "`adapter_config.json` necessarily contain their token ids, which the base model's tokenizer maps back "
        "to token strings."
    )
    if not show_tokens:
        return ids_note + " The token strings are left out of this card because they can reveal what was forgotten."
    strings = ", ".join(f"`{token.get('token', token['id'])}`" for token in patch.manifest["tokens"])
    return f"{ids_note}\n\nEdited tokens, highest score first: {strings}"


def build_model_card(patch: ForgetPatch, *, repo_id: str | None = None, show_tokens: bool = False) -> str:
    """Render the model card text of ``patch``; token strings only with ``show_tokens``."""
    manifest = patch.manifest
    base = manifest["base_model"]
    base_model = base.get("name_or_path") or "BASE_MODEL"
    modified = manifest.get("parameters_modified") or {}
    fraction = modified.get("fraction")
    card_data = ModelCardData(
        library_name="peft",
        base_model=base_model if base.get("name_or_path") else None,
        tags=["unlearning", "steu-patch", "forget-patch"],
    )
    card_data.forget_classes = patch.forget_classes
    card_data.steu_patch = {
        "format_version": manifest["format_version"],
        "patch_id": manifest.get("patch_id"),
        "base_fingerprint": patch.fingerprint,
        "parameters_modified": modified.get("count"),
        "parameters_modified_fraction": fraction,
    }
    card = ModelCard.from_template(
        card_data,
        template_str=_TEMPLATE,
        forget_classes=", ".join(patch.forget_classes),
        num_tokens=len(patch.token_ids),
        head_module=patch.head_module,
        base_model=base_model,
        revision=base.get("revision"),
        fingerprint=patch.fingerprint,
        params_count=f"{modified.get('count', patch.parameters_modified()):,}",
        params_fraction=f"{fraction:.4%}" if fraction else None,
        patch_id=manifest.get("patch_id") or "assigned when saved",
        metrics_table=_metrics_table(manifest.get("metrics") or {}),
        tokens_section=_tokens_section(patch, show_tokens),
        repo_hint=repo_id or "PATCH_DIR",
    )
    return str(card)
