"""The published regular expression of Keyplane's key format (for secret scanners)."""

from __future__ import annotations

import re

import pytest

from keyplane.core import tokens


def test_the_published_pattern() -> None:
    assert tokens.key_regex("kp") == r"\bkp_[0-9A-Za-z]{38,128}\b"
    assert tokens.key_regex("acme") == r"\bacme_[0-9A-Za-z]{38,128}\b"
    with pytest.raises(ValueError):
        tokens.key_regex("Bad-Prefix")


@pytest.mark.parametrize("prefix", ["kp", "acme2", "kpat"])
def test_it_matches_generated_keys_in_text(prefix: str) -> None:
    pattern = re.compile(tokens.key_regex(prefix), re.ASCII)
    for _ in range(200):
        raw = tokens.generate(prefix)
        for text in (raw, f"API_KEY={raw}\n", f'"{raw}"', f"Bearer {raw}.", f"k={raw}&x=1"):
            assert pattern.findall(text) == [raw], text
        assert tokens.find_keys(f"leaked: {raw} and more", prefix) == [raw]


def test_it_refuses_near_misses() -> None:
    pattern = re.compile(tokens.key_regex("kp"), re.ASCII)
    raw = tokens.generate("kp")
    body = raw.partition("_")[2]
    near_misses = [
        "kp_" + body[:37],  # one character short
        "kp_" + body + "x" * 91,  # one character too long (129)
        "xkp_" + body,  # another prefix that ends in "kp"
        "kp-" + body,  # wrong separator
        "KP_" + body,  # prefix is lowercase
        "kp_" + body[:20] + "-" + body[21:],  # not base62
        "kp_" + body + "_suffix",  # glued to more word characters
        "ak_" + body,  # another prefix
    ]
    for text in near_misses:
        assert pattern.search(text) is None, text
    # the regex finds the shape; the CRC32 then refuses a typo without touching storage
    typo = raw[:-1] + ("0" if raw[-1] != "0" else "1")
    assert pattern.fullmatch(typo) is not None
    assert tokens.find_keys(typo, "kp") == []
