"""Addresses: what counts as this machine (a loopback simulator may be reached over plain HTTP, with Basic auth,
without a credential; nothing else may)."""

from __future__ import annotations

import ipaddress


def is_loopback(host: str) -> bool:
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return host.lower() == "localhost"
