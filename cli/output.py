"""Printing helpers shared by the commands: results to stdout, one format for tables and JSON."""

from __future__ import annotations

import json
from collections.abc import Sequence
from typing import Any

import click


def echo_json(content: Any) -> None:
    """Print ``content`` as one JSON document on stdout."""
    click.echo(json.dumps(content, indent=2, default=str))


def echo_table(rows: Sequence[Sequence[Any]], headers: Sequence[str] | None = None) -> None:
    """Print rows as a left-aligned plain-text table on stdout."""
    cells = [[str(cell) for cell in row] for row in rows]
    if headers:
        cells.insert(0, [str(header) for header in headers])
    if not cells:
        return
    widths = [max(len(row[column]) for row in cells if column < len(row)) for column in range(max(map(len, cells)))]
    for index, row in enumerate(cells):
        click.echo("  ".join(cell.ljust(widths[column]) for column, cell in enumerate(row)).rstrip())
        if headers and index == 0:
            click.echo("  ".join("-" * width for width in widths))
