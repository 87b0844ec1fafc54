"""Shared pieces of the benchmarks: servers in subprocesses, one load generator for every target
of a run, a temporary Keyplane with keys, and the ratio report.

Every bench prints ratios against a baseline measured in the same run with the same tool, never
absolute targets: this machine is shared and noisy, so each target is measured several times,
interleaved, and the spread of the per-round ratios is printed with the median.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import contextlib
import json
import os
import re
import shutil
import signal
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx2

BENCH_DIR = Path(__file__).resolve().parent
ROOT = BENCH_DIR.parent
PYTHON = sys.executable


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# -- servers ---------------------------------------------------------------------------------

@dataclass
class Server:
    url: str
    process: subprocess.Popen[bytes]
    log: Path

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.send_signal(signal.SIGTERM)
            try:
                self.process.wait(15)
            except subprocess.TimeoutExpired:
                self.process.kill()
                self.process.wait(5)


@contextlib.contextmanager
def spawn(name: str, cmd: list[str], port: int, *, env: dict[str, str] | None = None,
          health: str = "/", workdir: Path | None = None,
          output: Path | None = None) -> Iterator[Server]:
    """``cmd`` (a server listening on ``port``) in a subprocess, until ``health`` answers.
    Its output goes to ``output`` (kept) or to a temporary file (removed)."""
    log = output or Path(tempfile.mkstemp(prefix="bench-server-", suffix=".log")[1])
    full_env = {**os.environ, "PYTHONPATH": f"{ROOT / 'src'}:{BENCH_DIR}", **(env or {})}
    with log.open("wb") as out:
        process = subprocess.Popen(cmd, env=full_env, stdout=out, stderr=subprocess.STDOUT,
                                   cwd=workdir or ROOT)
    server = Server(f"http://127.0.0.1:{port}", process, log)
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"{name} did not start:\n{log.read_text()[-3000:]}")
            with contextlib.suppress(httpx2.HTTPError):
                httpx2.get(server.url + health, timeout=2)
                break
            if time.monotonic() > deadline:
                raise RuntimeError(f"{name} did not answer in time")
            time.sleep(0.1)
        yield server
    finally:
        server.stop()
        if output is None:
            log.unlink(missing_ok=True)


@contextlib.contextmanager
def uvicorn(app: str, *, env: dict[str, str] | None = None, factory: bool = False,
            health: str = "/", workdir: Path | None = None) -> Iterator[Server]:
    """``app`` (``module:attr``) on one uvicorn worker (httptools, uvloop) on a loopback
    port, in a subprocess."""
    port = free_port()
    cmd = [PYTHON, "-m", "uvicorn", app, "--host", "127.0.0.1", "--port", str(port),
           "--workers", "1", "--log-level", "warning", "--no-access-log",
           "--no-proxy-headers", "--no-server-header", "--app-dir", str(BENCH_DIR)]
    if factory:
        cmd.append("--factory")
    with spawn(app, cmd, port, env=env, health=health, workdir=workdir) as server:
        yield server


def have_granian() -> bool:
    try:
        import granian  # noqa: F401
    except ImportError:
        return False
    return True


@contextlib.contextmanager
def granian(app: str, *, interface: str = "asgi", env: dict[str, str] | None = None,
            factory: bool = False, health: str = "/",
            workdir: Path | None = None) -> Iterator[Server]:
    """``app`` on one granian worker (its defaults: one runtime thread, the best event loop
    installed), ``interface`` ``asgi`` or ``wsgi``, in a subprocess."""
    port = free_port()
    cmd = [PYTHON, "-m", "granian", "--interface", interface, "--host", "127.0.0.1",
           "--port", str(port), "--workers", "1", "--log-level", "warning",
           "--no-access-log"]
    if interface == "asgi":
        cmd.append("--no-ws")
    if factory:
        cmd.append("--factory")
    with spawn(f"granian {app}", [*cmd, app], port, env=env, health=health,
               workdir=workdir) as server:
        yield server


@contextlib.contextmanager
def gunicorn(app: str, *, env: dict[str, str] | None = None, threads: int = 4,
             health: str = "/") -> Iterator[Server]:
    """A WSGI ``app`` on one gunicorn worker: ``gthread`` (gunicorn's worker that keeps
    connections alive, as the load generator's are) with ``threads`` threads."""
    port = free_port()
    cmd = [PYTHON, "-m", "gunicorn", "--bind", f"127.0.0.1:{port}", "--workers", "1",
           "--worker-class", "gthread", "--threads", str(threads), "--log-level", "warning",
           "--chdir", str(BENCH_DIR), app]
    with spawn(f"gunicorn {app}", cmd, port, env=env, health=health) as server:
        yield server


@contextlib.contextmanager
def keyplane_serve(env: dict[str, str], *, workers: int = 1) -> Iterator[Server]:
    """Keyplane exactly as ``keyplane serve`` runs it by default (its server, its logging:
    JSON lines at ``info`` with the access log, written to a file as a service manager
    would), with only ``env``'s settings (the database and data directory) added."""
    port = free_port()
    settings = {k: v for k, v in env.items() if k not in ("KEYPLANE_LOG_LEVEL",
                                                          "KEYPLANE_LOG_FORMAT",
                                                          "KEYPLANE_ACCESS_LOG")}
    clean = {k: v for k, v in os.environ.items() if not k.startswith("KEYPLANE_")}
    output = Path(tempfile.mkstemp(prefix="bench-keyplane-", suffix=".log")[1])
    cmd = [PYTHON, "-c", "from keyplane.cli.main import app; app()", "serve",
           "--host", "127.0.0.1", "--port", str(port), "--workers", str(workers)]
    try:
        with spawn("keyplane serve", cmd, port, env={**clean, **settings}, health="/healthz",
                   output=output) as server:
            yield server
    finally:
        output.unlink(missing_ok=True)


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of ``pid`` and its descendants (Linux ``/proc``), else None."""
    total = 0
    try:
        tick = os.sysconf("SC_CLK_TCK")
    except (ValueError, OSError, AttributeError):
        return None
    pending = [pid]
    while pending:
        p = pending.pop()
        try:
            fields = Path(f"/proc/{p}/stat").read_text().rsplit(")", 1)[1].split()
            total += int(fields[11]) + int(fields[12])
            for task in Path(f"/proc/{p}/task").iterdir():
                pending += [int(c) for c in (task / "children").read_text().split()]
        except (OSError, ValueError, IndexError):
            if p == pid:
                return None
    return total / tick


# -- load ------------------------------------------------------------------------------------

@dataclass(frozen=True)
class Target:
    name: str
    url: str
    method: str = "GET"
    body: bytes | None = None
    headers: dict[str, str] = field(default_factory=dict)
    pid: int | None = None  # the server's process: its CPU time per request is measured too


@dataclass(frozen=True)
class Measured:
    rps: float
    errors: int  # non-2xx answers or socket errors
    requests: int = 0
    cpu: float | None = None  # the server's CPU seconds (every thread and child) meanwhile

    @property
    def cpu_per_request(self) -> float | None:
        return self.cpu / self.requests if self.cpu is not None and self.requests else None


def tool_name(choice: str) -> str:
    if choice == "auto":
        return "wrk" if shutil.which("wrk") else "python"
    if choice == "wrk" and not shutil.which("wrk"):
        raise SystemExit("wrk is not installed (apt-get install -y wrk), use --tool python")
    return choice


def _lua(target: Target) -> str:
    lines = [f'wrk.method = "{target.method}"']
    if target.body is not None:
        lines.append(f"wrk.body = {json.dumps(target.body.decode())}")
    for k, v in target.headers.items():
        lines.append(f'wrk.headers["{k}"] = {json.dumps(v)}')
    return "\n".join(lines) + "\n"


def split_cpus() -> tuple[set[int], set[int]] | None:
    """``(the load generator's CPUs, the measured server's CPU)``: the last CPU this process
    may use for the server, the others for the load; ``None`` with fewer than two CPUs or no
    CPU affinity (then nothing is pinned)."""
    if not hasattr(os, "sched_setaffinity"):
        return None
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None
    return set(cpus[:-1]), {cpus[-1]}


def pin(pid: int, cpus: set[int]) -> None:
    """Every thread of ``pid`` onto ``cpus`` (threads it starts later inherit it)."""
    for task in Path(f"/proc/{pid}/task").iterdir():
        with contextlib.suppress(ProcessLookupError):
            os.sched_setaffinity(int(task.name), cpus)


def _on(cpus: set[int] | None) -> Callable[[], None] | None:
    """A ``preexec_fn`` that runs the load generator on ``cpus``."""
    if cpus is None:
        return None
    return lambda: os.sched_setaffinity(0, cpus)


def _wrk(target: Target, duration: float, connections: int,
         cpus: set[int] | None = None) -> Measured:
    with tempfile.NamedTemporaryFile("w", suffix=".lua", delete=False) as script:
        script.write(_lua(target))
    try:
        out = subprocess.run(
            ["wrk", "-t1", f"-c{connections}", f"-d{max(1, round(duration))}s",
             "-s", script.name, target.url],
            capture_output=True, text=True, check=True, timeout=duration + 60,
            preexec_fn=_on(cpus),
        ).stdout
    finally:
        os.unlink(script.name)
    rps = float(re.search(r"Requests/sec:\s+([\d.]+)", out).group(1))  # type: ignore[union-attr]
    done = int(re.search(r"(\d+) requests in", out).group(1))  # type: ignore[union-attr]
    errors = 0
    m = re.search(r"Non-2xx or 3xx responses:\s+(\d+)", out)
    if m:
        errors += int(m.group(1))
    m = re.search(r"Socket errors: connect (\d+), read (\d+), write (\d+), timeout (\d+)", out)
    if m:
        errors += sum(int(g) for g in m.groups())
    if errors:  # say which kind, for whoever reads the run
        print(f"  {target.name}: " + "; ".join(
            line.strip() for line in out.splitlines()
            if "Socket errors" in line or "Non-2xx" in line), file=sys.stderr)
    return Measured(rps, errors, done)


def _python(target: Target, duration: float, connections: int,
            cpus: set[int] | None = None) -> Measured:
    spec = json.dumps({"url": target.url, "method": target.method,
                       "body": target.body.decode() if target.body is not None else None,
                       "headers": target.headers, "duration": duration,
                       "connections": connections})
    out = subprocess.run([PYTHON, str(BENCH_DIR / "_load.py"), spec], capture_output=True,
                         text=True, check=True, timeout=duration + 60,
                         preexec_fn=_on(cpus)).stdout
    data = json.loads(out)
    return Measured(data["rps"], data["errors"], int(data.get("requests", 0)))


def measure(tool: str, target: Target, duration: float, connections: int,
            load_cpus: set[int] | None = None) -> Measured:
    """``target`` under load for ``duration`` seconds (the load generator on ``load_cpus``,
    when given)."""
    before = cpu_seconds(target.pid) if target.pid is not None else None
    m = (_wrk if tool == "wrk" else _python)(target, duration, connections, load_cpus)
    after = cpu_seconds(target.pid) if target.pid is not None else None
    if before is None or after is None:
        return m
    return Measured(m.rps, m.errors, m.requests, after - before)


@dataclass
class Comparison:
    """Rates of several targets measured in interleaved rounds; ratios against ``baseline``."""

    baseline: str
    rates: dict[str, list[float]] = field(default_factory=dict)
    errors: dict[str, int] = field(default_factory=dict)
    cpu: dict[str, list[float]] = field(default_factory=dict)  # server CPU s per request
    loads: list[float] = field(default_factory=list)  # 1-minute load average, each round

    def add(self, name: str, m: Measured) -> None:
        self.rates.setdefault(name, []).append(m.rps)
        self.errors[name] = self.errors.get(name, 0) + m.errors
        if m.cpu_per_request is not None:
            self.cpu.setdefault(name, []).append(m.cpu_per_request)

    def best_of(self, name: str, candidates: Sequence[str]) -> None:
        """A target ``name`` whose rate in each round is the best of ``candidates``' in that
        round (the baseline at its best: servers trade places from round to round)."""
        self.rates[name] = [max(r) for r in zip(*(self.rates[c] for c in candidates),
                                                strict=True)]
        self.errors[name] = sum(self.errors[c] for c in candidates)
        if all(c in self.cpu for c in candidates):
            self.cpu[name] = [min(r) for r in zip(*(self.cpu[c] for c in candidates),
                                                  strict=True)]

    def ratios(self, name: str, baseline: str | None = None) -> list[float]:
        base = self.rates[baseline or self.baseline]
        return [a / b for a, b in zip(self.rates[name], base, strict=True)]

    def cpu_ratios(self, name: str, baseline: str | None = None) -> list[float]:
        """The baseline's server CPU time per request / ``name``'s, per round: what the rate
        ratio would be if each server had a core of its own (steadier than rates on a loaded
        machine, but blind to a server that spreads a request over several threads)."""
        base = self.cpu.get(baseline or self.baseline, [])
        return [b / a for a, b in zip(self.cpu.get(name, []), base, strict=True)]


def compare(targets: Sequence[Target], baseline: str, *, tool: str, rounds: int,
            duration: float, connections: int, warmup: float = 1.0,
            progress: Callable[[str], None] | None = None,
            load_cpus: set[int] | None = None, together: bool = False) -> Comparison:
    """Each target in turn, ``rounds`` times; the load generator on ``load_cpus`` if given
    (the targets are then expected on the other CPUs: see :func:`split_cpus`).

    ``together``: in each round every target at once, each under its own load generator
    (``connections`` each), for servers that share one CPU: the kernel gives each the same
    share of it, so their rates compare their costs per request even while the machine's
    speed drifts (measured one after the other, a drift between two runs is read as a
    difference between the servers)."""
    result = Comparison(baseline)
    for t in targets:  # warm caches, connections and the JIT-less interpreter alike
        measure(tool, t, warmup, connections, load_cpus)
    for r in range(rounds):
        result.loads.append(os.getloadavg()[0])
        if together:
            if progress:
                progress(f"round {r + 1}/{rounds}: " + " + ".join(t.name for t in targets))
            with concurrent.futures.ThreadPoolExecutor(len(targets)) as pool:
                runs = [pool.submit(measure, tool, t, duration, connections, load_cpus)
                        for t in targets]
                for t, run in zip(targets, runs, strict=True):
                    result.add(t.name, run.result())
            continue
        for t in targets:
            if progress:
                progress(f"round {r + 1}/{rounds}: {t.name}")
            result.add(t.name, measure(tool, t, duration, connections, load_cpus))
    return result


# -- a Keyplane to measure -------------------------------------------------------------------

@dataclass
class Fixture:
    data_dir: Path
    database_url: str
    tenant_id: str
    data_key: str  # contacts:write, plain HTTP allowed
    verifier_key: str  # operator, keys:verify

    @property
    def env(self) -> dict[str, str]:
        return {"KEYPLANE_DATA_DIR": str(self.data_dir),
                "KEYPLANE_DATABASE_URL": self.database_url, "KEYPLANE_LOG_LEVEL": "warning"}


@contextlib.contextmanager
def keyplane_fixture() -> Iterator[Fixture]:
    """A fresh SQLite Keyplane with one tenant, one data key and a verifier key."""
    from keyplane.bootstrap import build
    from keyplane.config import Settings
    from keyplane.core.model import PrincipalKind
    from keyplane.core.rights import SYSTEM

    tmp = Path(tempfile.mkdtemp(prefix="keyplane-bench-"))
    url = f"sqlite:///{tmp / 'keyplane.db'}"
    try:
        kp = build(Settings(data_dir=tmp, database_url=url), migrate_db=True)
        kp.catalogue.seed()
        tenant = kp.tenants.create(SYSTEM, {"name": "Bench"})
        admin = kp.principals.create(SYSTEM, tenant.id, PrincipalKind.MEMBER,
                                     {"email": "bench@example.com", "role": "admin"})
        data = kp.keys.create(SYSTEM, tenant.id, {
            "name": "bench", "owner_id": admin.id, "scopes": ["contacts:write"],
            "require_tls": False})
        verifier = kp.keys.create(SYSTEM, None, {"name": "bench verifier",
                                                 "scopes": ["keys:verify"],
                                                 "require_tls": False}, operator=True)
        kp.close()
        yield Fixture(tmp, url, tenant.id, data.secret, verifier.secret)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


# -- command line and report -----------------------------------------------------------------

def arguments(description: str, *, http: bool = True) -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(description=description)
    parser.add_argument("--json", action="store_true", help="print one JSON object")
    parser.add_argument("--quick", action="store_true", help="shorter runs (keyplane bench)")
    if http:
        parser.add_argument("--tool", choices=["auto", "wrk", "python"], default="auto",
                            help="load generator (default: wrk if installed)")
        parser.add_argument("--rounds", type=int, default=None)
        parser.add_argument("--duration", type=float, default=None, help="seconds per run")
        parser.add_argument("--connections", type=int, default=32)
    return parser


def spread(values: Sequence[float]) -> dict[str, float]:
    return {"median": statistics.median(values), "min": min(values), "max": max(values)}


def report(name: str, rows: list[dict[str, Any]], *, as_json: bool,
           extra: dict[str, Any] | None = None) -> None:
    """One line per ratio: ``{"metric", "ratio", "min", "max", "target", "ok", "detail"}``."""
    if as_json:
        print(json.dumps({"bench": name, "results": rows, **(extra or {})}))
        return
    print(f"\n{name}")
    for row in rows:
        verdict = "ok" if row.get("ok") else ("MISSED" if row.get("ok") is False else "")
        rng = ""
        if "min" in row:
            rng = f"  (spread {row['min']:.2f}-{row['max']:.2f})"
        print(f"  {row['metric']:<58} {row['ratio']:>8.2f}{rng}  target {row['target']}"
              f"  {verdict}")
        if row.get("detail"):
            print(f"      {row['detail']}")
    for k, v in (extra or {}).items():
        print(f"  {k}: {v}")
