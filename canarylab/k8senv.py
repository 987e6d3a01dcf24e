"""`make k8s-env`: create the git-ignored env files the k8s/ Secrets are made from.

Every ``k8s/**/NAME.env.example`` is committed; kustomize's secretGenerator (and
the eks component's settings) read ``NAME.env`` beside it, which git ignores. For
each missing ``NAME.env`` this copies the example, fills every empty ``*_PASSWORD``
with a random one (the in-cluster MySQL and Mailpit take whatever they are given),
and prints the keys still empty: those only the user can know (SES credentials,
the RDS endpoint...). An existing env file is never changed, only checked.
"""

from __future__ import annotations

import secrets
import sys
from pathlib import Path

from canarylab.images import REPO_ROOT

K8S = REPO_ROOT / "k8s"


def entries(text: str) -> list[tuple[str, str]]:
    """KEY=VALUE lines of an env file, comments and blank lines left out."""
    pairs = []
    for line in text.splitlines():
        if line.strip() and not line.lstrip().startswith("#") and "=" in line:
            key, value = line.split("=", 1)
            pairs.append((key.strip(), value.strip()))
    return pairs


def filled(example_text: str) -> str:
    """The example with a fresh random value for every empty *_PASSWORD."""
    lines = []
    for line in example_text.splitlines():
        key, _, value = line.partition("=")
        if not line.lstrip().startswith("#") and key.endswith("_PASSWORD") and not value:
            line = f"{key}={secrets.token_urlsafe(18)}"
        lines.append(line)
    return "\n".join(lines) + "\n"


def prepare(root: Path = K8S) -> list[str]:
    """Create missing env files; return one line per file saying what is left to do."""
    report = []
    for example in sorted(root.rglob("*.env.example")):
        target = example.with_name(example.name.removesuffix(".example"))
        where = target.relative_to(root.parent)
        if target.exists():
            action = "exists"
        else:
            target.write_text(filled(example.read_text()))
            target.chmod(0o600)
            action = "created"
        empty = [key for key, value in entries(target.read_text()) if not value]
        todo = f"fill in {', '.join(empty)}" if empty else "complete"
        report.append(f"{where}: {action}, {todo}")
    return report


def main() -> int:
    report = prepare()
    print("\n".join(report))
    print("(kind and minikube need only the mysql and mail-catcher files; "
          "EKS needs eks, rds and ses)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
