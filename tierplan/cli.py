"""The `tierplan` command line: one typer app; each verb lives in tierplan/commands/<verb>.py.

Every command module exposes `register(app: typer.Typer) -> None`. Errors derived from
`TierplanError` become one line on stderr and the error's exit code (2 bad input, 1 goal not met);
nothing else is printed, no traceback.
"""

from __future__ import annotations

import importlib
import pkgutil
import sys

import typer

from tierplan.errors import TierplanError
from tierplan.logs import quiet_by_default

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


def _register_all() -> None:
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

    def show(message, category, filename, lineno, file=None, line=None):
        if category.__module__.split(".")[0] in ("devices", "tierplan", "planner", "runtime", "partition",
                                                 "simulations"):
            print(f"warning: {message}", file=sys.stderr)
        else:
            default(message, category, filename, lineno, file, line)
    show.tierplan_lines = True
    warnings.showwarning = show


def main(argv: list[str] | None = None) -> None:
    """Entry point of the console script."""
    _warnings_as_lines()
    quiet_by_default()   # Ray's and gRPC's chatter at WARNING, as in the Python API (tierplan.logs)
    _register_all()
    try:
        app(args=argv)  # standalone: typer/click handle usage errors (exit 2) and --help
    except TierplanError as e:
        for line in str(e).splitlines() or ["error"]:
            print(f"error: {line}", file=sys.stderr)
        sys.exit(e.exit_code)
    except KeyboardInterrupt:
        print("error: interrupted", file=sys.stderr)
        sys.exit(130)


if __name__ == "__main__":
    main()
