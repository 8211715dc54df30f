"""Server settings: one frozen dataclass built by ``tsfm-backend serve`` and handed to the services and app."""

from __future__ import annotations

import ipaddress
import logging
from dataclasses import dataclass

log = logging.getLogger(__name__)

API_VERSION = "1.0"
LOOPBACK_NAMES = ("localhost",)


class SettingsError(ValueError):
    """A server configuration that is unsafe or impossible (names the option)."""


def is_loopback(host: str) -> bool:
    """True for ``localhost`` and loopback addresses (127.0.0.0/8, ::1); False for 0.0.0.0 and others."""
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False


@dataclass(frozen=True)
class Settings:
    """Everything the server needs to know; defaults are the safe local ones.

    Attributes:
        host: address to bind; loopback by default. Any other address needs ``token`` or ``insecure``.
        port: TCP port.
        token: bearer token every route except ``/v1/health`` requires; ``None`` means no auth.
        insecure: allow a non-loopback ``host`` without a token (a warning is logged).
        device: ``auto``, ``cpu``, ``cuda`` or ``cuda:N``.
        max_sessions: interactive sessions held at once; one more gets 503 with Retry-After.
        max_queued_jobs: automatic jobs waiting at once; one more gets 503 with Retry-After.
        kept_jobs: finished jobs whose label maps stay retrievable (oldest dropped first; each holds one
            label map of its image's size).
        max_request_bytes: largest HTTP request body (compressed bytes on the wire).
        max_array_bytes: largest array once decompressed (an int16 512x512x1000 CT is 0.5 GiB).
        image_store_bytes: decompressed bytes of uploaded images kept (least recently used dropped).
        session_liveness_s: a session without any request (heartbeat included) for this long expires.
        session_idle_s: a session without an interaction, undo, redo or reset for this long expires.
        interaction_timeout_s: longest wait for one interactive request before 503.
        retry_after_s: the Retry-After value sent with 503.
        max_windows: sliding windows one automatic job may run (counted from the image shape, the model's
            patch and ``options.step`` before the job is queued; more answer 413).
        max_job_bytes: estimated working memory one automatic job may need (same check, same answer).
        max_model_requests: interactive requests (session creation, interactions, undo, redo, reset)
            waiting for or running on the model worker at once; one more gets 503 with Retry-After at
            once. It keeps the HTTP thread pool free for every other route.
        max_uploads: request bodies of frames (image uploads, starting masks) being received and decoded
            at once; one more gets 503 with Retry-After before its body is read. Together with the two
            limits above it bounds upload memory: at most ``max_uploads`` x (``max_request_bytes`` +
            ``max_array_bytes``).
        max_undo_steps: undo steps each object of a session keeps (older ones are forgotten); each step
            holds the changed box of the mask twice (before and after).
    """

    host: str = "127.0.0.1"
    port: int = 8765
    token: str | None = None
    insecure: bool = False
    device: str = "auto"
    max_sessions: int = 8
    max_queued_jobs: int = 8
    kept_jobs: int = 8
    max_request_bytes: int = 1 << 30
    max_array_bytes: int = 2 << 30
    image_store_bytes: int = 4 << 30
    session_liveness_s: float = 120.0
    session_idle_s: float = 1800.0
    interaction_timeout_s: float = 300.0
    retry_after_s: int = 2
    max_windows: int = 10_000
    max_job_bytes: int = 16 << 30
    max_model_requests: int = 16
    max_uploads: int = 2
    max_undo_steps: int = 32

    def __post_init__(self) -> None:
        if not self.host:
            raise SettingsError("--host must not be empty")
        if not 0 <= self.port <= 65535:
            raise SettingsError(f"--port must be 0-65535, got {self.port}")
        if self.token is not None and len(self.token) < 8:
            raise SettingsError("--token must be at least 8 characters")
        if not is_loopback(self.host) and self.token is None and not self.insecure:
            raise SettingsError(
                f"--host {self.host} is reachable from other machines: give --token (clients then send "
                "'Authorization: Bearer <token>') or, on a trusted network only, --insecure"
            )
        for name in ("max_sessions", "max_queued_jobs", "kept_jobs", "max_request_bytes", "max_array_bytes",
                     "image_store_bytes", "retry_after_s", "max_windows", "max_job_bytes", "max_model_requests",
                     "max_uploads", "max_undo_steps"):
            if getattr(self, name) < 1:
                raise SettingsError(f"{name} must be at least 1, got {getattr(self, name)}")
        for name in ("session_liveness_s", "session_idle_s", "interaction_timeout_s"):
            if not getattr(self, name) > 0:
                raise SettingsError(f"{name} must be positive, got {getattr(self, name)}")

    def warn_if_exposed(self) -> None:
        """Log the one warning an operator must see: a non-loopback bind without a token."""
        if not is_loopback(self.host) and self.token is None:
            log.warning(
                "Serving on %s WITHOUT a token (--insecure): anyone who can reach this port can upload "
                "images and run models. Use --token, or an SSH tunnel to a loopback server.",
                self.host,
            )

    def public_limits(self) -> dict[str, float | int]:
        """The limits a client may need (shown in ``GET /v1/info``)."""
        return {
            "max_sessions": self.max_sessions,
            "max_queued_jobs": self.max_queued_jobs,
            "max_request_bytes": self.max_request_bytes,
            "max_array_bytes": self.max_array_bytes,
            "session_liveness_s": self.session_liveness_s,
            "session_idle_s": self.session_idle_s,
            "max_windows": self.max_windows,
            "max_job_bytes": self.max_job_bytes,
            "max_model_requests": self.max_model_requests,
            "max_uploads": self.max_uploads,
            "max_undo_steps": self.max_undo_steps,
        }
