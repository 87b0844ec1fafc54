"""Teaches schemathesis the string formats /openapi.json names that it does not know:
``ip-network`` (a CIDR with its host bits zero, as the server stores it) and ``ip-address``.
Loaded with ``SCHEMATHESIS_HOOKS=tests.integration.schemathesis_hooks``."""

from __future__ import annotations

import ipaddress

import schemathesis
from hypothesis import strategies as st


def _network(version: int) -> st.SearchStrategy[str]:
    bits = 32 if version == 4 else 128
    make = ipaddress.IPv4Network if version == 4 else ipaddress.IPv6Network
    return st.builds(lambda address, prefix: str(make((address, prefix), strict=False)),
                     st.integers(0, 2**bits - 1), st.integers(0, bits))


schemathesis.openapi.format("ip-network", _network(4) | _network(6))
schemathesis.openapi.format("ip-address", st.ip_addresses().map(str))
