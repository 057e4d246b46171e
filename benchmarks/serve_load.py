"""Load test of ``xmr serve`` on loopback: a fixed number of concurrent clients send text queries
for a fixed time, then everything stops. Reports requests/s, latency p50/p99 and the error count.
The server is a separate ``xmr serve`` process on 127.0.0.1 (a free port). Writes
results/serve-load.json.

    .venv/bin/xmr index build runs/vsepp-f8k-sweep/bert --data flickr8k --split test --out runs/f8k-test-index
    .venv/bin/python benchmarks/serve_load.py runs/f8k-test-index [--clients 8 --seconds 20]
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

QUERIES = ["a dog runs on the beach", "two children play in the snow", "a man rides a bicycle",
           "a woman in a red dress", "people walk down a city street", "a black dog jumps over a log",
           "a boy swims in a pool", "a climber on a rock face"]


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("index")
    p.add_argument("--clients", type=int, default=8)
    p.add_argument("--seconds", type=float, default=20.0)
    p.add_argument("--k", type=int, default=10)
    p.add_argument("--out", default="results/serve-load.json")
    args = p.parse_args()
    port = free_port()
    server = subprocess.Popen([sys.executable, "-m", "xmr", "serve", args.index, "--port", str(port)],
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
        stop_at = time.monotonic() + args.seconds

        def client(i: int) -> None:
            with httpx.Client(base_url=base, timeout=30) as c:
                n = i
                while time.monotonic() < stop_at:
                    t0 = time.perf_counter()
                    try:
                        r = c.get("/api/search", params={"q": QUERIES[n % len(QUERIES)], "k": args.k})
                        ok = r.status_code == 200 and len(r.json()["results"]) == args.k
                        why = None if ok else f"HTTP {r.status_code}"
                    except httpx.HTTPError as e:
                        why = repr(e)
                    with lock:
                        latencies.append(time.perf_counter() - t0)
                        if why:
                            errors.append(why)
                    n += 1

        t0 = time.perf_counter()
        threads = [threading.Thread(target=client, args=(i,)) for i in range(args.clients)]
        for t in threads:
            t.start()
        for t in threads:
            t.join()
        wall = time.perf_counter() - t0
    finally:
        server.terminate()
        server.wait(30)
    lat = np.array(latencies) * 1e3
    result = {"index": args.index, "clients": args.clients, "seconds": wall, "requests": len(lat),
              "requests_per_s": len(lat) / wall, "p50_ms": float(np.percentile(lat, 50)),
              "p99_ms": float(np.percentile(lat, 99)), "errors": len(errors), "first_errors": errors[:5]}
    print(json.dumps(result))
    Path(args.out).write_text(json.dumps({"command": f"python benchmarks/serve_load.py {args.index} --clients "
                                          f"{args.clients} --seconds {args.seconds:g}", "machine": machine_info(),
                                          "meta": json.loads((Path(args.index) / "meta.json").read_text()),
                                          "result": result}, indent=1))


if __name__ == "__main__":
    main()
