"""Bounded load test of ``transferlab serve`` on 127.0.0.1 only: N requests from C concurrent clients.

Starts the server itself on a free loopback port (or uses ``--url``, which must be a loopback
address), uploads real photos of the run's test split round-robin, and reports p50/p95/p99
latency, throughput and status counts. Bounded in count (``--requests``) and time
(``--max-seconds``). Exits 1 on any 5xx or transport error. Prints a Markdown table, writes JSON.

Example:
    python benchmarks/load_test.py --model runs/flowers --runtime onnx --requests 2000 --clients 8 \\
        --out benchmarks/results/load_test.json
"""

from __future__ import annotations

import argparse
import asyncio
import ipaddress
import json
import os
import platform
import socket
import subprocess
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Any
from urllib.parse import urlparse

import httpx
import numpy as np

from transferlab.data import atomic_write_text, load_split, open_dataset


def _loopback_only(url: str) -> None:
    host = urlparse(url).hostname or ""
    try:
        ok = ipaddress.ip_address(host).is_loopback
    except ValueError:
        ok = host == "localhost"
    if not ok:
        raise SystemExit(f"error: the load test only targets loopback addresses (127.0.0.0/8, ::1), not {host!r}")


def _photos(run: Path, n: int) -> list[tuple[str, bytes]]:
    source = open_dataset(json.loads((run / "config.json").read_text())["data"], validate=False)
    test = load_split(run, source).test[:n]
    return [(Path(source.identity(int(i))).name, Path(source.identity(int(i))).read_bytes()) for i in test]


def _start_server(run: Path, runtime: str, threads: int | None, log: Path) -> tuple[str, subprocess.Popen]:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-m", "transferlab", "serve", str(run), "--host", "127.0.0.1", "--port", str(port),
           "--runtime", runtime, "--max-concurrency", "256"]
    if threads:
        cmd += ["--threads", str(threads)]
    proc = subprocess.Popen(cmd, stdout=log.open("wb"), stderr=subprocess.STDOUT)
    url = f"http://127.0.0.1:{port}"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise SystemExit(f"error: server exited: {log.read_text()[-1000:]}")
        try:
            if httpx.get(url + "/health", timeout=2).status_code == 200:
                return url, proc
        except httpx.TransportError:
            time.sleep(0.3)
    proc.kill()
    raise SystemExit("error: server did not start within 120 s")


async def _run(url: str, photos: list[tuple[str, bytes]], *, requests: int, clients: int,
               max_seconds: float) -> dict[str, Any]:
    latencies: list[float] = []
    statuses: Counter[str] = Counter()
    next_i = 0
    stop_at = time.monotonic() + max_seconds

    async def client(c: httpx.AsyncClient) -> None:
        nonlocal next_i
        while next_i < requests and time.monotonic() < stop_at:
            i = next_i
            next_i += 1
            name, data = photos[i % len(photos)]
            t0 = time.perf_counter()
            try:
                r = await c.post(url + "/predict", files={"file": (name, data, "image/jpeg")}, params={"top": 3})
                statuses[str(r.status_code)] += 1
            except httpx.HTTPError as exc:
                statuses[f"error:{type(exc).__name__}"] += 1
            latencies.append(time.perf_counter() - t0)

    limits = httpx.Limits(max_connections=clients, max_keepalive_connections=clients)
    t0 = time.perf_counter()
    async with httpx.AsyncClient(timeout=60, limits=limits) as c:
        await asyncio.gather(*(client(c) for _ in range(clients)))
    wall = time.perf_counter() - t0
    lat = np.array(latencies) * 1000
    return {"requests_sent": len(latencies), "wall_s": round(wall, 2),
            "throughput_req_s": round(len(latencies) / wall, 2),
            "latency_ms": {f"p{q}": round(float(np.percentile(lat, q)), 1) for q in (50, 95, 99)}
            | {"max": round(float(lat.max()), 1)},
            "statuses": dict(statuses),
            "n_5xx": sum(v for k, v in statuses.items() if k.startswith("5")),
            "n_transport_errors": sum(v for k, v in statuses.items() if k.startswith("error"))}


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", required=True, metavar="RUN_DIR", help="trained (and, for onnx, exported) run")
    ap.add_argument("--runtime", choices=("torch", "onnx"), default="onnx")
    ap.add_argument("--threads", type=int, default=None, help="server inference threads")
    ap.add_argument("--url", help="an already running server on a loopback address (default: start one)")
    ap.add_argument("--requests", type=int, default=2000)
    ap.add_argument("--clients", type=int, default=8)
    ap.add_argument("--photos", type=int, default=16, help="distinct test photos to upload round-robin")
    ap.add_argument("--max-seconds", type=float, default=900.0, help="stop sending after this long")
    ap.add_argument("--out", default="benchmarks/results/load_test.json")
    args = ap.parse_args(argv)
    if not (1 <= args.requests <= 100_000 and 1 <= args.clients <= 64):
        raise SystemExit("error: --requests must be 1..100000 and --clients 1..64")
    run = Path(args.model)
    photos = _photos(run, args.photos)
    proc = None
    if args.url:
        _loopback_only(args.url)
        url = args.url.rstrip("/")
    else:
        log = Path(tempfile.gettempdir()) / f"transferlab-load-test-{os.getpid()}.log"
        url, proc = _start_server(run, args.runtime, args.threads, log)
        print(f"server log: {log}")
    try:
        load_start = os.getloadavg()[0]
        res = asyncio.run(_run(url, photos, requests=args.requests, clients=args.clients,
                               max_seconds=args.max_seconds))
        health = httpx.get(url + "/health", timeout=10).json()
    finally:
        if proc is not None:
            proc.terminate()
            proc.wait(timeout=30)
    model = json.loads((run / "model.json").read_text())
    res.update({
        "clients": args.clients, "requests_planned": args.requests, "runtime": args.runtime,
        "server_threads": args.threads, "backbone": model["backbone"], "photos": len(photos),
        "mean_upload_bytes": int(np.mean([len(d) for _, d in photos])), "server_counts": health["requests"],
        "machine": {"cpus": os.cpu_count(), "platform": platform.platform(),
                    "load_avg_1m_at_start": load_start, "load_avg_1m_at_end": os.getloadavg()[0]},
    })
    atomic_write_text(args.out, json.dumps(res, indent=2))
    lat = res["latency_ms"]
    print(f"| runtime | clients | requests | p50 (ms) | p95 (ms) | p99 (ms) | throughput (req/s) | 5xx | errors |\n"
          f"|---|---:|---:|---:|---:|---:|---:|---:|---:|\n"
          f"| {args.runtime} | {args.clients} | {res['requests_sent']} | {lat['p50']:.0f} | {lat['p95']:.0f} | "
          f"{lat['p99']:.0f} | {res['throughput_req_s']:.1f} | {res['n_5xx']} | {res['n_transport_errors']} |")
    print(f"statuses {res['statuses']}; load avg {load_start:.1f} -> {res['machine']['load_avg_1m_at_end']:.1f}; "
          f"written: {args.out}")
    return 1 if res["n_5xx"] or res["n_transport_errors"] else 0


if __name__ == "__main__":
    raise SystemExit(main())
