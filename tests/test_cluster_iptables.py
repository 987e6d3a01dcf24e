"""Services as kube-proxy's iptables mode makes them: NAT rules in the kernel.

As root with the iptables command (this machine and CI), the local cluster
writes each Service as DNAT rules in a chain of its own instead of moving bytes
through the Python proxy. These tests read the real rules back with
``iptables -S``, send real connections through them, and check that the rules
leave with the cluster, even when its supervisor is SIGKILLed.
"""

from __future__ import annotations

import collections
import os
import re
import signal
import socket
import subprocess
import threading

import pytest
from cluster_fixtures import OVERLAYS, LocalCluster, get, service, wait_for

from canarylab.cluster import StateDir, iptables_chain
from canarylab.proxy import IptablesServices, IptablesUnavailable

NOTIFICATION = "notification-clusterip-service"


def _iptables_usable() -> str | None:
    try:
        IptablesServices.check()
    except IptablesUnavailable as error:
        return str(error)
    return None


pytestmark = pytest.mark.skipif(_iptables_usable() is not None,
                                reason=f"iptables cannot be used here: {_iptables_usable()}")


def rules(chain: str) -> list[str]:
    listing = subprocess.run(["iptables", "-w", "5", "-t", "nat", "-S"], capture_output=True,
                             text=True, check=True).stdout.splitlines()
    return [line for line in listing if chain in line]


def dnat_rules(chain: str, address: str) -> list[tuple[str | None, str]]:
    """(probability or None, destination) of each rule for one Service address, in order."""
    host, port = address.split(":")
    found = []
    for line in rules(chain):
        if line.startswith(f"-A {chain} -d {host}/32 ") and f"--dport {port} " in line:
            probability = re.search(r"--probability (\S+)", line)
            found.append((probability and probability.group(1),
                          re.search(r"--to-destination (\S+)", line).group(1)))
    return found


def test_rules_send_each_connection_to_one_endpoint_and_leave_with_remove():
    chain = f"CANARYLAB-TEST-{os.getpid()}"
    pods = [socket.create_server(("127.0.0.1", 0)) for _ in range(2)]
    service_address = ("127.0.0.231", pods[0].getsockname()[1] + 1)
    address_text = f"{service_address[0]}:{service_address[1]}"
    iptables = IptablesServices(chain, "127.0.0.231/32")
    seen = collections.Counter()

    def serve(pod):
        while True:
            try:
                conn, _ = pod.accept()
            except OSError:
                return
            with conn:
                seen[pod.getsockname()] += 1

    threads = [threading.Thread(target=serve, args=(pod,), daemon=True) for pod in pods]
    for thread in threads:
        thread.start()
    try:
        iptables.install()
        iptables.sync({service_address: [pod.getsockname() for pod in pods]})
        assert [p for p, _ in dnat_rules(chain, address_text)] == [
            "0.50000000000", None]
        for _ in range(200):
            with socket.create_connection(service_address, timeout=5) as conn:
                conn.recv(1)  # the pod accepted, and closed
        # 200 fair coin flips: each pod gets its share (beyond 5 sigma otherwise).
        assert sorted(seen.values())[0] > 60 and sum(seen.values()) == 200
        iptables.sync({service_address: []})  # no ready endpoint: no rule, refused
        with pytest.raises(ConnectionRefusedError):
            socket.create_connection(service_address, timeout=5)
    finally:
        iptables.remove()
        for pod in pods:
            pod.close()
    assert rules(chain) == []


def test_cluster_services_are_rules_that_go_even_when_the_supervisor_is_killed(tmp_path):
    cluster = LocalCluster(tmp_path / "home")
    chain = iptables_chain(StateDir(tmp_path / "home"))
    try:
        cluster.ok("up", str(OVERLAYS / "75-25"))
        status = cluster.status()
        assert status["proxy_mode"] == "iptables"
        notification = service(status, NOTIFICATION)
        assert notification["proxy"] == "iptables"
        # kube-proxy's rule set: 1/4, 1/3, 1/2, then the last endpoint always.
        found = dnat_rules(chain, notification["address"])
        assert [p for p, _ in found] == ["0.25000000000", "0.33333333349", "0.50000000000", None]
        assert sorted(d for _, d in found) == sorted(notification["endpoints"])
        code, headers, _ = get(notification["address"], "/notification/info")
        assert code == 200 and headers["X-Pod-Name"].startswith("notification-v")

        cluster.ok("scale", "notification-v2", "0")
        wait_for(lambda: len(dnat_rules(chain, notification["address"])) == 3,
                 what="the rules follow the endpoints")

        os.kill(int((tmp_path / "home" / "supervisor.pid").read_text()), signal.SIGKILL)
        wait_for(lambda: rules(chain) == [], timeout=10, what="the janitor removes the chain")
    finally:
        cluster.down()
    assert cluster.processes() == []
