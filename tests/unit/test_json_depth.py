"""The JSON nesting check in front of the routes: exact on JSON, linear on anything."""

from __future__ import annotations

import json
import time
from typing import Any

from hypothesis import given, settings
from hypothesis import strategies as st

from keyplane.web.limits import too_deep

TEXT = st.text(alphabet=st.sampled_from(list('[]{}"\\:,ab \n\u00e9')), max_size=8)
VALUES = st.recursive(st.none() | st.integers() | TEXT,
                      lambda inner: st.lists(inner, max_size=3)
                      | st.dictionaries(TEXT, inner, max_size=3), max_leaves=60)


def depth(value: Any) -> int:
    if isinstance(value, list):
        return 1 + max(map(depth, value), default=0)
    if isinstance(value, dict):
        return 1 + max(map(depth, value.values()), default=0)
    return 0


@settings(max_examples=500, deadline=None)
@given(VALUES, st.integers(0, 6), st.booleans())
def test_exact_on_any_json(value: Any, limit: int, ascii_only: bool) -> None:
    body = json.dumps(value, ensure_ascii=ascii_only).encode()
    assert too_deep(body, limit) is (depth(value) > limit)


def test_deep_bodies_and_pathological_text_cost_milliseconds() -> None:
    mib = 1024 * 1024
    started = time.perf_counter()
    assert too_deep(b"[" * mib, 32)
    assert too_deep(b'{"a":' * (mib // 5), 32)
    assert not too_deep(b"[]" * (mib // 2), 32)
    assert too_deep(b"[" * 40 + b'"' + b'\\"' * (mib // 2), 32)  # an unterminated string
    assert too_deep(b"[" * 40 + b'"\\' * (mib // 2), 32)
    assert not too_deep(json.dumps({"a": "[" * mib}).encode(), 32)
    assert time.perf_counter() - started < 2  # each used to take a minute (backtracking)
