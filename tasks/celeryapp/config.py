"""Celery's configuration module for ``tasks.app``, imported by Celery the first time it needs it.

It holds the settings derived from the environment (``NANOBATCH_*``); see :func:`celery_config`.
"""

from nanobatch.tasks.celeryapp.app import celery_config
from nanobatch.tasks.settings import Settings

globals().update(celery_config(Settings()))
