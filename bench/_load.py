"""The Python load generator (when wrk is not installed): an asyncio httpx2 client pool.

    python bench/_load.py '{"url": ..., "method": "GET", "body": null, "headers": {},
                            "duration": 5, "connections": 32}'

prints ``{"rps": ..., "errors": ...}``. It is far slower than wrk, so it caps what a fast server
can show; every target of a run is measured with the same tool, so ratios stay comparable.
"""

from __future__ import annotations

import asyncio
import json
import sys
import time

import httpx2


async def run(spec: dict[str, object]) -> dict[str, float]:
    url = str(spec["url"])
    method = str(spec["method"])
    body = spec["body"]
    content = body.encode() if isinstance(body, str) else None
    headers = dict(spec["headers"])  # type: ignore[call-overload]
    duration = float(spec["duration"])  # type: ignore[arg-type]
    connections = int(spec["connections"])  # type: ignore[call-overload]
    done = errors = 0
    limits = httpx2.Limits(max_connections=connections, max_keepalive_connections=connections,
                           keepalive_expiry=2.0)  # below the server's 5 s idle keep-alive
    async with httpx2.AsyncClient(limits=limits, timeout=30) as client:
        deadline = time.perf_counter() + duration

        async def worker() -> None:
            nonlocal done, errors
            while time.perf_counter() < deadline:
                try:
                    r = await client.request(method, url, content=content, headers=headers)
                    if r.status_code >= 300:
                        errors += 1
                except httpx2.HTTPError:
                    errors += 1
                done += 1

        started = time.perf_counter()
        await asyncio.gather(*[worker() for _ in range(connections)])
        elapsed = time.perf_counter() - started
    return {"rps": done / elapsed, "errors": errors, "requests": done}


if __name__ == "__main__":
    print(json.dumps(asyncio.run(run(json.loads(sys.argv[1])))))
