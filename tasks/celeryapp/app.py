"""The Celery application, configured in one place, and why each setting is what it is.

See docs/architecture.md, "Celery configuration".

- ``task_acks_late`` + ``task_reject_on_worker_lost`` + prefetch 1: a killed worker's message is
  redelivered instead of lost; the database claim makes a redelivery harmless.
- ``visibility_timeout`` 1 h: longer than any call. Killed work is recovered within seconds by the
  sweeper every worker runs (heartbeats, database leases), not by Redis redelivery.
- ``task_ignore_result``: results live in the database and on disk, never in a result backend.
- threads pool: the generate task waits on HTTP; prefork would spend a process per wait.
- No Celery ``rate_limit``: it is per worker instance. The global limiter in Redis is used instead.
- Recovery needs no beat: every worker process sweeps in a thread of its own (``sweeper_thread``).
  Beat only sends the nightly inbox; the sweep task stays for a manual ``celery call``, on its own
  queue so it is never stuck behind a 100k-message backlog.
- Events on: Flower shows task states; task arguments are a task id only, never a prompt or key.
"""

from __future__ import annotations

from celery import Celery

from nanobatch.tasks.settings import Settings

GENERATE_TASK = "nanobatch.generate"
SWEEP_TASK = "nanobatch.sweep"
INBOX_TASK = "nanobatch.inbox"


def control_queue(settings: Settings) -> str:
    return f"{settings.queue}.control"


def configure_app(app: Celery, settings: Settings) -> Celery:
    """Apply the nanobatch configuration for ``settings`` to ``app`` (also used to reconfigure).

    Reconfiguring to another broker drops the connection pools, the way Celery itself does after
    a fork, so the next publish connects to the new broker instead of the old one.
    """
    if app.configured and app.conf.broker_url != settings.broker_url:
        app._after_fork()
    app.conf.update(celery_config(settings))
    return app


def celery_config(settings: Settings) -> dict[str, object]:
    """The Celery settings (lowercase names) for nanobatch ``settings``."""
    return dict(
        broker_url=settings.broker_url,
        broker_connection_retry_on_startup=True,
        broker_connection_max_retries=settings.broker_connection_max_retries,
        broker_transport_options={"visibility_timeout": 3600},
        task_acks_late=True,
        task_reject_on_worker_lost=True,
        task_acks_on_failure=True,  # a crashed task is recovered from the DB, not by redelivery
        task_acks_on_timeout=True,
        worker_prefetch_multiplier=1,
        task_ignore_result=True,
        task_store_errors_even_if_ignored=False,
        task_serializer="json",
        accept_content=["json"],
        task_default_queue=settings.queue,
        task_routes={
            SWEEP_TASK: {"queue": control_queue(settings)},
            INBOX_TASK: {"queue": control_queue(settings)},
        },
        worker_pool="threads",
        worker_concurrency=settings.concurrency,
        worker_send_task_events=True,
        task_send_sent_event=False,  # ids are published in bulk; Flower sees tasks from receipt on
        worker_hijack_root_logger=False,
        timezone=settings.timezone,
        beat_schedule=beat_schedule(settings),
    )


def beat_schedule(settings: Settings) -> dict[str, dict[str, object]]:
    from celery.schedules import crontab

    # No sweep here: every worker runs it (tasks/celeryapp/sweeper_thread.py), so recovery never
    # depends on the one beat process being up.
    schedule: dict[str, dict[str, object]] = {}
    if settings.inbox_dir:
        hour, minute = settings.inbox_time.split(":")
        schedule["inbox"] = {"task": INBOX_TASK, "schedule": crontab(hour=int(hour), minute=int(minute))}
    return schedule


def create_app(settings: Settings | None = None) -> Celery:
    """The app; without explicit ``settings`` its configuration is read from the environment lazily.

    Lazily (``config_from_object`` with a module name, imported on first use) so that importing
    ``tasks`` never fails on a bad ``NANOBATCH_*`` value: the CLI validates settings first and
    reports them as a clear error instead of an import-time traceback.
    """
    app = Celery("nanobatch", include=["nanobatch.tasks.celeryapp.definitions"])
    if settings is not None:
        return configure_app(app, settings)
    app.config_from_object("nanobatch.tasks.celeryapp.config")
    return app
