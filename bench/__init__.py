"""The benchmarks: one command each, run from the repository root as ``python -m bench.<name>``
(for example ``python -m bench.compare --scenario night``), so the scripts import each other as
``bench.*`` and nothing edits ``sys.path``. Worker subprocesses still import the benchmark Celery
apps (``baseline_app``, ``noop_app``, ``whatif_app``) by module name, with this folder on their
``PYTHONPATH`` (``harness.SUBPROCESS_PYTHONPATH``).
"""
