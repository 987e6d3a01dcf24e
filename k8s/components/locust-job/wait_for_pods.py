"""Wait until every declared notification pod answers through user-management.

The split check must measure the split the manifests declare, not a rollout in
progress: with 3 v1 pods declared and one still starting, the Service spreads calls
over 2 v1 pods + 1 v2 pod, and a correct deployment would fail the check. So the
Job's init container runs this first: it calls user-management's canary endpoint
(which answers with X-Notification-Version and X-Notification-Pod) until it has seen
as many distinct pods as CANARYLAB_REPLICAS declares ("3/1": four pods), or, in a
mesh variant (CANARYLAB_REPLICAS empty, CANARYLAB_EXPECT "75/25"), an answer from
every version with a non-zero weight.

Standard library only: it runs in the locustio/locust image. Exit 0 when ready,
1 when WAIT_SECONDS pass first (the Job then fails, and says why).
"""

from __future__ import annotations

import os
import sys
import time
import urllib.error
import urllib.request

CANARY_PATH = "/usermgmt/notification-xray"
VERSIONS = ("v1", "v2")


def wanted(replicas: str, expect: str) -> tuple[int, set[str]]:
    """(distinct pods to see, versions to see) for "3/1", or for "" and "75/25"."""
    if replicas:
        counts = [int(part) for part in replicas.split("/")]
        return sum(counts), {v for v, n in zip(VERSIONS, counts, strict=True) if n > 0}
    shares = [float(part) for part in expect.replace("-", "/").split("/")]
    return 0, {v for v, share in zip(VERSIONS, shares, strict=True) if share > 0}


def ask(url: str) -> tuple[str, str] | None:
    """(version, pod) of one answer through user-management, or None."""
    try:
        with urllib.request.urlopen(url, timeout=3) as response:
            version = response.headers.get("X-Notification-Version")
            pod = response.headers.get("X-Notification-Pod")
    except (OSError, urllib.error.URLError):
        return None
    return (version, pod) if version and pod else None


def main() -> int:
    env = os.environ.get
    pods_needed, versions_needed = wanted(env("CANARYLAB_REPLICAS", ""),
                                          env("CANARYLAB_EXPECT", ""))
    url = env("USERMGMT_URL", "http://usermgmt-restapp-service:8095") + CANARY_PATH
    deadline = time.monotonic() + float(env("WAIT_SECONDS", "600"))
    seen: dict[str, str] = {}  # pod -> version
    while time.monotonic() < deadline:
        # A burst per round: kube-proxy picks a pod per connection, so 20 calls
        # reach each of 4 pods with a chance of 1 - 0.75**20 = 99.7%.
        for _ in range(20):
            answer = ask(url)
            if answer:
                seen[answer[1]] = answer[0]
        if len(seen) >= pods_needed and versions_needed <= set(seen.values()):
            print(f"ready: {len(seen)} pods answered ({', '.join(sorted(seen))})", flush=True)
            return 0
        print(f"waiting: {len(seen)} of {pods_needed or 'the'} pods, versions "
              f"{sorted(set(seen.values()))} of {sorted(versions_needed)}", flush=True)
        time.sleep(2)
    print(f"not ready after {env('WAIT_SECONDS', '600')} s: saw {seen}", file=sys.stderr)
    return 1


if __name__ == "__main__":
    sys.exit(main())
