"""The `tierplan` command line: one typer app; each verb lives in tierplan/commands/<verb>.py.

Every command module exposes `register(app: typer.Typer) -> None`. Errors derived from
`TierplanError` become one line on stderr and the error's exit code (2 bad input, 1 goal not met);
nothing else is printed, no traceback. With `--json` on the command line the error is also printed
on stdout as `{"error": {"code": 2, "problems": [...]}}` (usage errors too: a bad flag value, a
missing argument), so a script that parses stdout always gets a JSON document; a command that has
already printed its result (an infeasible plan.json, exit 1) marks the error `result_printed`.
"""

from __future__ import annotations

import importlib
import json
import pkgutil
import sys
from typing import TYPE_CHECKING, TextIO

import typer

from tierplan.errors import SpecError, TierplanError
from tierplan.logs import quiet_by_default

if TYPE_CHECKING:
    from typer._click import ClickException   # what typer.rich_utils formats (typer >= 0.20)

# the click typer runs on (typer >= 0.20 vendors its own as typer._click): its usage errors and Abort
_click = getattr(typer.core, "_click", None) or importlib.import_module("click")

app = typer.Typer(
    name="tierplan",
    help="Place the pieces of an ML app on device, base station and cloud; prove the plan; run it.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
)


@app.callback(invoke_without_command=True)
def _root(
    ctx: typer.Context,
    version: bool = typer.Option(False, "--version", help="Print the version and exit.", is_eager=True),
) -> None:
    """tierplan: plan, simulate, compile and run ML apps across edge, base station and cloud."""
    if version:
        from tierplan import __version__
        print(f"tierplan {__version__}")
        raise typer.Exit(0)
    if ctx.invoked_subcommand is None:
        print(ctx.get_help())
        raise typer.Exit(0)


_registered = False


def _register_all() -> None:
    """Add every verb of tierplan/commands once per process (main() may run many times in one: tests)."""
    global _registered
    if _registered:
        return
    _registered = True
    import tierplan.commands as pkg
    for info in sorted(pkgutil.iter_modules(pkg.__path__), key=lambda m: m.name):
        if info.name.startswith("_"):
            continue
        mod = importlib.import_module(f"tierplan.commands.{info.name}")
        mod.register(app)


def _warnings_as_lines() -> None:
    """tierplan's own warnings (e.g. a calibration from another CPU) print as one `warning:` line on stderr."""
    import warnings

    default = warnings.showwarning
    if getattr(default, "tierplan_lines", False):   # main() called again in one process
        return

    def show(message: Warning | str, category: type[Warning], filename: str, lineno: int,
             file: TextIO | None = None, line: str | None = None) -> None:
        if category.__module__.split(".")[0] in ("devices", "tierplan", "planner", "runtime", "partition",
                                                 "simulations"):
            print(f"warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)
    setattr(show, "tierplan_lines", True)   # marks the hook as ours (see the check above)
    warnings.showwarning = show


def wants_json(args: list[str]) -> bool:
    """`--json` is among the command's options (before a `--` that ends them)."""
    return "--json" in (args[:args.index("--")] if "--" in args else args)


def json_error(code: int, problems: list[str], total: int | None = None) -> str:
    """The `--json` form of an error: `{"error": {"code": 2, "problems": [...], "problems_total": N}}`
    (a SpecError's problems are capped at SpecError.SHOWN; problems_total counts them all)."""
    problems = problems or ["error"]
    return json.dumps({"error": {"code": code, "problems": problems,
                                 "problems_total": max(total or 0, len(problems))}}, indent=2)


def _problems(e: TierplanError) -> tuple[list[str], int]:
    """(the problems shown, how many there are) of an error: a SpecError's list, else its lines."""
    if isinstance(e, SpecError):
        return e.problems[:e.SHOWN], len(e.problems)
    lines = str(e).splitlines() or ["error"]
    return lines, len(lines)


def _usage_error(e: ClickException) -> None:
    """Show a usage error as typer does in standalone mode (rich panel on stderr)."""
    try:
        from typer import rich_utils
        rich_utils.rich_format_error(e)
    except (ImportError, AttributeError):
        e.show()


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script."""
    _warnings_as_lines()
    quiet_by_default()   # Ray's and gRPC's chatter at WARNING, as in the Python API (tierplan.logs)
    _register_all()
    args = list(sys.argv[1:] if argv is None else argv)
    as_json = wants_json(args)
    try:
        code = app(args=args, standalone_mode=False)   # usage errors raised here, printed below
    except TierplanError as e:
        for line in str(e).splitlines() or ["error"]:
            print(f"error: {line}", file=sys.stderr)
        if as_json and not e.result_printed:
            print(json_error(e.exit_code, *_problems(e)), flush=True)
        sys.exit(e.exit_code)
    except _click.ClickException as e:   # a bad flag value, a missing argument, an unknown command
        _usage_error(e)
        if as_json:
            print(json_error(e.exit_code, [e.format_message()]), flush=True)
        sys.exit(e.exit_code)
    except (KeyboardInterrupt, typer.Abort):
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)
    code = code if isinstance(code, int) else 0
    if code == 130:
        print("error: interrupted", file=sys.stderr)
    sys.exit(code)   # as click's standalone mode: SystemExit(0) on success too


if __name__ == "__main__":
    main()
