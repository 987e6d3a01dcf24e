"""Who answered: every response names the service, version and pod behind it.

This is what makes a replica-count split observable request by request (podinfo
and App Mesh's colorapp do the same): a client counts ``X-Service-Version`` and
``X-Pod-Name`` instead of guessing from logs or traces.
"""

from dataclasses import dataclass

VERSION_HEADER = "X-Service-Version"
POD_HEADER = "X-Pod-Name"


@dataclass(frozen=True)
class Identity:
    service: str  # e.g. "notification"
    version: str  # the version label: "v1", "v2"
    app_version: str  # the release: "3.0.0"
    pod: str

    def headers(self) -> dict[str, str]:
        return {VERSION_HEADER: self.version, POD_HEADER: self.pod}

    def fields(self) -> dict[str, str]:
        """The identity as it appears in JSON bodies."""
        return {"service": self.service, "version": self.version, "pod": self.pod}
