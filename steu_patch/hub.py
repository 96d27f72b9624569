"""Models and patches on the Hugging Face Hub: resolve repository ids to local directories, push patches.

Downloads go through ``snapshot_download``, so the local cache, ``HF_HUB_OFFLINE=1``, ``HF_ENDPOINT``
and the login token work as in every Hugging Face library. A patch download fetches only the
patch files, and a model download skips pickle and other frameworks' weights, which steu-patch
never reads. Pushing uploads a staging copy of the patch with a model card rendered for the
repository; the local patch directory is not modified.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import logging
import os
import shutil
import tempfile
from collections.abc import Iterator
from pathlib import Path
from typing import TYPE_CHECKING, Any

from huggingface_hub import constants
from huggingface_hub.errors import (
    GatedRepoError,
    HFValidationError,
    HfHubHTTPError,
    LocalEntryNotFoundError,
    OfflineModeIsEnabled,
    RepositoryNotFoundError,
    RevisionNotFoundError,
)
from huggingface_hub.utils import validate_repo_id

from .card import build_model_card, hub_model_id
from .errors import HubError, ModelNotFoundError, PatchFormatError, PatchNotFoundError
from .patch import (
    ADAPTER_CONFIG_NAME,
    ADAPTER_WEIGHTS_NAME,
    CARD_NAME,
    MANIFEST_NAME,
    ORIGINALS_NAME,
    PICKLE_SUFFIXES,
    ForgetPatch,
    load_patch,
    write_json,
)

if TYPE_CHECKING:
    from huggingface_hub import HfApi

logger = logging.getLogger(__name__)

PATCH_FILES = (ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, ORIGINALS_NAME, MANIFEST_NAME, CARD_NAME)

# config.json is fetched too, so that a model repository passed as a patch can be named as such.
_PATCH_DOWNLOAD_PATTERNS = [*PATCH_FILES, "config.json"]

# Weights steu-patch never reads: pickles (unsafe to load) and other frameworks' formats.
_MODEL_IGNORE_PATTERNS = [f"*{suffix}" for suffix in PICKLE_SUFFIXES] + [
    "*.h5", "*.msgpack", "*.ot", "*.onnx", "*.onnx_data", "*.tflite", "*.gguf", "onnx/*", "openvino/*", "coreml/*",
]  # fmt: skip


def looks_like_repo_id(value: str | os.PathLike) -> bool:
    """Return True when ``value`` is a string that is not an existing path and is a valid Hub repo id.

    ``pathlib.Path`` objects are always local paths.
    """
    if isinstance(value, os.PathLike) or os.path.exists(value):
        return False
    try:
        validate_repo_id(value)
    except HFValidationError:
        return False
    return True


def resolve_patch_dir(patch: str | os.PathLike, *, revision: str | None = None, **hub_kwargs: Any) -> Path:
    """Return a local directory for a patch given as a path or a Hub repository id.

    ``hub_kwargs`` go to ``snapshot_download`` (``cache_dir``, ``token``, ``local_files_only``, ...).

    Raises:
        PatchNotFoundError: the repository or revision does not exist, or is not cached while offline.
        PatchFormatError: the repository is not a steu-patch patch (no manifest).
    """
    if not looks_like_repo_id(patch):
        _log_unused_revision(patch, revision)
        return Path(patch)
    repo_id = str(patch)
    snapshot = _snapshot(repo_id, revision, "patch", allow_patterns=_PATCH_DOWNLOAD_PATTERNS, **hub_kwargs)
    _check_is_patch(snapshot, repo_id, revision)
    return snapshot


def resolve_model_dir(model: str | os.PathLike, *, revision: str | None = None, **hub_kwargs: Any) -> Path:
    """Return a local directory for a model given as a path or a Hub repository id.

    Raises:
        ModelNotFoundError: the path does not exist, the repository or revision does not exist or is
            not cached while offline, or the repository has no safetensors weights.
    """
    if not looks_like_repo_id(model):
        if not os.path.exists(model):
            raise ModelNotFoundError(
                f"Model directory {model} does not exist, and {str(model)!r} is not a valid Hub repository id "
                "(owner/name). Check the path."
            )
        _log_unused_revision(model, revision)
        return Path(model)
    repo_id = str(model)
    snapshot = _snapshot(repo_id, revision, "model", ignore_patterns=_MODEL_IGNORE_PATTERNS, **hub_kwargs)
    _check_is_model(snapshot, repo_id, revision)
    return snapshot


def _log_unused_revision(path: str | os.PathLike, revision: str | None) -> None:
    if revision is not None:
        logger.warning("%s is a local path, so revision %r is ignored. Revisions apply to Hub repository ids.", path, revision)


def _at(revision: str | None) -> str:
    return f" at revision {revision!r}" if revision else ""


# ----- downloading -----


def _snapshot(repo_id: str, revision: str | None, kind: str, **download_kwargs: Any) -> Path:
    """Download (or find in the cache) a snapshot of ``repo_id`` and map Hub errors to steu-patch errors."""
    from huggingface_hub import snapshot_download

    error_type = PatchNotFoundError if kind == "patch" else ModelNotFoundError
    try:
        return Path(snapshot_download(repo_id, revision=revision, **download_kwargs))
    except RevisionNotFoundError as error:
        raise error_type(
            f"Revision {revision!r} of the {kind} repository {repo_id!r} was not found on the Hub. Omit the "
            f"revision to use the default branch, or choose a branch, tag or commit listed at "
            f"{constants.ENDPOINT}/{repo_id}/tree/main."
        ) from error
    except GatedRepoError as error:
        raise error_type(
            f"The {kind} repository {repo_id!r} is gated. Request access at {constants.ENDPOINT}/{repo_id}, then "
            "log in with `hf auth login`."
        ) from error
    except RepositoryNotFoundError as error:
        raise error_type(
            f"The {kind} {repo_id!r} is neither a local directory nor a Hub repository you can access. Check the "
            "path or the repository id, or log in with `hf auth login` if the repository is private."
        ) from error
    except LocalEntryNotFoundError as error:
        raise error_type(_not_cached_message(repo_id, revision, kind)) from error
    except HfHubHTTPError as error:
        raise error_type(
            f"Downloading the {kind} {repo_id!r}{_at(revision)} from the Hub failed: {error}. Retry later, or pass "
            "a local directory."
        ) from error


def _not_cached_message(repo_id: str, revision: str | None, kind: str) -> str:
    revision_option = f" --revision {revision}" if revision else ""
    if constants.is_offline_mode():
        reason = "HF_HUB_OFFLINE=1 disables downloads"
    else:
        reason = f"the Hub ({constants.ENDPOINT}) cannot be reached"
    return (
        f"The {kind} {repo_id!r}{_at(revision)} is neither a local directory nor in the Hugging Face cache "
        f"({constants.HF_HUB_CACHE}), and {reason}. Check the path, or download the repository once while online "
        f"with `hf download {repo_id}{revision_option}`."
    )


def _check_is_patch(snapshot: Path, repo_id: str, revision: str | None) -> None:
    """Raise :class:`PatchFormatError` naming what ``repo_id`` holds when it is not a forget patch."""
    if (snapshot / MANIFEST_NAME).is_file():
        return
    if (snapshot / ADAPTER_CONFIG_NAME).is_file():
        content = "a PEFT adapter made by another tool"
        next_step = (
            "Load it with `peft.PeftModel.from_pretrained`, or create a forget patch with `steu-patch create` "
            "(see `steu-patch create --help`)."
        )
    elif (snapshot / "config.json").is_file():
        content = "a model"
        next_step = f"To patch this model, pass it as MODEL: `steu-patch apply {repo_id} PATCH --output OUTPUT`."
    else:
        content = "not a forget patch"
        next_step = "Check the repository id, or create a forget patch with `steu-patch create`."
    raise PatchFormatError(
        f"The Hub repository {repo_id!r}{_at(revision)} is {content}: it has no {MANIFEST_NAME}, so it is not a "
        f"steu-patch forget patch. {next_step}"
    )


def _check_is_model(snapshot: Path, repo_id: str, revision: str | None) -> None:
    """Raise :class:`ModelNotFoundError` when ``repo_id`` has no safetensors checkpoint."""
    if (snapshot / "model.safetensors").is_file() or (snapshot / "model.safetensors.index.json").is_file():
        return
    if (snapshot / MANIFEST_NAME).is_file():
        raise ModelNotFoundError(
            f"The Hub repository {repo_id!r}{_at(revision)} is a forget patch, not a model. Pass it as PATCH: "
            f"`steu-patch apply MODEL {repo_id} --output OUTPUT`."
        )
    raise ModelNotFoundError(
        f"The Hub repository {repo_id!r}{_at(revision)} has no model.safetensors or model.safetensors.index.json. "
        "steu-patch reads only safetensors checkpoints and never downloads pickle weights (*.bin). Convert the "
        f"model with `AutoModelForSequenceClassification.from_pretrained({repo_id!r}).save_pretrained(DIR)` and "
        "pass DIR."
    )


# ----- pushing -----


def push_patch(
    patch_dir: str | os.PathLike,
    repo_id: str,
    *,
    private: bool = False,
    revision: str | None = None,
    commit_message: str | None = None,
    show_tokens: bool = False,
    token: str | None = None,
    api: HfApi | None = None,
) -> str:
    """Upload a patch directory to a Hub model repository and return the commit URL.

    The repository is created if needed (private with ``private=True``), and ``revision`` names a
    branch that is created from the default branch if missing. The upload is a staging copy with
    the patch files only, a model card rendered for ``repo_id`` and, unless ``show_tokens``, a
    manifest without token strings.

    Args:
        private: create the repository as private. Without it the request names no visibility, so the
            Hub's default applies (public unless the organization defaults to private).
        token: Hub token; by default the one from ``HF_TOKEN`` or ``hf auth login``.
        api: client to use (tests pass one with a local ``endpoint``); a new ``HfApi`` by default.

    Raises:
        PatchNotFoundError, PatchFormatError: ``patch_dir`` is not a valid patch.
        HubError: invalid repo id, no token, or a failed Hub request (the message names the fix).
    """
    from huggingface_hub import HfApi

    patch_dir = Path(patch_dir)
    patch = load_patch(patch_dir)
    _check_repo_id(repo_id)
    api = api if api is not None else HfApi()
    _require_token(api, token)

    with _push_errors(repo_id, revision, api.endpoint):
        repo_id = api.create_repo(repo_id, private=True if private else None, exist_ok=True, token=token).repo_id
        if private:
            _check_private(api, repo_id, token)
        if revision and revision != constants.DEFAULT_REVISION and not revision.startswith("refs/"):
            api.create_branch(repo_id, branch=revision, exist_ok=True, token=token)
        card = build_model_card(
            patch,
            repo_id=repo_id,
            revision=revision,
            show_tokens=show_tokens,
            base_on_hub=_base_on_hub(api, patch, token),
        )
        with tempfile.TemporaryDirectory(prefix="steu-patch-push-") as staging:
            stage_patch_upload(patch_dir, Path(staging), card=card, show_tokens=show_tokens)
            commit = api.upload_folder(
                repo_id=repo_id,
                folder_path=staging,
                commit_message=commit_message or _default_commit_message(patch),
                revision=revision,
                token=token,
            )
    logger.info("Pushed patch %s to %s: %s", patch.patch_id[:12], repo_id, commit.commit_url)
    return commit.commit_url


def stage_patch_upload(patch_dir: Path, staging: Path, *, card: str, show_tokens: bool) -> list[str]:
    """Write the files to upload into ``staging`` and return their names.

    The tensor files and ``adapter_config.json`` are copied byte for byte, ``README.md`` is ``card``,
    and the manifest loses its token strings unless ``show_tokens``.
    """
    skipped = sorted(path.name for path in patch_dir.iterdir() if path.name not in PATCH_FILES)
    if skipped:
        logger.warning("Not uploading %d file(s) that are not part of the patch: %s", len(skipped), ", ".join(skipped))
    for name in (ADAPTER_CONFIG_NAME, ADAPTER_WEIGHTS_NAME, ORIGINALS_NAME):
        shutil.copyfile(patch_dir / name, staging / name)
    if show_tokens:
        shutil.copyfile(patch_dir / MANIFEST_NAME, staging / MANIFEST_NAME)
    else:
        manifest = json.loads((patch_dir / MANIFEST_NAME).read_text(encoding="utf-8"))
        write_json(staging / MANIFEST_NAME, without_token_strings(manifest))
    (staging / CARD_NAME).write_text(card, encoding="utf-8")
    return sorted(PATCH_FILES)


def without_token_strings(value: Any) -> Any:
    """Return a copy of a manifest (or part of one) without the string values of ``token`` keys.

    Token strings are stored under ``token`` in the manifest's token list and in token scores. The
    token ids stay, so the patch remains complete.
    """
    if isinstance(value, dict):
        return {
            key: without_token_strings(item)
            for key, item in value.items()
            if not (key == "token" and isinstance(item, str))
        }
    if isinstance(value, list):
        return [without_token_strings(item) for item in value]
    return value


def _default_commit_message(patch: ForgetPatch) -> str:
    return f"Upload forget patch {patch.patch_id[:12]} ({', '.join(patch.forget_classes)})"


def _check_repo_id(repo_id: str) -> None:
    try:
        validate_repo_id(repo_id)
    except HFValidationError as error:
        raise HubError(
            f"{repo_id!r} is not a valid Hub repository id: {error} Use owner/name, for example "
            "my-org/cardiology-forget-patch."
        ) from error


def _require_token(api: HfApi, token: str | None) -> None:
    from huggingface_hub import get_token

    if token or api.token or get_token():
        return
    raise HubError(
        "No Hugging Face token found, and pushing needs one with write access. Log in with `hf auth login` or set "
        "HF_TOKEN, then push again."
    )


def _check_private(api: HfApi, repo_id: str, token: str | None) -> None:
    """Raise before uploading when ``repo_id`` already existed as a public repository."""
    if api.repo_info(repo_id, token=token).private:
        return
    raise HubError(
        f"The Hub repository {repo_id!r} already exists and is public; a private push does not change an existing "
        f"repository, so nothing was uploaded. Make it private with `hf repos settings {repo_id} --private` and "
        "push again, or push to a new repository."
    )


def _base_on_hub(api: HfApi, patch: ForgetPatch, token: str | None) -> bool | None:
    """Return whether the patch's base model exists on the Hub, or None when the check fails."""
    candidate = hub_model_id(patch.manifest["base_model"].get("name_or_path"))
    if candidate is None:
        return False
    try:
        return api.repo_exists(candidate, token=token)
    except HfHubHTTPError as error:
        logger.warning("Could not check whether base model %s is on the Hub (%s), so the card names it.", candidate, error)
        return None


def _connection_errors() -> tuple[type[BaseException], ...]:
    """Return the transport error types of the HTTP client that huggingface_hub uses."""
    errors: list[type[BaseException]] = [OfflineModeIsEnabled, ConnectionError, TimeoutError]
    for module_name in ("httpx2", "httpx", "requests"):
        with contextlib.suppress(ImportError):
            module = importlib.import_module(module_name)
            errors.append(getattr(module, "TransportError", None) or module.RequestException)
    return tuple(errors)


@contextlib.contextmanager
def _push_errors(repo_id: str, revision: str | None, endpoint: str) -> Iterator[None]:
    """Re-raise Hub failures during a push as :class:`HubError` with the next step to take."""
    try:
        yield
    except HfHubHTTPError as error:
        raise HubError(_push_failure_message(error, repo_id, revision)) from error
    except _connection_errors() as error:
        if constants.is_offline_mode():
            raise HubError(f"Pushing to {repo_id!r} needs the Hub, but HF_HUB_OFFLINE=1 is set. Unset it and push again.") from error
        raise HubError(
            f"Could not reach the Hub at {endpoint} to push {repo_id!r} ({type(error).__name__}). Check the network "
            "connection and HF_ENDPOINT, then push again."
        ) from error


def _push_failure_message(error: HfHubHTTPError, repo_id: str, revision: str | None) -> str:
    status = error.response.status_code if error.response is not None else None
    if status == 401:
        return (
            f"The Hub rejected the token while pushing to {repo_id!r} (401 Unauthorized). Log in again with "
            "`hf auth login` or set HF_TOKEN to a valid token with write access."
        )
    if status == 403:
        return (
            f"The token has no write access to {repo_id!r} (403 Forbidden). Use a token with write access to that "
            "namespace (`hf auth login`), or push to a repository under your own name."
        )
    if isinstance(error, RepositoryNotFoundError):
        return (
            f"The Hub repository {repo_id!r} was not found and could not be created. Check that the namespace "
            "exists and that your token may write to it (`hf auth whoami`)."
        )
    if isinstance(error, RevisionNotFoundError):
        return f"Branch {revision!r} of {repo_id!r} was not found and could not be created. Check the branch name."
    server_message = error.server_message or str(error)
    return f"Pushing to {repo_id!r}{_at(revision)} failed ({status}): {server_message}"
