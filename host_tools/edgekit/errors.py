"""The one error every edgekit command raises for a problem the user can fix.

It lives apart from cli.py so that command modules can import it at the top without
importing the command group that registers them.
"""
import click

from edgekit import style


class UserError(click.ClickException):
    """A problem the user can fix: printed as one line on stderr, exit code 1."""

    def show(self, file=None):
        click.echo(f"{click.style('error:', fg='red', bold=True)} {self.format_message()}", err=True,
                   file=file, color=style.color())


class Interrupted(KeyboardInterrupt):
    """Ctrl-C, carrying one line that says what state the board was left in."""
