"""The `edgekit` command: a thin click layer over functions the tests call directly."""
import sys

import click

from edgekit import __version__


class UserError(click.ClickException):
    """A problem the user can fix: printed as one line on stderr, exit code 1."""

    def show(self, file=None):
        click.echo(f"error: {self.format_message()}", err=True, file=file)


@click.group(context_settings={"help_option_names": ["-h", "--help"]})
@click.version_option(__version__, prog_name="edgekit")
def main():
    """edgekit: ESP32-class boards as downstream devices of an Azure IoT Edge gateway.

    Typical flow: make certificates (certs), check the gateway (check), bundle a
    device's credentials (bundle), flash the board once (flash) and deploy the
    firmware (deploy). `edgekit gateway serve` runs a local gateway to develop against.
    """


@main.command("mpy")
@click.argument("outdir", type=click.Path(file_okay=False))
@click.option("--arch", default=None, help="mpy-cross -march value (xtensawin, rv32imc); default: bytecode only")
@click.option("--lib", is_flag=True, help="also MiniMQTT, as deploy builds a board's /lib (for MICROPYPATH on the host)")
def mpy_cmd(outdir, arch, lib):
    """Compile every firmware file with mpy-cross into OUTDIR."""
    from edgekit import mpy

    for path, size in (mpy.build_lib if lib else mpy.compile_tree)(outdir, arch=arch):
        click.echo(f"{size:7d}  {path}")


# --- command registration: each area adds its click command or group here, one line each ---
from edgekit.boards import boards_cmd; main.add_command(boards_cmd)  # noqa: E402,E702
from edgekit.flash import flash_cmd; main.add_command(flash_cmd)  # noqa: E402,E702
from edgekit.bundle import bundle_cmd; main.add_command(bundle_cmd)  # noqa: E402,E702
from edgekit.check_cli import check_cmd; main.add_command(check_cmd)  # noqa: E402,E702
from edgekit.certs.cli import certs_group; main.add_command(certs_group)  # noqa: E402,E702
from edgekit.gateway.cli import gateway; main.add_command(gateway)  # noqa: E402,E702
from edgekit.sim.cli import sim_group; main.add_command(sim_group)  # noqa: E402,E702
from edgekit.deploy.cli import deploy_cmd; main.add_command(deploy_cmd)  # noqa: E402,E702
from edgekit.faultproxy import faultproxy_cmd; main.add_command(faultproxy_cmd)  # noqa: E402,E702
from edgekit.demo import demo_cmd; main.add_command(demo_cmd)  # noqa: E402,E702


if __name__ == "__main__":
    sys.exit(main())
