"""How the ``ssdflow`` command ends: exit codes, one line for a mistake, a traceback only for a bug.

Exit codes (README, "Exit codes"):

- 0: the job finished and its output is usable (it has ``_SUCCESS``);
- 1: a bug in ssdflow: the traceback is printed, with a line asking for a report;
- 2: something the user can fix (an option, an input, a server that is not running, a runner's
  set-up): one line naming the cause and the fix, no traceback (``--debug`` shows one anyway);
- 130: interrupted (Ctrl-C).

:func:`run_cli` is what the console script runs; the tests call it in-process.
"""

from __future__ import annotations

import os
import re
import sys
import traceback
from typing import Iterator, Sequence

import typer.core

try:  # Typer 0.26+ carries its own copy of click, whose exceptions are not the click package's
    from typer._click import exceptions as click_errors
except ImportError:  # pragma: no cover - older Typer, on click itself
    from click import exceptions as click_errors

EXIT_OK, EXIT_BUG, EXIT_USER, EXIT_INTERRUPTED = 0, 1, 2, 130
DEBUG_FLAG = "--debug"


def _chain(error: BaseException) -> Iterator[BaseException]:
    """The error and the errors it was raised from or during, outermost first."""
    seen = set()
    while error is not None and id(error) not in seen:
        seen.add(id(error))
        yield error
        error = error.__cause__ or error.__context__


def _prefect_url() -> str:
    try:
        from prefect.settings import PREFECT_API_URL

        return PREFECT_API_URL.value() or "(PREFECT_API_URL not set)"
    except Exception:  # noqa: BLE001 - only for the message
        return os.environ.get("PREFECT_API_URL", "(PREFECT_API_URL not set)")


def explain(error: BaseException) -> str | None:
    """One line (cause and fix) for a failure the user can fix; None for a bug."""
    for e in _chain(error):
        name = f"{type(e).__module__}.{type(e).__name__}"
        text = str(e)
        if name.startswith("httpx.") and type(e).__name__ in ("ConnectError", "ConnectTimeout", "ReadTimeout"):
            return (
                f"cannot reach the Prefect server at {_prefect_url()} ({text or type(e).__name__}): is it running? "
                "Start one with `prefect server start` (or scripts/serve.sh), or set PREFECT_API_URL to a running server"
            )
        if isinstance(e, ValueError) and "Pipeline has validations errors" in text:
            missing = [line.strip().rstrip(".") for line in text.splitlines()[1:] if line.strip()]
            return (
                "the runner needs more pipeline options: "
                + "; ".join(missing)
                + " (give them after the job's own options, e.g. --project=ID --region=REGION --temp_location=gs://BUCKET/tmp)"
            )
        if isinstance(e, RuntimeError) and "Unable to fetch remote job server jar" in text:
            url = re.search(r"https?://\S+?\.jar", text)
            jar = text.split("stage the jar at ")[-1].strip() if "stage the jar at " in text else "Beam's jar cache"
            return (
                f"this runner starts Beam's job server from a jar it downloads at run time, and the download failed "
                f"(no network?): fetch {url.group(0) if url else 'the jar'} once and put it at {jar}, or run a job "
                f"server yourself and pass --job_endpoint=HOST:PORT"
            )
        if type(e).__name__ == "_InactiveRpcError" or "failed to connect to all addresses" in text:
            return (
                f"cannot reach the Beam job server or worker pool ({text.splitlines()[0][:200] if text else name}): "
                "is it running at the --job_endpoint / --environment_config given?"
            )
        if isinstance(e, (FileNotFoundError, PermissionError, NotADirectoryError, IsADirectoryError)) and e.filename:
            return f"{e.filename}: {e.strerror or text}"
        if isinstance(e, MemoryError):
            return (
                "out of memory: lower --max-batch-size (score) or --batch-size (train), or give the job a machine "
                "with more memory"
            )
    return None


def _leaf_command(root, argv: Sequence[str]):
    """The subcommand ``argv`` runs and the arguments after its name."""
    cmd, rest = root, list(argv)
    while hasattr(cmd, "commands"):  # a group: its subcommand's name comes first
        names = [i for i, tok in enumerate(rest) if not tok.startswith("-")]
        if not names or rest[names[0]] not in cmd.commands:
            break
        i = names[0]
        cmd, rest = cmd.commands[rest[i]], rest[i + 1 :]
    return cmd, rest


BOOL_WORDS = {"true", "false", "yes", "no", "on", "off", "1", "0"}


def argv_mistake(cmd, args: Sequence[str]) -> str | None:
    """What click would get wrong silently or explain badly, found in the words after the command's
    name: an option that takes one value given twice (click keeps the last), a value after a flag
    (``--keep-chunks true``), files where no argument belongs (an unquoted glob the shell expanded)."""
    single, flags = {}, set()
    for p in cmd.params:
        if isinstance(p, typer.core.TyperOption):
            for opt in (*p.opts, *p.secondary_opts):
                if p.is_flag or p.count:
                    flags.add(opt)
                else:
                    single[opt] = (p.name, p.multiple)
    arguments = [p for p in cmd.params if isinstance(p, typer.core.TyperArgument)]
    # Words the command takes as arguments (predict takes any number: its sources).
    positional = float("inf") if any(p.nargs == -1 for p in arguments) else len(arguments)
    seen: dict[str, int] = {}
    strays: list[str] = []
    i = 0
    while i < len(args):
        tok = args[i]
        if tok == "--":
            break
        name = tok.split("=", 1)[0]
        if name in single:
            field, multiple = single[name]
            if not multiple:
                seen[field] = seen.get(field, 0) + 1
            i += 1 if "=" in tok else 2
            continue
        if name in flags:
            nxt = args[i + 1] if i + 1 < len(args) else None
            if "=" in tok or (nxt is not None and nxt.lower() in BOOL_WORDS):
                value = tok.split("=", 1)[1] if "=" in tok else nxt
                off = next((o for o in flags if o.startswith("--no-") and o[5:] == name[2:]), None)
                return f"{name} is a flag and takes no value: drop {value!r}" + (
                    f" (and give {off} to turn it off)" if off else " (leave it out to turn it off)"
                )
        elif not tok.startswith("-"):
            if positional:
                positional -= 1
            elif os.path.exists(tok):
                strays.append(tok)
        i += 1
    twice = sorted("--" + n.replace("_", "-") for n, count in seen.items() if count > 1)
    if twice:
        return f"{', '.join(twice)} given more than once: give each once"
    if strays:
        shown = ", ".join(strays[:3]) + (" …" if len(strays) > 3 else "")
        return (
            f"{len(strays)} more files on the line where the command takes none ({shown}): the shell expanded an "
            f"unquoted glob. Quote it, e.g. --images 'photos/*.jpg', or give the directory"
        )
    return None


def run_cli(argv: Sequence[str] | None = None) -> int:
    """Runs the ``ssdflow`` command on ``argv`` (default: ``sys.argv[1:]``) and returns its exit code."""
    import typer

    from ssdflow.cli import app

    argv = list(sys.argv[1:] if argv is None else argv)
    end = argv.index("--") if "--" in argv else len(argv)
    debug = DEBUG_FLAG in argv[:end] or os.environ.get("SSDFLOW_DEBUG", "") not in ("", "0")
    argv = [a for i, a in enumerate(argv) if not (a == DEBUG_FLAG and i < end)]
    command = typer.main.get_command(app)
    leaf, rest = _leaf_command(command, argv)
    if "--help" not in rest:
        mistake = argv_mistake(leaf, rest)
        if mistake:
            typer.secho(f"error: {mistake}", fg=typer.colors.RED, err=True)
            return EXIT_USER
    try:
        code = command.main(args=argv, prog_name="ssdflow", standalone_mode=False)
    except click_errors.NoArgsIsHelpError as e:  # `ssdflow` alone: its help, as asked
        typer.echo(e.ctx.get_help())
        return EXIT_OK
    except click_errors.UsageError as e:  # one line, the way to the help after it
        where = (
            f"ssdflow {e.ctx.command_path.split(' ', 1)[1]} --help"
            if e.ctx and " " in e.ctx.command_path
            else "ssdflow --help"
        )
        typer.secho(
            f"error: {e.format_message().replace('Value error, ', '')} (see {where})", fg=typer.colors.RED, err=True
        )
        return EXIT_USER
    except click_errors.ClickException as e:
        typer.secho(f"error: {e.format_message()}", fg=typer.colors.RED, err=True)
        return e.exit_code
    except SystemExit as e:
        return e.code if isinstance(e.code, int) else (EXIT_OK if e.code is None else EXIT_BUG)
    except (typer.Abort, KeyboardInterrupt):  # Ctrl-C: click's Abort while it parses, else the job's own
        typer.secho(
            "interrupted: the output of this run was not committed (the previous one, if any, is intact)",
            fg=typer.colors.RED,
            err=True,
        )
        return EXIT_INTERRUPTED
    except Exception as e:  # noqa: BLE001 - the one place every failure ends
        message = explain(e)
        if message is None or debug:
            traceback.print_exc()
        if message is not None:
            typer.secho(f"error: {message}", fg=typer.colors.RED, err=True)
            return EXIT_USER
        typer.secho(
            f"error: {type(e).__name__}: {e}\nThis is a bug in ssdflow: please report it with the traceback above.",
            fg=typer.colors.RED,
            err=True,
        )
        return EXIT_BUG
    return code if isinstance(code, int) else EXIT_OK
