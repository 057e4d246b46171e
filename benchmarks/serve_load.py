"""Load test of ``xmr serve`` on loopback: the old path (unbatched, MiniLM on torch), unbatched on
the default text runtime, and the micro-batched server on each text runtime. For each path a fixed
number of concurrent clients send text queries for a fixed time, then everything stops. Reports
requests/s, latency p50/p99 and the error count of each path, the throughput of the default
(batched, default runtime) path over the old one, the batched/unbatched ratio (both on the default
text runtime) and the onnx/torch one (both batched). Each path is a separate ``xmr serve`` process on 127.0.0.1
(a free port): ``--batch-window-ms 0`` for the unbatched one, ``--batch-window-ms`` (default 5) for
the batched ones, each with its ``--text-runtime``. Writes results/serve-load.json.

    .venv/bin/xmr index build pretrained --data flickr8k --split test --out runs/f8k-test-index
    .venv/bin/python benchmarks/serve_load.py runs/f8k-test-index [--clients 8 --seconds 10 --threads 2]
"""
from __future__ import annotations

import argparse
import json
import socket
import subprocess
import sys
import threading
import time
from pathlib import Path

import httpx
import numpy as np

from xmr.machine import machine_info
from xmr.search.batching import WINDOW_MS
from xmr.search.engine import TEXT_RUNTIME

QUERIES = ["a dog runs on the beach", "two children play in the snow", "a man rides a bicycle",
           "a woman in a red dress", "people walk down a city street", "a black dog jumps over a log",
           "a boy swims in a pool", "a climber on a rock face"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def load(index: str, window_ms: float, text_runtime: str, threads: int, clients: int, seconds: float, k: int,
         cache: str) -> dict:
    """Start ``xmr serve INDEX --batch-window-ms window_ms --text-runtime text_runtime``, load it,
    stop it; the measurements."""
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "xmr", "serve", index, "--port", str(port),
                               "--batch-window-ms", str(window_ms), "--text-runtime", text_runtime,
                               "--threads", str(threads), "--cache", cache],
                              stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 120
        while True:  # wait for the model to load
            try:
                if httpx.get(base + "/api/health", timeout=2).status_code == 200:
                    break
            except httpx.HTTPError:
                pass
            if time.monotonic() > deadline or server.poll() is not None:
                raise SystemExit("server did not come up")
            time.sleep(0.5)
        latencies: list[float] = []
        errors: list[str] = []
        lock = threading.Lock()
        stop_at = time.monotonic() + seconds

        def client(i: int) -> None:
            with httpx.Client(base_url=base, timeout=30) as c:
                n = i
                while time.monotonic() < stop_at:
                    t0 = time.perf_counter()
                    try:
                        r = c.get("/api/search", params={"q": QUERIES[n % len(QUERIES)], "k": k})
                        ok = r.status_code == 200 and len(r.json()["results"]) == k
                        why = None if ok else f"HTTP {r.status_code}"
                    except httpx.HTTPError as e:
                        why = repr(e)
                    with lock:
                        latencies.append(time.perf_counter() - t0)
                        if why:
                            errors.append(why)
                    n += 1

        t0 = time.perf_counter()
        workers = [threading.Thread(target=client, args=(i,)) for i in range(clients)]
        for t in workers:
            t.start()
        for t in workers:
            t.join()
        wall = time.perf_counter() - t0
    finally:
        server.terminate()
        server.wait(30)
    lat = np.array(latencies) * 1e3
    return {"batch_window_ms": window_ms, "text_runtime": text_runtime, "server_threads": threads, "clients": clients, "seconds": wall,
            "requests": len(lat), "requests_per_s": len(lat) / wall, "p50_ms": float(np.percentile(lat, 50)),
            "p99_ms": float(np.percentile(lat, 99)), "errors": len(errors), "first_errors": errors[:5]}


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("index")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=10.0, help="load time per path")
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--threads", type=int, default=2, help="the server's torch CPU threads")
    p.add_argument("--batch-window-ms", type=float, default=WINDOW_MS, help="the batched path's window")
    p.add_argument("--cache", default="runs/cache", help="the servers' cache (their ONNX exports)")
    p.add_argument("--out", default="results/serve-load.json")
    args = p.parse_args()
    results = {}
    paths = (("unbatched-torch", 0.0, "torch"), ("unbatched", 0.0, TEXT_RUNTIME),
             ("batched-torch", args.batch_window_ms, "torch"), ("batched", args.batch_window_ms, TEXT_RUNTIME))
    for name, window, runtime in paths:
        results[name] = load(args.index, window, runtime, args.threads, args.clients, args.seconds, args.k, args.cache)
        print(name, json.dumps(results[name]))
    rate = {name: r["requests_per_s"] for name, r in results.items()}
    speedups = {"batched_over_old_path": rate["batched"] / rate["unbatched-torch"],
                "batched_over_unbatched": rate["batched"] / rate["unbatched"],
                f"{TEXT_RUNTIME}_over_torch_batched": rate["batched"] / rate["batched-torch"]}
    print(json.dumps(speedups))
    command = (f"python benchmarks/serve_load.py {args.index} --clients {args.clients} --seconds {args.seconds:g} "
               f"--threads {args.threads} --batch-window-ms {args.batch_window_ms:g}")
    Path(args.out).write_text(json.dumps({"command": command, "machine": machine_info(),
                                          "meta": json.loads((Path(args.index) / "meta.json").read_text()),
                                          "results": results, "speedups": speedups}, indent=1))


if __name__ == "__main__":
    main()
