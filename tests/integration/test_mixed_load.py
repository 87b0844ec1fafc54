"""Mixed load, the short version of ``bench/mixed_load.py`` (which runs five minutes): two real
worker processes on the real PostgreSQL (a private schema) and Redis (a unique prefix), driven
from this process for 30 s with 95 % verifications, 4 % management calls and 1 % revocations.
No timing is asserted (the machine is shared); what is: no 5xx, no wrong answer (a live key
always passes, a revoked key never passes once its revocation has had the propagation bound
to spread), and memory that stays flat after warm-up."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[2] / "bench"))

from mixed_load import run

pytestmark = [pytest.mark.postgres, pytest.mark.redis, pytest.mark.slow]


@pytest.mark.timeout(240)
def test_thirty_seconds_of_mixed_load_on_two_workers(tmp_path: Path) -> None:
    result = run(30, connections=8, tmp=tmp_path)
    assert result.verifications > 100 and result.revocations > 0 and result.management > 0
    assert result.server_errors == 0 and result.transport_errors == 0, result.wrong_answers
    assert result.unexpected == 0, result.wrong_answers
    assert result.wrong_answers == []
    assert set(result.rss_growth) == {"worker-a", "worker-b"}
    assert all(growth < 0.10 for growth in result.rss_growth.values()), result.rss_kb
    assert result.ok
