"""Resolve models and patches given as local paths or Hugging Face Hub repository ids."""

from __future__ import annotations

import logging
import os
from pathlib import Path
from typing import Any

from .errors import ModelNotFoundError, PatchNotFoundError

logger = logging.getLogger(__name__)


def looks_like_repo_id(value: str) -> bool:
    """Return True when ``value`` is not an existing path and has the shape of a Hub repo id."""
    if os.path.exists(value):
        return False
    parts = value.split("/")
    return 1 <= len(parts) <= 2 and all(part and not part.startswith(".") for part in parts) and "\\" not in value


def resolve_patch_dir(patch: str | os.PathLike, *, revision: str | None = None, **hub_kwargs: Any) -> Path:
    """Return a local directory for a patch given as a path or a Hub repository id."""
    if os.path.exists(patch) or not looks_like_repo_id(str(patch)):
        return Path(patch)
    return _snapshot(str(patch), revision, PatchNotFoundError, "patch", **hub_kwargs)


def resolve_model_dir(model: str | os.PathLike, *, revision: str | None = None, **hub_kwargs: Any) -> Path:
    """Return a local directory for a model given as a path or a Hub repository id."""
    if os.path.exists(model):
        return Path(model)
    if not looks_like_repo_id(str(model)):
        raise ModelNotFoundError(f"Model directory {model} does not exist.")
    return _snapshot(str(model), revision, ModelNotFoundError, "model", **hub_kwargs)


def _snapshot(repo_id: str, revision: str | None, error_type: type[Exception], kind: str, **hub_kwargs: Any) -> Path:
    from huggingface_hub import snapshot_download
    from huggingface_hub.errors import HfHubHTTPError, LocalEntryNotFoundError, RepositoryNotFoundError, RevisionNotFoundError

    try:
        return Path(snapshot_download(repo_id, revision=revision, **hub_kwargs))
    except RevisionNotFoundError as error:
        raise error_type(
            f"Revision {revision!r} of {kind} repository {repo_id!r} was not found on the Hub. List its branches and "
            f"tags with `hf repo refs {repo_id}` or omit the revision."
        ) from error
    except RepositoryNotFoundError as error:
        raise error_type(
            f"The {kind} {repo_id!r} is neither a local directory nor a Hub repository you can access. Check the "
            "path, or log in with `hf auth login` for a private repository."
        ) from error
    except LocalEntryNotFoundError as error:
        raise error_type(
            f"The {kind} {repo_id!r} is not in the local Hugging Face cache and the Hub cannot be reached (offline "
            "or HF_HUB_OFFLINE=1). Download it once while online, or pass a local directory."
        ) from error
    except HfHubHTTPError as error:
        raise error_type(f"Downloading the {kind} {repo_id!r} from the Hub failed: {error}") from error
