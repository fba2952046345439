"""``retry``, ``cancel``, ``pause``, ``resume``: the CLI face of :mod:`nanobatch.tasks.operations`.

The actions themselves (and the rules they follow) live there, shared with the Python API; this
module parses arguments, prints, and turns an :class:`OperationError` into exit code 1.
"""

from __future__ import annotations

from collections.abc import Callable

import typer

from nanobatch.cli.context import console, fail, load_settings, runtime
from nanobatch.models.status import parse_error_code
from nanobatch.tasks import operations
from nanobatch.tasks.operations import ActionResult, OperationError
from nanobatch.tasks.runtime import Runtime


def plural(n: int, word: str = "task") -> str:
    return f"{n:,} {word}{'' if n == 1 else 's'}"


def _act(action: Callable[[Runtime], ActionResult]) -> ActionResult:
    with runtime(load_settings()) as rt:
        try:
            return action(rt)
        except OperationError as exc:
            raise fail(str(exc), 1) from None


def retry_command(
    batch: str = typer.Argument(..., help="Batch name"),
    reason: str | None = typer.Option(
        None, "--reason", help="Only failures with this error code (README, 'Error codes'), e.g. unavailable"
    ),
) -> None:
    """Give failed tasks a fresh attempt budget: failed → pending, and dispatch them again."""
    try:
        code = parse_error_code(reason) if reason is not None else None
    except ValueError as exc:
        raise fail(str(exc), 2) from None
    result = _act(lambda rt: operations.retry_batch(rt, batch, reason=code))
    what = f"failed task{'' if result.moved == 1 else 's'}" + (f" with reason {code.value!r}" if code else "")
    console.print(f"{result.moved:,} {what} moved back to pending in batch [bold]{batch}[/bold].")
    if code is not None and not code.retryable and result.moved:
        console.print(f"Note: {code.value!r} failures usually repeat unless the prompt or the row changes.")
    if result.not_dispatched_because:
        console.print(result.not_dispatched_because)


def cancel_command(batch: str = typer.Argument(..., help="Batch name")) -> None:
    """Cancel every pending or processing task of a batch (completed and failed ones stay)."""
    result = _act(lambda rt: operations.cancel_batch(rt, batch))
    console.print(f"{plural(result.moved)} cancelled in batch [bold]{batch}[/bold].")


def pause_command(batch: str = typer.Argument(..., help="Batch name")) -> None:
    """Stop starting new tasks of a batch (calls already running finish); `resume` continues."""
    result = _act(lambda rt: operations.pause_batch(rt, batch))
    if result.already:
        console.print(f"Batch [bold]{batch}[/bold] is already paused.")
    else:
        console.print(f"Batch [bold]{batch}[/bold] paused: its queued messages are dropped until resumed.")


def resume_command(batch: str = typer.Argument(..., help="Batch name")) -> None:
    """Let a paused batch run again and dispatch its pending tasks right away."""
    result = _act(lambda rt: operations.resume_batch(rt, batch))
    if result.already:
        console.print(f"Batch [bold]{batch}[/bold] is already open.")
        return
    console.print(f"Batch [bold]{batch}[/bold] resumed; {plural(result.dispatched)} dispatched.")
    if result.not_dispatched_because:
        console.print(result.not_dispatched_because)
