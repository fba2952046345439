"""``nanobatch metrics``: a Prometheus exporter for batches, queues, the limiter and worker telemetry.

Run one per cluster (or more: it keeps no state, every scrape reads the database and Redis).
"""

from __future__ import annotations

import typer

from nanobatch.cli.context import console, err_console, load_settings, setup_logging
from nanobatch.tasks.metrics import MetricsSources, serve_metrics


def metrics_command(
    port: int = typer.Option(9808, "--port", help="TCP port of the /metrics endpoint"),
    address: str = typer.Option("127.0.0.1", "--address", help="Interface to listen on (0.0.0.0: all)"),
) -> None:
    """Serve Prometheus metrics at http://ADDRESS:PORT/metrics (values read fresh on every scrape)."""
    settings = load_settings()
    setup_logging("warning")
    if settings.embedded:
        err_console.print(
            "no NANOBATCH_REDIS_URL: only database metrics are exported (queues, limiter and worker "
            "telemetry live inside the embedded worker's process)"
        )
    sources = MetricsSources.from_settings(settings)
    server, thread = serve_metrics(sources, address=address, port=port)
    console.print(f"serving metrics on http://{address}:{port}/metrics")
    try:
        thread.join()
    except KeyboardInterrupt:
        pass
    finally:
        server.shutdown()
        sources.close()
