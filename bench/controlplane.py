"""``python -m bench.controlplane`` (``make bench BENCH_ARGS="--cases control-plane"``): the
control plane at cluster scale, against the embedded API (issue 13's targets).

A real ``weft control`` process, and in this process the clients, over its unix socket:

1. **population**: 1,000 Services in 10 namespaces, 10,000 ready Pods (10 per Service); the
   local EndpointSlice controller makes 1,000 slices (timed until all are there);
2. **burst**: 2,000 destination streams opened at once (as every proxy of a node reconnecting):
   how many got their first snapshot, and how long the last took; then 1,000 stay: half on
   distinct Services, half sharing 10;
3. **propagation**: one endpoint change at a time (a pod turned unready or ready, through the
   status API), alternating a Service with one subscriber and one with 50: the time from the
   write to each subscriber's snapshot with the change (p50, p99, max);
4. **sustained**: 100 pod changes per second for ``--duration`` seconds (60), round-robin over
   every Service: each change's time to its subscribers, and whether any was still undelivered
   one second after the last write (backlog);
5. the control plane's RSS and CPU time at the end.

Anchor: Istio's published convergence, p90 1.5-4.5 s for 500 pods (docs/benchmarks.md).

Not for: CI (a minute and more of load); the proxy's benchmarks (``bench.run``).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import os
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from weft.control.client import ControlClient

REPO = Path(__file__).resolve().parents[1]
RESULTS = REPO / "bench" / "results"
NAMESPACES = 10
SERVICES = 1000
PODS_PER_SERVICE = 10
DISTINCT = 500  # subscribers on a Service of their own
SHARED_SERVICES = 10  # and 500 more sharing these
SHARED_EACH = 50


def svc_name(i: int) -> tuple[str, str]:
    return f"n{i % NAMESPACES}", f"s{i:04d}"


def pod_ip(i: int, k: int) -> str:
    n = i * PODS_PER_SERVICE + k
    return f"10.244.{n // 250}.{n % 250 + 2}"


def pod_doc(i: int, k: int, ready: bool = True) -> dict[str, Any]:
    ns, name = svc_name(i)
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {"name": f"{name}-{k}", "namespace": ns, "labels": {"app": name}},
        "spec": {
            "containers": [
                {
                    "name": "app",
                    "command": ["app"],
                    "ports": [{"name": "http", "containerPort": 8080}],
                }
            ]
        },
        "status": {"phase": "Running", "podIP": pod_ip(i, k), "ready": ready},
    }


def target(i: int) -> str:
    ns, name = svc_name(i)
    return f"{name}.{ns}.svc.cluster.local:80"


class Subscriber:
    """One destination stream: every snapshot's arrival time and endpoint count."""

    def __init__(self, socket_path: str, service: int) -> None:
        self.socket_path = socket_path
        self.service = service
        self.seen: list[tuple[float, int]] = []
        self.first = asyncio.Event()
        self.task: asyncio.Task[None] | None = None
        self.error: str | None = None

    async def run(self) -> None:
        try:
            reader, writer = await asyncio.open_unix_connection(self.socket_path, limit=1 << 22)
            path = f"/api/v1/destinations?target={target(self.service)}"
            writer.write(f"GET {path} HTTP/1.1\r\nhost: weft\r\n\r\n".encode())
            await writer.drain()
            while (await reader.readline()) not in (b"\r\n", b""):
                pass  # the head
            buf = b""
            while True:
                size_line = await reader.readline()
                if not size_line:
                    return
                size = int(size_line.strip() or b"0", 16)
                chunk = await reader.readexactly(size + 2)
                buf += chunk[:-2]
                while b"\n" in buf:
                    line, buf = buf.split(b"\n", 1)
                    self._line(line)
        except (OSError, asyncio.IncompleteReadError, ValueError) as e:
            self.error = f"{type(e).__name__}: {e}"
            self.first.set()

    def _line(self, line: bytes) -> None:
        data = json.loads(line)
        if "destination" not in data:
            return  # a heartbeat
        dest = data["destination"]
        self.seen.append((time.monotonic(), len(dest["endpoints"]) if dest else -1))
        self.first.set()

    def arrival(self, since: float, count: int) -> float | None:
        for at, n in self.seen:
            if at >= since and n == count:
                return at
        return None


def pct(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def proc_stats(pid: int) -> dict[str, float]:
    status = Path(f"/proc/{pid}/status").read_text()
    rss = next(int(line.split()[1]) for line in status.splitlines() if line.startswith("VmRSS:"))
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    ticks = os.sysconf("SC_CLK_TCK")
    return {"rss_mb": rss / 1024, "cpu_s": (int(fields[11]) + int(fields[12])) / ticks}


def start_control(state: Path, kubeconfig: Path | None = None) -> subprocess.Popen[bytes]:
    argv = [
        sys.executable,
        "-m",
        "weft",
        "control",
        "--state-dir",
        str(state),
        "--http-listen",
        "",
        "--scrape-interval",
        "3600",
        "--log-level",
        "warning",
    ]
    if kubeconfig is not None:
        argv += ["--kubeconfig", str(kubeconfig)]
    with open(state / "control.log", "w") as log:
        return subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=log)


class RealCluster:
    """The rig (scripts/k8s-rig): its API server holds the objects, its controller manager makes
    the slices, and ``weft control --kubeconfig`` reads it."""

    def __init__(self, workdir: Path) -> None:
        self.workdir = workdir
        self.kubeconfig: Path | None = None
        self.client: Any = None

    def up(self) -> Path:
        done = subprocess.run(
            [str(REPO / "scripts" / "k8s-rig"), "up", str(self.workdir), "--ttl", "3600"],
            capture_output=True,
            text=True,
            timeout=600,
        )
        if done.returncode != 0:
            raise RuntimeError(f"k8s-rig up: {done.stderr[-2000:]}")
        self.kubeconfig = Path(done.stdout.strip())
        return self.kubeconfig

    def down(self) -> None:
        subprocess.run(
            [str(REPO / "scripts" / "k8s-rig"), "down", str(self.workdir)],
            capture_output=True,
            timeout=120,
            check=False,
        )

    async def populate(self, log: Any) -> None:
        from lightkube.resources.core_v1 import Namespace, Node, Pod, Service

        from weft.control.kube.client import connect

        self.client = connect(self.kubeconfig)
        sem = asyncio.Semaphore(8)  # under the client's connection pool (10)

        async def create(obj: Any) -> None:
            async with sem:
                await self.client.create(obj)

        await asyncio.gather(
            *(
                create(Namespace.from_dict({"metadata": {"name": f"n{j}"}}))
                for j in range(NAMESPACES)
            )
        )
        await create(Node.from_dict({"metadata": {"name": "bench-node"}}))
        services = []
        for i in range(SERVICES):
            ns, name = svc_name(i)
            services.append(
                Service.from_dict(
                    {
                        "metadata": {"name": name, "namespace": ns},
                        "spec": {
                            "selector": {"app": name},
                            "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
                        },
                    }
                )
            )
        await asyncio.gather(*(create(s) for s in services))
        pods = []
        for i in range(SERVICES):
            for k in range(PODS_PER_SERVICE):
                doc = pod_doc(i, k)
                doc.pop("status")
                doc["spec"]["nodeName"] = "bench-node"
                doc["spec"]["containers"][0]["image"] = "app"
                pods.append(Pod.from_dict(doc))
        await asyncio.gather(*(create(p) for p in pods))
        log(f"real API: {len(pods)} pods created")

        async def ready(i: int, k: int) -> None:
            async with sem:
                await self.status(i, k, True)

        await asyncio.gather(
            *(ready(i, k) for i in range(SERVICES) for k in range(PODS_PER_SERVICE))
        )

    async def status(self, i: int, k: int, ready: bool) -> None:
        from lightkube.resources.core_v1 import Pod
        from lightkube.types import PatchType

        ns, name = svc_name(i)
        ip = pod_ip(i, k)
        status = {
            "phase": "Running",
            "podIP": ip,
            "podIPs": [{"ip": ip}],
            "conditions": [{"type": "Ready", "status": "True" if ready else "False"}],
        }
        await self.client.patch(
            Pod.Status, f"{name}-{k}", {"status": status}, namespace=ns, patch_type=PatchType.MERGE
        )

    async def slices_full(self) -> int:
        from lightkube.resources.discovery_v1 import EndpointSlice

        full = 0
        async for s in self.client.list(EndpointSlice, namespace="*", chunk_size=500):
            if len(s.endpoints or []) == PODS_PER_SERVICE and all(
                (e.conditions.ready if e.conditions else True) for e in s.endpoints
            ):
                full += 1
        return full


async def bench(state: Path, duration: float, log: Any, api: str = "embedded") -> dict[str, Any]:
    real = RealCluster(state / "rig") if api == "real" else None
    proc: subprocess.Popen[bytes] | None = None
    sock = str(state / "control.sock")
    out: dict[str, Any] = {"api": api}
    subs: list[Subscriber] = []
    try:
        if real is not None:
            t = time.monotonic()
            kubeconfig = await asyncio.to_thread(real.up)
            await real.populate(log)
            for _ in range(1200):  # the controller manager's slices: at most 20 minutes
                if await real.slices_full() >= SERVICES:
                    break
                await asyncio.sleep(1.0)
            out["population_s"] = time.monotonic() - t
            log(f"real API: slices in {out['population_s']:.1f} s")
            proc = start_control(state, kubeconfig)
        else:
            proc = start_control(state)
        client = ControlClient(f"unix:{sock}")
        for _ in range(200):
            with contextlib.suppress(Exception):
                await client.call("GET", "/healthz")
                break
            await asyncio.sleep(0.05)
        # 1. population
        t = time.monotonic()
        namespaces = (
            []
            if real is not None
            else [
                {"apiVersion": "v1", "kind": "Namespace", "metadata": {"name": f"n{j}"}}
                for j in range(NAMESPACES)
            ]
        )
        if namespaces:
            await client.apply(namespaces)
        services = []
        for i in range(SERVICES if real is None else 0):
            ns, name = svc_name(i)
            services.append(
                {
                    "apiVersion": "v1",
                    "kind": "Service",
                    "metadata": {"name": name, "namespace": ns},
                    "spec": {
                        "selector": {"app": name},
                        "ports": [{"name": "http", "port": 80, "targetPort": "http"}],
                    },
                }
            )
        for j in range(0, len(services), 500):
            await client.apply(services[j : j + 500])
        pods = [pod_doc(i, k) for i in range(SERVICES) for k in range(PODS_PER_SERVICE)]
        for j in range(0, len(pods) if real is None else 0, 1000):
            await client.apply(pods[j : j + 1000])
        while real is None:
            slices = (await client.call("GET", "/api/v1/resources/EndpointSlice"))["items"]
            full = sum(1 for s in slices if len(s.get("endpoints") or []) == PODS_PER_SERVICE)
            if full >= SERVICES:
                break
            await asyncio.sleep(0.2)
        if real is None:
            out["population_s"] = time.monotonic() - t
        log(
            f"population: {SERVICES} services, {len(pods)} pods, "
            f"slices in {out['population_s']:.1f} s"
        )
        # 2. burst of 2,000 streams; 1,000 stay
        wanted = [i for i in range(DISTINCT)] + [
            DISTINCT + (j % SHARED_SERVICES) for j in range(SHARED_SERVICES * SHARED_EACH)
        ]
        extra = [i % SERVICES for i in range(1000)]
        t = time.monotonic()
        burst = [Subscriber(sock, i) for i in wanted + extra]
        for s in burst:
            s.task = asyncio.get_running_loop().create_task(s.run())
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(asyncio.gather(*(s.first.wait() for s in burst)), 60)
        served = [s for s in burst if s.seen and s.seen[0][1] == PODS_PER_SERVICE]
        out["burst"] = {
            "streams": len(burst),
            "served": len(served),
            "all_first_s": time.monotonic() - t,
            "errors": sorted({s.error for s in burst if s.error})[:3],
        }
        log(f"burst: {len(served)} of {len(burst)} served in {out['burst']['all_first_s']:.2f} s")
        for s in burst[len(wanted) :]:
            assert s.task is not None
            s.task.cancel()
        subs = burst[: len(wanted)]
        by_service: dict[int, list[Subscriber]] = {}
        for s in subs:
            by_service.setdefault(s.service, []).append(s)
        await asyncio.sleep(1.0)
        # 3. propagation, one change at a time
        ready: dict[tuple[int, int], bool] = {}
        lat_one: list[float] = []
        lat_shared: list[float] = []

        async def toggle(i: int, k: int) -> tuple[float, int]:
            now = not ready.get((i, k), True)
            ready[(i, k)] = now
            ns, name = svc_name(i)
            t0 = time.monotonic()
            if real is not None:
                await real.status(i, k, now)
            else:
                status = pod_doc(i, k, now)["status"]
                await client.call(
                    "PUT", f"/api/v1/resources/Pod/{ns}/{name}-{k}/status", {"status": status}
                )
            count = sum(1 for kk in range(PODS_PER_SERVICE) if ready.get((i, kk), True))
            return t0, count

        for n in range(60):
            i = (n // 2) if n % 2 == 0 else DISTINCT + (n // 2) % SHARED_SERVICES
            t0, count = await toggle(i, n % PODS_PER_SERVICE)
            deadline = time.monotonic() + 5
            while time.monotonic() < deadline:
                if all(s.arrival(t0, count) is not None for s in by_service[i]):
                    break
                await asyncio.sleep(0.002)
            for s in by_service[i]:
                at = s.arrival(t0, count)
                (lat_one if n % 2 == 0 else lat_shared).append((at - t0) * 1000 if at else 5000.0)
        out["propagation_ms"] = {
            "one_subscriber": {
                "p50": pct(lat_one, 0.5),
                "p99": pct(lat_one, 0.99),
                "max": max(lat_one),
            },
            "fifty_subscribers": {
                "p50": pct(lat_shared, 0.5),
                "p99": pct(lat_shared, 0.99),
                "max": max(lat_shared),
            },
        }
        log(f"propagation: {json.dumps(out['propagation_ms'])}")
        # 4. sustained: 100 changes per second
        assert proc is not None
        before = proc_stats(proc.pid)
        changes: list[tuple[int, float, int]] = []
        start = time.monotonic()
        n = 0
        # the writes go out on schedule, up to 8 at once (a writer waiting for each answer
        # could not keep 100/s against the real API server on this machine); a change's time
        # counts from when it was due, queueing in this client included
        writers = asyncio.Semaphore(8)
        inflight: set[asyncio.Task[None]] = set()

        async def change(i: int, k: int, due: float) -> None:
            async with writers:
                _, count = await toggle(i, k)
            changes.append((i, due, count))

        while time.monotonic() - start < duration:
            due = start + n / 100.0
            delay = due - time.monotonic()
            if delay > 0:
                await asyncio.sleep(delay)
            task = asyncio.get_running_loop().create_task(
                change((n * 7) % SERVICES, (n // SERVICES) % PODS_PER_SERVICE, due)
            )
            inflight.add(task)
            task.add_done_callback(inflight.discard)
            n += 1
        if inflight:
            await asyncio.gather(*inflight)
        end = time.monotonic()
        await asyncio.sleep(1.0)
        after = proc_stats(proc.pid)
        lat: list[float] = []
        undelivered = 0
        for i, t0, count in changes:
            for s in by_service.get(i, ()):
                at = s.arrival(t0, count)
                if at is None:
                    undelivered += 1
                else:
                    lat.append((at - t0) * 1000)
        out["sustained"] = {
            "changes": len(changes),
            "rate_per_s": len(changes) / (end - start),
            "p50_ms": pct(lat, 0.5),
            "p99_ms": pct(lat, 0.99),
            "max_ms": max(lat) if lat else None,
            "deliveries": len(lat),
            "undelivered_1s_after": undelivered,
            "control_cpu_per_s": (after["cpu_s"] - before["cpu_s"]) / (end - start),
        }
        log(f"sustained: {json.dumps(out['sustained'])}")
        out["control"] = proc_stats(proc.pid)
    finally:
        for s in subs:
            if s.task is not None:
                s.task.cancel()
        if proc is not None:
            proc.terminate()
            try:
                proc.wait(10)
            except subprocess.TimeoutExpired:
                proc.kill()
        if real is not None:
            await asyncio.to_thread(real.down)
    return out


def targets(out: dict[str, Any]) -> list[tuple[str, str, str]]:
    prop = out["propagation_ms"]
    worst_p99 = max(prop["one_subscriber"]["p99"], prop["fifty_subscribers"]["p99"])
    sus = out["sustained"]
    return [
        (
            "endpoint change p99 < 100 ms",
            f"{worst_p99:.1f} ms",
            "pass" if worst_p99 < 100 else "FAIL",
        ),
        (
            "100 changes/s, p99 < 1 s",
            f"{sus['p99_ms']:.1f} ms at {sus['rate_per_s']:.0f}/s",
            "pass" if sus["p99_ms"] < 1000 and sus["rate_per_s"] >= 95 else "FAIL",
        ),
        (
            "no backlog after the minute",
            f"{sus['undelivered_1s_after']} undelivered",
            "pass" if sus["undelivered_1s_after"] == 0 else "FAIL",
        ),
        (
            "2,000-connection burst served",
            f"{out['burst']['served']} of {out['burst']['streams']}",
            "pass" if out["burst"]["served"] == out["burst"]["streams"] else "FAIL",
        ),
        (
            "RSS < 500 MB",
            f"{out['control']['rss_mb']:.0f} MB",
            "pass" if out["control"]["rss_mb"] < 500 else "FAIL",
        ),
    ]


def markdown(out: dict[str, Any]) -> str:
    rows = [
        f"API server: {out.get('api', 'embedded')}",
        "",
        "| Target | Result | Verdict |",
        "|---|---|---|",
    ]
    rows += [f"| {a} | {b} | {c} |" for a, b, c in targets(out)]
    prop = out["propagation_ms"]
    rows += ["", "| Propagation (ms) | p50 | p99 | max |", "|---|---|---|---|"]
    for name, key in (("1 subscriber", "one_subscriber"), ("50 subscribers", "fifty_subscribers")):
        v = prop[key]
        rows.append(f"| {name} | {v['p50']:.1f} | {v['p99']:.1f} | {v['max']:.1f} |")
    sus = out["sustained"]
    rows += [
        "",
        f"Sustained: {sus['changes']} changes at {sus['rate_per_s']:.1f}/s, "
        f"{sus['deliveries']} deliveries, p50 {sus['p50_ms']:.1f} ms; control plane CPU "
        f"{sus['control_cpu_per_s']:.2f} s/s. Population (1,000 Services, 10,000 Pods, "
        f"slices made) {out['population_s']:.1f} s. RSS {out['control']['rss_mb']:.0f} MB.",
    ]
    return "\n".join(rows)


def main(argv: Sequence[str] | None = None) -> int:
    p = argparse.ArgumentParser(
        prog="python -m bench.controlplane",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    p.add_argument("--duration", type=float, default=60.0, help="sustained phase, seconds (60)")
    p.add_argument("--markdown", action="store_true", help="print the docs/benchmarks.md block")
    p.add_argument(
        "--api",
        choices=["embedded", "real"],
        default="embedded",
        help="the local mesh's own API (default), or the real API server of "
        "scripts/k8s-rig with weft control --kubeconfig (make k8s-rig first)",
    )
    args, _ = p.parse_known_args(argv)
    state = Path(tempfile.mkdtemp(prefix="weft-cp-", dir="/tmp"))
    try:
        out = asyncio.run(bench(state, args.duration, lambda m: print(m, flush=True), args.api))
    finally:
        shutil.rmtree(state, ignore_errors=True)
    out["started"] = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    RESULTS.mkdir(parents=True, exist_ok=True)
    path = RESULTS / f"controlplane-{out['started'].replace(':', '').replace('-', '')}.json"
    path.write_text(json.dumps(out, indent=2) + "\n")
    for target_, result, verdict in targets(out):
        print(f"{verdict:5} {target_}: {result}")
    print(f"results: {path}")
    if args.markdown:
        print(markdown(out))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
