"""Fault knobs for canary experiments: errors and latency, off by default.

Set per process from the environment (``FAULT_ERROR_RATE``, ``FAULT_ERROR_STATUS``,
``FAULT_LATENCY_MS``, ``FAULT_LATENCY_JITTER_MS``, ``FAULT_LATENCY_SHARE``: the
share of requests that get the added latency, 1 = all; 0.02 with 20 ms moves
only the tail, p99, which is the hard case for a canary analysis), so a canary analysis can be
shown a bad v2 without changing its code. Health probes, metrics and the API
document are exempt: a faulty canary should fail its users, not its probes,
just as a real regression usually does.
"""

import random
import time
from dataclasses import asdict, dataclass

from flask import Flask, request

from servicekit.errors import ApiError

_EXEMPT_SUFFIXES = ("/health-status", "/metrics", "/openapi.json", "/docs")


@dataclass(frozen=True)
class Faults:
    error_rate: float = 0.0
    error_status: int = 503
    latency_ms: float = 0.0
    latency_jitter_ms: float = 0.0
    latency_share: float = 1.0

    @classmethod
    def from_config(cls, config: dict) -> "Faults":
        faults = cls(
            error_rate=config["FAULT_ERROR_RATE"],
            error_status=config["FAULT_ERROR_STATUS"],
            latency_ms=config["FAULT_LATENCY_MS"],
            latency_jitter_ms=config["FAULT_LATENCY_JITTER_MS"],
            latency_share=config["FAULT_LATENCY_SHARE"],
        )
        if not 0.0 <= faults.error_rate <= 1.0:
            raise ValueError("FAULT_ERROR_RATE must be between 0 and 1")
        if faults.error_status not in (500, 503):
            raise ValueError("FAULT_ERROR_STATUS must be 500 or 503")
        if faults.latency_ms < 0 or faults.latency_jitter_ms < 0:
            raise ValueError("FAULT_LATENCY_MS and FAULT_LATENCY_JITTER_MS must not be negative")
        if not 0.0 <= faults.latency_share <= 1.0:
            raise ValueError("FAULT_LATENCY_SHARE must be between 0 and 1")
        return faults

    @property
    def active(self) -> bool:
        return self.error_rate > 0 or self.latency_ms > 0 or self.latency_jitter_ms > 0

    def as_dict(self) -> dict:
        return {**asdict(self), "active": self.active}

    def install(self, app: Flask) -> None:
        if self.active:
            app.before_request(self._inject)

    def _inject(self) -> None:
        if request.path.endswith(_EXEMPT_SUFFIXES):
            return
        delay_ms = 0.0
        if self.latency_share >= 1.0 or random.random() < self.latency_share:
            delay_ms = self.latency_ms + random.uniform(0, self.latency_jitter_ms)
        if delay_ms > 0:
            time.sleep(delay_ms / 1000)
        if random.random() < self.error_rate:
            raise ApiError(self.error_status, "injected fault (FAULT_ERROR_RATE)",
                           code="injected_fault")
