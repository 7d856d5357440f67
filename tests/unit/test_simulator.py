"""The v1 simulator's pure parts: where it may listen. Pure, no server started."""

from __future__ import annotations

import pytest

from worker.simulator import SimulatorServer


@pytest.mark.parametrize("host", ["0.0.0.0", "192.0.2.10", "::", "example.com", ""])
def test_refuses_non_loopback_hosts(host: str) -> None:
    with pytest.raises(ValueError, match="non-loopback"):
        SimulatorServer(host=host)
