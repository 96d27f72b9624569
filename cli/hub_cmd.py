"""``steu-patch push``: upload a patch with its model card to the Hugging Face Hub."""

from __future__ import annotations

from pathlib import Path

import click

TOKEN_WARNING = (
    "Warning: a token passed with --token is saved in your shell history. Prefer `hf auth login` or the "
    "HF_TOKEN environment variable."
)


@click.command()
@click.argument("patch", type=click.Path(path_type=Path))
@click.argument("repo_id")
@click.option("--private", is_flag=True, help="Create the repository as private (an existing repository must already be private).")
@click.option("--revision", default=None, help="Branch to push to; created from the default branch if missing.")
@click.option("--commit-message", default=None, help="Commit message (default: 'Upload forget patch <id> (<classes>)').")
@click.option("--show-tokens", is_flag=True, help="Publish the token strings in the card and manifest; they can reveal what was forgotten.")
@click.option("--token", default=None, help="Hub token with write access (default: HF_TOKEN or the `hf auth login` cache).")
def push(patch: Path, repo_id: str, private: bool, revision: str | None, commit_message: str | None, show_tokens: bool, token: str | None) -> None:
    """Upload the patch directory PATCH to the Hub model repository REPO_ID (owner/name).

    The repository is created if needed. The upload contains the patch files and a model card
    rendered for REPO_ID; token strings stay out of the card and manifest unless --show-tokens.
    """
    from steu_patch.hub import push_patch

    if token:
        click.echo(TOKEN_WARNING, err=True)
    commit_url = push_patch(
        patch,
        repo_id,
        private=private,
        revision=revision,
        commit_message=commit_message,
        show_tokens=show_tokens,
        token=token,
    )
    revision_option = f" --patch-revision {revision}" if revision else ""
    click.echo(f"Pushed {patch} to {repo_id}: {commit_url}")
    click.echo(f"Apply it with: steu-patch apply MODEL {repo_id}{revision_option} --output patched-model")
