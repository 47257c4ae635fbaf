"""The `convkit` command: a click group whose subcommands live in convkit/commands/.

Subcommands are imported only when invoked, so `convkit tokenize ...` never pays for
importing torch. User errors become one line on stderr and exit code 2.
"""
import importlib
import sys

import click

from convkit import __version__
from convkit.errors import USER_ERRORS

# command name -> "module:attribute" under convkit.commands
COMMANDS = {
    "convert": "convert:convert",
    "demo": "demo:demo",
    "drift": "drift:drift",
    "env": "env:env",
    "inspect": "inspect:inspect_cmd",
    "generate": "generate:generate",
    "imatrix": "imatrix:imatrix",
    "perplexity": "perplexity:perplexity",
    "quantize": "quantize:quantize",
    "tokenize": "tokenize:tokenize",
}


class LazyGroup(click.Group):
    def list_commands(self, ctx):
        return sorted(COMMANDS)

    def get_command(self, ctx, name):
        if name not in COMMANDS:
            return None
        module, attr = COMMANDS[name].split(":")
        return getattr(importlib.import_module(f"convkit.commands.{module}"), attr)


@click.group(cls=LazyGroup)
@click.version_option(__version__, prog_name="convkit")
@click.pass_context
def cli(ctx):
    """Train tokenizers, convert and quantize checkpoints to GGUF, measure drift."""
    if ctx.invoked_subcommand != "env":  # env reports the helpers itself
        from convkit.sysinfo import missing_helpers_note

        note = missing_helpers_note()  # once per run, on stderr, before any work
        if note:
            click.echo(note, err=True)


def main(argv=None):
    try:
        cli.main(args=argv, prog_name="convkit", standalone_mode=False)
    except click.exceptions.Abort:
        click.echo("convkit: interrupted", err=True)
        sys.exit(130)
    except click.ClickException as exc:
        exc.show()
        sys.exit(2)
    except USER_ERRORS as exc:
        click.echo(f"convkit: error: {exc}", err=True)
        sys.exit(2)
    except KeyboardInterrupt:
        click.echo("convkit: interrupted", err=True)
        sys.exit(130)
    except BrokenPipeError:
        sys.exit(0)
    sys.exit(0)
