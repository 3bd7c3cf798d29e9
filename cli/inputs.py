"""Bad input, one way: a message naming the field and the fix on stderr, exit 2, before anything connects; and
the exit codes every command shares."""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any, NoReturn

import typer
from rich.console import Console
from rich.markup import escape

err = Console(stderr=True, soft_wrap=True)  # an error line is never broken inside a path

EXIT_FAILED = 1
EXIT_BAD_INPUT = 2
EXIT_AWAITING_APPROVAL = 3
EXIT_WINDOW_ENDED = 4  # StopAfter passed: stopped cleanly between nodes; run again in the next window


def refuse(message: str) -> NoReturn:
    """Print `message` (rich markup) on stderr and exit 2."""
    err.print(message)
    raise typer.Exit(EXIT_BAD_INPUT)


@contextmanager
def bad_input(*kinds: type[BaseException]) -> Iterator[None]:
    """Whatever `kinds` of error (default: any) the block raises is bad input: its message, exit 2."""
    try:
        yield
    except typer.Exit:
        raise
    except kinds or (Exception,) as e:  # noqa: B030 - a tuple of exception types
        refuse(f"[red]{escape(str(e))}[/]")


def run_inputs(inventory: Path, cluster: str | None, options: Path | None,
            require: str | None = None) -> tuple[Any, Any]:
    """The cluster and its run options, checked before anything connects: bad input (a field, a missing
    credential variable, `require`: a flag that must be given) exits 2 with its message."""
    from hciupgrade.models import InputError, load_inventory, load_options

    with bad_input():  # an InputError or a credential problem: bad input either way
        target = load_inventory(inventory).cluster(cluster)
        run_options = load_options(options)
        run_options = run_options.check_against(target)
        target.credential.resolve(secret_block=lambda name: "")  # fail early on a missing environment variable
        if require:
            raise InputError(require)
    return target, run_options


def upfront_approval(steps: list[str], reason: str | None) -> Any:
    """The CLI's explicit approval of an irreversible step before the run; bad input exits 2 naming the fix."""
    import getpass

    from hciupgrade.models import Approval

    allowed = ("cloud-management",)
    bad = [s for s in steps if s not in allowed]
    if bad:
        refuse(f"[red]--approve: {bad[0]!r} is not approved before a run; allowed: {', '.join(allowed)}[/]")
    if not (reason or "").strip():
        refuse("[red]--approve needs --reason (a change ticket), e.g. --reason 'CHG-1234'[/]")
    return Approval(approver=getpass.getuser(), reason=str(reason).strip(), steps=steps, source="cli")
