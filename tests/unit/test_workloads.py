"""The local mesh's Deployment and ReplicaSet controllers (kube-controller-manager's rules) over a
real store: owner references and names, rollouts within maxSurge/maxUnavailable at every step,
Recreate, scale-down order, failed pods replaced with backoff, cascading deletes, graceful pod
deletion; and the rollout planner as a property over whole simulated rollouts."""

from __future__ import annotations

import itertools
import random
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from weft.control.localstate import StoreState
from weft.control.state import KINDS
from weft.control.store import Store
from weft.resources import pods
from weft.resources.models import RollingUpdate
from weft.resources.replicaset import controller_of
from weft.runtime.local.deployments import (
    DeploymentController,
    RSView,
    plan_scale,
    rollout_limits,
    template_hash,
)
from weft.runtime.local.replicasets import ReplicaSetController, generated_name
from weft.testing.clock import FakeClock

TEMPLATE = {"metadata": {"labels": {"app": "web"}}, "spec": {"containers": [{"name": "w"}]}}


class Plane:
    """A store with both controllers, their work run to quiescence by :meth:`settle`, and a
    stand-in kubelet (:meth:`kubelet`) that starts pods, makes them ready and finishes
    deletions."""

    def __init__(self) -> None:
        counter = itertools.count(1)
        self.clock = FakeClock(1_700_000_000.0)
        self.store = Store(clock=self.clock, uid=lambda: f"uid-{next(counter)}")
        self.state = StoreState(self.store, (*KINDS, "Deployment", "ReplicaSet"))
        self.queue: list[Callable[[], None]] = []
        self.timers: list[tuple[float, Callable[[], None]]] = []

        def schedule(fn: Callable[[], None]) -> object:
            self.queue.append(fn)
            return None

        def later(delay: float, fn: Callable[[], None]) -> object:
            self.timers.append((self.clock() + delay, fn))
            return None

        self.deployments = DeploymentController(self.state, self.store, schedule=schedule)
        self.replica_sets = ReplicaSetController(
            self.state, self.store, schedule=schedule, later=later, clock=self.clock,
            rng=random.Random(7),
        )  # fmt: skip

    def settle(self) -> None:
        for _ in range(1000):
            if not self.queue:
                return
            self.queue.pop(0)()
        raise AssertionError("the controllers never settled")

    def advance(self, seconds: float) -> None:
        self.clock.advance(seconds)
        due = [t for t in self.timers if t[0] <= self.clock()]
        self.timers = [t for t in self.timers if t[0] > self.clock()]
        for _, fn in due:
            fn()
        self.settle()

    def apply(self, *docs: dict[str, Any]) -> None:
        self.store.apply(list(docs))
        self.settle()

    def pods(self) -> list[dict[str, Any]]:
        return self.store.list("Pod", "default")

    def kubelet(self, ready: Callable[[dict[str, Any]], bool] = lambda p: True) -> None:
        """One pass of a node: terminating pods are gone, new pods start, some become ready."""
        for n, p in enumerate(self.pods()):
            name = p["metadata"]["name"]
            if pods.is_terminating(p):
                self.store.delete([ref(name)], grace=0)
            elif not (p.get("status") or {}).get("hostIP"):
                status = {"phase": "Pending", "podIP": f"10.244.0.{n + 2}", "hostIP": "10.0.0.1"}
                self.store.put_status("Pod", "default", name, status)
            elif not pods.is_ready(p) and pods.phase(p) != "Failed" and ready(p):
                status = {**p["status"], "phase": "Running", "ready": True, "conditions": []}
                self.store.put_status("Pod", "default", name, status)
        self.settle()


def ref(name: str, kind: str = "Pod") -> dict[str, Any]:
    return {"kind": kind, "metadata": {"name": name, "namespace": "default"}}


def deployment(replicas: int = 3, image: str = "v1", **strategy: Any) -> dict[str, Any]:
    spec: dict[str, Any] = {
        "replicas": replicas,
        "selector": {"matchLabels": {"app": "web"}},
        "template": {
            "metadata": {"labels": {"app": "web"}},
            "spec": {"containers": [{"name": "w", "image": image, "command": ["x"]}]},
        },
    }
    if strategy:
        spec["strategy"] = strategy
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": {"name": "web", "namespace": "default"},
        "spec": spec,
    }


def live(plane: Plane) -> list[dict[str, Any]]:
    return [p for p in plane.pods() if not pods.is_terminating(p) and not pods.is_finished(p)]


def test_template_hash_is_stable_and_sensitive() -> None:
    assert template_hash(TEMPLATE) == template_hash(dict(reversed(list(TEMPLATE.items()))))
    other = {**TEMPLATE, "spec": {"containers": [{"name": "x"}]}}
    assert template_hash(TEMPLATE) != template_hash(other)
    assert len(template_hash(TEMPLATE)) == 10


def test_generated_names_stay_hostnames() -> None:
    name = generated_name("a" * 70, random.Random(1))
    assert len(name) <= 63 and name[-6] == "-"


def test_rollout_limits_follow_kubernetes_rounding() -> None:
    default = RollingUpdate()
    assert rollout_limits(default, 3) == (1, 0)
    assert rollout_limits(default, 4) == (1, 1)
    assert rollout_limits(default, 10) == (3, 2)
    assert rollout_limits(RollingUpdate(0, 0), 3) == (1, 0)
    assert rollout_limits(default, 5, "Recreate") == (0, 5)


def test_a_deployment_owns_a_replicaset_that_owns_its_pods() -> None:
    plane = Plane()
    plane.apply(deployment(3))
    (rs,) = plane.store.list("ReplicaSet", "default")
    h = rs["metadata"]["labels"]["pod-template-hash"]
    assert rs["metadata"]["name"] == f"web-{h}"
    dep = plane.store.get("Deployment", "default", "web")
    assert dep is not None
    assert controller_of(rs) == ("Deployment", "web", dep["metadata"]["uid"])
    assert rs["spec"]["selector"]["matchLabels"] == {"app": "web", "pod-template-hash": h}
    assert rs["metadata"]["annotations"]["deployment.kubernetes.io/revision"] == "1"
    ps = plane.pods()
    assert len(ps) == 3
    for p in ps:
        assert p["metadata"]["name"].startswith(f"web-{h}-")
        assert p["metadata"]["labels"] == {"app": "web", "pod-template-hash": h}
        assert controller_of(p) == ("ReplicaSet", f"web-{h}", rs["metadata"]["uid"])
        assert pods.workload(p) == ("Deployment", "web")
    plane.kubelet()
    plane.kubelet()
    dep = plane.store.get("Deployment", "default", "web")
    assert dep is not None
    status = dep["status"]
    assert (status["replicas"], status["readyReplicas"], status["availableReplicas"]) == (3, 3, 3)
    assert status["updatedReplicas"] == 3
    assert status["observedGeneration"] == dep["metadata"]["generation"] == 1
    progressing = next(c for c in status["conditions"] if c["type"] == "Progressing")
    assert progressing["reason"] == "NewReplicaSetAvailable"
    rs = plane.store.get("ReplicaSet", "default", f"web-{h}")
    assert rs is not None and rs["status"]["readyReplicas"] == 3
    assert rs["status"]["observedGeneration"] == rs["metadata"]["generation"]


@pytest.mark.parametrize("replicas,surge,unavailable", [(3, 1, 0), (4, 1, 1), (10, 3, 2)])
def test_a_rolling_update_stays_within_its_limits_at_every_step(
    replicas: int, surge: int, unavailable: int
) -> None:
    plane = Plane()
    plane.apply(deployment(replicas))
    for _ in range(3):
        plane.kubelet()
    strategy = {"type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": surge, "maxUnavailable": unavailable}}  # fmt: skip
    plane.apply(deployment(replicas, image="v2", **strategy))
    stored = plane.store.get("Deployment", "default", "web")
    assert stored is not None
    new_hash = template_hash(stored["spec"]["template"])
    rng = random.Random(3)
    for _step in range(200):
        current = live(plane)
        assert len(current) <= replicas + surge
        assert sum(pods.is_ready(p) for p in current) >= replicas - unavailable
        hashes = {p["metadata"]["labels"]["pod-template-hash"] for p in current}
        if hashes == {new_hash} and len(current) == replicas and all(map(pods.is_ready, current)):
            break
        plane.kubelet(ready=lambda p: rng.random() < 0.5)
    else:
        raise AssertionError("the rollout did not finish")
    sets = {rs["metadata"]["name"]: rs for rs in plane.store.list("ReplicaSet", "default")}
    assert sets[f"web-{new_hash}"]["spec"]["replicas"] == replicas
    old = [rs for name, rs in sets.items() if name != f"web-{new_hash}"]
    assert len(old) == 1 and old[0]["spec"]["replicas"] == 0  # kept for a rollback


def test_reverting_the_template_brings_the_old_replicaset_back() -> None:
    plane = Plane()
    plane.apply(deployment(2))
    plane.kubelet()
    plane.kubelet()
    first = {rs["metadata"]["name"] for rs in plane.store.list("ReplicaSet", "default")}
    plane.apply(deployment(2, image="v2"))
    for _ in range(10):
        plane.kubelet()
    plane.apply(deployment(2))
    for _ in range(10):
        plane.kubelet()
    assert len(plane.store.list("ReplicaSet", "default")) == 2
    (back,) = [rs for rs in plane.store.list("ReplicaSet", "default") if rs["spec"]["replicas"]]
    assert back["metadata"]["name"] in first


def test_recreate_starts_new_pods_only_once_the_old_are_gone() -> None:
    plane = Plane()
    plane.apply(deployment(2, type="Recreate"))
    plane.kubelet()
    plane.kubelet()
    old = {p["metadata"]["name"] for p in plane.pods()}
    plane.apply(deployment(2, image="v2", type="Recreate"))
    # the old pods are terminating, and nothing new exists while they are
    assert all(pods.is_terminating(p) for p in plane.pods())
    assert {p["metadata"]["name"] for p in plane.pods()} == old
    plane.kubelet()  # the node finishes them
    fresh = plane.pods()
    assert len(fresh) == 2 and not old & {p["metadata"]["name"] for p in fresh}


def test_scale_down_removes_unready_pods_first() -> None:
    plane = Plane()
    plane.apply(deployment(3))
    plane.kubelet()
    names = sorted(p["metadata"]["name"] for p in plane.pods())
    # only the first becomes ready
    plane.kubelet(ready=lambda p: p["metadata"]["name"] == names[0])
    plane.apply(deployment(1))
    (kept,) = live(plane)
    assert kept["metadata"]["name"] == names[0]


def test_failed_pods_are_replaced_after_a_growing_backoff() -> None:
    plane = Plane()
    plane.apply(deployment(1))
    for created in range(1, 5):
        (p,) = live(plane)
        status = {"phase": "Failed", "hostIP": "10.0.0.1", "reason": "Invalid"}
        plane.store.put_status("Pod", "default", p["metadata"]["name"], status)
        plane.settle()
        assert live(plane) == []  # replaced only after the backoff
        assert plane.pods() == []  # the failed pod is deleted at once
        plane.advance(0.5)
        if created > 1:
            assert live(plane) == []
        plane.advance(2 ** (created - 1) * 1.2)
    assert len(live(plane)) == 1


def test_deleting_a_deployment_deletes_its_replicasets_and_drains_its_pods() -> None:
    plane = Plane()
    plane.apply(deployment(2))
    plane.kubelet()  # the pods are on a node now: their deletion is graceful
    plane.store.delete([ref("web", "Deployment")])
    plane.settle()
    assert plane.store.list("ReplicaSet", "default") == []
    left = plane.pods()
    assert len(left) == 2 and all(pods.is_terminating(p) for p in left)
    assert all(p["metadata"]["deletionGracePeriodSeconds"] == 30 for p in left)
    plane.kubelet()
    assert plane.pods() == []


def test_pods_no_node_runs_are_deleted_at_once_others_gracefully() -> None:
    plane = Plane()
    plane.apply(deployment(2))
    first, second = (p["metadata"]["name"] for p in plane.pods())
    plane.store.put_status("Pod", "default", first, {"phase": "Running", "hostIP": "10.0.0.1"})
    plane.store.delete([ref(first), ref(second)], grace=5)
    kept = plane.store.get("Pod", "default", first)
    assert kept is not None and kept["metadata"]["deletionGracePeriodSeconds"] == 5
    assert plane.store.get("Pod", "default", second) is None
    plane.store.delete([ref(first)], grace=0)
    assert plane.store.get("Pod", "default", first) is None


def test_a_replicaset_deleted_alone_takes_its_pods() -> None:
    plane = Plane()
    plane.apply(deployment(2))
    (rs,) = plane.store.list("ReplicaSet", "default")
    plane.store.delete([ref("web", "Deployment")])
    plane.store.delete([ref(rs["metadata"]["name"], "ReplicaSet")])
    plane.settle()
    assert plane.pods() == []


# -- the planner as a property ----------------------------------------------------------------


@settings(max_examples=300, deadline=None)
@given(
    old_replicas=st.integers(0, 6),
    replicas=st.integers(0, 6),
    surge=st.integers(0, 3),
    unavailable=st.integers(0, 3),
    seed=st.integers(0, 2**32 - 1),
)
def test_simulated_rollouts_converge_within_the_limits(
    old_replicas: int, replicas: int, surge: int, unavailable: int, seed: int
) -> None:
    """Drive the planner as the controllers do (ReplicaSets get their pods at once, new pods
    become ready at random later steps, removed pods leave at once) and check the invariants
    at every step."""
    if surge == 0 and unavailable == 0:
        surge = 1
    rng = random.Random(seed)
    old = RSView("old", old_replicas, available=old_replicas, pods=old_replicas)
    new = RSView("new", 0)
    floor = min(old_replicas, max(0, replicas - unavailable))
    for _step in range(200):
        plan = plan_scale(replicas=replicas, new=new, old=[old], max_surge=surge,
                          max_unavailable=unavailable)  # fmt: skip
        old_n = plan.get("old", old.replicas)
        new_n = plan.get("new", new.replicas)
        assert old_n <= old.replicas or old.replicas == 0
        if replicas >= old_replicas:
            assert min(old_n, old.available) + new.available >= floor
        assert old_n + new_n <= max(old_replicas, replicas + surge)
        # pods follow at once; available ones are kept when shrinking
        old = RSView("old", old_n, available=min(old.available, old_n), pods=old_n)
        ready = min(new.available, new_n)
        ready += sum(1 for _ in range(new_n - ready) if rng.random() < 0.5)
        new = RSView("new", new_n, available=ready, pods=new_n)
        if not plan and old.replicas == 0 and new.available == replicas == new.replicas:
            break
    assert (old.replicas, new.replicas, new.available) == (0, replicas, replicas)


def test_plan_rejects_negative_numbers() -> None:
    with pytest.raises(ValueError):
        plan_scale(replicas=-1, new=RSView("n", 0), old=[], max_surge=1, max_unavailable=0)


def test_orphaning_a_deployment_keeps_its_replicaset_and_pods_running() -> None:
    plane = Plane()
    plane.apply(deployment(2))
    plane.kubelet()
    plane.store.delete([ref("web", "Deployment")], propagation="Orphan")
    plane.settle()
    (rs,) = plane.store.list("ReplicaSet", "default")
    assert controller_of(rs) is None  # no owner left: nothing collects it
    assert len(live(plane)) == 2
    # the ReplicaSet still keeps its pods
    plane.store.delete([ref(live(plane)[0]["metadata"]["name"])], grace=0)
    plane.settle()
    assert len(live(plane)) == 2


def test_a_foreground_delete_leaves_the_owner_until_its_dependents_are_gone() -> None:
    plane = Plane()
    plane.apply(deployment(2))
    plane.kubelet()
    plane.store.delete([ref("web", "Deployment")], propagation="Foreground")
    plane.settle()
    dep = plane.store.get("Deployment", "default", "web")
    assert dep is not None and dep["metadata"]["finalizers"] == ["foregroundDeletion"]
    (rs,) = plane.store.list("ReplicaSet", "default")
    assert rs["metadata"]["deletionTimestamp"]  # in the foreground too
    assert all(pods.is_terminating(p) for p in plane.pods()) and len(plane.pods()) == 2
    plane.kubelet()  # the node finishes the pods
    assert plane.pods() == []
    assert plane.store.list("ReplicaSet", "default") == []
    assert plane.store.get("Deployment", "default", "web") is None


def test_a_foreground_delete_of_an_owner_without_dependents_is_at_once() -> None:
    plane = Plane()
    plane.apply(deployment(0))
    (rs,) = plane.store.list("ReplicaSet", "default")
    plane.store.delete([ref(rs["metadata"]["name"], "ReplicaSet")], propagation="Foreground")
    assert plane.store.list("ReplicaSet", "default") == []
