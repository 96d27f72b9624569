"""Tests that stock PEFT (0.21) loads a forget patch exactly, and of the PEFT traps the format avoids.

Each trap test first shows what peft 0.21.2 does, so a PEFT release that changes the behaviour
fails here, and then checks how steu-patch avoids it.
"""

from __future__ import annotations

import contextlib
import copy
import dataclasses
import logging
import re
import warnings
from collections.abc import Iterator
from pathlib import Path

import pytest
import torch
from conftest import (
    ARCHITECTURES,
    DTYPES,
    PATCH_TOKEN_IDS,
    edit_json,
    rewrite_patch_file,
    logits,
    make_patch,
    make_tiny_classifier,
    model_digests,
    sample_input_ids,
    save_and_load,
    save_model_dir,
    tensor_digest,
)
from peft import LoraConfig, PeftConfig, PeftModel, TrainableTokensConfig, get_peft_model, set_peft_model_state_dict
from peft.utils.other import ModulesToSaveWrapper
from safetensors.torch import load_file
from torch import nn
from transformers import AutoModelForSequenceClassification

from steu_patch.apply import PatchedModel, apply_patch, revert_patch
from steu_patch.checkpoint import write_patched_model
from steu_patch.errors import FingerprintMismatchError, PatchFormatError, UnsupportedModelError
from steu_patch.models import find_editable_parts
from steu_patch.patch import (
    ADAPTER_CONFIG_NAME,
    NO_LORA_TARGETS,
    load_patch,
    peft_passthrough_values,
    peft_wrapped_modules,
)

CASES = [pytest.param(arch, dtype_id, id=f"{arch}-{dtype_id}") for arch in ARCHITECTURES for dtype_id in DTYPES]
KEY_WARNING = re.compile(r"missing|unexpected|not initiali[sz]ed|were not used", re.IGNORECASE)


@contextlib.contextmanager
def captured_messages() -> Iterator[list[str]]:
    """Collect Python warnings and peft/transformers log records raised inside the block."""
    messages: list[str] = []
    handler = logging.Handler(level=logging.DEBUG)
    handler.emit = lambda record: messages.append(record.getMessage())  # type: ignore[method-assign]
    loggers = [logging.getLogger(name) for name in ("peft", "transformers")]
    for logger in loggers:
        logger.addHandler(handler)
    try:
        with warnings.catch_warnings(record=True) as caught:
            warnings.simplefilter("always")
            yield messages
        messages.extend(str(warning.message) for warning in caught)
    finally:
        for logger in loggers:
            logger.removeHandler(handler)


def load_with_peft(model_dir: Path, patch_dir: Path, dtype: torch.dtype) -> tuple[PeftModel, list[str]]:
    base = AutoModelForSequenceClassification.from_pretrained(model_dir, dtype=dtype).eval()
    with captured_messages() as messages:
        peft_model = PeftModel.from_pretrained(base, patch_dir).eval()
    return peft_model, messages


def peft_base_name(name: str) -> str | None:
    """Map a PeftModel parameter name to the base model's name; None for the adapter's own copies."""
    name = name.removeprefix("base_model.model.")
    if ".token_adapter.trainable_tokens_delta." in name or ".modules_to_save." in name:
        return None
    return name.replace(".token_adapter.base_layer.", ".").replace(".original_module.", ".")


def saved_setup(arch: str, directory: Path, *, peft_passthrough: bool = True):
    """Return a tiny model of ``arch``, its saved directory and a saved patch for it."""
    model = make_tiny_classifier(arch)
    model_dir = save_model_dir(model, directory / "base")
    patch_dir = directory / "patch"
    make_patch(model, peft_passthrough=peft_passthrough).save_pretrained(patch_dir)
    return model, model_dir, patch_dir


@pytest.fixture
def bert_setup(tmp_path: Path):
    """A saved tiny BERT, a saved patch for it, and the in-memory model."""
    return saved_setup("bert", tmp_path)


@pytest.fixture
def distilbert_setup(tmp_path: Path):
    """A saved tiny DistilBERT, a saved patch for it with PEFT passthrough tensors, and the model."""
    return saved_setup("distilbert", tmp_path)


def peft_wrapper_names(peft_model: nn.Module) -> list[str]:
    """Return the base-model names of the modules PEFT wrapped with ModulesToSaveWrapper."""
    return [
        name.removeprefix("base_model.model.")
        for name, module in peft_model.named_modules()
        if isinstance(module, ModulesToSaveWrapper)
    ]


# ----- stock PEFT loads the patch exactly -----


@pytest.mark.parametrize(("arch", "dtype_id"), CASES)
def test_disk_memory_and_peft_logits_equal(arch: str, dtype_id: str, tmp_path: Path) -> None:
    dtype = DTYPES[dtype_id]
    model = make_tiny_classifier(arch, dtype)
    model_dir = save_model_dir(model, tmp_path / "base")
    patch = save_and_load(make_patch(model), tmp_path / "patch")
    input_ids = sample_input_ids()
    base_logits = logits(model, input_ids)

    write_patched_model(model_dir, patch, tmp_path / "patched")
    on_disk = AutoModelForSequenceClassification.from_pretrained(tmp_path / "patched", dtype=dtype).eval()
    in_memory = PatchedModel(model, patch)
    peft_model, messages = load_with_peft(model_dir, tmp_path / "patch", dtype)

    disk_logits = logits(on_disk, input_ids)
    assert torch.isfinite(disk_logits).all()
    assert not torch.equal(disk_logits, base_logits)
    assert torch.equal(logits(in_memory, input_ids), disk_logits)
    assert torch.equal(logits(peft_model, input_ids), disk_logits)
    assert [message for message in messages if KEY_WARNING.search(message)] == []


@pytest.mark.parametrize(("arch", "dtype_id"), CASES)
def test_peft_adds_no_effective_parameter(arch: str, dtype_id: str, tmp_path: Path) -> None:
    dtype = DTYPES[dtype_id]
    model = make_tiny_classifier(arch, dtype)
    model_dir = save_model_dir(model, tmp_path / "base")
    make_patch(model).save_pretrained(tmp_path / "patch")
    peft_model, _ = load_with_peft(model_dir, tmp_path / "patch", dtype)

    names = [name for name, _ in peft_model.named_parameters()]
    assert [name for name in names if "lora_" in name] == []
    mapped = {peft_base_name(name): parameter for name, parameter in peft_model.named_parameters()}
    mapped.pop(None, None)
    base_parameters = dict(model.named_parameters())
    assert set(mapped) == set(base_parameters)
    changed = [name for name in mapped if tensor_digest(mapped[name]) != tensor_digest(base_parameters[name])]
    assert changed == []


def peft_load_result(model_dir: Path, patch_dir: Path):
    """Load the adapter file into a fresh PeftModel and return PEFT's missing and unexpected keys."""
    base = AutoModelForSequenceClassification.from_pretrained(model_dir)
    peft_model = PeftModel(base, PeftConfig.from_pretrained(patch_dir))
    return set_peft_model_state_dict(peft_model, load_file(patch_dir / "adapter_model.safetensors"))


def is_adapter_key(key: str) -> bool:
    return ".token_adapter.trainable_tokens_delta" in key or ".modules_to_save." in key or "lora_" in key


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_peft_consumes_every_adapter_tensor(arch: str, tmp_path: Path) -> None:
    model = make_tiny_classifier(arch)
    model_dir = save_model_dir(model, tmp_path / "base")
    make_patch(model).save_pretrained(tmp_path / "patch")
    result = peft_load_result(model_dir, tmp_path / "patch")
    assert result.unexpected_keys == []
    assert [key for key in result.missing_keys if is_adapter_key(key)] == []


def test_peft_load_result_reports_extra_tensor(bert_setup) -> None:
    _, model_dir, patch_dir = bert_setup
    extra = "base_model.model.bert.pooler.dense.lora_A.weight"
    rewrite_patch_file(patch_dir, "adapter_model.safetensors", lambda tensors: tensors.update({extra: torch.zeros(1, 32)}))
    assert peft_load_result(model_dir, patch_dir).unexpected_keys == [extra]


def test_peft_copies_hold_patch_values(bert_setup) -> None:
    _, model_dir, patch_dir = bert_setup
    patch = load_patch(patch_dir)
    peft_model, _ = load_with_peft(model_dir, patch_dir, torch.float32)
    parameters = dict(peft_model.named_parameters())
    rows = parameters["base_model.model.bert.embeddings.word_embeddings.token_adapter.trainable_tokens_delta.default"]
    assert tensor_digest(rows) == tensor_digest(patch.new_rows)
    assert tensor_digest(parameters["base_model.model.classifier.modules_to_save.default.bias"]) == tensor_digest(patch.new_head["bias"])


@pytest.mark.parametrize("arch", ["bert", "distilbert"])
def test_peft_merge_and_unload_equals_disk_patch(arch: str, tmp_path: Path) -> None:
    _, model_dir, patch_dir = saved_setup(arch, tmp_path)
    write_patched_model(model_dir, load_patch(patch_dir), tmp_path / "patched")
    on_disk = AutoModelForSequenceClassification.from_pretrained(tmp_path / "patched")
    peft_model, _ = load_with_peft(model_dir, patch_dir, torch.float32)
    assert model_digests(peft_model.merge_and_unload()) == model_digests(on_disk)


def test_peft_reads_adapter_config(bert_setup) -> None:
    _, _, patch_dir = bert_setup
    config = PeftConfig.from_pretrained(patch_dir)
    assert isinstance(config, LoraConfig)
    assert config.target_modules == NO_LORA_TARGETS
    assert config.trainable_token_indices == {"bert.embeddings.word_embeddings": list(PATCH_TOKEN_IDS)}
    assert config.modules_to_save == ["classifier"]


# ----- PEFT passthrough tensors -----


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_passthrough_names_match_peft_wrappers(arch: str, tmp_path: Path) -> None:
    model, model_dir, patch_dir = saved_setup(arch, tmp_path)
    head = find_editable_parts(model).head_name
    base = AutoModelForSequenceClassification.from_pretrained(model_dir)
    peft_model = PeftModel(base, PeftConfig.from_pretrained(patch_dir))
    wrapped = peft_wrapper_names(peft_model)
    assert peft_wrapped_modules(model, head) == wrapped
    modules = dict(model.named_modules())
    expected = {f"{name}.{key}" for name in wrapped if name != head for key in modules[name].state_dict()}
    assert set(peft_passthrough_values(model, head)) == expected
    assert load_patch(patch_dir).manifest.get("peft_passthrough", []) == sorted(expected)


def test_passthrough_only_for_distilbert() -> None:
    found = {}
    for arch in ARCHITECTURES:
        model = make_tiny_classifier(arch)
        found[arch] = list(peft_passthrough_values(model, find_editable_parts(model).head_name))
    assert found.pop("distilbert") == ["pre_classifier.bias", "pre_classifier.weight"]
    assert found == {arch: [] for arch in ARCHITECTURES if arch != "distilbert"}


class SuffixNames(nn.Module):
    """Modules whose names end with "classifier" as strings, as dotted paths, or not at all."""

    def __init__(self) -> None:
        super().__init__()
        self.embed = nn.Embedding(10, 4)
        self.pre_classifier = nn.Linear(4, 4)
        self.classifier_norm = nn.LayerNorm(4)
        self.block = nn.ModuleDict({"xclassifier": nn.Linear(4, 4), "classifier": nn.Linear(4, 4, bias=False)})
        self.classifier = nn.Linear(4, 2)

    def forward(self, input_ids: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.embed(input_ids))


def test_wrapped_modules_follow_peft_suffix_rule() -> None:
    peft_model = get_peft_model(SuffixNames(), LoraConfig(r=1, target_modules=NO_LORA_TARGETS, modules_to_save=["classifier"]))
    expected = ["pre_classifier", "block.xclassifier", "block.classifier", "classifier"]
    assert peft_wrapper_names(peft_model) == expected
    assert peft_wrapped_modules(SuffixNames(), "classifier") == expected


def test_passthrough_values_cover_wrapped_state() -> None:
    model = SuffixNames()
    values = peft_passthrough_values(model, "classifier")
    assert list(values) == ["block.classifier.weight", "block.xclassifier.bias", "block.xclassifier.weight", "pre_classifier.bias", "pre_classifier.weight"]
    assert tensor_digest(values["block.classifier.weight"]) == tensor_digest(model.block.classifier.weight)


def test_passthrough_values_reject_unknown_head() -> None:
    with pytest.raises(UnsupportedModelError, match="has no module 'score'"):
        peft_passthrough_values(make_tiny_classifier("distilbert"), "score")


def test_passthrough_values_reject_mixed_dtype() -> None:
    model = make_tiny_classifier("distilbert", torch.float16)
    model.pre_classifier.float()
    with pytest.raises(UnsupportedModelError, match="also wraps 'pre_classifier', whose tensor 'weight' is torch.float32"):
        peft_passthrough_values(model, "classifier")


def test_peft_copies_hold_passthrough_values(distilbert_setup) -> None:
    model, model_dir, patch_dir = distilbert_setup
    peft_model, _ = load_with_peft(model_dir, patch_dir, torch.float32)
    parameters = dict(peft_model.named_parameters())
    for name in ("weight", "bias"):
        copy = parameters[f"base_model.model.pre_classifier.modules_to_save.default.{name}"]
        assert tensor_digest(copy) == tensor_digest(getattr(model.pre_classifier, name)), name


def test_apply_rejects_changed_passthrough(distilbert_setup) -> None:
    model, _, patch_dir = distilbert_setup
    patch = load_patch(patch_dir)
    other = changed_pre_classifier(model)
    before = model_digests(other)
    with pytest.raises(FingerprintMismatchError) as caught:
        apply_patch(other, patch)
    message = str(caught.value)
    assert "differing: PEFT passthrough tensor pre_classifier.weight)" in message
    assert patch.fingerprint in message
    assert model_digests(other) == before


def test_disk_apply_rejects_changed_passthrough(distilbert_setup, tmp_path: Path) -> None:
    model, _, patch_dir = distilbert_setup
    other_dir = save_model_dir(changed_pre_classifier(model), tmp_path / "other")
    with pytest.raises(FingerprintMismatchError, match="differing: PEFT passthrough tensor pre_classifier.weight"):
        write_patched_model(other_dir, load_patch(patch_dir), tmp_path / "patched")
    assert not (tmp_path / "patched").exists()


def test_force_over_changed_passthrough_reverts(distilbert_setup) -> None:
    model, _, patch_dir = distilbert_setup
    patch = load_patch(patch_dir)
    other = changed_pre_classifier(model)
    changed_weight = tensor_digest(other.pre_classifier.weight)
    apply_patch(other, patch, force=True)
    assert tensor_digest(other.pre_classifier.weight) == changed_weight
    revert_patch(other, patch)
    assert tensor_digest(other.pre_classifier.weight) == changed_weight
    assert model_digests(other) == model_digests(changed_pre_classifier(model))


def test_apply_rejects_model_without_passthrough(distilbert_setup) -> None:
    model, _, patch_dir = distilbert_setup
    other = copy.deepcopy(model)
    other.pre_classifier = nn.Identity()
    with pytest.raises(UnsupportedModelError, match="has no tensor 'pre_classifier.bias', which the patch records"):
        apply_patch(other, load_patch(patch_dir))


def changed_pre_classifier(model: nn.Module) -> nn.Module:
    """Return a copy of a DistilBERT ``model`` with the lowest bit of one pre_classifier weight flipped."""
    other = copy.deepcopy(model)
    with torch.no_grad():
        other.pre_classifier.weight.view(torch.int32).view(-1)[0] ^= 1
    return other


# ----- trap 1: TrainableTokensConfig cannot carry a head -----


def test_trap_trainable_tokens_config_lacks_modules_to_save(bert_setup) -> None:
    assert "modules_to_save" not in {field.name for field in dataclasses.fields(TrainableTokensConfig)}
    _, _, patch_dir = bert_setup
    config = PeftConfig.from_pretrained(patch_dir)
    assert config.peft_type.value == "LORA"
    assert config.modules_to_save == [load_patch(patch_dir).head_module]


# ----- trap 2: without modules_to_save PEFT writes the head into the base model -----


def _drop_modules_to_save(patch_dir: Path) -> None:
    edit_json(patch_dir / ADAPTER_CONFIG_NAME, lambda config: config.update(modules_to_save=None))


def test_trap_no_modules_to_save_in_peft(bert_setup) -> None:
    model, model_dir, patch_dir = bert_setup
    new_weight = load_patch(patch_dir).new_head["weight"]
    _drop_modules_to_save(patch_dir)
    base = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    with captured_messages() as messages:
        peft_model = PeftModel.from_pretrained(base, patch_dir)
    unloaded = peft_model.unload()
    # peft 0.21.2 loads the head weights straight into the base layer without any warning.
    assert [message for message in messages if KEY_WARNING.search(message)] == []
    assert tensor_digest(unloaded.classifier.weight) == tensor_digest(new_weight)
    assert tensor_digest(unloaded.classifier.weight) != tensor_digest(model.classifier.weight)


def test_trap_no_modules_to_save_rejected_by_loader(bert_setup) -> None:
    _, _, patch_dir = bert_setup
    _drop_modules_to_save(patch_dir)
    with pytest.raises(PatchFormatError, match=r"sets modules_to_save=None but the manifest requires \['classifier'\]"):
        load_patch(patch_dir)


def test_trap_no_trainable_tokens_rejected_by_loader(bert_setup) -> None:
    _, _, patch_dir = bert_setup
    edit_json(patch_dir / ADAPTER_CONFIG_NAME, lambda config: config.pop("trainable_token_indices"))
    with pytest.raises(PatchFormatError, match="sets trainable_token_indices=None"):
        load_patch(patch_dir)


# ----- trap 6: modules_to_save matches module names by string suffix -----


def test_trap_suffix_match_needs_passthrough(tmp_path: Path) -> None:
    _, model_dir, patch_dir = saved_setup("distilbert", tmp_path, peft_passthrough=False)
    base = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    # peft 0.21.2 wraps pre_classifier too and then looks up its tensors in the adapter file.
    with pytest.raises(KeyError, match="base_model.model.pre_classifier.weight"):
        PeftModel.from_pretrained(base, patch_dir)


def test_trap_suffix_match_loads_with_passthrough(distilbert_setup) -> None:
    _, model_dir, patch_dir = distilbert_setup
    peft_model, _ = load_with_peft(model_dir, patch_dir, torch.float32)
    assert peft_wrapper_names(peft_model) == ["pre_classifier", "classifier"]


# ----- trap 3: PEFT unload() keeps the edited head copy -----


def test_trap_peft_unload_keeps_edited_head(bert_setup) -> None:
    model, model_dir, patch_dir = bert_setup
    patch = load_patch(patch_dir)
    peft_model, _ = load_with_peft(model_dir, patch_dir, torch.float32)
    unloaded = peft_model.unload()
    rows = unloaded.bert.embeddings.word_embeddings.weight[list(PATCH_TOKEN_IDS)]
    assert tensor_digest(rows) == tensor_digest(patch.original_rows)
    assert tensor_digest(unloaded.classifier.weight) == tensor_digest(patch.new_head["weight"])
    assert tensor_digest(unloaded.classifier.bias) == tensor_digest(patch.new_head["bias"])


def test_trap_steu_unload_restores_originals(bert_setup) -> None:
    model, _, patch_dir = bert_setup
    base = model_digests(model)
    patched = PatchedModel.from_pretrained(model, str(patch_dir))
    assert model_digests(patched.unload()) == base


# ----- trap 4: trainable tokens on a Linear layer drop its bias -----


def test_trap_trainable_tokens_on_linear_drop_bias(bert_setup) -> None:
    model, model_dir, _ = bert_setup
    base = AutoModelForSequenceClassification.from_pretrained(model_dir).eval()
    input_ids = sample_input_ids()
    base_logits = logits(base, input_ids)
    peft_model = get_peft_model(base, TrainableTokensConfig(target_modules=["classifier"], token_indices=[0])).eval()
    without_bias = logits(peft_model, input_ids)
    assert not torch.allclose(without_bias, base_logits)
    assert torch.allclose(without_bias + model.classifier.bias.detach(), base_logits, atol=1e-6)


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_trap_head_never_trainable_tokens(arch: str, tmp_path: Path) -> None:
    model = make_tiny_classifier(arch)
    parts = find_editable_parts(model)
    make_patch(model).save_pretrained(tmp_path / "patch")
    config = PeftConfig.from_pretrained(tmp_path / "patch")
    assert list(config.trainable_token_indices) == [parts.embedding_name]
    assert config.modules_to_save == [parts.head_name]
    assert load_patch(tmp_path / "patch").manifest["head_parameters"] == ["bias", "weight"]


def test_trap_head_bias_patched_and_restored(bert_setup) -> None:
    model, _, patch_dir = bert_setup
    patch = load_patch(patch_dir)
    original_bias = tensor_digest(model.classifier.bias)
    apply_patch(model, patch)
    assert tensor_digest(model.classifier.bias) == tensor_digest(patch.new_head["bias"])
    revert_patch(model, patch)
    assert tensor_digest(model.classifier.bias) == original_bias
