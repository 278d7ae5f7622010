"""Flood limits of one HTTP/2 connection: the counters and checks :mod:`weft.core.h2conn` uses.

HTTP/2 lets a peer make the other side work, or queue output, for frames that cost the peer
almost nothing: a PING or a SETTINGS must be acknowledged, a stream can be opened and reset at
once (CVE-2019-9512 to 9518, CVE-2020-11080, CVE-2023-44487 "rapid reset"). Each such frame is
legal; what is abusive is how many. The limits here are Envoy's and nghttp2's (the same
defaults, counted the same way unless said otherwise); a connection over one of them is ended
with GOAWAY ENHANCE_YOUR_CALM (0xB):

- ``max_control_out`` 1000 (Envoy ``max_outbound_control_frames``, nghttp2 ``max_outbound_ack``):
  control frames the peer made us queue (PING and SETTINGS acknowledgements, RST_STREAM for its
  malformed or refused streams) that have not gone out yet. They go out when the owner takes
  the output (:meth:`H2Conn.take`), unless it said the peer stopped reading
  (:meth:`H2Conn.output_blocked`): then they keep counting until it reads again. So a peer
  that floods PINGs and never reads gets at most 1000 answers queued. The owner's own
  RST_STREAMs are not counted: they follow the owner's streams (a client's cancels passed
  upstream), and a burst of them, a client with 1000 streams going away, must not end a shared
  upstream connection.
- ``max_empty_frames`` 1 (Envoy ``max_consecutive_inbound_frames_with_empty_payload``): DATA,
  HEADERS and CONTINUATION frames in a row with no payload (after padding) and no END_STREAM.
- ``max_priority_per_stream`` 100 (Envoy ``max_inbound_priority_frames_per_stream``): PRIORITY
  frames, at most this many times (1 + the header blocks received and streams we opened).
- ``max_window_updates_per_data`` 10 (Envoy
  ``max_inbound_window_update_frames_per_data_frame_sent``): WINDOW_UPDATE frames, at most
  1 + 2 * (header blocks received and streams we opened + this many times the DATA frames
  sent). (Envoy counts only the header blocks received; a server may answer each stream we open
  with a WINDOW_UPDATE before anything else.)
- ``max_settings`` 32 (nghttp2 ``max_settings``, CVE-2020-11080): entries in one SETTINGS frame.
- ``reset_window`` 500 and ``min_stream_life`` 1.0 s (Envoy's premature-reset check,
  ``premature_reset_total_stream_count`` and ``premature_reset_min_stream_lifetime_seconds``):
  streams the peer opened and reset before we answered them (RST_STREAM before our response
  headers) and less than ``min_stream_life`` after opening them. The connection ends once such
  resets are at least half of the streams it completed, and at least ``reset_window / 2``; only
  about the last ``reset_window`` to ``2 * reset_window`` streams count (both counts are halved
  past that), so a long-lived connection cannot bank good streams and then reset freely. The
  codec has no clock: the owner sets ``H2Conn.now`` as bytes arrive (left at 0, every reset
  before the answer counts). A client whose long polls end by their deadline, unanswered, is
  not a flood.

Not for: I/O, time (these are counts, not rates), what the connection does when a limit is
passed (:mod:`weft.core.h2conn` fails it), header block sizes (``h2conn`` bounds those).
"""

from __future__ import annotations

from typing import Final


class H2Limits:
    """The flood limits of an HTTP/2 connection (see the module docstring); shared, never
    changed."""

    __slots__ = (
        "max_control_out",
        "max_empty_frames",
        "max_priority_per_stream",
        "max_settings",
        "max_window_updates_per_data",
        "min_stream_life",
        "reset_window",
    )

    def __init__(
        self,
        *,
        max_control_out: int = 1000,
        max_empty_frames: int = 1,
        max_priority_per_stream: int = 100,
        max_window_updates_per_data: int = 10,
        max_settings: int = 32,
        reset_window: int = 500,
        min_stream_life: float = 1.0,
    ) -> None:
        if reset_window < 1:
            raise ValueError(f"reset_window must be at least 1, not {reset_window}")
        self.max_control_out = max_control_out
        self.max_empty_frames = max_empty_frames
        self.max_priority_per_stream = max_priority_per_stream
        self.max_window_updates_per_data = max_window_updates_per_data
        self.max_settings = max_settings
        self.reset_window = reset_window
        self.min_stream_life = min_stream_life


DEFAULT_LIMITS: Final = H2Limits()


class FloodGuard:
    """One connection's flood counters. Each check counts one more frame and says whether a
    limit is passed (True: end the connection with ENHANCE_YOUR_CALM)."""

    __slots__ = (
        "blocked",
        "control_out",
        "data_sent",
        "empty_frames",
        "header_blocks",
        "limits",
        "max_control_out",
        "max_empty_frames",
        "opened",
        "premature",
        "priority_frames",
        "window_updates",
    )

    def __init__(self, limits: H2Limits) -> None:
        self.limits = limits
        # the two checked most often, at hand
        self.max_control_out = limits.max_control_out
        self.max_empty_frames = limits.max_empty_frames
        self.blocked = False  # the peer stopped reading: control_out is not reset by take()
        self.control_out = 0  # control frames queued in answer to the peer, not yet gone out
        self.empty_frames = 0  # DATA/HEADERS/CONTINUATION in a row with nothing in them
        # header blocks received (requests, responses, trailers) and streams we opened: what
        # justifies the peer's PRIORITY and WINDOW_UPDATE frames
        self.header_blocks = 0
        self.priority_frames = 0
        self.window_updates = 0
        self.data_sent = 0  # DATA frames we sent
        self.opened = 0  # streams the peer opened (server side), halved with ``premature``
        self.premature = 0  # ... and reset before we answered them

    def control(self) -> bool:
        """A control frame was queued in answer to the peer."""
        self.control_out += 1
        return self.control_out > self.max_control_out

    def empty(self) -> bool:
        """A DATA, HEADERS or CONTINUATION frame with no payload and no END_STREAM (any other
        of these three resets the count: ``empty_frames = 0``)."""
        self.empty_frames += 1
        return self.empty_frames > self.max_empty_frames

    def priority(self) -> bool:
        self.priority_frames += 1
        return self.priority_frames > self.limits.max_priority_per_stream * (1 + self.header_blocks)

    def window_update(self) -> bool:
        self.window_updates += 1
        per_data = self.limits.max_window_updates_per_data
        return self.window_updates > 1 + 2 * (self.header_blocks + per_data * self.data_sent)

    def reset_early(self, open_now: int) -> bool:
        """The peer reset one of its streams before we answered it; ``open_now``: its streams
        still open (so ``opened - open_now`` were completed, this one included)."""
        self.premature += 1
        window = self.limits.reset_window
        closed = self.opened - open_now
        while closed >= 2 * window:  # forget the older half (a few rounds at most)
            half = closed >> 1
            self.opened -= half
            closed -= half
            self.premature -= self.premature >> 1
        return self.premature * 2 >= (closed if closed > window else window)


__all__ = ["DEFAULT_LIMITS", "FloodGuard", "H2Limits"]
