"""Public ids sort by creation time, byte by byte and under case-insensitive collations."""

from __future__ import annotations

import re

from keyplane.core import ids

START = 1_900_000_000_000


def test_ids_have_a_kind_and_fit_the_id_columns() -> None:
    value = ids.new_id("key")
    assert re.match(r"^key_[0-9a-z]{9}[0-9A-Za-z]{13}$", value), value
    assert len(ids.new_id("evt")) == 26  # the width tables and columns were laid out for


def test_ids_sort_by_time_in_byte_order_and_ignoring_case() -> None:
    made = [ids.new_id("key", now_ms=START + 97 * i) for i in range(2000)]
    assert sorted(made) == made
    # linguistic collations (en_US, ICU) compare letters case-insensitively first
    assert sorted(made, key=str.casefold) == made


def test_ids_are_unique_within_one_millisecond() -> None:
    made = {ids.new_id("key", now_ms=START) for _ in range(1000)}
    assert len(made) == 1000


def test_ids_default_to_the_current_time() -> None:
    before = ids.new_id("key", now_ms=0)
    now = ids.new_id("key")
    assert before < now
    assert before[4:13] == "0" * 9
