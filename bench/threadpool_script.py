"""The "tutorial" way to bulk-generate images: one process, a thread pool, spacing and retries.

    python bench/threadpool_script.py --url http://127.0.0.1:8089 --tasks 1000 --out DIR --times FILE

What common tutorials and gists do for a few hundred or thousand Gemini images, written plainly:
``ThreadPoolExecutor(max_workers=10)``, a fixed pause between submissions (0.5 s for a 120 rpm key),
up to 5 retries with exponential backoff (1, 2, 4, 8, 16 s) on 429/5xx/transport errors, httpx, and
each image written to a file. Nothing survives a crash; nothing reads ``retryDelay``. Used by
bench/compare.py as system (a). Completion and failure times go to ``--times`` as JSON.

``--models A,B`` spreads the tasks over several models in turn (the night scenario's two pools);
``--deadline S`` ends the script S seconds after its start, as the end of the night does: what is not
done or failed by then was held in memory only, and is reported as ``unfinished``.
"""

from __future__ import annotations

import argparse
import base64
import json
import os
import time
from concurrent.futures import ThreadPoolExecutor, wait
from pathlib import Path

import httpx

MODEL = "gemini-2.5-flash-image"


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--tasks", type=int, default=1000)
    parser.add_argument("--workers", type=int, default=10)
    parser.add_argument("--spacing", type=float, default=0.5, help="seconds between submissions")
    parser.add_argument("--retries", type=int, default=5)
    parser.add_argument("--backoff", type=float, default=1.0, help="first backoff, doubled each retry")
    parser.add_argument("--out", type=Path, required=True)
    parser.add_argument("--times", type=Path, required=True)
    parser.add_argument("--models", default=MODEL, help="comma list; task i uses model i mod n")
    parser.add_argument("--deadline", type=float, default=0.0, help="seconds; 0 = run to the end")
    args = parser.parse_args()
    args.out.mkdir(parents=True, exist_ok=True)
    models = [m.strip() for m in args.models.split(",") if m.strip()]
    urls = [f"{args.url.rstrip('/')}/v1beta/models/{model}:generateContent" for model in models]
    client = httpx.Client(
        timeout=httpx.Timeout(120.0, connect=10.0), limits=httpx.Limits(max_connections=args.workers * 2)
    )
    done: list[float] = []
    failed: list[float] = []

    def generate(i: int) -> None:
        body = {
            "contents": [{"role": "user", "parts": [{"text": f"Studio product photo, item {i}"}]}],
            "generationConfig": {"responseModalities": ["IMAGE"], "imageConfig": {"aspectRatio": "1:1"}},
        }
        for attempt in range(args.retries + 1):
            try:
                response = client.post(urls[i % len(urls)], json=body)
                if response.status_code == 200:
                    parts = response.json()["candidates"][0]["content"]["parts"]
                    data = next(p["inlineData"]["data"] for p in parts if "inlineData" in p)
                    (args.out / f"SKU-{i:07d}.png").write_bytes(base64.b64decode(data))
                    done.append(time.time())
                    return
                if response.status_code != 429 and response.status_code < 500:
                    break  # 4xx: give up
            except httpx.TransportError:
                pass
            if attempt < args.retries:
                time.sleep(args.backoff * 2**attempt)
        failed.append(time.time())

    started = time.time()
    end = started + args.deadline if args.deadline > 0 else float("inf")
    pool = ThreadPoolExecutor(max_workers=args.workers)
    futures = []
    for i in range(args.tasks):
        if time.time() >= end:
            break
        futures.append(pool.submit(generate, i))
        time.sleep(args.spacing)
    wait(futures, timeout=None if end == float("inf") else max(0.0, end - time.time()))
    record = {"started": started, "done": list(done), "failed": list(failed)}
    record["unfinished"] = args.tasks - len(record["done"]) - len(record["failed"])
    args.times.write_text(json.dumps(record))
    if record["unfinished"]:
        os._exit(0)  # the night is over: threads still sleeping in a backoff die with the process
    pool.shutdown()
    client.close()


if __name__ == "__main__":
    main()
