"""The `edgekit` command: a thin click layer over functions the tests call directly."""
import sys

import click

from edgekit import __version__, style
from edgekit.boards import boards_cmd
from edgekit.bundle import bundle_cmd
from edgekit.certs.cli import certs_group
from edgekit.check_cli import check_cmd
from edgekit.demo import demo_cmd
from edgekit.devs import devs_cmd
from edgekit.deploy.cli import deploy_cmd, monitor_cmd
from edgekit.deploy.compile import BuildError, build_lib
from edgekit.errors import UserError
from edgekit.faultproxy import faultproxy_cmd
from edgekit.flash import flash_cmd
from edgekit.gateway.cli import gateway
from edgekit.help import help_cmd
from edgekit.sim.cli import sim_group
from edgekit.update import update_group

__all__ = ["UserError", "main"]  # UserError stays importable from here for older callers

INTERRUPTED = 130  # what a shell reports for a command ended by Ctrl-C


class OneLineUsageError(click.UsageError):
    """click's usage error as edgekit's one line: what is wrong and where the usage is, exit 2.

    click prints three lines (Usage, Try, Error) in a style of their own; every other edgekit
    error is one `error:` line, and scripts grep for that.
    """

    @classmethod
    def of(cls, e):
        # click's "no arguments: show the help" is a UsageError too (click 8.2+): the help stays.
        if isinstance(e, cls) or type(e).__name__ == "NoArgsIsHelpError":
            return e
        return cls(e.format_message(), ctx=e.ctx)

    def show(self, file=None):
        where = self.ctx.command_path if self.ctx is not None else "edgekit"
        message = self.format_message().rstrip(".")
        sep = " " if message.endswith("?") else "; "  # after click's own "Did you mean ...?"
        UserError(f"{message}{sep}'{where} -h' shows the usage").show(file)


class EdgekitGroup(click.Group):
    """click's group, but Ctrl-C exits 130 with one line of state instead of 'Aborted!', and an
    OS error (a missing file, a port without permission) is one line, not a traceback."""

    def make_context(self, info_name, args, parent=None, **extra):
        try:
            return super().make_context(info_name, args, parent=parent, **extra)
        except click.UsageError as e:
            raise OneLineUsageError.of(e) from None

    def invoke(self, ctx):
        try:
            return super().invoke(ctx)
        except click.UsageError as e:
            # A subcommand's bad option or argument, parsed inside this invoke.
            raise OneLineUsageError.of(e) from None
        except (KeyboardInterrupt, click.exceptions.Abort) as e:
            # Abort: click's own word for Ctrl-C at a prompt.
            click.echo("", err=True)
            style.echo(f"interrupted: {str(e) or 'stopped by Ctrl-C'}", fg="yellow", err=True)
            raise click.exceptions.Exit(INTERRUPTED) from None
        except OSError as e:
            # A file or device the user named cannot be used: their problem to fix, in one line.
            where = f"{e.filename}: " if getattr(e, "filename", None) else ""
            raise UserError(f"{where}{e.strerror or e}") from None


@click.group(cls=EdgekitGroup, context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgekit")
@click.pass_context
def main(ctx):
    """edgekit: ESP32-class boards as downstream devices of an Azure IoT Edge gateway.

    Typical flow: make certificates (certs), check the gateway (check), bundle a
    device's credentials (bundle), flash the board once (flash) and deploy the
    firmware (deploy). `edgekit gateway serve` runs a local gateway to develop against.
    `edgekit help` lists topics: exit codes, files, environment, JSON, shell completion.
    """
    if style.color() is False:
        ctx.color = False


@main.command("mpy")
@click.argument("outdir", type=click.Path(file_okay=False))
@click.option("--arch", type=click.Choice(["xtensawin", "rv32imc"]), default=None,
              help="mpy-cross -march value; default: bytecode only")
def mpy_cmd(outdir, arch):
    """Build a board's /lib into OUTDIR as deploy ships it: the firmware and MiniMQTT as .mpy."""
    try:
        built = build_lib(outdir, arch=arch)
    except BuildError as e:
        raise UserError(str(e)) from None
    for path, size in built:
        click.echo(f"{size:7d}  {path}")


for _command in (boards_cmd, devs_cmd, flash_cmd, bundle_cmd, check_cmd, certs_group, gateway, sim_group,
                 deploy_cmd, monitor_cmd, faultproxy_cmd, demo_cmd, update_group, help_cmd):
    main.add_command(_command)


if __name__ == "__main__":
    sys.exit(main())
