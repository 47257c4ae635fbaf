"""Printing results: human text by default, one JSON document with --json."""
import json

import click


def emit(result, *, as_json: bool, text: str | None = None) -> None:
    if as_json:
        click.echo(json.dumps(result, indent=2, sort_keys=True, ensure_ascii=False))
    else:
        click.echo(text if text is not None else "\n".join(f"{k}: {v}" for k, v in result.items()))
