"""Named features: the only way notification versions differ.

A version is a set of features, read from ``NOTIFICATION_FEATURES`` (which
``notification-vN/release.env`` sets), never an ``if version == "v2"``. Adding a
v3 means adding a feature here and a release file, not touching the handlers.
(Istio's Bookinfo reviews v1/v2/v3 work the same way: one source, settings per version.)
"""

from dataclasses import dataclass, fields


@dataclass(frozen=True)
class Features:
    # The welcome mail gets an HTML part next to the plain text.
    html_email: bool = False

    @classmethod
    def parse(cls, names: str) -> "Features":
        """``"html_email"`` -> ``Features(html_email=True)``; unknown names are an error."""
        wanted = {name.strip() for name in names.split(",") if name.strip()}
        known = {f.name for f in fields(cls)}
        unknown = wanted - known
        if unknown:
            raise ValueError(
                f"NOTIFICATION_FEATURES: unknown feature(s) {', '.join(sorted(unknown))}; "
                f"known: {', '.join(sorted(known))}"
            )
        return cls(**{name: True for name in wanted})

    def as_dict(self) -> dict[str, bool]:
        return {f.name: getattr(self, f.name) for f in fields(self)}
