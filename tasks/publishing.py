"""Publishing a recorded result: the second half of the commit protocol (``workers/storage.py``).

A worker records its result on its claim's staged file (the row's conditional UPDATE decides which
claim won), then gives that file its key's name: a copy to ``<batch>/<key>.<ext>``, the row pointed
there (conditional on still naming the staged file), the staging folder removed. The row always
names an existing file whose sha256 it records, whatever happens between the steps.

Between the record and the publish a worker may die (SIGKILL, a lost host) or the store may fail;
the row then keeps naming its staged file, which export, report and ``--reuse`` can read but which
is not where the shop looks. :func:`publish_stragglers` (a sweeper step) finishes the job for
every such row recorded more than :data:`PUBLISH_GRACE_SECONDS` ago. Every step is idempotent, so
a sweeper and a slow worker publishing the same row at once both end with the same bytes under the
key's name and one of them pointing the row there.
"""

from __future__ import annotations

import logging
from collections.abc import Callable
from datetime import datetime, timedelta

from sqlalchemy import Connection

from nanobatch.models import transitions
from nanobatch.models.transitions import StagedResult
from nanobatch.tasks.runtime import Runtime
from nanobatch.workers import storage
from nanobatch.workers.storage import StorageError

log = logging.getLogger("nanobatch.sweeper")

#: A row recorded on its staged file this long ago is not being published by its worker any more
#: (the worker's own publish takes milliseconds, or a few seconds of store retries).
PUBLISH_GRACE_SECONDS = 30.0
#: At most this many rows per sweep pass (normally there are none).
PUBLISH_LIMIT = 500

#: Runs the row's one-statement write (the worker passes its retrying runner; the sweeper runs it
#: once: a database blip only defers the publish to its next pass).
WriteRunner = Callable[[Runtime, Callable[[Connection], bool]], bool]


def _write_once(rt: Runtime, write: Callable[[Connection], bool]) -> bool:
    with rt.db.autocommit() as connection:
        return write(connection)


def publish_recorded(rt: Runtime, result: StagedResult, *, run_write: WriteRunner = _write_once) -> bool:
    """Copy the recorded staged file to its key's name, point the row there, clear the staging folder.

    ``True`` when this call moved the row; ``False`` when the row no longer names that staged file
    (someone else published it first). :class:`StorageError` when the store cannot do it now.
    """
    store = rt.store
    staged_key = store.key_of(result.result_uri)
    if staged_key is None:
        raise StorageError(f"{result.result_uri} is not in the configured store {store.location}")
    final = storage.publish_key(store, result.batch_name, result.key, staged_key, result.mime_type)
    moved = run_write(rt, lambda c: transitions.move_result(c, result.id, result.result_uri, final))
    if moved:
        storage.clear_staging(store, result.batch_name, result.id)
    return moved


def publish_stragglers(
    rt: Runtime, now: datetime, *, grace: float = PUBLISH_GRACE_SECONDS, limit: int = PUBLISH_LIMIT
) -> int:
    """Publish the completed rows still naming a staged file recorded over ``grace`` seconds ago.

    Returns how many rows this pass moved. One row's store error is logged and skipped (the next
    pass tries it again); it never stops the sweep.
    """
    with rt.db.session() as session:
        stragglers = transitions.staged_results(
            session, finished_before=now - timedelta(seconds=grace), limit=limit
        )
    moved = 0
    for result in stragglers:
        try:
            if publish_recorded(rt, result):
                moved += 1
        except StorageError as exc:
            log.warning("sweep: task %s: could not publish its recorded result yet: %s", result.id, exc)
    if moved:
        log.warning(
            "sweep: published %d recorded result(s) left on their staged file (a worker stopped "
            "between recording and publishing)",
            moved,
        )
    return moved
