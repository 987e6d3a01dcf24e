#!/bin/bash
# Build localhost/python-base from Debian packages: CI has no container registry,
# so `python:3.12-slim` cannot be pulled. Debian bookworm's python3 (3.11, what
# requirements.txt is compiled for) and venv, from the mirror this machine's apt
# already uses. About 70 s. (From shared/recipes/compose-on-podman.)
set -euo pipefail
ROOTFS=$(mktemp -d /tmp/python-base.XXXXXX)
trap 'rm -rf "$ROOTFS"' EXIT
MIRROR=$(awk '/^URIs:/{print $2; exit}' /etc/apt/sources.list.d/debian.sources 2>/dev/null || true)
[ -n "$MIRROR" ] || MIRROR=$(awk '/^deb /{print $2; exit}' /etc/apt/sources.list)
debootstrap --variant=minbase --include=python3,python3-venv,ca-certificates \
  bookworm "$ROOTFS" "$MIRROR" >/tmp/debootstrap.log
# HTTPS egress here goes through a proxy with its own CA: trust what the host
# trusts, or pip inside the image builds cannot reach PyPI.
cp /usr/local/share/ca-certificates/*.crt "$ROOTFS/usr/local/share/ca-certificates/" 2>/dev/null || true
chroot "$ROOTFS" update-ca-certificates >/dev/null
ln -sf /usr/bin/python3 "$ROOTFS/usr/local/bin/python"
chroot "$ROOTFS" apt-get clean
rm -rf "$ROOTFS"/var/lib/apt/lists/*
tar -C "$ROOTFS" -c . | podman import \
  --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' \
  --change 'CMD ["/usr/bin/python3"]' - localhost/python-base:latest >/dev/null
