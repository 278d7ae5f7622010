"""Leader election over a ``coordination.k8s.io/v1`` Lease, as client-go's ``leaderelection``.

When several replicas of the control plane run, all of them serve the proxies (reads), but only
one may write what is shared: route statuses. Each replica tries to hold the Lease
(``weft-control`` in its namespace): it takes it when the Lease is free, already its own, or has
not been renewed for ``leaseDurationSeconds`` *as this replica observed it* (by its own
monotonic clock since the record last changed, so clocks that disagree between nodes do not
matter); it renews every ``retry`` seconds and steps down when it could not renew for
``renew_deadline``. Writes are compare-and-swap on the Lease's ``resourceVersion`` (a 409 means
another replica won). On a clean stop the leader releases the Lease (holder emptied), so the
next replica takes over at once instead of after the lease duration.

:class:`Election` is the decision (sans-I/O); :class:`LeaderElector` runs it against the API.

Not for: deciding what only the leader does (the caller gates on :attr:`LeaderElector.leading`).
"""

from __future__ import annotations

import asyncio
import contextlib
import datetime as dt
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass

from lightkube import ApiError, AsyncClient
from lightkube.models.coordination_v1 import LeaseSpec
from lightkube.models.meta_v1 import ObjectMeta
from lightkube.resources.coordination_v1 import Lease

log = logging.getLogger("weft.control.leader")


@dataclass(frozen=True, slots=True)
class Record:
    """What a Lease says: its holder (``""``: free), duration and renewal."""

    holder: str
    duration: float
    renewed: str
    transitions: int


class Election:
    """Whether this replica may take or keep the Lease, from what it observed and when."""

    def __init__(self, identity: str) -> None:
        self.identity = identity
        self.record: Record | None = None
        self.observed_at = 0.0  # monotonic time the record last changed

    def observe(self, record: Record | None, now: float) -> None:
        if record != self.record:
            self.record = record
            self.observed_at = now

    def may_take(self, now: float) -> bool:
        r = self.record
        if r is None or not r.holder or r.holder == self.identity:
            return True
        return now >= self.observed_at + r.duration


def _record(lease: Lease) -> Record:
    spec = lease.spec or LeaseSpec()
    renewed = spec.renewTime.isoformat() if spec.renewTime is not None else ""
    return Record(
        holder=spec.holderIdentity or "",
        duration=float(spec.leaseDurationSeconds or 15),
        renewed=renewed,
        transitions=int(spec.leaseTransitions or 0),
    )


class LeaderElector:
    """Holds the Lease while it can; ``on_change(leading)`` is called on each change."""

    def __init__(
        self,
        client: AsyncClient,
        *,
        namespace: str,
        name: str,
        identity: str,
        lease_duration: float = 15.0,
        renew_deadline: float = 10.0,
        retry: float = 2.0,
        on_change: Callable[[bool], None] = lambda leading: None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        if not 0 < retry < renew_deadline < lease_duration:
            raise ValueError("leader election needs 0 < retry < renew deadline < lease duration")
        self.client = client
        self.namespace = namespace
        self.name = name
        self.election = Election(identity)
        self.lease_duration = lease_duration
        self.renew_deadline = renew_deadline
        self.retry = retry
        self.on_change = on_change
        self.clock = clock
        self.leading = False
        self.last_renewed = 0.0
        self.last_error = ""
        self._task: asyncio.Task[None] | None = None

    def __repr__(self) -> str:
        state = "leading" if self.leading else "following"
        return f"<LeaderElector {self.namespace}/{self.name} {self.election.identity} {state}>"

    @property
    def identity(self) -> str:
        return self.election.identity

    def start(self) -> None:
        self._task = asyncio.get_running_loop().create_task(self._run(), name="leader-election")

    async def stop(self) -> None:
        """Stop trying; a leader releases the Lease."""
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None
        if self.leading:
            self._set(False)
            with contextlib.suppress(Exception):
                await asyncio.wait_for(self._release(), self.retry)

    def _set(self, leading: bool) -> None:
        if leading != self.leading:
            self.leading = leading
            log.info(
                "%s %s the lease %s/%s",
                self.identity,
                "holds" if leading else "no longer holds",
                self.namespace,
                self.name,
            )
            try:
                self.on_change(leading)
            except Exception:
                log.exception("leader election: a change handler failed")

    async def _run(self) -> None:
        while True:
            try:
                ok = await asyncio.wait_for(self.try_once(), self.renew_deadline)
                self.last_error = ""
            except (ApiError, OSError, TimeoutError, ValueError) as exc:
                ok = False
                self.last_error = str(exc) or type(exc).__name__
                log.debug("leader election: %s", self.last_error)
            except Exception as exc:  # a client bug must not end the loop
                ok = False
                self.last_error = str(exc) or type(exc).__name__
                log.exception("leader election failed")
            now = self.clock()
            if ok:
                self.last_renewed = now
                self._set(True)
            elif self.leading:
                record = self.election.record
                taken = record is not None and record.holder not in ("", self.identity)
                if taken or now - self.last_renewed >= self.renew_deadline:
                    self._set(False)  # another holds it, or could not renew in time
            await asyncio.sleep(self.retry)

    async def try_once(self) -> bool:
        """One attempt to take or renew the Lease; True when this replica holds it after."""
        now_wall = dt.datetime.now(dt.UTC)
        try:
            lease = await self.client.get(Lease, self.name, namespace=self.namespace)
        except ApiError as exc:
            if exc.status.code != 404:
                raise
            spec = LeaseSpec(
                holderIdentity=self.identity,
                leaseDurationSeconds=int(self.lease_duration),
                acquireTime=now_wall,
                renewTime=now_wall,
                leaseTransitions=0,
            )
            meta = ObjectMeta(name=self.name, namespace=self.namespace)
            try:
                await self.client.create(Lease(metadata=meta, spec=spec))
            except ApiError as exc2:
                if exc2.status.code == 409:
                    return False  # created by another replica meanwhile
                raise
            self.election.observe(Record(self.identity, self.lease_duration, "", 0), self.clock())
            return True
        record = _record(lease)
        self.election.observe(record, self.clock())
        if not self.election.may_take(self.clock()):
            return False
        spec = lease.spec or LeaseSpec()
        if spec.holderIdentity != self.identity:
            spec.acquireTime = now_wall
            spec.leaseTransitions = record.transitions + 1
        spec.holderIdentity = self.identity
        spec.leaseDurationSeconds = int(self.lease_duration)
        spec.renewTime = now_wall
        lease.spec = spec
        try:
            updated = await self.client.replace(lease)
        except ApiError as exc:
            if exc.status.code == 409:
                return False  # another replica wrote it first
            raise
        self.election.observe(_record(updated), self.clock())
        return True

    async def _release(self) -> None:
        lease = await self.client.get(Lease, self.name, namespace=self.namespace)
        spec = lease.spec or LeaseSpec()
        if spec.holderIdentity != self.identity:
            return
        spec.holderIdentity = ""
        spec.leaseDurationSeconds = 1
        spec.renewTime = dt.datetime.now(dt.UTC)
        lease.spec = spec
        await self.client.replace(lease)
        log.info("%s released the lease %s/%s", self.identity, self.namespace, self.name)


__all__ = ["Election", "LeaderElector", "Record"]
