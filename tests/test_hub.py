"""Tests for Hub pulls and pushes (steu_patch.hub, ``steu-patch push``) without the network.

Pulls read a Hugging Face cache laid out under ``tmp_path`` exactly as huggingface_hub writes it,
with ``HF_HUB_OFFLINE=1``. Pushes and online errors go to a stub Hub server on 127.0.0.1 that
implements the endpoints huggingface_hub 2.4 calls for create_repo, create_branch, upload_folder
and snapshot_download, and keeps the uploaded files so they can be downloaded again.
"""

from __future__ import annotations

import base64
import hashlib
import json
import logging
import os
import re
import shutil
import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from types import SimpleNamespace
from typing import Any
from urllib.parse import unquote, urlsplit

import pytest
import torch
from click.testing import CliRunner, Result
from huggingface_hub import HfApi, ModelCard, constants
from huggingface_hub.utils import close_session
from transformers import BertConfig, BertForSequenceClassification

from steu_patch.apply import PatchedModel
from steu_patch.card import build_model_card
from steu_patch.errors import HubError, ModelNotFoundError, PatchFormatError, PatchNotFoundError
from steu_patch.hub import PATCH_FILES, push_patch, resolve_model_dir, resolve_patch_dir, without_token_strings
from steu_patch.patch import (
    ForgetPatch,
    TouchedValues,
    build_patch,
    load_patch,
    read_touched_values,
    save_patch,
    tensor_bytes,
)
from steu_patch_cli.main import cli

TOKEN = "hf_TESTTOKENdoNotLeak0123456789abcdef"
LABELS = {0: "cardio", 1: "neuro", 2: "ortho"}
EMBEDDING = "bert.embeddings.word_embeddings"
HEAD = "classifier"
TOKEN_STRINGS = ["secretwordalpha", "secretwordbeta", "secretwordgamma"]


# ----- tiny models and patches -----


def make_model(seed: int) -> BertForSequenceClassification:
    torch.manual_seed(seed)
    config = BertConfig(
        vocab_size=40, hidden_size=8, num_hidden_layers=1, num_attention_heads=2, intermediate_size=16,
        max_position_embeddings=16, num_labels=3, id2label=LABELS, label2id={v: k for k, v in LABELS.items()},
    )  # fmt: skip
    return BertForSequenceClassification(config).eval()


def make_patch(model: BertForSequenceClassification, base_name: str, *, seed: int, token_ids: tuple[int, ...] = (5, 7, 9)) -> ForgetPatch:
    """Build a patch with random new values over ``model``'s current values."""
    parameters = dict(model.named_parameters())
    positions = SimpleNamespace(
        embedding_module=EMBEDDING, head_module=HEAD, token_ids=list(token_ids), new_head={"weight": None, "bias": None}
    )
    original = read_touched_values(positions, parameters.__getitem__)
    generator = torch.Generator().manual_seed(seed)
    new = TouchedValues(
        torch.randn(original.rows.shape, generator=generator),
        {name: torch.randn(tensor.shape, generator=generator) for name, tensor in original.head.items()},
    )
    return build_patch(
        token_ids=token_ids,
        original=original,
        new=new,
        embedding_module=EMBEDDING,
        head_module=HEAD,
        embedding_shape=tuple(parameters[f"{EMBEDDING}.weight"].shape),
        base_model={"name_or_path": base_name},
        id2label=LABELS,
        forget_classes=["cardio"],
        tokens=[{"id": token_id, "token": text, "score": 1.0} for token_id, text in zip(token_ids, TOKEN_STRINGS)],
        metrics={"before": {"forget_f1": 0.9}, "after": {"forget_f1": 0.1}},
        total_parameters=sum(parameter.numel() for parameter in model.parameters()),
        extra={"method": {"selection": {"scores": [{"token_id": token_ids[0], "token": TOKEN_STRINGS[0]}]}}},
    )


@dataclass
class Fixtures:
    """Local directories of two tiny models and of patches made on them."""

    model_a: Path
    model_b: Path
    patch_a: Path
    patch_a2: Path
    patch_b: Path


@pytest.fixture(scope="module")
def local(tmp_path_factory: pytest.TempPathFactory) -> Fixtures:
    root = tmp_path_factory.mktemp("local")
    model_a, model_b = make_model(0), make_model(1)
    model_a.save_pretrained(root / "model-a")
    model_b.save_pretrained(root / "model-b")
    save_patch(make_patch(model_a, "owner/tiny-bert", seed=10), root / "patch-a")
    save_patch(make_patch(model_a, "owner/tiny-bert", seed=11, token_ids=(2, 3)), root / "patch-a2")
    save_patch(make_patch(model_b, "owner/tiny-bert", seed=12), root / "patch-b")
    return Fixtures(root / "model-a", root / "model-b", root / "patch-a", root / "patch-a2", root / "patch-b")


def folder_files(directory: Path) -> dict[str, bytes]:
    return {path.relative_to(directory).as_posix(): path.read_bytes() for path in sorted(directory.rglob("*")) if path.is_file()}


def same_patch(left: ForgetPatch, right: ForgetPatch) -> bool:
    tensors_equal = tensor_bytes(left.new_rows) == tensor_bytes(right.new_rows) and tensor_bytes(
        left.original_rows
    ) == tensor_bytes(right.original_rows)
    heads_equal = all(
        tensor_bytes(left.new_head[name]) == tensor_bytes(right.new_head[name])
        and tensor_bytes(left.original_head[name]) == tensor_bytes(right.original_head[name])
        for name in left.new_head
    )
    return left.manifest == right.manifest and left.token_ids == right.token_ids and tensors_equal and heads_equal


def invoke(*args: str) -> Result:
    return CliRunner().invoke(cli, list(args))


# ----- a Hugging Face cache under tmp_path -----


def cache_repo(cache: Path, repo_id: str, files: dict[str, bytes], *, ref: str = "main") -> str:
    """Add a snapshot of ``files`` to ``cache`` as huggingface_hub lays it out, and return its commit hash."""
    storage = cache / f"models--{repo_id.replace('/', '--')}"
    commit = hashlib.sha1(repo_id.encode() + ref.encode() + b"".join(sorted(files.values()))).hexdigest()
    for name, content in files.items():
        blob = storage / "blobs" / hashlib.sha256(content).hexdigest()
        blob.parent.mkdir(parents=True, exist_ok=True)
        blob.write_bytes(content)
        link = storage / "snapshots" / commit / name
        link.parent.mkdir(parents=True, exist_ok=True)
        link.symlink_to(os.path.relpath(blob, link.parent))
    ref_path = storage / "refs" / ref
    ref_path.parent.mkdir(parents=True, exist_ok=True)
    ref_path.write_text(commit)
    return commit


@pytest.fixture()
def hub_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """Point huggingface_hub at an empty cache under tmp_path with HF_HUB_OFFLINE=1."""
    home = tmp_path / "hf-home"
    cache = home / "hub"
    cache.mkdir(parents=True)
    monkeypatch.setenv("HF_HOME", str(home))
    monkeypatch.setenv("HF_HUB_CACHE", str(cache))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    # huggingface_hub reads these environment variables once, at import.
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(cache))
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    return cache


# ----- a stub Hub server on 127.0.0.1 -----


@dataclass
class StubRepo:
    private: bool
    branches: dict[str, dict[str, bytes]] = field(default_factory=lambda: {"main": {}})
    commits: dict[str, str] = field(default_factory=dict)  # branch -> latest commit hash
    snapshots: dict[str, dict[str, bytes]] = field(default_factory=dict)  # commit hash -> files


@dataclass
class Recorded:
    method: str
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


class StubHub:
    """State of the stub Hub: repositories, received requests and namespaces that reject writes."""

    def __init__(self) -> None:
        self.repos: dict[str, StubRepo] = {}
        self.requests: list[Recorded] = []
        self.forbidden_namespaces: set[str] = set()
        self.url = ""
        self.lock = threading.Lock()

    def add_repo(self, repo_id: str, files: dict[str, bytes], *, private: bool = False) -> None:
        repo = StubRepo(private=private)
        self.repos[repo_id] = repo
        self.commit(repo, "main", files)

    def commit(self, repo: StubRepo, branch: str, files: dict[str, bytes]) -> str:
        tree = {**repo.branches.get(branch, {}), **files}
        commit = hashlib.sha1(repr(sorted(tree.items())).encode() + str(len(repo.snapshots)).encode()).hexdigest()
        repo.branches[branch] = tree
        repo.commits[branch] = commit
        repo.snapshots[commit] = dict(tree)
        return commit

    def find(self, method: str, pattern: str) -> list[Recorded]:
        return [request for request in self.requests if request.method == method and re.fullmatch(pattern, request.path)]

    def uploaded_files(self, repo_id: str, branch: str = "main") -> dict[str, bytes]:
        return self.repos[repo_id].branches[branch]


def _make_handler(hub: StubHub) -> type[BaseHTTPRequestHandler]:
    class Handler(BaseHTTPRequestHandler):
        def log_message(self, format: str, *args: Any) -> None:  # noqa: A002 - the base class names it so
            return

        def _read(self) -> Recorded:
            length = int(self.headers.get("Content-Length") or 0)
            body = self.rfile.read(length) if length else b""
            recorded = Recorded(self.command, urlsplit(self.path).path, {k.lower(): v for k, v in self.headers.items()}, body)
            with hub.lock:
                hub.requests.append(recorded)
            return recorded

        def _send(self, status: int, content: Any = None, headers: dict[str, str] | None = None, raw: bytes | None = None) -> None:
            if raw is not None:
                body = raw
            else:
                body = json.dumps({} if content is None else content).encode()
            self.send_response(status)
            self.send_header("Content-Type", "application/json" if raw is None else "application/octet-stream")
            self.send_header("Content-Length", str(len(body)))
            for key, value in (headers or {}).items():
                self.send_header(key, value)
            self.end_headers()
            if self.command != "HEAD":
                self.wfile.write(body)

        def _not_found(self, code: str) -> None:
            self._send(404, {"error": code}, {"X-Error-Code": code, "X-Error-Message": code})

        def do_GET(self) -> None:  # noqa: N802 - http.server's naming
            self._route(self._read())

        def do_HEAD(self) -> None:  # noqa: N802
            self._route(self._read())

        def do_POST(self) -> None:  # noqa: N802
            self._route(self._read())

        def _route(self, request: Recorded) -> None:
            with hub.lock:
                for pattern, method, action in ROUTES:
                    match = re.fullmatch(pattern, request.path)
                    if match and request.method == method:
                        action(self, request, **{k: unquote(v) for k, v in match.groupdict().items()})
                        return
            self._send(404, {"error": f"no stub route for {request.method} {request.path}"})

        # --- endpoints ---

        def create_repo(self, request: Recorded) -> None:
            payload = request.json()
            namespace = payload.get("organization") or "stub-user"
            repo_id = f"{namespace}/{payload['name']}"
            if namespace in hub.forbidden_namespaces:
                self._send(403, {"error": "You don't have the rights to create a model under this namespace"})
            elif repo_id in hub.repos:
                self._send(409, {"error": "You already created this model repo", "url": f"{hub.url}/{repo_id}"})
            else:
                hub.add_repo(repo_id, {}, private=payload.get("visibility") == "private")
                self._send(200, {"url": f"{hub.url}/{repo_id}"})

        def repo_info(self, request: Recorded, repo: str, revision: str = "main") -> None:
            if repo not in hub.repos:
                return self._not_found("RepoNotFound")
            stub = hub.repos[repo]
            commit = stub.commits.get(revision) or (revision if revision in stub.snapshots else None)
            if commit is None:
                return self._not_found("RevisionNotFound")
            siblings = [{"rfilename": name} for name in sorted(stub.snapshots[commit])]
            self._send(200, {"id": repo, "sha": commit, "private": stub.private, "siblings": siblings})

        def create_branch(self, request: Recorded, repo: str, branch: str) -> None:
            stub = hub.repos.get(repo)
            if stub is None:
                return self._not_found("RepoNotFound")
            if branch in stub.branches:
                return self._send(409, {"error": "Reference already exists"})
            hub.commit(stub, branch, dict(stub.branches["main"]))
            self._send(200, {})

        def validate_yaml(self, request: Recorded) -> None:
            self._send(200, {"errors": [], "warnings": []})

        def preupload(self, request: Recorded, repo: str, revision: str) -> None:
            if repo not in hub.repos:
                return self._not_found("RepoNotFound")
            files = [
                {"path": item["path"], "uploadMode": "regular", "shouldIgnore": False} for item in request.json()["files"]
            ]
            self._send(200, {"files": files})

        def commit(self, request: Recorded, repo: str, revision: str) -> None:
            stub = hub.repos.get(repo)
            if stub is None:
                return self._not_found("RepoNotFound")
            if revision not in stub.branches:
                return self._not_found("RevisionNotFound")
            lines = [json.loads(line) for line in request.body.splitlines() if line.strip()]
            files = {
                line["value"]["path"]: base64.b64decode(line["value"]["content"]) for line in lines if line["key"] == "file"
            }
            commit = hub.commit(stub, revision, files)
            self._send(200, {"commitUrl": f"{hub.url}/{repo}/commit/{commit}", "commitOid": commit})

        def tree(self, request: Recorded, repo: str, revision: str) -> None:
            stub = hub.repos.get(repo)
            if stub is None or revision not in stub.snapshots:
                return self._not_found("RevisionNotFound")
            entries = [
                {"type": "file", "path": name, "size": len(content), "oid": hashlib.sha1(content).hexdigest()}
                for name, content in sorted(stub.snapshots[revision].items())
            ]
            self._send(200, entries)

        def resolve(self, request: Recorded, repo: str, revision: str, filename: str) -> None:
            stub = hub.repos.get(repo)
            if stub is None or revision not in stub.snapshots:
                return self._not_found("RevisionNotFound")
            content = stub.snapshots[revision].get(filename)
            if content is None:
                return self._not_found("EntryNotFound")
            headers = {"X-Repo-Commit": revision, "ETag": f'"{hashlib.sha1(content).hexdigest()}"'}
            self._send(200, headers=headers, raw=content)

    repo = r"(?P<repo>[^/]+/[^/]+)"
    ROUTES = [
        (r"/api/repos/create", "POST", Handler.create_repo),
        (r"/api/validate-yaml", "POST", Handler.validate_yaml),
        (rf"/api/models/{repo}", "GET", Handler.repo_info),
        (rf"/api/models/{repo}/revision/(?P<revision>[^/]+)", "GET", Handler.repo_info),
        (rf"/api/models/{repo}/branch/(?P<branch>[^/]+)", "POST", Handler.create_branch),
        (rf"/api/models/{repo}/preupload/(?P<revision>[^/]+)", "POST", Handler.preupload),
        (rf"/api/models/{repo}/commit/(?P<revision>[^/]+)", "POST", Handler.commit),
        (rf"/api/models/{repo}/tree/(?P<revision>[^/]+)", "GET", Handler.tree),
        (rf"/{repo}/resolve/(?P<revision>[^/]+)/(?P<filename>.+)", "HEAD", Handler.resolve),
        (rf"/{repo}/resolve/(?P<revision>[^/]+)/(?P<filename>.+)", "GET", Handler.resolve),
    ]
    return Handler


@pytest.fixture()
def stub_hub(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Iterator[StubHub]:
    """Run a stub Hub on 127.0.0.1 and point huggingface_hub (online) and its cache at tmp_path."""
    hub = StubHub()
    server = ThreadingHTTPServer(("127.0.0.1", 0), _make_handler(hub))
    hub.url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()

    home = tmp_path / "hf-home"
    (home / "hub").mkdir(parents=True)
    monkeypatch.setenv("NO_PROXY", "127.0.0.1")
    monkeypatch.setenv("HF_HUB_DISABLE_PROGRESS_BARS", "1")
    monkeypatch.delenv("HF_TOKEN", raising=False)
    monkeypatch.setattr(constants, "ENDPOINT", hub.url)
    monkeypatch.setattr(constants, "HUGGINGFACE_CO_URL_TEMPLATE", hub.url + "/{repo_id}/resolve/{revision}/{filename}")
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", False)
    monkeypatch.setattr(constants, "HF_HUB_CACHE", str(home / "hub"))
    monkeypatch.setattr(constants, "HF_TOKEN_PATH", str(home / "token"))
    monkeypatch.setattr(constants, "HF_STORED_TOKENS_PATH", str(home / "stored_tokens"))
    close_session()
    try:
        yield hub
    finally:
        server.shutdown()
        server.server_close()
        thread.join(timeout=5)
        close_session()


def stub_api(hub: StubHub) -> HfApi:
    return HfApi(endpoint=hub.url)


def leaked(text: str) -> bool:
    return TOKEN in text or TOKEN[3:] in text


# ----- pulls from the local cache -----


def test_apply_by_repo_ids_equals_local(local: Fixtures, hub_cache: Path, tmp_path: Path) -> None:
    cache_repo(hub_cache, "owner/tiny-bert", folder_files(local.model_a))
    cache_repo(hub_cache, "owner/forget-cardio", folder_files(local.patch_a))
    from_hub = invoke("apply", "owner/tiny-bert", "owner/forget-cardio", "--output", str(tmp_path / "hub-out"))
    from_disk = invoke("apply", str(local.model_a), str(local.patch_a), "--output", str(tmp_path / "disk-out"))
    assert from_hub.exit_code == 0, from_hub.output
    assert from_disk.exit_code == 0, from_disk.output
    assert folder_files(tmp_path / "hub-out") == folder_files(tmp_path / "disk-out")


def test_from_pretrained_repo_id_equals_local(local: Fixtures, hub_cache: Path) -> None:
    cache_repo(hub_cache, "owner/forget-cardio", folder_files(local.patch_a))
    assert same_patch(ForgetPatch.from_pretrained("owner/forget-cardio"), load_patch(local.patch_a))


def test_patch_revision_branch_and_commit(local: Fixtures, hub_cache: Path) -> None:
    cache_repo(hub_cache, "owner/forget-cardio", folder_files(local.patch_a))
    commit = cache_repo(hub_cache, "owner/forget-cardio", folder_files(local.patch_a2), ref="v2")
    assert same_patch(ForgetPatch.from_pretrained("owner/forget-cardio", revision="v2"), load_patch(local.patch_a2))
    assert same_patch(ForgetPatch.from_pretrained("owner/forget-cardio", revision=commit), load_patch(local.patch_a2))
    assert same_patch(ForgetPatch.from_pretrained("owner/forget-cardio"), load_patch(local.patch_a))


def test_cli_patch_revision_option(local: Fixtures, hub_cache: Path, tmp_path: Path) -> None:
    cache_repo(hub_cache, "owner/forget-cardio", folder_files(local.patch_a))
    cache_repo(hub_cache, "owner/forget-cardio", folder_files(local.patch_a2), ref="v2")
    from_hub = invoke("apply", str(local.model_a), "owner/forget-cardio", "--patch-revision", "v2", "-o", str(tmp_path / "hub"))
    from_disk = invoke("apply", str(local.model_a), str(local.patch_a2), "-o", str(tmp_path / "disk"))
    assert from_hub.exit_code == 0, from_hub.output
    assert folder_files(tmp_path / "hub") == folder_files(tmp_path / "disk")
    inspected = invoke("inspect", "owner/forget-cardio", "--patch-revision", "v2", "--json")
    assert json.loads(inspected.output)["patch_id"] == load_patch(local.patch_a2).patch_id


def test_cli_model_revision_option(local: Fixtures, hub_cache: Path, tmp_path: Path) -> None:
    cache_repo(hub_cache, "owner/tiny-bert", folder_files(local.model_a))
    cache_repo(hub_cache, "owner/tiny-bert", folder_files(local.model_b), ref="retrained")
    cache_repo(hub_cache, "owner/forget-b", folder_files(local.patch_b))
    from_hub = invoke("apply", "owner/tiny-bert", "owner/forget-b", "--revision", "retrained", "-o", str(tmp_path / "hub"))
    from_disk = invoke("apply", str(local.model_b), str(local.patch_b), "-o", str(tmp_path / "disk"))
    assert from_hub.exit_code == 0, from_hub.output
    assert folder_files(tmp_path / "hub") == folder_files(tmp_path / "disk")


def test_downloaded_patch_wrong_base_rejected(local: Fixtures, hub_cache: Path, tmp_path: Path) -> None:
    cache_repo(hub_cache, "owner/tiny-bert", folder_files(local.model_a))
    cache_repo(hub_cache, "owner/forget-b", folder_files(local.patch_b))
    result = invoke("apply", "owner/tiny-bert", "owner/forget-b", "-o", str(tmp_path / "out"))
    assert result.exit_code == 1
    assert "does not match the patch's base model" in result.output
    assert not (tmp_path / "out").exists()


def test_patched_model_from_repo_id(local: Fixtures, hub_cache: Path) -> None:
    cache_repo(hub_cache, "owner/forget-cardio", folder_files(local.patch_a))
    from_hub = PatchedModel.from_pretrained(BertForSequenceClassification.from_pretrained(local.model_a), "owner/forget-cardio")
    from_disk = PatchedModel.from_pretrained(BertForSequenceClassification.from_pretrained(local.model_a), str(local.patch_a))
    hub_state, disk_state = from_hub.base_model.state_dict(), from_disk.base_model.state_dict()
    assert hub_state.keys() == disk_state.keys()
    assert all(tensor_bytes(hub_state[key]) == tensor_bytes(disk_state[key]) for key in hub_state)


def test_corrupt_downloaded_patch_rejected(local: Fixtures, hub_cache: Path) -> None:
    files = folder_files(local.patch_a)
    weights = bytearray(files["adapter_model.safetensors"])
    weights[-1] ^= 0x01
    files["adapter_model.safetensors"] = bytes(weights)
    cache_repo(hub_cache, "owner/forget-cardio", files)
    with pytest.raises(PatchFormatError, match="does not match the manifest"):
        ForgetPatch.from_pretrained("owner/forget-cardio")


def test_offline_uncached_patch_message(local: Fixtures, hub_cache: Path, tmp_path: Path) -> None:
    result = invoke("apply", str(local.model_a), "owner/missing-patch", "-o", str(tmp_path / "out"))
    assert result.exit_code == 1
    assert "'owner/missing-patch' is neither a local directory nor in the Hugging Face cache" in result.output
    assert "HF_HUB_OFFLINE=1" in result.output
    assert "`hf download owner/missing-patch`" in result.output
    assert "Traceback" not in result.output


def test_offline_uncached_revision_message(local: Fixtures, hub_cache: Path) -> None:
    cache_repo(hub_cache, "owner/forget-cardio", folder_files(local.patch_a))
    with pytest.raises(PatchNotFoundError, match=r"`hf download owner/forget-cardio --revision v9`"):
        ForgetPatch.from_pretrained("owner/forget-cardio", revision="v9")


def test_offline_uncached_model_message(local: Fixtures, hub_cache: Path, tmp_path: Path) -> None:
    result = invoke("apply", "owner/missing-model", str(local.patch_a), "-o", str(tmp_path / "out"))
    assert result.exit_code == 1
    assert "The model 'owner/missing-model' is neither a local directory nor in the Hugging Face cache" in result.output


def test_peft_adapter_repo_not_a_patch(local: Fixtures, hub_cache: Path, tmp_path: Path) -> None:
    files = {name: content for name, content in folder_files(local.patch_a).items() if name != "steu_patch.json"}
    cache_repo(hub_cache, "owner/plain-lora", files)
    result = invoke("apply", str(local.model_a), "owner/plain-lora", "-o", str(tmp_path / "out"))
    assert result.exit_code == 1
    assert "'owner/plain-lora' is a PEFT adapter made by another tool" in result.output
    assert "`steu-patch create`" in result.output


def test_model_repo_passed_as_patch(local: Fixtures, hub_cache: Path, tmp_path: Path) -> None:
    cache_repo(hub_cache, "owner/tiny-bert", folder_files(local.model_a))
    result = invoke("inspect", "owner/tiny-bert")
    assert result.exit_code == 1
    assert "'owner/tiny-bert' is a model" in result.output
    assert "`steu-patch apply owner/tiny-bert PATCH --output OUTPUT`" in result.output


def test_patch_repo_passed_as_model(local: Fixtures, hub_cache: Path, tmp_path: Path) -> None:
    cache_repo(hub_cache, "owner/forget-cardio", folder_files(local.patch_a))
    result = invoke("apply", "owner/forget-cardio", str(local.patch_a), "-o", str(tmp_path / "out"))
    assert result.exit_code == 1
    assert "'owner/forget-cardio' is a forget patch, not a model" in result.output


def test_model_repo_without_safetensors(local: Fixtures, hub_cache: Path) -> None:
    cache_repo(hub_cache, "owner/pickled", {"config.json": (local.model_a / "config.json").read_bytes()})
    with pytest.raises(ModelNotFoundError, match="has no model.safetensors"):
        resolve_model_dir("owner/pickled")


def test_local_path_wins_over_repo_id(local: Fixtures, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture) -> None:
    shutil.copytree(local.patch_a, tmp_path / "owner" / "forget-cardio")
    monkeypatch.chdir(tmp_path)
    with caplog.at_level(logging.WARNING, logger="steu_patch.hub"):
        assert resolve_patch_dir("owner/forget-cardio", revision="v2") == Path("owner/forget-cardio")
    assert "revision 'v2' is ignored" in caplog.text


def test_missing_local_model_path_message(tmp_path: Path) -> None:
    with pytest.raises(ModelNotFoundError, match="does not exist"):
        resolve_model_dir(str(tmp_path / "no-such-model"))


# ----- pulls from the stub Hub (online) -----


def test_repo_not_found_message(local: Fixtures, stub_hub: StubHub, tmp_path: Path) -> None:
    result = invoke("apply", str(local.model_a), "owner/no-such-patch", "-o", str(tmp_path / "out"))
    assert result.exit_code == 1
    assert "'owner/no-such-patch' is neither a local directory nor a Hub repository" in result.output
    assert "`hf auth login`" in result.output


def test_revision_not_found_message(local: Fixtures, stub_hub: StubHub, tmp_path: Path) -> None:
    stub_hub.add_repo("owner/forget-cardio", folder_files(local.patch_a))
    result = invoke("apply", str(local.model_a), "owner/forget-cardio", "--patch-revision", "nope", "-o", str(tmp_path / "o"))
    assert result.exit_code == 1
    assert "Revision 'nope' of the patch repository 'owner/forget-cardio' was not found" in result.output
    assert f"{stub_hub.url}/owner/forget-cardio/tree/main" in result.output


def test_download_from_stub_equals_local(local: Fixtures, stub_hub: StubHub, tmp_path: Path) -> None:
    stub_hub.add_repo("owner/tiny-bert", folder_files(local.model_a))
    stub_hub.add_repo("owner/forget-cardio", {**folder_files(local.patch_a), "notes.bin": b"never downloaded"})
    from_hub = invoke("apply", "owner/tiny-bert", "owner/forget-cardio", "-o", str(tmp_path / "hub"))
    from_disk = invoke("apply", str(local.model_a), str(local.patch_a), "-o", str(tmp_path / "disk"))
    assert from_hub.exit_code == 0, from_hub.output
    assert folder_files(tmp_path / "hub") == folder_files(tmp_path / "disk")
    assert not stub_hub.find("GET", r"/owner/forget-cardio/resolve/[^/]+/notes\.bin")


# ----- pushes to the stub Hub -----


def commit_header(hub: StubHub) -> dict[str, Any]:
    (request,) = hub.find("POST", r"/api/models/.+/commit/.+")
    return json.loads(request.body.splitlines()[0])["value"]


def test_push_uploads_patch_files(local: Fixtures, stub_hub: StubHub) -> None:
    stub_hub.add_repo("owner/tiny-bert", folder_files(local.model_a))
    before = folder_files(local.patch_a)
    url = push_patch(local.patch_a, "owner/forget-cardio", token=TOKEN, api=stub_api(stub_hub))

    uploaded = stub_hub.uploaded_files("owner/forget-cardio")
    assert set(uploaded) == set(PATCH_FILES)
    for name in ("adapter_config.json", "adapter_model.safetensors", "original_values.safetensors"):
        assert uploaded[name] == before[name], name
    assert folder_files(local.patch_a) == before
    assert url == f"{stub_hub.url}/owner/forget-cardio/commit/{stub_hub.repos['owner/forget-cardio'].commits['main']}"


def test_push_create_request(local: Fixtures, stub_hub: StubHub) -> None:
    push_patch(local.patch_a, "owner/forget-cardio", token=TOKEN, api=stub_api(stub_hub))
    (create,) = stub_hub.find("POST", "/api/repos/create")
    assert create.json()["name"] == "forget-cardio"
    assert create.json()["organization"] == "owner"
    assert "visibility" not in create.json()
    assert create.headers["authorization"] == f"Bearer {TOKEN}"
    assert stub_hub.repos["owner/forget-cardio"].private is False


def test_push_card_and_metadata(local: Fixtures, stub_hub: StubHub) -> None:
    stub_hub.add_repo("owner/tiny-bert", folder_files(local.model_a))
    push_patch(local.patch_a, "owner/forget-cardio", token=TOKEN, api=stub_api(stub_hub))
    card = stub_hub.uploaded_files("owner/forget-cardio")["README.md"].decode()
    expected = build_model_card(load_patch(local.patch_a), repo_id="owner/forget-cardio", base_on_hub=True)
    assert card == expected
    metadata = ModelCard(card).data.to_dict()
    assert metadata["library_name"] == "peft"
    assert metadata["base_model"] == "owner/tiny-bert"
    assert {"unlearning", "steu-patch"} <= set(metadata["tags"])
    (validated,) = stub_hub.find("POST", "/api/validate-yaml")
    assert validated.json()["content"] == card


def test_push_base_model_not_on_hub(local: Fixtures, stub_hub: StubHub) -> None:
    push_patch(local.patch_a, "owner/forget-cardio", token=TOKEN, api=stub_api(stub_hub))
    card = stub_hub.uploaded_files("owner/forget-cardio")["README.md"].decode()
    assert "base_model" not in ModelCard(card).data.to_dict()
    assert "a local model directory named `tiny-bert`" in card


def test_push_removes_token_strings(local: Fixtures, stub_hub: StubHub) -> None:
    push_patch(local.patch_a, "owner/forget-cardio", token=TOKEN, api=stub_api(stub_hub))
    uploaded = stub_hub.uploaded_files("owner/forget-cardio")
    for name, content in uploaded.items():
        for word in TOKEN_STRINGS:
            assert word.encode() not in content, (name, word)
    local_manifest = json.loads((local.patch_a / "steu_patch.json").read_text())
    assert json.loads(uploaded["steu_patch.json"]) == without_token_strings(local_manifest)


def test_push_redacted_patch_still_loads(local: Fixtures, stub_hub: StubHub, tmp_path: Path) -> None:
    push_patch(local.patch_a, "owner/forget-cardio", token=TOKEN, api=stub_api(stub_hub))
    pulled = tmp_path / "pulled"
    pulled.mkdir()
    for name, content in stub_hub.uploaded_files("owner/forget-cardio").items():
        (pulled / name).write_bytes(content)
    reloaded, original = load_patch(pulled), load_patch(local.patch_a)
    assert reloaded.token_ids == original.token_ids
    assert reloaded.patch_id == original.patch_id
    assert [token.get("token") for token in reloaded.manifest["tokens"]] == [None, None, None]


def test_push_show_tokens_keeps_manifest(local: Fixtures, stub_hub: StubHub) -> None:
    push_patch(local.patch_a, "owner/forget-cardio", token=TOKEN, show_tokens=True, api=stub_api(stub_hub))
    uploaded = stub_hub.uploaded_files("owner/forget-cardio")
    assert uploaded["steu_patch.json"] == (local.patch_a / "steu_patch.json").read_bytes()
    assert "`secretwordalpha`" in uploaded["README.md"].decode()


def test_pushed_patch_round_trips(local: Fixtures, stub_hub: StubHub, tmp_path: Path) -> None:
    push_patch(local.patch_a, "owner/forget-cardio", token=TOKEN, api=stub_api(stub_hub))
    pulled = ForgetPatch.from_pretrained("owner/forget-cardio")
    original = load_patch(local.patch_a)
    assert pulled.patch_id == original.patch_id
    assert pulled.token_ids == original.token_ids
    assert tensor_bytes(pulled.new_rows) == tensor_bytes(original.new_rows)
    assert pulled.manifest == without_token_strings(original.manifest)


def test_push_commit_message(local: Fixtures, stub_hub: StubHub) -> None:
    push_patch(local.patch_a, "owner/forget-cardio", token=TOKEN, commit_message="Forget cardio v1", api=stub_api(stub_hub))
    assert commit_header(stub_hub)["summary"] == "Forget cardio v1"


def test_push_default_commit_message(local: Fixtures, stub_hub: StubHub) -> None:
    push_patch(local.patch_a, "owner/forget-cardio", token=TOKEN, api=stub_api(stub_hub))
    patch_id = load_patch(local.patch_a).patch_id
    assert commit_header(stub_hub)["summary"] == f"Upload forget patch {patch_id[:12]} (cardio)"


def test_push_skips_extra_files(local: Fixtures, stub_hub: StubHub, tmp_path: Path, caplog: pytest.LogCaptureFixture) -> None:
    patch_dir = tmp_path / "patch"
    shutil.copytree(local.patch_a, patch_dir)
    (patch_dir / "notes.txt").write_text("private notes")
    with caplog.at_level(logging.WARNING, logger="steu_patch.hub"):
        push_patch(patch_dir, "owner/forget-cardio", token=TOKEN, api=stub_api(stub_hub))
    assert "notes.txt" not in stub_hub.uploaded_files("owner/forget-cardio")
    assert "notes.txt" in caplog.text


def test_push_revision_creates_branch(local: Fixtures, stub_hub: StubHub) -> None:
    push_patch(local.patch_a, "owner/forget-cardio", token=TOKEN, revision="v2", api=stub_api(stub_hub))
    assert stub_hub.find("POST", "/api/models/owner/forget-cardio/branch/v2")
    assert stub_hub.find("POST", "/api/models/owner/forget-cardio/commit/v2")
    assert stub_hub.uploaded_files("owner/forget-cardio", "main") == {}
    card = stub_hub.uploaded_files("owner/forget-cardio", "v2")["README.md"].decode()
    assert "--patch-revision v2" in card


def test_push_existing_branch(local: Fixtures, stub_hub: StubHub) -> None:
    push_patch(local.patch_a, "owner/forget-cardio", token=TOKEN, revision="v2", api=stub_api(stub_hub))
    push_patch(local.patch_a2, "owner/forget-cardio", token=TOKEN, revision="v2", api=stub_api(stub_hub))
    uploaded = stub_hub.uploaded_files("owner/forget-cardio", "v2")
    assert uploaded["adapter_model.safetensors"] == (local.patch_a2 / "adapter_model.safetensors").read_bytes()


def test_push_private_to_public_repo_rejected(local: Fixtures, stub_hub: StubHub) -> None:
    stub_hub.add_repo("owner/forget-cardio", {}, private=False)
    with pytest.raises(HubError, match="already exists and is public"):
        push_patch(local.patch_a, "owner/forget-cardio", private=True, token=TOKEN, api=stub_api(stub_hub))
    assert not stub_hub.find("POST", r"/api/models/.+/commit/.+")


def test_push_forbidden_namespace(local: Fixtures, stub_hub: StubHub) -> None:
    stub_hub.forbidden_namespaces.add("other-org")
    with pytest.raises(HubError, match=r"no write access to 'other-org/forget-cardio' \(403 Forbidden\)"):
        push_patch(local.patch_a, "other-org/forget-cardio", token=TOKEN, api=stub_api(stub_hub))


def test_push_invalid_repo_id(local: Fixtures, stub_hub: StubHub) -> None:
    with pytest.raises(HubError, match="'a/b/c' is not a valid Hub repository id"):
        push_patch(local.patch_a, "a/b/c", token=TOKEN, api=stub_api(stub_hub))
    assert stub_hub.requests == []


# ----- steu-patch push -----


def test_cli_push_private_with_token(local: Fixtures, stub_hub: StubHub, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    caplog.set_level(logging.DEBUG, logger="huggingface_hub")
    result = invoke("-vv", "push", str(local.patch_a), "owner/forget-cardio", "--private", "--token", TOKEN)
    assert result.exit_code == 0, result.output
    (create,) = stub_hub.find("POST", "/api/repos/create")
    assert create.json()["visibility"] == "private"
    assert stub_hub.repos["owner/forget-cardio"].private is True
    assert "saved in your shell history" in result.stderr
    assert "owner/forget-cardio/commit/" in result.stdout
    assert "steu-patch apply MODEL owner/forget-cardio --output patched-model" in result.stdout
    assert not leaked(result.stdout)
    assert not leaked(result.stderr)
    assert any("(authenticated: True)" in record.getMessage() for record in caplog.records)
    assert not any(leaked(record.getMessage()) for record in caplog.records)


def test_cli_push_token_from_environment(local: Fixtures, stub_hub: StubHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("HF_TOKEN", TOKEN)
    result = invoke("push", str(local.patch_a), "owner/forget-cardio", "--revision", "dev", "--commit-message", "m")
    assert result.exit_code == 0, result.output
    assert "shell history" not in result.stderr
    assert all(request.headers.get("authorization") == f"Bearer {TOKEN}" for request in stub_hub.requests)
    assert "--patch-revision dev" in result.stdout
    assert not leaked(result.output)


def test_cli_push_without_token(local: Fixtures, stub_hub: StubHub) -> None:
    result = invoke("push", str(local.patch_a), "owner/forget-cardio")
    assert result.exit_code == 1
    assert "No Hugging Face token found" in result.output
    assert "`hf auth login`" in result.output
    assert stub_hub.requests == []


def test_cli_push_not_a_patch(stub_hub: StubHub, tmp_path: Path) -> None:
    (tmp_path / "adapter").mkdir()
    (tmp_path / "adapter" / "adapter_config.json").write_text("{}")
    result = invoke("push", str(tmp_path / "adapter"), "owner/forget-cardio", "--token", TOKEN)
    assert result.exit_code == 1
    assert "is not a steu-patch patch" in result.output
    assert stub_hub.requests == []


def test_cli_push_missing_patch_dir(stub_hub: StubHub, tmp_path: Path) -> None:
    result = invoke("push", str(tmp_path / "nothing"), "owner/forget-cardio", "--token", TOKEN)
    assert result.exit_code == 1
    assert "does not exist" in result.output


def test_cli_push_forbidden_exit_code(local: Fixtures, stub_hub: StubHub) -> None:
    stub_hub.forbidden_namespaces.add("other-org")
    result = invoke("push", str(local.patch_a), "other-org/forget-cardio", "--token", TOKEN)
    assert result.exit_code == 1
    assert "403 Forbidden" in result.output
    assert "Traceback" not in result.output
    assert not leaked(result.output)


def test_cli_push_offline(local: Fixtures, stub_hub: StubHub, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(constants, "HF_HUB_OFFLINE", True)
    result = invoke("push", str(local.patch_a), "owner/forget-cardio", "--token", TOKEN)
    assert result.exit_code == 1
    assert "HF_HUB_OFFLINE=1 is set" in result.output
    assert stub_hub.requests == []


def test_cli_push_token_from_login_cache(local: Fixtures, stub_hub: StubHub) -> None:
    Path(constants.HF_TOKEN_PATH).write_text(TOKEN)
    result = invoke("push", str(local.patch_a), "owner/forget-cardio")
    assert result.exit_code == 0, result.output
    (create,) = stub_hub.find("POST", "/api/repos/create")
    assert create.headers["authorization"] == f"Bearer {TOKEN}"
    assert not leaked(result.output)


def test_push_main_revision_no_branch(local: Fixtures, stub_hub: StubHub) -> None:
    push_patch(local.patch_a, "owner/forget-cardio", token=TOKEN, revision="main", api=stub_api(stub_hub))
    assert not stub_hub.find("POST", r"/api/models/.+/branch/.+")
    assert stub_hub.find("POST", "/api/models/owner/forget-cardio/commit/main")


def test_cli_push_help_lists_options() -> None:
    result = invoke("push", "--help")
    assert result.exit_code == 0
    for option in ("--private", "--revision", "--commit-message", "--show-tokens", "--token"):
        assert option in result.output, option
