"""`edgekit help [TOPIC]`: what a man page would say, where the command is (no install step,
no pager, the same text in a wheel and a checkout). `edgekit help COMMAND` is COMMAND --help."""
import difflib

import click

from edgekit.errors import UserError

TOPICS = {}


def topic(name, summary):
    def add(text):
        TOPICS[name] = (summary, text.strip("\n"))
    return add


topic("exit-codes", "the exit statuses scripts can rely on")("""
Every edgekit command exits with one of these. Errors are one line on stderr,
starting with 'error: ', saying what is wrong and what to do.

  0    done: the command did what it was asked
  1    an error edgekit explains in its one line: a missing file, an unknown
       device or board, a gateway that is not running, a failed check step,
       telemetry --wait with nothing arriving in time
  2    a usage error: an unknown option or command, a bad or missing value
       ('error: ... ; edgekit CMD -h shows the usage')
  3    deploy: deployed, but the board refuses or cannot start (a CONNACK
       refusal, a TLS or bundle problem, an exception)
       gateway invoke-method: the device answered with a status outside
       200-299 (404 for a method it does not know); its answer is printed
  4    deploy: deployed, but the board cannot reach the gateway
  5    deploy: deployed, still trying when --watch ended
  130  interrupted by Ctrl-C (one line says what state things were left in)

With --json a command prints its JSON object (an error object included) and
exits with the same status; a usage error (2) stays one error line, as the
command never ran.
""")

topic("files", "what edgekit reads and writes, and where")("""
edgekit writes only under the working folder, or under $EDGEKIT_HOME when set
(HOME below): never into the installed package.

  HOME/bundles/DEVICE/        a device's bundle (edgekit bundle; --out, --bundles)
                              config.json and keys 0600
  HOME/.edgekit/gateway/      the local gateway: registry.json (device keys, 0600),
                              telemetry.jsonl, twins, gateway.json, serve.log
                              (--data, $EDGEKIT_GATEWAY_DATA; the folder is 0700)
  HOME/.edgekit/sim/          the simulated board: its flash folder, state, log
  HOME/.edgekit/demo/         edgekit demo's PKI, gateway, board and logs
  HOME/.edgekit/outbox/DEV/   a device run on this machine (python firmware/main.py)
                              queues its readings here (readings, no keys: made
                              with your umask; chmod 700 .edgekit to hide them)
  HOME/.edgekit/build/        compiled .mpy files, a cache (safe to delete)
  HOME/boards/NAME.json       your own board files (only when $EDGEKIT_HOME is
                              set), read before the shipped ones; --boards DIR too
  ~/.cache/edgekit/firmware/  downloaded MicroPython/CircuitPython releases
                              (flash --download; $XDG_CACHE_HOME respected)

Shipped with edgekit, read-only: the firmware (deploy --firmware picks another
folder; 'edgekit deploy -h' shows the default) and the board files
('edgekit boards').
""")

topic("environment", "environment variables edgekit reads")("""
  EDGEKIT_HOME               where bundles/, .edgekit/ and boards/ live
                             [default: the working folder; boards/ only when set]
  EDGEKIT_CONNECTION_STRING  bundle, check: the device's connection string, so
                             its key stays out of shell history
  EDGEKIT_KEY_PASSWORD       the password of an encrypted private key
  EDGEKIT_GATEWAY_DATA       the gateway's folder [HOME/.edgekit/gateway]
  EDGEKIT_PORT, ESPTOOL_PORT the board's serial port when -p is not given
  EDGEKIT_BUNDLE             the firmware run on this machine: its bundle folder
  NO_COLOR                   no colour, even on a terminal
  _EDGEKIT_COMPLETE          shell completion (see 'edgekit help completion')
""")

topic("json", "the JSON that --json prints, command by command")("""
Each prints one JSON value on stdout; progress and notes go to stderr.

  deploy --json      {"device", "board", "exit", "verdict", "target", "files",
                      "copied": [board paths], "removed": [board paths],
                      "payload_bytes", "wire_bytes", "compiled", "console",
                      "error"}
                     verdict: "connected", "refused", "unreachable",
                     "still_trying", or null (not watched, or not deployed);
                     exit: the exit status (edgekit help exit-codes); error:
                     the one error line's text, or null
  sim status --json  {"running": false}, or {"running": true, "pid", "port",
                      "url", "rfc2217", "baud", "flash", "log"}
  certs inspect --json
                     [{"path", "role", "subject", "issuer", "self_signed",
                       "san": ["DNS:name", "IP:addr"], "eku", "key", "is_ca",
                       "path_length", "not_before", "not_after" (ISO 8601 UTC),
                       "status", "sha1", "sha256", "warnings": [text]}, ...]
                     one object per certificate, in file order
  check --json       {"host", "port", "ok", "steps": [{"name", "status",
                      "summary", "details", "fixes", "data"}]}
  boards --json      the board files, as a list
  gateway ... --json one object with "status" (HTTP-like, as IoT Hub answers);
                     errors: {"status": N, "error": "..."}
""")

topic("completion", "tab completion in bash, zsh and fish")("""
edgekit completes its commands, options and choices in bash (4.4 or newer),
zsh and fish. Add one line to your shell's start-up file:

  bash   ~/.bashrc:                   eval "$(_EDGEKIT_COMPLETE=bash_source edgekit)"
  zsh    ~/.zshrc:                    eval "$(_EDGEKIT_COMPLETE=zsh_source edgekit)"
  fish   ~/.config/fish/completions/edgekit.fish:
                                      _EDGEKIT_COMPLETE=fish_source edgekit | source

Or write the script once, so the shell does not run edgekit at each start:
  _EDGEKIT_COMPLETE=bash_source edgekit > ~/.edgekit-complete.bash
and source that file from ~/.bashrc.
""")


def _topic_rows():
    width = max(len(n) for n in TOPICS)
    return [f"  {n.ljust(width)}  {summary}" for n, (summary, _) in TOPICS.items()]


@click.command("help")
@click.argument("words", metavar="[TOPIC | COMMAND...]", nargs=-1)
@click.pass_context
def help_cmd(ctx, words):
    """Explain a TOPIC (exit-codes, files, environment, json, completion), or show a COMMAND's
    help (`edgekit help gateway twin` is `edgekit gateway twin -h`)."""
    if not words:
        click.echo("edgekit help TOPIC, one of:")
        for row in _topic_rows():
            click.echo(row)
        click.echo("edgekit help COMMAND (or edgekit COMMAND -h) for a command's options.")
        return
    if len(words) == 1 and words[0] in TOPICS:
        click.echo(TOPICS[words[0]][1])
        return
    parent = ctx.find_root()
    command = parent.command
    for word in words:
        found = command.get_command(parent, word) if isinstance(command, click.Group) else None
        if found is None or found is help_cmd:
            _unknown(parent, command, " ".join(words), word)
        parent = click.Context(found, info_name=word, parent=parent)
        command = found
    click.echo(command.get_help(parent))


def _unknown(ctx, group, asked, word):
    names = sorted(group.list_commands(ctx)) if isinstance(group, click.Group) else []
    if ctx.parent is None:
        names = list(TOPICS) + names
    close = difflib.get_close_matches(word.lower(), names, n=1, cutoff=0.6)
    hint = f"did you mean '{close[0]}'? " if close else ""
    where = f"topics: {', '.join(TOPICS)}" if ctx.parent is None else f"'{ctx.command_path} -h' lists its commands"
    raise UserError(f"no help topic or command '{asked}'; {hint}{where}")
