"""The node agent's part in pod identity: each meshed pod's service-account token on disk.

As the kubelet projects a service-account token into a pod, :class:`PodTokens` asks the API for
one (a TokenRequest bound to the Pod object: `PodApi.request_token`),
writes it where the pod's proxy reads it (``<state>/pods/<ns>/<pod>/identity/token``, readable
by the proxy's uid only, replaced atomically), asks again after
:data:`~weft.control.tokenreview.ROTATE_AFTER` (tokens hold for twice that), and removes it when
the pod ends, or at start those an earlier agent left.

Not for: what a token proves (:mod:`weft.control.tokenreview`), nor signing one (the control
plane).
"""

from __future__ import annotations

import logging
import time
from collections.abc import Callable, Coroutine, Iterable
from pathlib import Path
from typing import Any

from weft.control.tokenreview import ROTATE_AFTER
from weft.runtime.local import net
from weft.runtime.local.podapi import PodApi
from weft.runtime.local.podplan import remove_token, token_path, write_token
from weft.runtime.local.state import StateDir

log = logging.getLogger("weft.node")

Key = tuple[str, str]  # (namespace, name)


class PodTokens:
    """See the module docstring. ``spawn`` runs a coroutine in the background (the agent's)."""

    def __init__(
        self,
        api: PodApi,
        state: StateDir,
        spawn: Callable[[Coroutine[Any, Any, None]], None],
    ) -> None:
        self.api = api
        self.state = state
        self._spawn = spawn
        # when each pod's token was issued, and for what (uid, service account)
        self.issued: dict[Key, tuple[float, str, str]] = {}
        self._rotating: set[Key] = set()

    def path(self, key: Key) -> Path:
        return token_path(self.state.pod_dir(*key))

    async def issue(self, namespace: str, name: str, uid: str | None, account: str) -> Path:
        """Get pod ``namespace/name``'s token for the Pod object with ``uid`` and write it for
        its proxy; returns the path. Raises ValueError (no uid), OSError, or the API's
        refusal."""
        if not uid:
            raise ValueError(f"pod {namespace}/{name} has no metadata.uid in the store")
        issued_at = time.time()
        token = await self.api.request_token((namespace, name), uid, account)
        path = self.path((namespace, name))
        write_token(path, token, owner=net.PROXY_UID)
        self.issued[(namespace, name)] = (issued_at, uid, account)
        return path

    def rotate(self, runs: Callable[[Key, str], bool], now: float | None = None) -> list[Key]:
        """Ask again for every token older than ROTATE_AFTER whose pod still runs (``runs(key,
        uid)``); the pods whose rotation started. The proxy reads its token file each time it
        renews its certificate."""
        now = time.time() if now is None else now
        rotating: list[Key] = []
        for key, (issued_at, uid, account) in list(self.issued.items()):
            if not runs(key, uid):
                self.issued.pop(key, None)  # gone, or a new object (issued afresh at start)
                continue
            if now - issued_at < ROTATE_AFTER or key in self._rotating:
                continue
            self._rotating.add(key)
            self._spawn(self._rotate(key, uid, account))
            rotating.append(key)
        return rotating

    async def _rotate(self, key: Key, uid: str, account: str) -> None:
        try:
            await self.issue(key[0], key[1], uid, account)
        except Exception as exc:  # the API away or refusing: tried again on the next pass
            log.error("pod %s/%s: cannot rotate its identity token: %s", *key, exc)
        finally:
            self._rotating.discard(key)

    def remove(self, key: Key) -> None:
        remove_token(self.path(key))

    def remove_stale(self, running: Iterable[Key]) -> list[Path]:
        """Tokens of pods not in ``running`` (an earlier agent's): removed; which."""
        keep = {self.path(key) for key in running}
        tokens = (token_path(d) for d in self.state.pods_dir.glob("*/*"))
        stale = [t for t in tokens if t not in keep and t.parent.is_dir()]
        for token in stale:
            remove_token(token)
        if stale:
            log.info("removed %d stale pod tokens", len(stale))
        return stale


__all__ = ["PodTokens"]
