"""Turn library exceptions into messages and exit codes for the ``steu-patch`` command."""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator

import click

EXIT_FAILURE = 1
EXIT_USAGE = 2

# Failures a user can act on besides steu-patch's own errors: shown as one message.
_EXPECTED = (FileExistsError, FileNotFoundError, PermissionError, IsADirectoryError, NotADirectoryError)


def debug_enabled() -> bool:
    """Return True when ``STEU_DEBUG`` asks for tracebacks."""
    return os.environ.get("STEU_DEBUG", "").strip().lower() in {"1", "true", "yes", "on"}


class CommandFailed(click.ClickException):
    """A failure shown as ``Error: <message>`` with exit code 1."""

    exit_code = EXIT_FAILURE


@contextlib.contextmanager
def translate_errors() -> Iterator[None]:
    """Re-raise every non-click exception as :class:`CommandFailed` (exit code 1).

    click itself exits 2 on usage errors. With ``STEU_DEBUG=1`` exceptions pass through
    unchanged so the traceback shows.
    """
    from steu_patch.errors import SteuPatchError

    try:
        yield
    except (click.ClickException, click.exceptions.Exit, click.exceptions.Abort):
        raise
    except (SteuPatchError, *_EXPECTED) as error:
        if debug_enabled():
            raise
        raise CommandFailed(str(error)) from error
    except Exception as error:  # noqa: BLE001 - the CLI boundary maps every error to an exit code
        if debug_enabled():
            raise
        raise CommandFailed(
            f"unexpected {type(error).__name__}: {error}\n"
            "This is probably a bug in steu-patch. Run again with STEU_DEBUG=1 for the full traceback and report it."
        ) from error
