"""The logical layer of a request, once for HTTP/1 and HTTP/2: what the proxy decides per call.

A :class:`Call` is one request and its response as the policy sees it, whatever the protocol:

- **route** (the destination's routes, :mod:`weft.core.routes`): a matching rule's redirect, its
  header filters, its weighted backend (resolved through :attr:`L7Context.backend`, at once or
  when discovery answers);
- **timeouts**: the request timeout (the proxy's ``response_timeout``, a route's ``request`` and
  ``response`` timeouts and, for gRPC, the call's ``grpc-timeout``: the smallest wins; it runs
  until the response headers go out, except a gRPC deadline, which bounds the whole call), the
  per-attempt timeout (``backend_request``, or the retry policy's), and a route's idle timeout
  (no byte either way for that long; checked about once a second by the listener's reaper);
- **endpoint choice** (the concrete layer: :class:`~weft.proxy.outbound.concrete.Concrete`'s
  balancer and failure accrual): a call waits up to ``fail_fast`` seconds for an endpoint to
  appear, is answered 503 at once when failure accrual ejected all of them, and a retry or a
  re-pick after a failed connect goes to another endpoint than the one that just failed whenever
  there is one;
- **retries** with the retry budget (:mod:`weft.core.retry`): a failed attempt (a retryable status,
  a connection error, the attempt timeout) is sent again after a jittered backoff when the policy,
  its limit, the request (complete, replayable, idempotent unless the policy says otherwise) and
  the budget allow it; a failed connect is sent to another endpoint without any policy (nothing
  was sent);
- **errors the proxy makes** and their rules: 503 ``no-endpoints``/``endpoints-ejected``, 502
  ``connect-failed``/``upstream-closed``/..., 504 ``response-timeout``/``attempt-timeout``/
  ``idle-timeout``, 500 ``backend-not-found``/``no-backends``; always with the
  ``weft-proxy-error`` header; a gRPC call gets them as a trailers-only answer with the
  ``grpc-status`` :func:`grpc_status_for` gives;
- **accounting**: the balancer gets an attempt's latency to its response headers (peak-EWMA, as
  Linkerd takes it) and a failure penalty for a 5xx or a server-error ``grpc-status``; failure
  accrual gets every attempt's outcome; the request metrics (per endpoint, per route: effective
  and actual) are recorded when the call ends, with what the client finally saw.

The protocol adapters (:class:`weft.proxy.protocol.http1.exchange.Exchange`,
:class:`weft.proxy.protocol.http2.stream.H2Stream`) inherit it and implement the hooks at
the bottom of the class: open the attempt on a connection (the endpoint layer: HTTP/1 keep-alive
pools, HTTP/2 multiplexed connections), drop an attempt, rewind the request for a replay, and
write the proxy's own answers. Callbacks only: no task or future per call; timers are the event
loop's.

Not for: framing, flow control, connection pools (the protocol modules), picking the concrete
destination of a connection (the listener), authorization (``weft.proxy.inbound.policy``, asked
by the adapters before a call is decided).
"""

from __future__ import annotations

import asyncio
import logging
import random
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from weft.addr import Address, format_addr
from weft.metrics.proxy import HttpSeries, LabelItems, ProxyMetrics
from weft.policy import HeaderModifier, Redirect, RetryPolicy, Timeouts
from weft.proxy.outbound.concrete import Concrete
from weft.proxy.outbound.endpoint import EndpointState

if TYPE_CHECKING:
    from weft.core.retry import RetryBudget
    from weft.proxy.config import ProxyConfig

# weft.core.retry and weft.core.routes are imported where a policy is applied, not here: a
# sidecar with no routes or retries configured does not load them (see endpoints.py).

log = logging.getLogger("weft.proxy")

ERROR_HEADER = b"weft-proxy-error"
REPLAY_LIMIT = 64 * 1024  # request bodies up to this size are kept for a retry
MAX_CONNECT_ATTEMPTS = 3  # endpoints one attempt may dial (a failed connect sent nothing)

Headers = list[tuple[bytes, bytes]]

# The gRPC statuses that count against an endpoint in the balancer (a failure penalty), as the
# 5xx of HTTP do: the server errors (UNKNOWN, INTERNAL, UNAVAILABLE, DATA_LOSS). NOT_FOUND,
# INVALID_ARGUMENT, PERMISSION_DENIED, ... are answers about the call, not about the endpoint, and
# DEADLINE_EXCEEDED and CANCELLED are the caller's choice (a streaming call that ran into its
# deadline was served well until then): a service that answers them often stays latency-balanced.
# (Failure accrual and the metrics' classification still count every non-zero status.)
GRPC_ENDPOINT_FAILURES: frozenset[bytes | None] = frozenset({b"2", b"13", b"14", b"15"})
GRPC_UNAVAILABLE = b"14"
GRPC_DEADLINE_EXCEEDED = b"4"
GRPC_INTERNAL = b"13"

_rng = random.Random()
_monotonic = time.monotonic


def grpc_status_for(status: int, reason: str) -> bytes:
    """The ``grpc-status`` of a proxy error for a gRPC call: DEADLINE_EXCEEDED for a timeout,
    INTERNAL for a malformed ``grpc-timeout`` (as grpc-go), UNAVAILABLE otherwise."""
    if status == 504:
        return GRPC_DEADLINE_EXCEEDED
    if reason == "invalid-grpc-timeout":
        return GRPC_INTERNAL
    return GRPC_UNAVAILABLE


def _no_backends(target: str) -> asyncio.Future[Concrete]:
    fut: asyncio.Future[Concrete] = asyncio.get_running_loop().create_future()
    fut.set_exception(LookupError(f"no discovery to resolve {target}"))
    return fut


class L7Context:
    """What every HTTP connection of one listener shares, whatever its protocol."""

    def __init__(self, config: ProxyConfig, metrics: ProxyMetrics, direction: str) -> None:
        self.config = config
        self.metrics = metrics
        self.direction = direction
        self.draining = False
        self.access_log = config.access_log is not None
        self.response_timeout = config.response_timeout
        self.fail_fast = (
            config.fail_fast_outbound if direction == "outbound" else config.fail_fast_inbound
        )
        # resolves a route backend's target to its concrete (at once when known); the server
        # sets it to its listener's
        self.backend: Callable[[str], Concrete | asyncio.Future[Concrete]] = _no_backends


class Call:
    """One request and its response, as the policy sees it (see the module's docstring)."""

    __slots__ = (
        "actual", "attempt_timeout", "attempt_timer", "attempts", "authority", "avoid", "backoff",
        "budget", "concrete", "ctx", "failed", "finished", "grpc", "grpc_status", "headers",
        "idle", "last_io", "latency_ms", "method", "replay", "req_end", "resp_mod",
        "resp_started", "retries", "retry", "route", "sent_at", "series", "service", "started",
        "state", "status", "timed", "timer", "tls_labels", "waiter", "waiting",
    )  # fmt: skip

    def __init__(
        self, ctx: L7Context, target: Concrete, tls_labels: LabelItems, headers: Headers
    ) -> None:
        self.ctx = ctx
        self.service = target.service  # the destination the client called: its routes...
        self.concrete = target  # serving this attempt: the target, or a route's backend
        self.tls_labels = tls_labels  # inbound: the client's TLS labels (client_id...)
        self.headers = headers  # request headers, names lowercased (HTTP/2: pseudo first)
        self.method = b""
        self.authority = b""
        self.grpc = False  # content-type application/grpc: errors as grpc-status
        self.started = _monotonic()
        self.route: HttpSeries | None = None  # effective (client-visible) route series
        self.actual: HttpSeries | None = None  # per-attempt route series
        self.series: HttpSeries | None = None  # this attempt's endpoint series
        self.state: EndpointState | None = None  # this attempt's endpoint
        self.sent_at = 0.0
        self.timed = False  # the balancer has this attempt's outcome
        self.latency_ms = 0.0  # to the response headers (or the proxy's answer)
        self.status = 0  # the response status (0: none yet)
        self.grpc_status: bytes | None = None
        self.failed = False  # reset, aborted, or answered by the proxy
        self.finished = False
        self.resp_started = False  # response headers went to the client
        self.req_end = False  # the client finished its request
        # the request body, kept for a retry until the response starts (None: it did not fit)
        self.replay: list[bytes] | None = []
        self.attempts = 0  # connects of this attempt
        self.avoid: Address | None = None  # the endpoint whose attempt failed, for the next
        self.retry: RetryPolicy | None = None
        self.budget: RetryBudget | None = None
        self.retries = 0
        self.resp_mod: HeaderModifier | None = None
        self.timer: asyncio.TimerHandle | None = None  # request timeout or gRPC deadline
        self.attempt_timeout: float | None = None
        self.attempt_timer: asyncio.TimerHandle | None = None
        self.backoff: asyncio.TimerHandle | None = None
        self.idle: float | None = None  # no bytes either way for this long ends the call
        self.last_io = 0.0
        self.waiting: asyncio.TimerHandle | None = None
        self.waiter: Callable[[], None] | None = None  # in concrete.waiters while waiting

    # -- hooks: the protocol adapters implement these -----------------------------------------

    def _open(self, state: EndpointState) -> None:
        """Put this attempt on a connection to ``state`` (pooled, multiplexed or dialed); a
        failed connect comes back to :meth:`connect_failed`."""
        raise NotImplementedError

    def _drop_attempt(self) -> None:
        """Stop the current attempt upstream (close or reset); its answer goes nowhere."""
        raise NotImplementedError

    def _rewind(self) -> None:
        """Make the request ready to be sent again from :attr:`replay`."""
        raise NotImplementedError

    def _modify_request(self, mod: HeaderModifier) -> None:
        raise NotImplementedError

    def _send_error(self, status: int, reason: str, detail: str, extra: Headers) -> None:
        """Write the proxy's error answer (no response byte went to the client yet); then
        :meth:`_account` when the answer is complete."""
        raise NotImplementedError

    def _send_redirect(self, status: int, location: bytes) -> None:
        """Write a redirect answer; then :meth:`_account` when it is complete."""
        raise NotImplementedError

    def _deadline_passed(self) -> None:
        """The request timeout fired after the response started (only a gRPC deadline runs
        then): end the response as the protocol can."""
        raise NotImplementedError

    def flush(self) -> None:
        """Write what a timer callback produced (HTTP/2 batches its writes)."""

    # -- the decision ---------------------------------------------------------------------------

    def header(self, name: bytes) -> bytes | None:
        """A request header's value (``host``: the authority), for route matching."""
        if name == b"host":
            return self.authority
        for key, value in self.headers:
            if key == name:
                return value
        return None

    def decide(self, path: bytes, *, deadline: float | None = None, routable: bool = True) -> bool:
        """Apply the destination's policy: route, backend, filters, retries, timeouts
        (``deadline``: the call's own, gRPC's ``grpc-timeout``; ``routable``: False for a
        protocol upgrade, which is neither routed nor retried).

        False when the call was answered here (a redirect, a rule with no usable backend) or
        waits for a backend's discovery (which dispatches it)."""
        service = self.service
        policy = service.policy
        retry = policy.retry if policy is not None and routable else None
        timeouts = service.timeouts
        matched = None
        if service.known:
            table = service.routes
            if table is not None and routable:
                target, _, query = path.partition(b"?")
                matched = table.match(self.method, target, query, self.header)
            route_name = "default" if matched is None else matched.route_name
            self.route, self.actual = service.route_series(route_name)
            self.route.requests += 1
        if matched is None:
            if retry is not None or policy is not None or deadline is not None:
                self._arm(retry, timeouts, deadline)
            elif self.ctx.response_timeout is not None:
                self._arm(None, timeouts, None)
            return True
        rule = matched.rule
        if rule.retry is not None and routable:
            retry = rule.retry
        timeouts = rule.timeouts.over(timeouts)
        if rule.redirect is not None:
            self._redirect(rule.redirect, path)
            return False
        if rule.request_headers is not None:
            self._modify_request(rule.request_headers)
        self.resp_mod = rule.response_headers
        self._arm(retry, timeouts, deadline)
        if matched.picker is None:
            return True
        backend = matched.picker.pick()
        if backend is None:
            self.fail(500, "no-backends", f"route {matched.route_name}: every backend has weight 0")
            return False
        found = self.ctx.backend(backend.target)
        if isinstance(found, Concrete):
            if not found.service.known:
                self._unknown_backend(backend.target)
                return False
            self.concrete = found
            return True
        found.add_done_callback(self._backend_ready)
        return False

    def _arm(self, retry: RetryPolicy | None, timeouts: Timeouts, deadline: float | None) -> None:
        if retry is not None:
            self.retry = retry
            self.budget = self.service.budget(retry.budget)
            self.budget.record_request()
            self.attempt_timeout = retry.timeout
        if timeouts.backend_request is not None:
            self.attempt_timeout = timeouts.backend_request
        if timeouts.idle is not None:
            self.idle = timeouts.idle
            self.last_io = _monotonic()
        request = self.ctx.response_timeout
        for value in (timeouts.request, timeouts.response, deadline):
            if value is not None and (request is None or value < request):
                request = value
        if request is not None:
            self.timer = asyncio.get_running_loop().call_later(request, self._timed_out)

    def _backend_ready(self, fut: asyncio.Future[Concrete]) -> None:
        if self.finished:
            return
        if fut.cancelled() or fut.exception() is not None:
            self.fail(502, "backend-unresolved", f"cannot resolve a backend: {fut.exception()}")
        else:
            concrete = fut.result()
            if not concrete.service.known:
                self._unknown_backend(concrete.name)
            else:
                self.concrete = concrete
                self.dispatch()
        self.flush()

    def _unknown_backend(self, target: str) -> None:
        # the Gateway API's answer for the share of traffic of an unresolvable backendRef
        self.fail(500, "backend-not-found", f"route backend {target} is not a known service")

    def _redirect(self, redirect: Redirect, path: bytes) -> None:
        from weft.core.routes import redirect_location

        scheme = self.header(b":scheme") or b"http"
        port = self.service.name.rpartition(":")[2]
        target, _, query = path.partition(b"?")
        status, location = redirect_location(
            redirect, scheme, self.authority, int(port) if port.isdigit() else None, target, query
        )
        self.status = status
        self.latency_ms = (_monotonic() - self.started) * 1000.0
        self.resp_started = True
        self._send_redirect(status, location)

    # -- the endpoint ---------------------------------------------------------------------------

    def dispatch(self) -> None:
        """Pick an endpoint (another than the one that just failed, if any) and open the
        attempt on it; wait for endpoints when there is none."""
        concrete = self.concrete
        state = concrete.pick()
        if state is None:
            if concrete.all_ejected():
                self.fail(503, "endpoints-ejected", f"every endpoint of {concrete.name} is "
                          "ejected by failure accrual")  # fmt: skip
            else:
                self._wait_for_endpoints()
            return
        avoid = self.avoid
        if avoid is not None:
            self.avoid = None
            if state.addr == avoid:
                state = self._other_endpoint(avoid) or state
        self.state = state
        if self.attempt_timeout is not None and self.attempt_timer is None:
            self.attempt_timer = asyncio.get_running_loop().call_later(
                self.attempt_timeout, self._attempt_timed_out
            )
        self.sent_at = concrete.balancer.start(state.addr)
        self.timed = False
        self._open(state)

    def _other_endpoint(self, avoid: Address) -> EndpointState | None:
        concrete = self.concrete
        accrual = concrete.accrual
        others = [
            state
            for addr, state in concrete.endpoints.items()
            if addr != avoid and (accrual is None or accrual.available(addr))
        ]
        if not others:
            return None
        # the balancer picked the failed one: it gets the other endpoint's outstanding count
        concrete.balancer.finish(avoid, concrete.balancer.start(avoid), observe=False)
        return _rng.choice(others)

    def _wait_for_endpoints(self) -> None:
        concrete = self.concrete

        def wake() -> None:
            self.waiter = None
            if self.waiting is not None:
                self.waiting.cancel()
                self.waiting = None
                if not self.finished:
                    self.dispatch()
                    self.flush()

        def give_up() -> None:
            self.waiting = None
            self._leave_waiters()  # also when the client left meanwhile (fail does nothing)
            self.fail(503, "no-endpoints", f"no endpoints available for {concrete.name}")
            self.flush()

        self.waiter = wake
        concrete.waiters.append(wake)
        self.waiting = asyncio.get_running_loop().call_later(self.ctx.fail_fast, give_up)

    def _leave_waiters(self) -> None:
        waiter = self.waiter
        if waiter is not None:
            self.waiter = None
            if waiter in self.concrete.waiters:
                self.concrete.waiters.remove(waiter)

    def count(self, state: EndpointState) -> None:
        """Count this attempt's request against the endpoint that takes it (once per attempt:
        a re-pick after a failed connect counts against the endpoint finally used)."""
        if self.series is None:
            self.series = self.concrete.http_series(state, self.authority, self.tls_labels)
            self.series.requests += 1
            if self.actual is not None:
                self.actual.requests += 1

    def _timed(self, success: bool, *, observe: bool = True) -> None:
        """Give the balancer this attempt's outcome and end its outstanding count (once)."""
        state = self.state
        if not self.timed and state is not None:
            self.timed = True
            self.concrete.balancer.finish(
                state.addr, self.sent_at, success=success, observe=observe
            )

    def connect_failed(self, exc: BaseException | None) -> None:
        """This attempt's connect failed: nothing was sent, so another endpoint may be tried
        without a retry policy; then a retry, then 502."""
        state = self.state
        assert state is not None
        concrete = self.concrete
        # the failed connect backed the endpoint off (Concrete.connect told the balancer); no
        # latency penalty on top: once it accepts again it serves at once
        self._timed(False, observe=False)
        concrete.record(state.addr, False)
        self.attempts += 1
        self.avoid = state.addr
        others = len(concrete.endpoints)
        if self.attempts < min(MAX_CONNECT_ATTEMPTS, max(others, 1) + 1) and others:
            self.state = None
            self.dispatch()
            return
        self.count(state)  # the failure is this endpoint's
        self.state = None  # its balancer accounting is done
        if self.retryable():
            self._retry_later()
            return
        self.fail(502, "connect-failed", f"connect to {format_addr(state.addr)}: {exc}")

    # -- the response ---------------------------------------------------------------------------

    def response_head(self, status: int, ok: bool) -> bool:
        """An attempt's response headers arrived (``ok``: not a failure of the endpoint's).
        True when the attempt is retried instead (its response goes nowhere)."""
        self.status = status
        self._timed(ok)
        self.latency_ms = (_monotonic() - self.started) * 1000.0
        retry = self.retry
        if retry is not None and not self.grpc and not self.resp_started:
            from weft.core.retry import is_retryable_status

            if is_retryable_status(retry, status) and self.retryable():
                self._retry_later()
                return True
        return False

    def commit(self, ended: bool) -> None:
        """This attempt's response is the answer: no retry any more; the request timeout ends
        (a gRPC deadline goes on until the call ends)."""
        self.resp_started = True
        self.replay = None
        if self.attempt_timer is not None:
            self.attempt_timer.cancel()
            self.attempt_timer = None
        if self.idle is not None:
            self.last_io = _monotonic()
        if self.timer is not None:
            self.timer.cancel()
            self.timer = None
            left = self._deadline_left() if not ended else 0.0
            if left > 0:
                self.timer = asyncio.get_running_loop().call_later(left, self._timed_out)

    def _deadline_left(self) -> float:
        """Seconds left of a deadline that bounds the whole call (gRPC's); 0: none."""
        return 0.0

    # -- retries --------------------------------------------------------------------------------

    def retryable(self) -> bool:
        """Whether this attempt's failure may be retried (and the budget pays for it)."""
        retry = self.retry
        if retry is None or self.retries >= retry.limit or self.resp_started:
            return False
        if not self.req_end or self.replay is None or self.ctx.draining:
            return False
        if not self.grpc:  # a gRPC call is retried on its status, whatever its method
            from weft.core.retry import may_retry

            if not may_retry(retry, self.method, None, True):
                return False
        assert self.budget is not None
        return self.budget.try_withdraw()

    def _retry_later(self) -> None:
        """Abandon this attempt and send the request again after a jittered backoff."""
        self._abandon(refused=False)
        from weft.core.retry import backoff_delay

        assert self.retry is not None
        delay = backoff_delay(self.retry, self.retries, _rng)
        self.retries += 1
        self.backoff = asyncio.get_running_loop().call_later(delay, self._redispatch)

    def _abandon(self, *, refused: bool) -> None:
        """Drop this attempt, count it (the actual route series), and rewind the request.
        ``refused``: the server never processed it (no failure of the endpoint's)."""
        if self.attempt_timer is not None:
            self.attempt_timer.cancel()
            self.attempt_timer = None
        self._drop_attempt()
        state = self.state
        concrete = self.concrete
        if state is not None:
            self.count(state)
            # a request the server refused or never processed says nothing of the endpoint's
            # health or latency: no penalty, no observation
            self._timed(not refused, observe=not refused)
            if refused:
                concrete.cancel(state.addr)
            else:
                concrete.record(state.addr, False)
            self.avoid = state.addr
        code = self._grpc_code()
        latency_ms = (_monotonic() - self.started) * 1000.0
        if self.series is not None and self.status:
            self.series.response(self.status, False, code).observe(latency_ms)
        if self.actual is not None:
            self.actual.response(self.status or 502, False, code).count += 1
        self.state = None
        self.series = None
        self.status = 0
        self.grpc_status = None
        self.attempts = 0
        self._rewind()

    def _redispatch(self) -> None:
        self.backoff = None
        if not self.finished:
            self.dispatch()
            self.flush()

    def _attempt_timed_out(self) -> None:
        self.attempt_timer = None
        if self.finished or self.resp_started:
            return
        if self.retryable():
            self._retry_later()
        else:
            self.fail(504, "attempt-timeout", "upstream did not respond in time")
        self.flush()

    def _timed_out(self) -> None:
        """The request timeout (or the gRPC deadline) expired."""
        self.timer = None
        if self.finished:
            return
        if not self.resp_started:
            self.fail(504, "response-timeout", "upstream did not respond in time")
        else:
            self._deadline_passed()
        self.flush()

    def idle_expired(self, now: float) -> bool:
        """Whether the route's idle timeout has passed for this call."""
        idle = self.idle
        return idle is not None and not self.finished and now - self.last_io > idle

    # -- endings --------------------------------------------------------------------------------

    def fail(self, status: int, reason: str, detail: str, extra: Headers | None = None) -> None:
        """Answer with a proxy error (nothing of the response went to the client yet)."""
        if self.finished or self.resp_started:
            return
        log.debug("%s %s: %d %s", self.method.decode("latin-1"), self.authority.decode("latin-1"),
                  status, detail)  # fmt: skip
        self.status = status
        self.latency_ms = (_monotonic() - self.started) * 1000.0
        self.failed = True
        if self.grpc:
            self.grpc_status = grpc_status_for(status, reason)
        self._drop_attempt()
        self.resp_started = True
        self._send_error(status, reason, detail, extra or [])

    def _grpc_code(self) -> int | None:
        grpc = self.grpc_status
        return int(grpc) if grpc is not None and grpc.isdigit() else None

    def _account(self) -> None:
        """The call ended: timers, waiters, balancer, failure accrual and metrics (once)."""
        self.finished = True
        for handle in (self.waiting, self.timer, self.attempt_timer, self.backoff):
            if handle is not None:
                handle.cancel()
        self.waiting = self.timer = self.attempt_timer = self.backoff = None
        self._leave_waiters()
        grpc = self.grpc_status
        success = not self.failed and self.status < 500 and (grpc is None or grpc == b"0")
        concrete = self.concrete
        state = self.state
        status = self.status
        if state is not None:
            if status:
                self.count(state)
            if self.timed and grpc in GRPC_ENDPOINT_FAILURES:
                # timed at its response headers, failed in its trailers: it counts against the
                # endpoint as a trailers-only failure does
                concrete.balancer.penalize(state.addr, self.sent_at)
            self._timed(success)
            if status:
                concrete.record(state.addr, success)
            else:
                concrete.cancel(state.addr)
        if status:
            code = self._grpc_code()
            series = self.series
            if series is None:
                series = self.service.unrouted_series(self.authority, self.tls_labels)
                series.requests += 1
            series.response(status, success, code).observe(self.latency_ms)
            route = self.route
            if route is not None:
                route.response(status, success, code).observe(self.latency_ms)
                if self.actual is not None and self.series is not None:
                    self.actual.response(status, success, code).count += 1


__all__ = [
    "ERROR_HEADER",
    "GRPC_ENDPOINT_FAILURES",
    "Call",
    "L7Context",
    "grpc_status_for",
]
