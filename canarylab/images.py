"""The container images the manifests name, and what each one is on this machine.

On Kubernetes an image is a file system, a start command and the ENV lines its
Dockerfile baked in. The local cluster has no images and no registry: an image is
a folder of this working tree, started with the command the image would run
(gunicorn with the service's ``gunicorn.conf.py``), with the
image's ENV read from the file the image build bakes in. This module is the only
place that knows which image is which service.

The image's tag is checked where the working tree says what it builds
(``APP_VERSION`` in a notification image's ``release.env``): a manifest that asks
for a tag this tree does not build is refused rather than run with other code.
"""

from __future__ import annotations

import sys
from dataclasses import dataclass
from pathlib import Path

REPO_ROOT = Path(__file__).resolve().parent.parent

# The settings of the services (README's table) that hold a host name, alone or
# as host:port. Only these are looked up in the local cluster's DNS: a value such
# as AWS_XRAY_TRACING_NAME=user-management is a name, not a host.
HOST_SETTINGS = frozenset({
    "NOTIFICATION_SERVICE_HOST",
    "AWS_MAIL_SERVER_HOST",
    "AWS_XRAY_DAEMON_ADDRESS",
    "DB_HOSTNAME",
})


class UnknownImage(ValueError):
    """The manifests name an image that this working tree does not build."""


@dataclass(frozen=True)
class Image:
    """One image: where its code is, how it starts, what ENV it bakes in."""

    repository: str
    # Folders (relative to the repository root) the image copies its code from.
    source: tuple[str, ...]
    # The gunicorn application and settings file, as the image's CMD names them.
    app: str
    config: str
    # KEY=VALUE lines the image bakes in as ENV, or None.
    env_file: str | None = None
    # The env_file key that must equal the image tag, or None to accept any tag.
    tag_setting: str | None = None

    def command(self) -> list[str]:
        """The image's start command, with this venv's gunicorn."""
        gunicorn = str(Path(sys.executable).parent / "gunicorn")
        return [gunicorn, "-c", str(REPO_ROOT / self.config), self.app]

    def env(self) -> dict[str, str]:
        """The ENV the image bakes in: its env file, and the code on PYTHONPATH."""
        env = read_env_file(REPO_ROOT / self.env_file) if self.env_file else {}
        env["PYTHONPATH"] = ":".join(str(REPO_ROOT / folder) for folder in self.source)
        return env


IMAGES = {
    image.repository: image
    for image in (
        Image(
            repository="canarylab/user-management",
            source=("user-management", "common"),
            app="user_management:create_app()",
            config="user-management/gunicorn.conf.py",
        ),
        *(
            Image(
                repository=f"canarylab/notification-{version}",
                source=("notification", "common"),
                app="notification_service:create_app()",
                config="notification/gunicorn.conf.py",
                env_file=f"notification-{version}/release.env",
                tag_setting="APP_VERSION",
            )
            # One codebase: the versions differ only by the release file baked in.
            for version in ("v1", "v2")
        ),
    )
}


def split_reference(reference: str) -> tuple[str, str]:
    """'canarylab/notification-v1:3.0.0' -> ('canarylab/notification-v1', '3.0.0')."""
    repository, colon, tag = reference.rpartition(":")
    if not colon or "/" in tag:  # no tag, or the colon was a registry's port
        return reference, "latest"
    return repository, tag


def find(reference: str) -> Image:
    """The image a manifest's ``image:`` names; UnknownImage if this tree lacks it."""
    repository, tag = split_reference(reference)
    image = IMAGES.get(repository)
    if image is None:
        known = ", ".join(sorted(IMAGES))
        raise UnknownImage(f"image {reference} is not built from this working tree "
                           f"(the local cluster knows {known})")
    if image.env_file and not (REPO_ROOT / image.env_file).is_file():
        raise UnknownImage(f"image {reference} cannot run: {image.env_file} is missing")
    if image.tag_setting:
        built = image.env().get(image.tag_setting)
        if built != tag:
            raise UnknownImage(
                f"image {reference}: this working tree builds tag {built} "
                f"({image.env_file} says {image.tag_setting}={built})")
    return image


def read_env_file(path: Path) -> dict[str, str]:
    """KEY=VALUE lines; blank lines and # comments are skipped."""
    env = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        key, equals, value = line.partition("=")
        if not equals:
            raise ValueError(f"{path}:{number}: expected KEY=VALUE, got {line!r}")
        env[key.strip()] = value.strip()
    return env
