"""What `canarylab up` decides from its options and the environment."""

from __future__ import annotations

from pathlib import Path

from canarylab.cli import make_settings, parser


def settings(monkeypatch, *argv: str, daemon: str | None = None):
    if daemon is None:
        monkeypatch.delenv("AWS_XRAY_DAEMON_ADDRESS", raising=False)
    else:
        monkeypatch.setenv("AWS_XRAY_DAEMON_ADDRESS", daemon)
    args = parser().parse_args(["up", *argv])
    return make_settings(args, Path(args.overlay))


def test_segments_go_to_the_local_collector_by_default(monkeypatch):
    chosen = settings(monkeypatch, "--xray-address", "127.0.0.1:2999")
    assert (chosen.xray_address, chosen.collect_xray) == ("127.0.0.1:2999", True)


def test_a_daemon_named_in_the_environment_gets_the_segments(monkeypatch):
    chosen = settings(monkeypatch, daemon="127.0.0.1:3000")
    assert (chosen.xray_address, chosen.collect_xray) == ("127.0.0.1:3000", False)


def test_networks_and_mail_sink_come_from_options(monkeypatch):
    chosen = settings(monkeypatch, "--pod-network", "127.150.1.0/24",
                      "--service-network", "127.150.2.0/24", "--smtp-address", "127.0.0.1:2525")
    assert (chosen.pod_network, chosen.service_network, chosen.smtp_address) == \
        ("127.150.1.0/24", "127.150.2.0/24", "127.0.0.1:2525")
