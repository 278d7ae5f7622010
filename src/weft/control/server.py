"""The ``weft control`` process: store + persistence + API server + destinations + metrics.

:class:`ControlPlane` assembles the parts from a :class:`ControlConfig`: it restores the store from
``<state dir>/store.json`` (so Service cluster IPs and resourceVersions survive restarts), saves
after every change, serves the API on ``<state dir>/control.sock`` (and optionally on a TCP
address), keeps HTTPRoute statuses current, and runs the metrics scraper. :func:`serve` runs it
until SIGTERM/SIGINT.

Not for: the logic of any part (see :mod:`weft.control.store`, :mod:`weft.control.api`,
:mod:`weft.control.destinations`, :mod:`weft.control.metrics`).
"""

from __future__ import annotations

import asyncio
import contextlib
import ipaddress
import logging
import os
import signal
import time
from collections.abc import Callable
from dataclasses import dataclass

from weft.addr import Address
from weft.control.api import Api
from weft.control.client import DEFAULT_STATE_DIR, SOCKET_NAME
from weft.control.destinations import DestinationService
from weft.control.httpserver import HttpServer
from weft.control.metrics import ScrapeConfig, Scraper, Stats
from weft.control.persist import StateFile
from weft.control.routestatus import RouteStatusController
from weft.control.store import Store

log = logging.getLogger("weft.control")

STATE_FILE = "store.json"


@dataclass(frozen=True, slots=True)
class ControlConfig:
    """Everything ``weft control`` needs; validated on construction."""

    state_dir: str = DEFAULT_STATE_DIR
    service_cidr: str = "10.96.0.0/16"
    pod_cidr: str = "10.244.0.0/16"
    scrape_interval: float = 2.0
    scrape_timeout: float = 1.5
    retention: float = 3900.0
    http_listen: Address | None = None
    heartbeat: float = 5.0

    def __post_init__(self) -> None:
        for name in ("service_cidr", "pod_cidr"):
            value = getattr(self, name)
            try:
                net = ipaddress.ip_network(value, strict=True)
            except ValueError as exc:
                raise ValueError(
                    f"{name.replace('_', '-')} {value!r} is not a network: {exc}"
                ) from None
            if net.num_addresses < 4:
                raise ValueError(f"{name.replace('_', '-')} {value!r} is too small")
        for name in ("scrape_interval", "scrape_timeout", "retention", "heartbeat"):
            value = getattr(self, name)
            if not value > 0:
                raise ValueError(f"{name.replace('_', '-')} must be positive, got {value!r}")
        if not self.state_dir:
            raise ValueError("state-dir must not be empty")

    @property
    def socket_path(self) -> str:
        return os.path.join(self.state_dir, SOCKET_NAME)

    @property
    def state_file(self) -> str:
        return os.path.join(self.state_dir, STATE_FILE)


class ControlPlane:
    """The running control plane (see the module docstring)."""

    def __init__(self, config: ControlConfig, *, clock: Callable[[], float] = time.time) -> None:
        self.config = config
        self._state = StateFile(config.state_file)
        self.store = Store(service_cidr=config.service_cidr, clock=clock)
        self.destinations = DestinationService(self.store)
        # statuses are written from the event loop, never inside another change's notification
        self.route_status = RouteStatusController(
            self.store,
            clock=clock,
            schedule=lambda fn: asyncio.get_running_loop().call_soon(fn),
            cache=self.destinations.policies.cache,
        )
        self.stats = Stats(self.store, clock=clock, retention=config.retention)
        self.scraper = Scraper(
            self.store,
            self.stats,
            ScrapeConfig(
                interval=config.scrape_interval,
                timeout=config.scrape_timeout,
                allowed_networks=(config.pod_cidr, "127.0.0.0/8"),
            ),
            clock=clock,
        )
        self.api = Api(self.store, self.destinations, self.stats, heartbeat=config.heartbeat)
        self.http = HttpServer(self.api.handle)
        self.tcp_address: Address | None = None
        self._scrape_task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        return f"<ControlPlane {self.config.socket_path} {self.store!r}>"

    @property
    def endpoint(self) -> str:
        return f"unix:{self.config.socket_path}"

    async def start(self) -> None:
        os.makedirs(self.config.state_dir, mode=0o755, exist_ok=True)
        snapshot = self._state.load()
        if snapshot is not None:
            for warning in self.store.restore(snapshot):
                log.warning("%s", warning)
            log.info(
                "restored %d objects at resourceVersion %d from %s",
                len(self.store),
                self.store.resource_version,
                self._state.path,
            )
        # listen first: a second control plane on the same state dir fails here, before it
        # could write over the running one's state
        await self.http.listen_unix(self.config.socket_path)
        self.store.on_commit = self._save
        self._save(self.store)
        self.route_status.resync()
        if self.config.http_listen is not None:
            host, port = self.config.http_listen
            try:
                self.tcp_address = await self.http.listen_tcp(host, port)
            except OSError as exc:
                log.warning("not listening on %s:%d: %s", host, port, exc.strerror or exc)
        self._scrape_task = asyncio.get_running_loop().create_task(self.scraper.run())
        log.info("control plane listening on %s", self.config.socket_path)

    def _save(self, store: Store) -> None:
        try:
            self._state.save(store.snapshot())
        except OSError as exc:
            log.error("cannot save the store to %s: %s", self._state.path, exc)

    async def stop(self, grace: float = 5.0) -> None:
        if self._scrape_task is not None:
            self._scrape_task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._scrape_task
            self._scrape_task = None
        await self.http.close(grace)
        self.route_status.close()
        self.destinations.close()


async def serve(config: ControlConfig) -> None:
    """Run the control plane until SIGTERM or SIGINT."""
    plane = ControlPlane(config)
    await plane.start()
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    try:
        await stop.wait()
    finally:
        for sig in (signal.SIGTERM, signal.SIGINT):
            loop.remove_signal_handler(sig)
        log.info("control plane stopping")
        await plane.stop()
