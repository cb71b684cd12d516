"""What every command shares: options, the error edge, JSON output and progress on stderr."""

from __future__ import annotations

import functools
import json
import re
import sys
import traceback
from collections.abc import Callable
from pathlib import Path
from typing import Annotated, Any, TypeVar, overload

import typer
from rich.console import Console
from rich.markup import escape
from typer.core import TyperGroup

from kbguard.config import DEFAULT_CONFIG, Config, load_config
from kbguard.core.outcome import Outcome, Verdict
from kbguard.core.progress import Progress
from kbguard.core.redact import scrub
from kbguard.errors import KbguardError, LockedError

# Exit codes are an interface: documented in the README, never reused for something else.
EXIT_OK = 0
EXIT_FINDINGS = 1      # verify found damage
EXIT_ERROR = 2         # could not do the work: bad config, missing corpus, unreadable store, ...
EXIT_BUSY = 3          # another kbguard process holds the KB
EXIT_INCOMPLETE = 4    # done, but a space is incomplete (its providers were down)
EXIT_INTERRUPTED = 130

# markup off: messages hold paths and TOML like [[spaces]] that rich would eat as tags
stderr = Console(stderr=True, highlight=False, soft_wrap=True, markup=False)
stdout = Console(highlight=False, soft_wrap=True, markup=False)

ConfigOpt = Annotated[Path, typer.Option(
    "--config", "-c", envvar="KBGUARD_CONFIG", show_default=True,
    help="The KB config (TOML). Relative paths inside it resolve against its folder.")]
JsonOpt = Annotated[bool, typer.Option(
    "--json", help="Print one JSON object on stdout and nothing else.")]
QuietOpt = Annotated[bool, typer.Option("--quiet", "-q", help="No progress on stderr.")]

DEFAULT_CONFIG_PATH = Path(DEFAULT_CONFIG)

F = TypeVar("F", bound=Callable[..., Any])


_EXIT_FOR_VERDICT = {
    Verdict.HEALTHY: EXIT_OK,
    Verdict.FINDINGS: EXIT_FINDINGS,
    Verdict.COULD_NOT_CHECK: EXIT_ERROR,
    Verdict.INCOMPLETE: EXIT_INCOMPLETE,
}


def exit_code_for(outcome: BaseException | Outcome) -> int:
    """The exit code of a command's outcome: an error it raised or the result it returned.

    The one place exit codes are decided; the library returns results that carry a verdict
    (``kbguard.core.outcome``) and raises errors."""

    if isinstance(outcome, KeyboardInterrupt):
        return EXIT_INTERRUPTED
    if isinstance(outcome, LockedError):
        return EXIT_BUSY
    if isinstance(outcome, BaseException):
        return EXIT_ERROR
    return _EXIT_FOR_VERDICT[outcome.verdict]


class JsonErrorsGroup(TyperGroup):
    """The command group: a usage error (an unknown option, a bad value, a missing argument)
    of a run with ``--json`` is printed as JSON too, as ``guarded`` prints every other error,
    so that every ``--json`` run prints one JSON object."""

    def resolve_command(self, ctx: Any, args: list[str]) -> Any:
        if "--json" in args:
            ctx.meta[_JSON_RUN] = True   # meta is shared with the subcommands' contexts
        return super().resolve_command(ctx, args)

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)
        except typer.TyperException as exc:   # the base of the errors click shows
            if ctx.meta.get(_JSON_RUN):
                emit_json({"error": exc.format_message(), "error_type": "UsageError",
                           "exit_code": exc.exit_code})
            raise   # click shows it on stderr, with the usage, and exits with its code


_JSON_RUN = "kbguard.json"


# what Ctrl-C means for most commands: they commit as they go
RESUMES = "Interrupted. Run the same command again to continue where it stopped."


@overload
def guarded(fn: F, *, interrupted: str = ...) -> F: ...
@overload
def guarded(fn: None = None, *, interrupted: str = ...) -> Callable[[F], F]: ...


def guarded(fn: F | None = None, *, interrupted: str = RESUMES) -> Any:
    """Show a KbguardError once, as one line on stderr (and as JSON with --json), and exit
    with its code. Anything else is a bug: its traceback is printed and the exit code is 2.

    ``interrupted``: what the command says when Ctrl-C stops it, which is what running it again
    does (``@guarded(interrupted=...)`` for a command that does not continue where it stopped)."""
    if fn is None:
        return functools.partial(guarded, interrupted=interrupted)

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        try:
            return fn(*args, **kwargs)
        except KbguardError as exc:
            message = scrub(str(exc))
            code = exit_code_for(exc)
            if kwargs.get("json_out"):
                emit_json({"error": message, "error_type": type(exc).__name__,
                           "exit_code": code})
            stderr.print(f"[bold red]Error:[/] {escape(message)}", markup=True, highlight=False)
            raise typer.Exit(code) from None
        except KeyboardInterrupt as exc:
            stderr.print(interrupted)
            raise typer.Exit(exit_code_for(exc)) from None
        except (typer.Exit, typer.Abort):
            raise
        except Exception as exc:  # noqa: BLE001 - any other error is a bug: shown below
            # A bug, not bad input: keep the traceback for the report, but still exit with a
            # code that means "could not do the work" (Python's 1 means "findings" to verify).
            # a third-party message in the traceback may quote the store URL
            sys.stderr.write(scrub(traceback.format_exc()))
            if kwargs.get("json_out"):
                emit_json({"error": scrub(f"internal error: {type(exc).__name__}: {exc}"),
                           "error_type": "InternalError", "exit_code": exit_code_for(exc)})
            stderr.print(f"Internal error ({type(exc).__name__}); the traceback above belongs "
                         "in a bug report. Nothing was lost: runs commit as they go, so the "
                         "same command can be run again.")
            raise typer.Exit(exit_code_for(exc)) from None

    return wrapper


# Characters that move the cursor, end a line or reorder the text around them on a terminal:
# C0/C1 controls, line and paragraph separators, bidirectional overrides, and the surrogates
# that stand for undecodable bytes in a file name.
_UNSAFE = re.compile("[\x00-\x1f\x7f-\x9f\u2028\u2029\u202a-\u202e\u2066-\u2069"
                     "\ud800-\udfff]")
_ESCAPES = {"\n": "\\n", "\r": "\\r", "\t": "\\t"}


def one_line(text: object) -> str:
    """``text`` with its control characters escaped as Python writes them (``\\n``,
    ``\\x1b``): a file name can hold any of them, and printed raw they would split a line of
    output or rewrite the terminal. `--json` needs none of this: JSON escapes them itself."""
    return _UNSAFE.sub(lambda m: _ESCAPES.get(m.group()) or _escape_char(m.group()), str(text))


def _escape_char(c: str) -> str:
    code = ord(c)
    return f"\\x{code:02x}" if code < 0x100 else f"\\u{code:04x}"


def load(config: Path) -> Config:
    return load_config(config)


def emit_json(obj: Any) -> None:
    sys.stdout.write(json.dumps(obj, indent=2, default=str, ensure_ascii=False) + "\n")
    sys.stdout.flush()


class RichProgress(Progress):
    """Progress bars on stderr when it is a terminal; one plain line per stage otherwise."""

    def __init__(self, enabled: bool = True):
        self.enabled = enabled
        self.live = enabled and stderr.is_terminal
        self._bar: Any = None
        self._task: Any = None

    def stage(self, name: str, total: int | None = None) -> None:
        if not self.enabled:
            return
        if not self.live:
            stderr.print(f"{name}" + (f": {total}" if total else ""))
            return
        from rich.progress import BarColumn, MofNCompleteColumn, TextColumn, TimeElapsedColumn
        from rich.progress import Progress as Bar

        if self._bar is None:
            self._bar = Bar(TextColumn("{task.description:<14}"), BarColumn(),
                            MofNCompleteColumn(), TimeElapsedColumn(), console=stderr,
                            transient=True)
            self._bar.start()
        if self._task is not None:
            self._bar.update(self._task, visible=False)
        self._task = self._bar.add_task(name, total=total)

    def advance(self, n: int = 1) -> None:
        if self._bar is not None and self._task is not None:
            self._bar.advance(self._task, n)

    def note(self, message: str) -> None:
        if self.enabled:
            stderr.print(message)

    def close(self) -> None:
        if self._bar is not None:
            self._bar.stop()
            self._bar = None
