"""Colour for the terminal only: none when output is piped (click strips it) or NO_COLOR is set."""
import os

import click


def color():
    """click's `color` argument: False under NO_COLOR (https://no-color.org), else autodetect."""
    return False if os.environ.get("NO_COLOR") else None


def echo(text, fg=None, bold=False, err=False):
    """One line, coloured fg on a terminal."""
    click.echo(click.style(text, fg=fg, bold=bold) if fg or bold else text, err=err, color=color())
