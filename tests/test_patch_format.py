"""Tests of the forget-patch format: files, tensor keys, manifest, fingerprint, validation on load."""

from __future__ import annotations

import hashlib
import json
from collections.abc import Callable
from pathlib import Path

import pytest
import torch
from conftest import (
    DTYPES,
    PATCH_TOKEN_IDS,
    VOCAB_SIZE,
    copy_tree,
    edit_json,
    leftover_temp_dirs,
    make_patch,
    make_tiny_classifier,
    rewrite_patch_file,
    save_and_load,
    tensor_digest,
)
from safetensors import safe_open

from steu_patch import __version__
from steu_patch.errors import PatchFormatError, PatchNotFoundError
from steu_patch.patch import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    CARD_NAME,
    FORMAT_VERSION,
    MANIFEST_NAME,
    NO_LORA_TARGETS,
    ORIGINALS_NAME,
    ForgetPatch,
    TouchedValues,
    build_patch,
    compute_fingerprint,
    load_patch,
    peft_passthrough_values,
    save_patch,
)

EMBEDDING = "bert.embeddings.word_embeddings"
ROWS_KEY = f"base_model.model.{EMBEDDING}.token_adapter.trainable_tokens_delta"
PATCH_FILES = {ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, ORIGINALS_NAME, MANIFEST_NAME, CARD_NAME}
DISTILBERT_EMBEDDING = "distilbert.embeddings.word_embeddings"
PASSTHROUGH = ["pre_classifier.bias", "pre_classifier.weight"]
PASSTHROUGH_WEIGHT_KEY = "base_model.model.pre_classifier.weight"


def read_tensors(path: Path) -> dict[str, torch.Tensor]:
    with safe_open(str(path), framework="pt") as handle:
        return {key: handle.get_tensor(key) for key in handle.keys()}


def read_manifest(patch_dir: Path) -> dict:
    return json.loads((patch_dir / MANIFEST_NAME).read_text(encoding="utf-8"))


# ----- files and keys -----


def test_saved_patch_lists_exact_files(bert_patch_dir: Path) -> None:
    assert {path.name for path in bert_patch_dir.iterdir()} == PATCH_FILES


def test_save_leaves_no_staging_dirs(bert_model, tmp_path: Path) -> None:
    make_patch(bert_model).save_pretrained(tmp_path / "patch")
    assert leftover_temp_dirs(tmp_path) == []


def test_adapter_weights_keys_and_values(bert_model, bert_patch_dir: Path) -> None:
    tensors = read_tensors(bert_patch_dir / ADAPTER_WEIGHTS_NAME)
    patch = load_patch(bert_patch_dir)
    assert set(tensors) == {ROWS_KEY, "base_model.model.classifier.weight", "base_model.model.classifier.bias"}
    assert tensor_digest(tensors[ROWS_KEY]) == tensor_digest(patch.new_rows)
    assert tensors[ROWS_KEY].shape == (len(PATCH_TOKEN_IDS), 32)
    assert tensor_digest(tensors["base_model.model.classifier.weight"]) == tensor_digest(patch.new_head["weight"])
    assert tensor_digest(tensors["base_model.model.classifier.bias"]) == tensor_digest(patch.new_head["bias"])


def test_original_values_keys_hold_model_values(bert_model, bert_patch_dir: Path) -> None:
    tensors = read_tensors(bert_patch_dir / ORIGINALS_NAME)
    weight = bert_model.bert.embeddings.word_embeddings.weight.detach()
    assert set(tensors) == {f"{EMBEDDING}.weight.rows", "classifier.weight", "classifier.bias"}
    assert tensor_digest(tensors[f"{EMBEDDING}.weight.rows"]) == tensor_digest(weight[list(PATCH_TOKEN_IDS)])
    assert tensor_digest(tensors["classifier.weight"]) == tensor_digest(bert_model.classifier.weight)
    assert tensor_digest(tensors["classifier.bias"]) == tensor_digest(bert_model.classifier.bias)


def test_safetensors_metadata_records_format(bert_patch_dir: Path) -> None:
    for name in (ADAPTER_WEIGHTS_NAME, ORIGINALS_NAME):
        with safe_open(str(bert_patch_dir / name), framework="pt") as handle:
            metadata = handle.metadata()
        assert metadata == {"format": "pt"}, name


def test_same_patch_saves_same_patch_id(bert_model, tmp_path: Path) -> None:
    patch = make_patch(bert_model)
    first = load_patch(save_patch(patch, tmp_path / "first"))
    second = load_patch(save_patch(patch, tmp_path / "second"))
    assert first.manifest["files"] == second.manifest["files"]
    assert first.patch_id == second.patch_id


def test_adapter_config_content(bert_patch_dir: Path) -> None:
    config = json.loads((bert_patch_dir / ADAPTER_CONFIG_NAME).read_text(encoding="utf-8"))
    assert config["peft_type"] == "LORA"
    assert config["target_modules"] == NO_LORA_TARGETS
    assert config["trainable_token_indices"] == {EMBEDDING: list(PATCH_TOKEN_IDS)}
    assert config["modules_to_save"] == ["classifier"]
    assert config["inference_mode"] is True
    assert config["base_model_name_or_path"] == "tests/tiny-classifier"


# ----- manifest -----


def test_manifest_identity_fields(bert_patch_dir: Path) -> None:
    manifest = read_manifest(bert_patch_dir)
    assert manifest["format_version"] == FORMAT_VERSION
    assert manifest["tool"] == {"name": "steu-patch", "version": __version__}
    assert manifest["base_model"] == {"name_or_path": "tests/tiny-classifier", "model_type": "bert"}
    assert manifest["parent_patches"] == []
    assert manifest["id2label"] == {"0": "cardiology", "1": "orthopedics", "2": "dermatology"}
    assert manifest["forget_classes"] == ["cardiology"]


def test_manifest_edit_fields(bert_patch_dir: Path) -> None:
    manifest = read_manifest(bert_patch_dir)
    assert manifest["embedding_module"] == EMBEDDING
    assert manifest["head_module"] == "classifier"
    assert manifest["head_parameters"] == ["bias", "weight"]
    assert [token["id"] for token in manifest["tokens"]] == list(PATCH_TOKEN_IDS)
    assert manifest["tokens"][0]["token"] == "word007"


def test_manifest_counts_modified_parameters(bert_model, bert_patch_dir: Path) -> None:
    modified = read_manifest(bert_patch_dir)["parameters_modified"]
    expected = len(PATCH_TOKEN_IDS) * 32 + 3 * 32 + 3
    total = sum(parameter.numel() for parameter in bert_model.parameters())
    assert modified["count"] == expected
    assert modified["total"] == total
    assert modified["fraction"] == pytest.approx(expected / total)


def test_manifest_file_hashes_and_patch_id(bert_patch_dir: Path) -> None:
    manifest = read_manifest(bert_patch_dir)
    hashes = {name: hashlib.sha256((bert_patch_dir / name).read_bytes()).hexdigest() for name in (ADAPTER_WEIGHTS_NAME, ORIGINALS_NAME)}
    assert manifest["files"] == hashes
    assert manifest["patch_id"] == hashlib.sha256(json.dumps(hashes, sort_keys=True).encode()).hexdigest()


def test_manifest_fingerprint_fields(bert_model, bert_patch_dir: Path) -> None:
    fingerprint = read_manifest(bert_patch_dir)["base_fingerprint"]
    weight = bert_model.bert.embeddings.word_embeddings.weight.detach()
    values = TouchedValues(
        weight[list(PATCH_TOKEN_IDS)].clone(),
        {"weight": bert_model.classifier.weight.detach(), "bias": bert_model.classifier.bias.detach()},
    )
    assert fingerprint["embedding_shape"] == [VOCAB_SIZE, 32]
    assert fingerprint["dtype"] == "float32"
    assert fingerprint["sha256"] == compute_fingerprint(PATCH_TOKEN_IDS, values, (VOCAB_SIZE, 32), torch.float32)


def test_card_names_patch_id(bert_patch_dir: Path) -> None:
    card = (bert_patch_dir / CARD_NAME).read_text(encoding="utf-8")
    assert read_manifest(bert_patch_dir)["patch_id"] in card


# ----- fingerprint -----


def _values(seed: int = 0) -> TouchedValues:
    generator = torch.Generator().manual_seed(seed)
    return TouchedValues(torch.randn(3, 4, generator=generator), {"weight": torch.randn(2, 4, generator=generator), "bias": torch.randn(2, generator=generator)})


def _flip_low_bit(tensor: torch.Tensor) -> torch.Tensor:
    flipped = tensor.clone()
    flipped.view(torch.int32).view(-1)[0] ^= 1
    return flipped


def test_fingerprint_is_deterministic() -> None:
    assert compute_fingerprint([1, 2, 3], _values(), (10, 4), torch.float32) == compute_fingerprint([1, 2, 3], _values(), (10, 4), torch.float32)


def test_fingerprint_covers_one_row_bit() -> None:
    values = _values()
    changed = TouchedValues(_flip_low_bit(values.rows), values.head)
    assert compute_fingerprint([1, 2, 3], values, (10, 4), torch.float32) != compute_fingerprint([1, 2, 3], changed, (10, 4), torch.float32)


def test_fingerprint_covers_head_bias_bit() -> None:
    values = _values()
    changed = TouchedValues(values.rows, {"weight": values.head["weight"], "bias": _flip_low_bit(values.head["bias"])})
    assert compute_fingerprint([1, 2, 3], values, (10, 4), torch.float32) != compute_fingerprint([1, 2, 3], changed, (10, 4), torch.float32)


def test_fingerprint_covers_token_ids() -> None:
    assert compute_fingerprint([1, 2, 3], _values(), (10, 4), torch.float32) != compute_fingerprint([1, 2, 4], _values(), (10, 4), torch.float32)


def test_fingerprint_covers_embedding_shape() -> None:
    assert compute_fingerprint([1, 2, 3], _values(), (10, 4), torch.float32) != compute_fingerprint([1, 2, 3], _values(), (11, 4), torch.float32)


def test_fingerprint_covers_dtype_name() -> None:
    values = _values()
    as_bf16 = compute_fingerprint([1, 2, 3], values, (10, 4), torch.bfloat16)
    assert compute_fingerprint([1, 2, 3], values, (10, 4), torch.float32) != as_bf16


def test_fingerprint_ignores_untouched_rows() -> None:
    model = make_tiny_classifier("bert")
    other = make_tiny_classifier("bert")
    with torch.no_grad():
        other.bert.embeddings.word_embeddings.weight[8] += 1.0
    assert make_patch(model).fingerprint == make_patch(other).fingerprint


def test_fingerprint_differs_between_seeds() -> None:
    assert make_patch(make_tiny_classifier("bert", seed=0)).fingerprint != make_patch(make_tiny_classifier("bert", seed=1)).fingerprint


# ----- round trip and saving -----


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_save_load_round_trip_bit_exact(dtype: torch.dtype, tmp_path: Path) -> None:
    patch = make_patch(make_tiny_classifier("bert", dtype))
    loaded = save_and_load(patch, tmp_path / "patch")
    assert loaded.manifest == patch.manifest
    assert loaded.token_ids == list(PATCH_TOKEN_IDS)
    assert loaded.dtype == dtype
    assert tensor_digest(loaded.new_rows) == tensor_digest(patch.new_rows)
    assert tensor_digest(loaded.original_rows) == tensor_digest(patch.original_rows)
    for name in ("weight", "bias"):
        assert tensor_digest(loaded.new_head[name]) == tensor_digest(patch.new_head[name]), name
        assert tensor_digest(loaded.original_head[name]) == tensor_digest(patch.original_head[name]), name


def test_save_rejects_non_empty_output(bert_model, tmp_path: Path) -> None:
    target = tmp_path / "patch"
    target.mkdir()
    (target / "keep.txt").write_text("user data", encoding="utf-8")
    with pytest.raises(FileExistsError, match="--overwrite"):
        make_patch(bert_model).save_pretrained(target)
    assert [path.name for path in target.iterdir()] == ["keep.txt"]
    assert leftover_temp_dirs(tmp_path) == []


def test_save_overwrite_replaces_output(bert_model, tmp_path: Path) -> None:
    target = tmp_path / "patch"
    make_patch(bert_model, seed=0).save_pretrained(target)
    second = make_patch(bert_model, seed=1)
    second.save_pretrained(target, overwrite=True)
    assert load_patch(target).patch_id == second.patch_id
    assert leftover_temp_dirs(tmp_path) == []


def test_save_into_empty_existing_dir(bert_model, tmp_path: Path) -> None:
    target = tmp_path / "patch"
    target.mkdir()
    make_patch(bert_model).save_pretrained(target)
    assert {path.name for path in target.iterdir()} == PATCH_FILES


# ----- build-time validation -----


def _build(model, **changes) -> ForgetPatch:
    patch = make_patch(model)
    arguments = dict(
        token_ids=patch.token_ids, original=patch.original_values(), new=patch.new_values(),
        embedding_module=EMBEDDING, head_module="classifier", embedding_shape=(VOCAB_SIZE, 32),
        base_model={"name_or_path": "tiny"}, id2label={0: "a", 1: "b", 2: "c"}, forget_classes=["a"],
    )  # fmt: skip
    arguments.update(changes)
    return build_patch(**arguments)


def test_build_rejects_nan_rows(bert_model) -> None:
    patch = make_patch(bert_model)
    rows = patch.new_rows.clone()
    rows[1, 3] = float("nan")
    with pytest.raises(PatchFormatError, match="1 NaN or infinite value"):
        _build(bert_model, new=TouchedValues(rows, patch.new_head))


def test_build_rejects_out_of_range_ids(bert_model) -> None:
    patch = make_patch(bert_model)
    with pytest.raises(PatchFormatError, match=r"Token id\(s\) \[120\] are outside the embedding matrix of 120 rows"):
        _build(bert_model, token_ids=[7, 19, 42, 88, 120], original=patch.original_values())


def test_build_rejects_duplicate_ids(bert_model) -> None:
    with pytest.raises(PatchFormatError, match="more than once"):
        _build(bert_model, token_ids=[7, 19, 42, 88, 7])


def test_build_rejects_empty_ids(bert_model) -> None:
    empty = TouchedValues(torch.empty(0, 32), make_patch(bert_model).original_head)
    with pytest.raises(PatchFormatError, match="at least one token id"):
        _build(bert_model, token_ids=[], original=empty, new=empty)


def test_build_rejects_mixed_dtypes(bert_model) -> None:
    patch = make_patch(bert_model)
    half_rows = TouchedValues(patch.new_rows.half(), patch.new_head)
    with pytest.raises(PatchFormatError, match="dtype torch.float16, but the manifest declares torch.float32"):
        _build(bert_model, new=half_rows)


def test_build_rejects_unsupported_dtype(bert_model) -> None:
    patch = make_patch(bert_model)
    doubles = TouchedValues(patch.original_rows.double(), {name: t.double() for name, t in patch.original_head.items()})
    with pytest.raises(PatchFormatError, match="Unsupported dtype float64"):
        _build(bert_model, original=doubles)


# ----- load-time validation -----


def _flip_byte_near_end(path: Path) -> None:
    data = bytearray(path.read_bytes())
    data[-3] ^= 0xFF
    path.write_bytes(bytes(data))


def _truncate(path: Path) -> None:
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def _set_nan(key: str) -> Callable[[dict[str, torch.Tensor]], None]:
    def edit(tensors: dict[str, torch.Tensor]) -> None:
        tensors[key][0, 0] = float("nan")

    return edit


DAMAGES: dict[str, tuple[Callable[[Path], None], type[Exception], str]] = {
    "manifest missing": (lambda d: (d / MANIFEST_NAME).unlink(), PatchFormatError, "steu_patch.json is missing"),
    "manifest invalid json": (lambda d: (d / MANIFEST_NAME).write_text("{not json", encoding="utf-8"), PatchFormatError, "is not valid JSON"),
    "manifest not an object": (lambda d: (d / MANIFEST_NAME).write_text("[1, 2]", encoding="utf-8"), PatchFormatError, "is not a JSON object"),
    "format version 2": (
        lambda d: edit_json(d / MANIFEST_NAME, lambda m: m.update(format_version=2)),
        PatchFormatError, "has format version 2; steu-patch .* reads version 1",
    ),
    "format version missing": (
        lambda d: edit_json(d / MANIFEST_NAME, lambda m: m.pop("format_version")),
        PatchFormatError, "has format version None",
    ),
    "field missing": (lambda d: edit_json(d / MANIFEST_NAME, lambda m: m.pop("tokens")), PatchFormatError, r"lacks the field\(s\) tokens"),
    "fingerprint dtype unknown": (
        lambda d: edit_json(d / MANIFEST_NAME, lambda m: m["base_fingerprint"].update(dtype="float64")),
        PatchFormatError, "invalid base_fingerprint",
    ),
    "token without id": (
        lambda d: edit_json(d / MANIFEST_NAME, lambda m: m["tokens"][0].pop("id")),
        PatchFormatError, r"invalid field\(s\) tokens \(expected a list of objects with an integer \"id\"\)",
    ),
    "token id a string": (
        lambda d: edit_json(d / MANIFEST_NAME, lambda m: m["tokens"][0].update(id="7")),
        PatchFormatError, r"invalid field\(s\) tokens",
    ),
    "embedding shape of one number": (
        lambda d: edit_json(d / MANIFEST_NAME, lambda m: m["base_fingerprint"].update(embedding_shape=[120])),
        PatchFormatError, r"invalid field\(s\) base_fingerprint",
    ),
    "fingerprint digest missing": (
        lambda d: edit_json(d / MANIFEST_NAME, lambda m: m["base_fingerprint"].pop("sha256")),
        PatchFormatError, r"invalid field\(s\) base_fingerprint",
    ),
    "files a list": (lambda d: edit_json(d / MANIFEST_NAME, lambda m: m.update(files=[])), PatchFormatError, r"invalid field\(s\) files"),
    "head parameters a string": (
        lambda d: edit_json(d / MANIFEST_NAME, lambda m: m.update(head_parameters="weight")),
        PatchFormatError, r"invalid field\(s\) head_parameters \(expected a non-empty list of strings\)",
    ),
    "parent without patch_id": (
        lambda d: edit_json(d / MANIFEST_NAME, lambda m: m.update(parent_patches=[{"id": 1}])),
        PatchFormatError, r"invalid field\(s\) parent_patches",
    ),
    "adapter weights missing": (lambda d: (d / ADAPTER_WEIGHTS_NAME).unlink(), PatchFormatError, "adapter_model.safetensors is missing"),
    "adapter config missing": (lambda d: (d / ADAPTER_CONFIG_NAME).unlink(), PatchFormatError, "adapter_config.json is missing"),
    "adapter config invalid json": (lambda d: (d / ADAPTER_CONFIG_NAME).write_text("{", encoding="utf-8"), PatchFormatError, "is not valid JSON"),
    "flipped byte": (lambda d: _flip_byte_near_end(d / ADAPTER_WEIGHTS_NAME), PatchFormatError, "does not match the manifest"),
    "truncated originals": (lambda d: _truncate(d / ORIGINALS_NAME), PatchFormatError, "does not match the manifest"),
    "truncated with matching hash": (
        lambda d: (_truncate(d / ADAPTER_WEIGHTS_NAME), edit_json(d / MANIFEST_NAME, lambda m: m["files"].update({ADAPTER_WEIGHTS_NAME: hashlib.sha256((d / ADAPTER_WEIGHTS_NAME).read_bytes()).hexdigest()}))),
        PatchFormatError, "is not a readable safetensors file",
    ),
    "nan in new rows": (lambda d: rewrite_patch_file(d, ADAPTER_WEIGHTS_NAME, _set_nan(ROWS_KEY)), PatchFormatError, "new embedding rows contain 1 NaN"),
    "nan in original head": (lambda d: rewrite_patch_file(d, ORIGINALS_NAME, _set_nan("classifier.weight")), PatchFormatError, "original head weight contain 1 NaN"),
    "extra tensor": (
        lambda d: rewrite_patch_file(d, ADAPTER_WEIGHTS_NAME, lambda t: t.update(extra=torch.zeros(2))),
        PatchFormatError, r"unexpected: \['extra'\]",
    ),
    "tensor missing": (
        lambda d: rewrite_patch_file(d, ORIGINALS_NAME, lambda t: t.pop("classifier.bias")),
        PatchFormatError, r"missing: \['classifier.bias'\]",
    ),
    "fp16 tensor in fp32 patch": (
        lambda d: rewrite_patch_file(d, ADAPTER_WEIGHTS_NAME, lambda t: t.update({ROWS_KEY: t[ROWS_KEY].half()})),
        PatchFormatError, "dtype torch.float16, but the manifest declares torch.float32",
    ),
    "head shape changed": (
        lambda d: rewrite_patch_file(d, ADAPTER_WEIGHTS_NAME, lambda t: t.update({"base_model.model.classifier.bias": torch.zeros(4)})),
        PatchFormatError, r"new head bias have shape \(4,\), expected \(3,\)",
    ),
    "pickle file": (lambda d: (d / "adapter_model.bin").write_bytes(b"\x80\x04K\x01."), PatchFormatError, r"pickle file\(s\) adapter_model.bin"),
    "token id out of range": (
        lambda d: edit_json(d / MANIFEST_NAME, lambda m: m["tokens"][0].update(id=500)),
        PatchFormatError, r"Token id\(s\) \[500\] are outside the embedding matrix of 120 rows",
    ),
    "token id repeated": (
        lambda d: edit_json(d / MANIFEST_NAME, lambda m: m["tokens"][1].update(id=m["tokens"][0]["id"])),
        PatchFormatError, "more than once",
    ),
    "adapter token ids differ": (
        lambda d: edit_json(d / ADAPTER_CONFIG_NAME, lambda c: c["trainable_token_indices"][EMBEDDING].reverse()),
        PatchFormatError, "sets trainable_token_indices=",
    ),
}  # fmt: skip


@pytest.mark.parametrize("damage", DAMAGES, ids=DAMAGES)
def test_load_rejects_damaged_patch(damage: str, bert_patch_dir: Path, tmp_path: Path) -> None:
    edit, error_type, message = DAMAGES[damage]
    patch_dir = copy_tree(bert_patch_dir, tmp_path / "patch")
    edit(patch_dir)
    with pytest.raises(error_type, match=message):
        load_patch(patch_dir)


def test_load_missing_directory(tmp_path: Path) -> None:
    with pytest.raises(PatchNotFoundError, match="does not exist"):
        load_patch(tmp_path / "absent")


def test_load_rejects_file_path(tmp_path: Path) -> None:
    path = tmp_path / "patch.safetensors"
    path.write_bytes(b"")
    with pytest.raises(PatchFormatError, match="is a file"):
        load_patch(path)


def test_errors_are_builtin_subclasses(tmp_path: Path) -> None:
    with pytest.raises(FileNotFoundError):
        load_patch(tmp_path / "absent")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError):
        load_patch(tmp_path / "empty")


def test_load_without_hash_check(bert_patch_dir: Path, tmp_path: Path) -> None:
    patch_dir = copy_tree(bert_patch_dir, tmp_path / "patch")
    edit_json(patch_dir / MANIFEST_NAME, lambda m: m["files"].update({ORIGINALS_NAME: "0" * 64}))
    with pytest.raises(PatchFormatError, match="does not match the manifest"):
        load_patch(patch_dir)
    loaded = load_patch(patch_dir, check_file_hashes=False)
    assert tensor_digest(loaded.original_rows) == tensor_digest(load_patch(bert_patch_dir).original_rows)


def test_load_without_hash_check_needs_files(bert_patch_dir: Path, tmp_path: Path) -> None:
    patch_dir = copy_tree(bert_patch_dir, tmp_path / "patch")
    (patch_dir / ORIGINALS_NAME).unlink()
    with pytest.raises(PatchFormatError, match="original_values.safetensors is missing"):
        load_patch(patch_dir, check_file_hashes=False)


# ----- PEFT passthrough tensors (DistilBERT's pre_classifier) -----


@pytest.fixture(scope="module")
def distilbert_model():
    return make_tiny_classifier("distilbert")


@pytest.fixture(scope="module")
def distilbert_patch_dir(tmp_path_factory: pytest.TempPathFactory, distilbert_model) -> Path:
    directory = tmp_path_factory.mktemp("distilbert") / "patch"
    make_patch(distilbert_model).save_pretrained(directory)
    return directory


def test_passthrough_adapter_keys_hold_base_values(distilbert_model, distilbert_patch_dir: Path) -> None:
    tensors = read_tensors(distilbert_patch_dir / ADAPTER_WEIGHTS_NAME)
    rows_key = f"base_model.model.{DISTILBERT_EMBEDDING}.token_adapter.trainable_tokens_delta"
    head_keys = {"base_model.model.classifier.weight", "base_model.model.classifier.bias"}
    assert set(tensors) == {rows_key, *head_keys, PASSTHROUGH_WEIGHT_KEY, "base_model.model.pre_classifier.bias"}
    assert tensor_digest(tensors[PASSTHROUGH_WEIGHT_KEY]) == tensor_digest(distilbert_model.pre_classifier.weight)
    assert tensor_digest(tensors["base_model.model.pre_classifier.bias"]) == tensor_digest(distilbert_model.pre_classifier.bias)


def test_passthrough_not_in_original_values(distilbert_patch_dir: Path) -> None:
    tensors = read_tensors(distilbert_patch_dir / ORIGINALS_NAME)
    assert set(tensors) == {f"{DISTILBERT_EMBEDDING}.weight.rows", "classifier.weight", "classifier.bias"}


def test_manifest_lists_passthrough(distilbert_patch_dir: Path) -> None:
    assert read_manifest(distilbert_patch_dir)["peft_passthrough"] == PASSTHROUGH


def test_manifest_omits_empty_passthrough(bert_patch_dir: Path) -> None:
    assert "peft_passthrough" not in read_manifest(bert_patch_dir)


def test_passthrough_not_counted_as_modified(distilbert_patch_dir: Path) -> None:
    modified = read_manifest(distilbert_patch_dir)["parameters_modified"]
    assert modified["count"] == len(PATCH_TOKEN_IDS) * 32 + 3 * 32 + 3


@pytest.mark.parametrize("dtype", DTYPES.values(), ids=DTYPES.keys())
def test_passthrough_round_trip_bit_exact(dtype: torch.dtype, tmp_path: Path) -> None:
    model = make_tiny_classifier("distilbert", dtype)
    loaded = save_and_load(make_patch(model), tmp_path / "patch")
    assert sorted(loaded.peft_passthrough) == PASSTHROUGH
    assert tensor_digest(loaded.peft_passthrough["pre_classifier.weight"]) == tensor_digest(model.pre_classifier.weight)
    assert tensor_digest(loaded.peft_passthrough["pre_classifier.bias"]) == tensor_digest(model.pre_classifier.bias)
    assert loaded.original_values().passthrough.keys() == loaded.new_values().passthrough.keys()


def _documented_fingerprint(token_ids, values: TouchedValues, shape, dtype_name: str) -> str:
    """Hash the bytes that docs/patch-format.md lists, step by step."""
    digest = hashlib.sha256(b"steu-patch fingerprint v1\n")
    digest.update(json.dumps({"shape": list(shape), "dtype": dtype_name}).encode())
    digest.update(b"".join(int(token_id).to_bytes(8, "little", signed=True) for token_id in token_ids))
    digest.update(values.rows.contiguous().view(torch.uint8).numpy().tobytes())
    for name in sorted(values.head):
        tensor = values.head[name]
        digest.update(name.encode() + b"\0" + json.dumps(list(tensor.shape)).encode())
        digest.update(tensor.contiguous().view(torch.uint8).numpy().tobytes())
    if values.passthrough:
        digest.update(b"peft passthrough\0")
        for name in sorted(values.passthrough):
            tensor = values.passthrough[name]
            digest.update(name.encode() + b"\0" + json.dumps({"shape": list(tensor.shape), "dtype": dtype_name}).encode())
            digest.update(tensor.contiguous().view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def _with_passthrough(values: TouchedValues) -> TouchedValues:
    generator = torch.Generator().manual_seed(3)
    passthrough = {"pre.weight": torch.randn(4, 4, generator=generator), "pre.bias": torch.randn(4, generator=generator)}
    return TouchedValues(values.rows, values.head, passthrough)


def test_fingerprint_follows_documented_bytes() -> None:
    values = _values()
    assert compute_fingerprint([1, 2, 3], values, (10, 4), torch.float32) == _documented_fingerprint([1, 2, 3], values, (10, 4), "float32")


def test_fingerprint_passthrough_follows_documented_bytes() -> None:
    values = _with_passthrough(_values())
    assert compute_fingerprint([1, 2, 3], values, (10, 4), torch.float32) == _documented_fingerprint([1, 2, 3], values, (10, 4), "float32")


def test_fingerprint_covers_passthrough_bit() -> None:
    values = _with_passthrough(_values())
    changed = dict(values.passthrough, **{"pre.weight": _flip_low_bit(values.passthrough["pre.weight"])})
    changed_values = TouchedValues(values.rows, values.head, changed)
    assert compute_fingerprint([1, 2, 3], values, (10, 4), torch.float32) != compute_fingerprint([1, 2, 3], changed_values, (10, 4), torch.float32)


def test_fingerprint_covers_passthrough_dtype() -> None:
    values = _values()
    half = TouchedValues(values.rows, values.head, {"pre.bias": torch.ones(4, dtype=torch.float16)})
    same_bytes = TouchedValues(values.rows, values.head, {"pre.bias": half.passthrough["pre.bias"].view(torch.bfloat16)})
    assert compute_fingerprint([1, 2, 3], half, (10, 4), torch.float32) != compute_fingerprint([1, 2, 3], same_bytes, (10, 4), torch.float32)


def test_distilbert_fingerprint_covers_passthrough(distilbert_model) -> None:
    with_passthrough = make_patch(distilbert_model)
    without = make_patch(distilbert_model, peft_passthrough=False)
    values = without.original_values()
    assert without.fingerprint == compute_fingerprint(PATCH_TOKEN_IDS, values, (VOCAB_SIZE, 32), torch.float32)
    assert with_passthrough.fingerprint != without.fingerprint


def test_build_takes_passthrough_from_original(distilbert_model) -> None:
    patch = make_patch(distilbert_model)
    rebuilt = _build(distilbert_model, embedding_module=DISTILBERT_EMBEDDING, original=patch.original_values())
    assert rebuilt.manifest["peft_passthrough"] == PASSTHROUGH
    assert rebuilt.fingerprint == patch.fingerprint


def test_build_empty_passthrough_overrides_original(distilbert_model) -> None:
    patch = make_patch(distilbert_model)
    rebuilt = _build(distilbert_model, embedding_module=DISTILBERT_EMBEDDING, original=patch.original_values(), peft_passthrough={})
    assert "peft_passthrough" not in rebuilt.manifest
    assert rebuilt.peft_passthrough == {}


def test_build_rejects_nan_passthrough(distilbert_model) -> None:
    passthrough = peft_passthrough_values(distilbert_model, "classifier")
    passthrough["pre_classifier.bias"][2] = float("inf")
    with pytest.raises(PatchFormatError, match="PEFT passthrough tensor pre_classifier.bias contain 1 NaN or infinite"):
        _build(distilbert_model, embedding_module=DISTILBERT_EMBEDDING, peft_passthrough=passthrough)


def test_build_rejects_passthrough_dtype(distilbert_model) -> None:
    passthrough = {name: tensor.half() for name, tensor in peft_passthrough_values(distilbert_model, "classifier").items()}
    with pytest.raises(PatchFormatError, match="pre_classifier.bias have dtype torch.float16, but the manifest declares torch.float32"):
        _build(distilbert_model, embedding_module=DISTILBERT_EMBEDDING, peft_passthrough=passthrough)


def test_build_rejects_passthrough_of_head(distilbert_model) -> None:
    passthrough = {"classifier.bias": distilbert_model.classifier.bias.detach().clone()}
    with pytest.raises(PatchFormatError, match="'classifier.bias' is not a parameter of a module other than"):
        _build(distilbert_model, embedding_module=DISTILBERT_EMBEDDING, peft_passthrough=passthrough)


PASSTHROUGH_DAMAGES: dict[str, tuple[Callable[[Path], None], str]] = {
    "passthrough tensor missing": (
        lambda d: rewrite_patch_file(d, ADAPTER_WEIGHTS_NAME, lambda t: t.pop(PASSTHROUGH_WEIGHT_KEY)),
        r"missing: \['base_model.model.pre_classifier.weight'\]",
    ),
    "passthrough not listed": (
        lambda d: edit_json(d / MANIFEST_NAME, lambda m: m.pop("peft_passthrough")),
        r"unexpected: \['base_model.model.pre_classifier.bias', 'base_model.model.pre_classifier.weight'\]",
    ),
    "passthrough list unsorted": (
        lambda d: edit_json(d / MANIFEST_NAME, lambda m: m["peft_passthrough"].reverse()),
        r"lists the PEFT passthrough tensors \['pre_classifier.weight', 'pre_classifier.bias'\]",
    ),
    "passthrough list repeats": (
        lambda d: edit_json(d / MANIFEST_NAME, lambda m: m["peft_passthrough"].append("pre_classifier.weight")),
        "must be sorted, without repeats",
    ),
    "passthrough list a string": (
        lambda d: edit_json(d / MANIFEST_NAME, lambda m: m.update(peft_passthrough="pre_classifier.weight")),
        r"invalid field\(s\) peft_passthrough \(expected a list of strings\)",
    ),
    "passthrough names head": (
        lambda d: edit_json(d / MANIFEST_NAME, lambda m: m["peft_passthrough"].insert(0, "classifier.bias")),
        "'classifier.bias' is not a parameter of a module other than",
    ),
    "nan in passthrough": (
        lambda d: rewrite_patch_file(d, ADAPTER_WEIGHTS_NAME, _set_nan(PASSTHROUGH_WEIGHT_KEY)),
        "PEFT passthrough tensor pre_classifier.weight contain 1 NaN",
    ),
    "fp16 passthrough in fp32 patch": (
        lambda d: rewrite_patch_file(d, ADAPTER_WEIGHTS_NAME, lambda t: t.update({PASSTHROUGH_WEIGHT_KEY: t[PASSTHROUGH_WEIGHT_KEY].half()})),
        "pre_classifier.weight have dtype torch.float16, but the manifest declares torch.float32",
    ),
}  # fmt: skip


@pytest.mark.parametrize("damage", PASSTHROUGH_DAMAGES, ids=PASSTHROUGH_DAMAGES)
def test_load_rejects_damaged_passthrough(damage: str, distilbert_patch_dir: Path, tmp_path: Path) -> None:
    edit, message = PASSTHROUGH_DAMAGES[damage]
    patch_dir = copy_tree(distilbert_patch_dir, tmp_path / "patch")
    edit(patch_dir)
    with pytest.raises(PatchFormatError, match=message):
        load_patch(patch_dir)
