"""``nanobatch simulator``: run the fake Gemini / OpenAI upstream in the foreground.

Users rehearse a backfill against it before spending money (point the provider base URL at the
printed URL), and benchmarks start it with tight quotas and faults. This module only turns flags
into a :class:`SimulatorConfig` and prints one line; the simulator itself reads no environment.
The API key (flag or ``NANOBATCH_SIM_API_KEY``) is a fake key clients must present -- it is never
printed.
"""

from __future__ import annotations

from typing import Annotated

import typer

from nanobatch.simulator.config import SimulatorConfig
from nanobatch.simulator.server import RunningSimulator, is_loopback, serve


def build_config(
    *,
    latency: str = "8-20",
    time_scale: float = 1.0,
    rpm: int | None = None,
    rpd: int | None = None,
    tpm: int | None = None,
    concurrency: int | None = None,
    fail_rate: str = "",
    timeout_rate: float = 0.0,
    drop_rate: float = 0.0,
    block_words: str = "",
    no_image_rate: float = 0.0,
    api_key: str | None = None,
    thumbnails: bool = False,
    seed: int | None = None,
    truncated_rate: float = 0.0,
    oversized_rate: float = 0.0,
    oversize_bytes: int = SimulatorConfig.oversize_bytes,
    trickle_rate: float = 0.0,
    trickle_interval: float = SimulatorConfig.trickle_interval,
    trickle_limit: float = SimulatorConfig.trickle_limit,
    echo_key_rate: float = 0.0,
    echo_key_status: int = SimulatorConfig.echo_key_status,
    larger_image_rate: float = 0.0,
    larger_image_factor: float = SimulatorConfig.larger_image_factor,
    flex_latency_factor: float = SimulatorConfig.flex_latency_factor,
    flex_fail_rate: str = "",
    priority_latency_factor: float = SimulatorConfig.priority_latency_factor,
    batch_turnaround: float = SimulatorConfig.batch_turnaround,
    batch_request_fail_rate: float = 0.0,
    batch_fail_rate: float = 0.0,
    batch_expire_rate: float = 0.0,
    batch_inline_limit: int = SimulatorConfig.batch_inline_limit_bytes,
    batch_dir: str | None = None,
) -> SimulatorConfig:
    """Flags (as typed) -> a validated config; raises ``ValueError`` with a readable message."""
    return SimulatorConfig(
        latency=SimulatorConfig.parse_latency(latency),
        time_scale=time_scale,
        rpm=rpm,
        rpd=rpd,
        tpm=tpm,
        concurrency=concurrency,
        fail_rates=SimulatorConfig.parse_fail_rates(fail_rate),
        timeout_rate=timeout_rate,
        drop_rate=drop_rate,
        no_image_rate=no_image_rate,
        block_words=tuple(word for word in block_words.split(",") if word.strip()),
        api_key=api_key or None,
        thumbnails=thumbnails,
        seed=seed,
        truncated_rate=truncated_rate,
        oversized_rate=oversized_rate,
        oversize_bytes=oversize_bytes,
        trickle_rate=trickle_rate,
        trickle_interval=trickle_interval,
        trickle_limit=trickle_limit,
        echo_key_rate=echo_key_rate,
        echo_key_status=echo_key_status,
        larger_image_rate=larger_image_rate,
        larger_image_factor=larger_image_factor,
        flex_latency_factor=flex_latency_factor,
        flex_fail_rates=SimulatorConfig.parse_fail_rates(flex_fail_rate),
        priority_latency_factor=priority_latency_factor,
        batch_turnaround=batch_turnaround,
        batch_request_fail_rate=batch_request_fail_rate,
        batch_fail_rate=batch_fail_rate,
        batch_expire_rate=batch_expire_rate,
        batch_inline_limit_bytes=batch_inline_limit,
        batch_dir=batch_dir or None,
    )


def ready_line(simulator: RunningSimulator) -> str:
    return f"nanobatch simulator listening on {simulator.url} ({simulator.config.describe()})"


def simulator_command(
    host: Annotated[str, typer.Option(help="Interface to bind (loopback unless you mean it).")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on (0 picks a free one).")] = 8089,
    latency: Annotated[str, typer.Option(help="Seconds per request: MIN-MAX or one value.")] = "8-20",
    time_scale: Annotated[float, typer.Option(help="Multiply latency by this (0.01 = 100x faster).")] = 1.0,
    rpm: Annotated[int | None, typer.Option(help="Requests per minute per model (sliding 60 s).")] = None,
    rpd: Annotated[int | None, typer.Option(help="Requests per day per model (resets midnight PT).")] = None,
    tpm: Annotated[int | None, typer.Option(help="Tokens per minute per model (prompt + output).")] = None,
    concurrency: Annotated[int | None, typer.Option(help="Requests in flight per model.")] = None,
    fail_rate: Annotated[str, typer.Option(help="Injected errors, e.g. 500=0.01,503=0.05,504=0.01.")] = "",
    timeout_rate: Annotated[float, typer.Option(help="Share of requests held unanswered.")] = 0.0,
    drop_rate: Annotated[float, typer.Option(help="Share of responses cut mid-body.")] = 0.0,
    block_words: Annotated[str, typer.Option(help="Comma-separated words that trigger safety blocks.")] = "",
    no_image_rate: Annotated[float, typer.Option(help="Share of 200s with NO_IMAGE and no image.")] = 0.0,
    api_key: Annotated[
        str | None,
        typer.Option(
            envvar="NANOBATCH_SIM_API_KEY",
            show_default=False,
            help="Fake key clients must present (never printed).",
        ),
    ] = None,
    thumbnails: Annotated[
        bool, typer.Option("--thumbnails", help="Serve small images; real size in X-Sim-Image-Width/-Height.")
    ] = False,
    seed: Annotated[int | None, typer.Option(help="Seed for latency and faults (reproducible runs).")] = None,
    truncated_rate: Annotated[float, typer.Option(help="Share of 200s carrying half an image file.")] = 0.0,
    oversized_rate: Annotated[float, typer.Option(help="Share of 200s padded to --oversize-bytes.")] = 0.0,
    oversize_bytes: Annotated[
        int, typer.Option(help="Body size of an oversized 200 (streamed).")
    ] = SimulatorConfig.oversize_bytes,
    trickle_rate: Annotated[float, typer.Option(help="Share of 200s sent one byte at a time.")] = 0.0,
    trickle_interval: Annotated[
        float, typer.Option(help="Seconds between trickled bytes.")
    ] = SimulatorConfig.trickle_interval,
    trickle_limit: Annotated[
        float, typer.Option(help="Seconds a trickle lasts before the rest is sent at once.")
    ] = SimulatorConfig.trickle_limit,
    echo_key_rate: Annotated[
        float, typer.Option(help="Share of requests answered by an error repeating the caller's API key.")
    ] = 0.0,
    echo_key_status: Annotated[
        int, typer.Option(help="Status of an echo-key error: 429 or 400.")
    ] = SimulatorConfig.echo_key_status,
    larger_image_rate: Annotated[
        float, typer.Option(help="Share of 200s with a larger image than asked.")
    ] = 0.0,
    larger_image_factor: Annotated[
        float, typer.Option(help="How much larger, per side (above 1, at most 2).")
    ] = SimulatorConfig.larger_image_factor,
    flex_latency_factor: Annotated[
        float, typer.Option(help="serviceTier flex: multiply latency by this.")
    ] = SimulatorConfig.flex_latency_factor,
    flex_fail_rate: Annotated[
        str, typer.Option(help="serviceTier flex: extra capacity errors, e.g. 503=0.1,429=0.05.")
    ] = "",
    priority_latency_factor: Annotated[
        float, typer.Option(help="serviceTier priority: multiply latency by this.")
    ] = SimulatorConfig.priority_latency_factor,
    batch_turnaround: Annotated[
        float, typer.Option(help="Batch API: seconds from create to done (times --time-scale).")
    ] = SimulatorConfig.batch_turnaround,
    batch_request_fail_rate: Annotated[
        float, typer.Option(help="Batch API: share of requests in a job answered by an error.")
    ] = 0.0,
    batch_fail_rate: Annotated[float, typer.Option(help="Batch API: share of jobs that end FAILED.")] = 0.0,
    batch_expire_rate: Annotated[
        float, typer.Option(help="Batch API: share of jobs that end EXPIRED.")
    ] = 0.0,
    batch_inline_limit: Annotated[
        int, typer.Option(help="Batch API: largest inline create body, in bytes.")
    ] = SimulatorConfig.batch_inline_limit_bytes,
    batch_dir: Annotated[
        str | None, typer.Option(help="Batch API: folder for uploaded and result files (default: temp).")
    ] = None,
) -> None:
    """Run a fake Gemini / OpenAI image API on this machine (Ctrl-C stops it)."""
    try:
        config = build_config(
            latency=latency,
            time_scale=time_scale,
            rpm=rpm,
            rpd=rpd,
            tpm=tpm,
            concurrency=concurrency,
            fail_rate=fail_rate,
            timeout_rate=timeout_rate,
            drop_rate=drop_rate,
            block_words=block_words,
            no_image_rate=no_image_rate,
            api_key=api_key,
            thumbnails=thumbnails,
            seed=seed,
            truncated_rate=truncated_rate,
            oversized_rate=oversized_rate,
            oversize_bytes=oversize_bytes,
            trickle_rate=trickle_rate,
            trickle_interval=trickle_interval,
            trickle_limit=trickle_limit,
            echo_key_rate=echo_key_rate,
            echo_key_status=echo_key_status,
            larger_image_rate=larger_image_rate,
            larger_image_factor=larger_image_factor,
            flex_latency_factor=flex_latency_factor,
            flex_fail_rate=flex_fail_rate,
            priority_latency_factor=priority_latency_factor,
            batch_turnaround=batch_turnaround,
            batch_request_fail_rate=batch_request_fail_rate,
            batch_fail_rate=batch_fail_rate,
            batch_expire_rate=batch_expire_rate,
            batch_inline_limit=batch_inline_limit,
            batch_dir=batch_dir,
        )
    except ValueError as exc:
        raise typer.BadParameter(str(exc)) from None
    remote = not is_loopback(host)
    if remote:
        typer.echo(f"warning: listening on {host}, reachable beyond this machine (plain HTTP)", err=True)
    try:
        serve(config, host, port, on_ready=lambda sim: typer.echo(ready_line(sim)), allow_remote=remote)
    except OSError as exc:
        typer.echo(f"error: cannot listen on {host}:{port}: {exc.strerror or exc}", err=True)
        raise typer.Exit(1) from None
