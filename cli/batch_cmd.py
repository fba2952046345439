"""``retry``, ``cancel``, ``pause``, ``resume``: the CLI face of :mod:`nanobatch.tasks.operations`.

The actions themselves (and the rules they follow) live there, shared with the Python API; this
module parses arguments, prints, and turns an :class:`OperationError` into exit code 1.
"""

from __future__ import annotations

from collections.abc import Callable

import typer

from nanobatch.cli.context import console, fail, load_settings, runtime
from nanobatch.models.status import TaskStatus, parse_error_code
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


def regenerate_command(
    batch: str = typer.Argument(..., help="Batch name"),
    keys: list[str] | None = typer.Option(
        None, "--keys", "--key", help="Only these keys (repeat the flag, or separate with commas)"
    ),
    status: str | None = typer.Option(
        None, "--status", help="Only tasks in this status: completed or failed (default: both)"
    ),
) -> None:
    """Make a new image for completed or failed tasks (same content): back to pending, dispatched.

    The previous image stays (and is exported) until the new one is stored; if the new call fails,
    the old image is still there and the task shows the failure.
    """
    chosen = None
    if status is not None:
        if status.lower() not in (TaskStatus.COMPLETED.value, TaskStatus.FAILED.value):
            raise fail(f"--status {status!r}: choose completed or failed", 2)
        chosen = TaskStatus(status.lower())
    wanted = [k.strip() for item in keys for k in item.split(",") if k.strip()] if keys else None
    result = _act(lambda rt: operations.regenerate_batch(rt, batch, keys=wanted, status=chosen))
    console.print(f"{plural(result.moved)} of batch [bold]{batch}[/bold] back to pending for a new image.")
    if isinstance(result, operations.RegenerateResult) and result.not_moved:
        shown = ", ".join(result.not_moved[:20]) + (" …" if len(result.not_moved) > 20 else "")
        console.print(
            f"Not moved ({len(result.not_moved)}): {shown} — unknown keys, or pending/processing/cancelled."
        )
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


def priority_command(
    batch: str = typer.Argument(..., help="Batch name"),
    priority: int = typer.Argument(..., help="Dispatch priority: higher first (submit default 0)"),
    weight: int | None = typer.Option(
        None, "--weight", help="Share of the window among batches of equal priority, 1-100"
    ),
) -> None:
    """Change a batch's dispatch priority; its tasks not yet dispatched follow it at once."""
    result = _act(lambda rt: operations.set_priority(rt, batch, priority, weight=weight))
    console.print(
        f"Batch [bold]{batch}[/bold] now has priority {priority}"
        + (f" and weight {weight}" if weight is not None else "")
        + f"; {plural(result.dispatched)} dispatched."
    )
    if result.not_dispatched_because:
        console.print(result.not_dispatched_because)
