"""Shared helpers and fixtures for tests of the patch format, apply/revert, checkpoints, PEFT and the CLI.

Test modules import the helpers with ``from conftest import ...`` (pytest puts ``tests/`` on
``sys.path``). Every model is a tiny random classifier built from a config: hidden size 32, two
layers, ``VOCAB_SIZE`` tokens.

Constants:
    ARCHITECTURES: ``model_type`` of every architecture the helpers can build.
    BERT_LIKE: architectures that ship a WordPiece tokenizer (``save_model_dir`` writes one).
    DTYPES: pytest ids (``fp32``, ``fp16``, ``bf16``) mapped to torch dtypes.
    VOCAB_SIZE: rows of the input-embedding matrix.
    PATCH_TOKEN_IDS: default token ids a test patch edits; none is a padding or special token.

Model helpers:
    make_tiny_classifier(arch, dtype, num_labels=3, seed=0, vocab_size=VOCAB_SIZE): random
        ``AutoModelForSequenceClassification`` in eval mode with a random (non-zero) head bias.
    save_model_dir(model, directory, shard_size=None, tokenizer=None): ``save_pretrained`` into
        ``directory``; ``shard_size`` (for example ``"40KB"``) writes a sharded checkpoint; a
        WordPiece tokenizer is written for BERT-like models unless ``tokenizer=False``.
    write_tokenizer(directory, vocab_size): save a ``BertTokenizerFast`` whose tokens are
        ``token_name(i)``.
    sample_input_ids(token_ids, vocab_size, seed): a ``(2, 12)`` batch that contains every id in
        ``token_ids``, so patched rows reach the logits.
    logits(model, input_ids): logits under ``torch.no_grad()``.

Patch helpers:
    make_patch(model, token_ids=PATCH_TOKEN_IDS, seed=0, parent_patches=(), forget_classes=None,
        peft_passthrough=True): a validated, unsaved ``ForgetPatch`` whose new rows and head tensors
        are random values in the model's dtype and whose originals are read from ``model``. It
        carries the PEFT passthrough tensors of ``model`` (DistilBERT's ``pre_classifier``) unless
        ``peft_passthrough=False``.
    save_and_load(patch, directory): save a patch and load it back as a user would.
    rewrite_patch_file(patch_dir, file_name, edit): edit the tensors of one safetensors file of a
        patch and update the manifest's file hashes, so the patch passes the hash check and fails
        (or passes) only on what ``edit`` changed.
    edit_json(path, edit): load a JSON file, let ``edit`` change it in place, write it back.
    copy_tree(source, target): copy a directory (patch or model) for a test to damage.

Comparison helpers:
    tensor_digest(tensor): SHA-256 over dtype, shape and raw bytes of one tensor.
    model_digests(model): ``{state-dict key: digest}`` of a model.
    checkpoint_digests(model_dir): ``{tensor key: digest}`` over every safetensors file of a
        model directory.
    differing_keys(left, right): keys whose digests differ, or that only one side has.
    leftover_temp_dirs(parent): names of staging or backup directories left in ``parent``.

Fixtures (session scope, read-only by convention; copy them with ``copy_tree`` before damaging):
    bert_model: a tiny fp32 BERT classifier (do not mutate it; build your own to apply patches).
    bert_model_dir: ``bert_model`` saved as one ``model.safetensors`` with a tokenizer.
    bert_patch_dir: a patch for ``bert_model`` editing ``PATCH_TOKEN_IDS``.
"""

from __future__ import annotations

import hashlib
import json
import shutil
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import pytest
import torch
from safetensors import safe_open
from safetensors.torch import load_file, save_file
from torch import nn
from transformers import AutoConfig, AutoModelForSequenceClassification, BertTokenizerFast, PreTrainedModel

from steu_patch.models import count_parameters, find_editable_parts
from steu_patch.patch import ForgetPatch, TouchedValues, build_patch, file_sha256, load_patch, peft_passthrough_values

ARCHITECTURES = ("bert", "distilbert", "roberta", "electra", "deberta-v2", "modernbert")
BERT_LIKE = ("bert", "distilbert", "electra")
DTYPES = {"fp32": torch.float32, "fp16": torch.float16, "bf16": torch.bfloat16}
VOCAB_SIZE = 120
HIDDEN_SIZE = 32
PATCH_TOKEN_IDS = (7, 19, 42, 88, 101)
BASE_NAME = "tests/tiny-classifier"
LABEL_NAMES = ("cardiology", "orthopedics", "dermatology", "neurology", "urology")
SPECIAL_TOKENS = ("[PAD]", "[UNK]", "[CLS]", "[SEP]", "[MASK]")


# ----- models -----


def _config_kwargs(arch: str, vocab_size: int) -> dict[str, Any]:
    if arch == "distilbert":
        return {"vocab_size": vocab_size, "dim": HIDDEN_SIZE, "n_layers": 2, "n_heads": 2, "hidden_dim": 64}
    kwargs: dict[str, Any] = {
        "vocab_size": vocab_size,
        "hidden_size": HIDDEN_SIZE,
        "num_hidden_layers": 2,
        "num_attention_heads": 2,
        "intermediate_size": 64,
    }
    if arch == "electra":
        kwargs["embedding_size"] = HIDDEN_SIZE
    if arch == "modernbert":
        # ModernBERT's default special-token ids point past a 120-token vocabulary.
        kwargs.update(
            global_attn_every_n_layers=1, local_attention=16, pad_token_id=0, bos_token_id=2, eos_token_id=3,
            cls_token_id=2, sep_token_id=3,
        )  # fmt: skip
    return kwargs


def make_tiny_classifier(
    arch: str, dtype: torch.dtype = torch.float32, num_labels: int = 3, seed: int = 0, vocab_size: int = VOCAB_SIZE
) -> PreTrainedModel:
    """Build a random sequence classifier of ``arch`` in ``dtype``, in eval mode.

    The head bias is drawn at random because transformers initializes it to zeros, and a zero
    bias would hide a bias that was dropped, not patched or not restored.
    """
    if arch not in ARCHITECTURES:
        raise ValueError(f"Unknown test architecture {arch!r}; choose one of {', '.join(ARCHITECTURES)}.")
    labels = {index: LABEL_NAMES[index] if index < len(LABEL_NAMES) else f"class_{index}" for index in range(num_labels)}
    config = AutoConfig.for_model(
        arch, num_labels=num_labels, id2label=labels, label2id={name: index for index, name in labels.items()},
        max_position_embeddings=64, **_config_kwargs(arch, vocab_size),
    )  # fmt: skip
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = AutoModelForSequenceClassification.from_config(config)
        head = model.get_submodule(find_editable_parts(model).head_name)
        with torch.no_grad():
            head.bias.normal_(0.0, 0.5)
    return model.to(dtype).eval()


def token_name(token_id: int) -> str:
    """Return the vocabulary entry of ``token_id`` in the test tokenizer."""
    return SPECIAL_TOKENS[token_id] if token_id < len(SPECIAL_TOKENS) else f"word{token_id:03d}"


def write_tokenizer(directory: Path, vocab_size: int = VOCAB_SIZE) -> BertTokenizerFast:
    """Save a WordPiece tokenizer with ``vocab_size`` entries into ``directory``."""
    directory.mkdir(parents=True, exist_ok=True)
    vocab_file = directory / "vocab.txt"
    vocab_file.write_text("\n".join(token_name(index) for index in range(vocab_size)) + "\n", encoding="utf-8")
    tokenizer = BertTokenizerFast.from_pretrained(directory)
    tokenizer.save_pretrained(directory)
    return tokenizer


def save_model_dir(
    model: PreTrainedModel, directory: Path, *, shard_size: str | None = None, tokenizer: bool | None = None
) -> Path:
    """Save ``model`` like a user would, sharded when ``shard_size`` is given."""
    if shard_size is None:
        model.save_pretrained(directory)
    else:
        model.save_pretrained(directory, max_shard_size=shard_size)
    if tokenizer if tokenizer is not None else model.config.model_type in BERT_LIKE:
        write_tokenizer(directory, model.get_input_embeddings().num_embeddings)
    return directory


def sample_input_ids(token_ids: Iterable[int] = PATCH_TOKEN_IDS, vocab_size: int = VOCAB_SIZE, seed: int = 0) -> torch.Tensor:
    """Return a ``(2, 12)`` batch of ids that starts with id 2 and contains every id in ``token_ids``."""
    generator = torch.Generator().manual_seed(seed)
    input_ids = torch.randint(len(SPECIAL_TOKENS), vocab_size, (2, 12), generator=generator)
    input_ids[:, 0] = 2
    ids = list(token_ids)
    input_ids[0, 1 : 1 + len(ids)] = torch.tensor(ids)
    input_ids[1, -len(ids) :] = torch.tensor(ids[::-1])
    return input_ids


def logits(model: nn.Module, input_ids: torch.Tensor) -> torch.Tensor:
    """Return the model's logits for ``input_ids`` (no attention padding)."""
    with torch.no_grad():
        return model(input_ids=input_ids, attention_mask=torch.ones_like(input_ids)).logits


# ----- patches -----


def _random_like(tensor: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    return (torch.randn(tensor.shape, generator=generator) * 0.5).to(tensor.dtype)


def make_patch(
    model: nn.Module,
    token_ids: Sequence[int] = PATCH_TOKEN_IDS,
    seed: int = 0,
    *,
    parent_patches: Sequence[Mapping[str, Any]] = (),
    forget_classes: Sequence[str] | None = None,
    peft_passthrough: bool = True,
) -> ForgetPatch:
    """Build a patch for ``model`` with random new values and originals read from ``model``."""
    parts = find_editable_parts(model)
    weight = model.get_submodule(parts.embedding_name).weight
    head = model.get_submodule(parts.head_name)
    index = torch.tensor(list(token_ids), dtype=torch.long)
    original = TouchedValues(
        weight.detach().index_select(0, index).clone(),
        {name: parameter.detach().clone() for name, parameter in head.named_parameters(recurse=False)},
    )
    generator = torch.Generator().manual_seed(seed)
    new = TouchedValues(
        _random_like(original.rows, generator),
        {name: _random_like(original.head[name], generator) for name in sorted(original.head)},
    )
    config = model.config
    return build_patch(
        token_ids=token_ids,
        original=original,
        new=new,
        embedding_module=parts.embedding_name,
        head_module=parts.head_name,
        embedding_shape=tuple(weight.shape),
        base_model={"name_or_path": BASE_NAME, "model_type": config.model_type},
        id2label=config.id2label,
        forget_classes=list(forget_classes or [config.id2label[0]]),
        parent_patches=parent_patches,
        tokens=[{"id": int(token_id), "token": token_name(int(token_id))} for token_id in token_ids],
        method={"name": "random-test-values", "seed": seed},
        total_parameters=count_parameters(model),
        peft_passthrough=peft_passthrough_values(model, parts.head_name) if peft_passthrough else {},
    )


def save_and_load(patch: ForgetPatch, directory: Path) -> ForgetPatch:
    """Save ``patch`` into ``directory`` and return the patch loaded back from disk."""
    patch.save_pretrained(directory)
    return load_patch(directory)


def edit_json(path: Path, edit: Callable[[Any], Any]) -> None:
    """Rewrite the JSON file ``path`` after ``edit`` changed its content in place."""
    content = json.loads(path.read_text(encoding="utf-8"))
    edit(content)
    path.write_text(json.dumps(content, indent=2) + "\n", encoding="utf-8")


def rewrite_patch_file(patch_dir: Path, file_name: str, edit: Callable[[dict[str, torch.Tensor]], None]) -> None:
    """Let ``edit`` change the tensors of ``patch_dir/file_name``, then record the new SHA-256."""
    path = patch_dir / file_name
    with safe_open(str(path), framework="pt") as handle:
        metadata = handle.metadata()
    tensors = load_file(path)
    edit(tensors)
    save_file(tensors, str(path), metadata=metadata)
    edit_json(patch_dir / "steu_patch.json", lambda manifest: manifest["files"].update({file_name: file_sha256(path)}))


def copy_tree(source: Path, target: Path) -> Path:
    """Copy a directory tree and return ``target``."""
    shutil.copytree(source, target)
    return target


# ----- comparisons -----


def tensor_digest(tensor: torch.Tensor) -> str:
    """Return the SHA-256 of a tensor's dtype, shape and raw bytes."""
    flat = tensor.detach().to("cpu").contiguous().reshape(-1)
    digest = hashlib.sha256(f"{flat.dtype} {tuple(tensor.shape)}\n".encode())
    digest.update(flat.view(torch.uint8).numpy().tobytes())
    return digest.hexdigest()


def model_digests(model: nn.Module) -> dict[str, str]:
    """Return the digest of every tensor in ``model.state_dict()``."""
    return {key: tensor_digest(tensor) for key, tensor in model.state_dict().items()}


def checkpoint_digests(model_dir: Path) -> dict[str, str]:
    """Return the digest of every tensor in every safetensors file of ``model_dir``."""
    digests: dict[str, str] = {}
    for path in sorted(model_dir.glob("*.safetensors")):
        with safe_open(str(path), framework="pt") as handle:
            for key in handle.keys():
                if key in digests:
                    raise AssertionError(f"Tensor {key} is stored twice in {model_dir}.")
                digests[key] = tensor_digest(handle.get_tensor(key))
    return digests


def differing_keys(left: Mapping[str, str], right: Mapping[str, str]) -> set[str]:
    """Return keys whose digests differ or that only one mapping has."""
    return {key for key in set(left) | set(right) if left.get(key) != right.get(key)}


def leftover_temp_dirs(parent: Path) -> list[str]:
    """Return names of staging (``.NAME.tmp-*``) or backup (``.NAME.old-*``) entries in ``parent``."""
    return sorted(path.name for path in parent.iterdir() if ".tmp-" in path.name or ".old-" in path.name)


# ----- fixtures -----


@pytest.fixture(scope="session")
def bert_model() -> PreTrainedModel:
    return make_tiny_classifier("bert")


@pytest.fixture(scope="session")
def bert_model_dir(tmp_path_factory: pytest.TempPathFactory, bert_model: PreTrainedModel) -> Path:
    return save_model_dir(bert_model, tmp_path_factory.mktemp("shared") / "bert-model")


@pytest.fixture(scope="session")
def bert_patch_dir(tmp_path_factory: pytest.TempPathFactory, bert_model: PreTrainedModel) -> Path:
    directory = tmp_path_factory.mktemp("shared") / "bert-patch"
    make_patch(bert_model).save_pretrained(directory)
    return directory
