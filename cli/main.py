"""Entry point of the ``steu-patch`` command.

Commands live in one module each and are imported only when invoked, so ``steu-patch --help``
does not pay for importing torch. ``LazyGroup.invoke`` is the one place where library errors
become messages and exit codes (0 success, 1 failure, 2 usage error, see ``errors.py``), so
``CliRunner`` tests see exactly what users see. Tracebacks appear only with ``STEU_DEBUG=1``.
"""

from __future__ import annotations

import importlib
import logging
import sys
from typing import Any

import click

from steu_patch import __version__

from .errors import translate_errors

# Command name -> "module:attribute" inside steu_patch_cli.
COMMANDS: dict[str, str] = {
    "create": "create_cmd:create",
    "tokens": "create_cmd:tokens",
    "apply": "apply_cmd:apply",
    "revert": "apply_cmd:revert",
    "inspect": "apply_cmd:inspect",
    "audit": "audit_cmd:audit",
    "push": "hub_cmd:push",
    "demo": "demo_cmd:demo",
    "finetune": "demo_cmd:finetune",
}


class LazyGroup(click.Group):
    """A click group that imports each command's module on first use."""

    def list_commands(self, ctx: click.Context) -> list[str]:
        return sorted(COMMANDS)

    def get_command(self, ctx: click.Context, name: str) -> click.Command | None:
        target = COMMANDS.get(name)
        if target is None:
            return None
        module_name, attribute = target.split(":")
        module = importlib.import_module(f"steu_patch_cli.{module_name}")
        return getattr(module, attribute)

    def invoke(self, ctx: click.Context) -> Any:
        with translate_errors():
            return super().invoke(ctx)


@click.group(cls=LazyGroup, context_settings={"help_option_names": ["-h", "--help"], "max_content_width": 100})
@click.version_option(__version__, prog_name="steu-patch")
@click.option("-v", "--verbose", count=True, help="Log more detail to stderr (-v info, -vv debug).")
def cli(verbose: int) -> None:
    """Class-level unlearning for Hugging Face text classifiers as small, auditable forget patches."""
    levels = {0: logging.WARNING, 1: logging.INFO}
    level = levels.get(verbose, logging.DEBUG)
    logging.basicConfig(level=level, format="%(levelname)s %(name)s: %(message)s", stream=sys.stderr)


def main() -> None:
    """Run the ``steu-patch`` command."""
    cli(prog_name="steu-patch")


if __name__ == "__main__":
    main()
