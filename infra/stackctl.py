"""Health checks and one-off set-up steps of the local stack (called by infra/stack.sh).

Usage: python infra/stackctl.py <command> [args]
  wait-http URL [TIMEOUT_S] [PID]  until URL answers 2xx (fails at once if PID exits)
  buckets NAME...               create S3 buckets (idempotent) at $AWS_ENDPOINT_URL
  ray-nodes N [TIMEOUT_S]       until $RAY_ADDRESS has N alive nodes; prints them
  prefect-worker POOL [TIMEOUT_S]  until POOL has an online worker
Exits 1 with a message naming the service when a wait times out.
"""

from __future__ import annotations

import os
import sys
import time
import urllib.error
import urllib.request


def wait_http(url: str, timeout_s: float = 60.0, pid: int | None = None) -> None:
    deadline = time.monotonic() + timeout_s
    last = ""
    while time.monotonic() < deadline:
        if pid is not None and not os.path.exists(f"/proc/{pid}"):
            raise SystemExit(f"error: the server for {url} (pid {pid}) exited; see its log")
        try:
            with urllib.request.urlopen(url, timeout=2) as resp:
                if 200 <= resp.status < 300:
                    return
                last = f"HTTP {resp.status}"
        except (urllib.error.URLError, OSError) as exc:
            last = str(exc)
        time.sleep(0.3)
    raise SystemExit(f"error: {url} not healthy after {timeout_s:.0f} s ({last})")


def buckets(names: list[str]) -> None:
    import boto3  # boto3 reads AWS_ENDPOINT_URL and the AWS credential chain

    s3 = boto3.client("s3")
    have = {b["Name"] for b in s3.list_buckets().get("Buckets", [])}
    for name in names:
        if name not in have:
            s3.create_bucket(Bucket=name)
    print("buckets:", ", ".join(sorted(have | set(names))))


def ray_nodes(n: int, timeout_s: float = 60.0) -> None:
    import ray

    ray.init(log_to_driver=False, logging_level="ERROR")  # address from $RAY_ADDRESS
    try:
        deadline = time.monotonic() + timeout_s
        while True:
            alive = [x for x in ray.nodes() if x["Alive"]]
            if len(alive) >= n:
                for x in alive:
                    print(f"ray node {x['NodeID'][:8]} {x['NodeManagerAddress']} CPU={x['Resources'].get('CPU', 0)}")
                return
            if time.monotonic() > deadline:
                raise SystemExit(f"error: Ray cluster has {len(alive)} alive nodes, expected {n}")
            time.sleep(0.5)
    finally:
        ray.shutdown()


def prefect_worker(pool: str, timeout_s: float = 60.0) -> None:
    from prefect.client.orchestration import get_client

    async def online() -> bool:
        async with get_client() as client:
            workers = await client.read_workers_for_work_pool(pool)
            return any(str(w.status).upper().endswith("ONLINE") for w in workers)

    import asyncio

    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if asyncio.run(online()):
            print(f"prefect worker online in pool {pool}")
            return
        time.sleep(1)
    raise SystemExit(f"error: no online Prefect worker in work pool {pool!r} after {timeout_s:.0f} s")


def main(argv: list[str]) -> None:
    cmd, args = argv[0], argv[1:]
    if cmd == "wait-http":
        wait_http(args[0], float(args[1]) if len(args) > 1 else 60.0,
                  int(args[2]) if len(args) > 2 else None)
    elif cmd == "buckets":
        buckets(args)
    elif cmd == "ray-nodes":
        ray_nodes(int(args[0]), float(args[1]) if len(args) > 1 else 60.0)
    elif cmd == "prefect-worker":
        prefect_worker(args[0], float(args[1]) if len(args) > 1 else 60.0)
    else:
        raise SystemExit(f"error: unknown command {cmd!r}\n{__doc__}")


if __name__ == "__main__":
    main(sys.argv[1:])
