"""The key format (prefix, base62 body, CRC32 check) and the keyed digest (HMAC-SHA-256 + pepper).

Property tests use hypothesis; the statistical tests use a fixed false-alarm rate (1e-6).
"""

from __future__ import annotations

import hashlib
import hmac
import math
import re
import statistics
import zlib
from collections import Counter
from unittest import mock

import pytest
from hypothesis import assume, example, given, settings
from hypothesis import strategies as st

from keyplane.core import tokens
from keyplane.core.tokens import ALPHABET, Hasher, Pepper

KEY_RE = re.compile(r"^kp_[0-9A-Za-z]{38}$")
BASE62 = st.text(alphabet=ALPHABET, min_size=0, max_size=140)
PREFIXES = st.from_regex(r"\A[a-z][a-z0-9]{1,15}\Z")
N_KEYS = 100_000


@pytest.fixture(scope="module")
def many_keys() -> list[str]:
    return [tokens.generate("kp") for _ in range(N_KEYS)]


def make(prefix: str, body: str) -> str:
    """A string in the key format with a correct checksum (whether or not the parts are valid)."""
    return f"{prefix}_{body}{tokens.checksum(prefix, body)}"


# -- format --------------------------------------------------------------------------------


def test_generated_keys_have_the_documented_shape() -> None:
    for _ in range(200):
        key = tokens.generate("kp")
        assert KEY_RE.match(key), key
        assert len(key) == len("kp_") + tokens.BODY_LENGTH + tokens.CHECK_LENGTH


def test_entropy_from_length_is_at_least_128_bits() -> None:
    bits = tokens.BODY_LENGTH * math.log2(len(ALPHABET))
    assert len(set(ALPHABET)) == 62
    assert bits >= 128
    assert bits >= 190  # SPEC: "≥ 190 bits"


def test_checksum_is_crc32_of_prefix_and_body_in_six_base62_chars() -> None:
    body = "A" * 32
    crc = zlib.crc32(b"kp_" + body.encode())
    digits = []
    n = crc
    while n:
        n, r = divmod(n, 62)
        digits.append(ALPHABET[r])
    expected = "".join(reversed(digits)).rjust(6, "0")
    assert tokens.checksum("kp", body) == expected
    assert 62**6 > 2**32  # six characters hold every CRC32 value


def test_base62_pads_and_refuses_negative_numbers() -> None:
    assert tokens.base62(0, 6) == "000000"
    assert tokens.base62(61, 2) == "0z"
    assert tokens.base62(62, 1) == "10"
    with pytest.raises(ValueError):
        tokens.base62(-1, 6)


@settings(max_examples=300)
@given(prefix=PREFIXES)
def test_generate_then_parse_round_trips(prefix: str) -> None:
    key = tokens.generate(prefix)
    parsed = tokens.parse(key)
    assert parsed is not None
    assert parsed.prefix == prefix
    assert parsed.raw == key
    assert len(parsed.body) == tokens.BODY_LENGTH
    assert parsed.start == parsed.body[:8]
    assert key == f"{prefix}_{parsed.body}{tokens.checksum(prefix, parsed.body)}"


def test_every_single_character_substitution_is_rejected() -> None:
    """Exhaustive for a sample of keys: every position, every replacement character."""
    replacements = ALPHABET + "_-.+/= ~\x00é"
    for _ in range(25):
        key = tokens.generate("kp")
        assert tokens.parse(key) is not None
        for i, original in enumerate(key):
            for c in replacements:
                if c == original:
                    continue
                typo = key[:i] + c + key[i + 1:]
                assert tokens.parse(typo) is None, (i, c)


@settings(max_examples=500)
@given(body=st.text(alphabet=ALPHABET, min_size=38, max_size=38))
def test_random_strings_of_the_right_shape_are_rejected(body: str) -> None:
    raw = "kp_" + body
    assume(body[-6:] != tokens.checksum("kp", body[:-6]))
    assert tokens.parse(raw) is None


@given(prefix=PREFIXES, body=BASE62)
def test_parse_accepts_exactly_the_strings_whose_check_matches(prefix: str, body: str) -> None:
    raw = f"{prefix}_{body}"
    ok = (
        tokens.BODY_LENGTH + tokens.CHECK_LENGTH <= len(body) <= tokens.MAX_BODY_LENGTH
        and body[-6:] == tokens.checksum(prefix, body[:-6])
    )
    assert (tokens.parse(raw) is not None) is ok


@given(raw=st.text(max_size=200))
@example("")
@example("_")
@example("kp_")
@example("kp__" + "0" * 38)
def test_parse_never_raises_on_arbitrary_text(raw: str) -> None:
    parsed = tokens.parse(raw)
    if parsed is not None:  # only a string with a matching checksum gets through
        assert raw.startswith(parsed.prefix + "_")


def test_parse_refuses_non_strings() -> None:
    for value in (None, b"kp_x", 42, ["kp"], {"k": "v"}):
        assert tokens.parse(value) is None  # type: ignore[arg-type]


def test_prefix_restriction() -> None:
    key = tokens.generate("kp")
    other = tokens.generate("oat")
    assert tokens.parse(key, {"kp"}) is not None
    assert tokens.parse(key, {"kp", "oat"}) is not None
    assert tokens.parse(key, {"oat"}) is None
    assert tokens.parse(key, set()) is None
    assert tokens.parse(other, {"kp"}) is None
    assert tokens.parse(other, ("kp", "oat")) is not None


@pytest.mark.parametrize(
    "prefix", ["", "k", "KP", "Kp", "1kp", "kp_x", "k-p", "k p", "a" * 17, "kp\n", "ķp", "_kp"]
)
def test_odd_prefixes_are_refused_by_generate_and_parse(prefix: str) -> None:
    with pytest.raises(ValueError):
        tokens.generate(prefix)
    body = tokens.generate("kp")[3:-6]
    assert tokens.parse(make(prefix, body)) is None


def test_the_wrong_prefix_with_the_same_body_fails_the_checksum() -> None:
    key = tokens.generate("kp")
    assert tokens.parse("kq" + key[2:]) is None
    assert tokens.parse("kpx" + key[2:]) is None


def test_over_long_and_short_input_is_refused() -> None:
    body = tokens.generate("kp")[3:-6]
    assert tokens.parse(make("kp", body[:-1])) is None  # body of 31
    assert tokens.parse(make("kp", body * 3)) is not None  # longer bodies are allowed…
    too_long = "A" * (tokens.MAX_BODY_LENGTH - tokens.CHECK_LENGTH + 1)
    assert tokens.parse(make("kp", too_long)) is None  # …up to a bound
    assert tokens.parse(make("kp", "A" * 1_000_000)) is None
    assert tokens.parse(tokens.generate("kp") + "A") is None
    assert tokens.parse(" " + tokens.generate("kp")) is None
    assert tokens.parse(tokens.generate("kp") + "\n") is None


def test_many_generated_keys_have_no_duplicates(many_keys: list[str]) -> None:
    assert len(set(many_keys)) == N_KEYS
    starts = Counter(k[3:11] for k in many_keys)  # 62^8 values: collisions are very rare
    assert max(starts.values()) <= 2


def test_character_frequencies_pass_a_chi_square_test(many_keys: list[str]) -> None:
    counts = Counter("".join(k[3:-6] for k in many_keys))
    assert set(counts) == set(ALPHABET)
    n = sum(counts.values())
    expected = n / 62
    chi2 = sum((counts[c] - expected) ** 2 / expected for c in ALPHABET)
    # Wilson-Hilferty: the chi-square quantile for 61 degrees of freedom at 1 - 1e-6
    k = 61
    z = statistics.NormalDist().inv_cdf(1 - 1e-6)
    critical = k * (1 - 2 / (9 * k) + z * math.sqrt(2 / (9 * k))) ** 3
    assert chi2 < critical, (chi2, critical)


def test_first_body_character_is_uniform_too(many_keys: list[str]) -> None:
    """A modulo bias or a constant position would show up per position, not only overall."""
    counts = Counter(k[3] for k in many_keys)
    expected = N_KEYS / 62
    chi2 = sum((counts[c] - expected) ** 2 / expected for c in ALPHABET)
    k = 61
    z = statistics.NormalDist().inv_cdf(1 - 1e-6)
    assert chi2 < k * (1 - 2 / (9 * k) + z * math.sqrt(2 / (9 * k))) ** 3


def test_generate_draws_from_the_secrets_module() -> None:
    top = 62**32 - 1
    with mock.patch("keyplane.core.tokens.secrets.randbelow", return_value=top) as draw:
        key = tokens.generate("kp")
    draw.assert_called_once_with(62**32)  # every body equally likely
    assert key.startswith("kp_" + "z" * 32)
    with mock.patch("keyplane.core.tokens.secrets.randbelow", return_value=0):
        assert tokens.generate("kp").startswith("kp_" + "0" * 32)


def test_last_body_character_is_uniform_too(many_keys: list[str]) -> None:
    counts = Counter(k[-7] for k in many_keys)
    expected = N_KEYS / 62
    chi2 = sum((counts[c] - expected) ** 2 / expected for c in ALPHABET)
    k = 61
    z = statistics.NormalDist().inv_cdf(1 - 1e-6)
    assert chi2 < k * (1 - 2 / (9 * k) + z * math.sqrt(2 / (9 * k))) ** 3


# -- hasher --------------------------------------------------------------------------------

P1 = Pepper("p1", b"\x01" * 32)
P2 = Pepper("p2", b"\x02" * 32)


def test_digest_is_hmac_sha256_with_the_current_pepper() -> None:
    key = tokens.generate("kp")
    expected = hmac.new(P1.secret, key.encode(), hashlib.sha256).hexdigest()
    hasher = Hasher([P1])
    assert hasher.digest(key) == expected
    assert hasher.digest(key, "p1") == expected
    assert hasher.current is P1
    assert hasher.digest(key) != hashlib.sha256(key.encode()).hexdigest()  # keyed, not plain


def test_a_different_pepper_does_not_match() -> None:
    key = tokens.generate("kp")
    stored = Hasher([P1]).digest(key)
    other = Hasher([Pepper("p1", b"\x09" * 32)])
    assert other.digest(key) != stored
    assert not other.matches(key, "p1", stored)
    assert Hasher([P1]).matches(key, "p1", stored)
    assert not Hasher([P1]).matches(tokens.generate("kp"), "p1", stored)


def test_pepper_rotation_keeps_old_digests_valid() -> None:
    key = tokens.generate("kp")
    old_digest = Hasher([P1]).digest(key)
    rotated = Hasher([P2, P1])  # new pepper first, the old one still configured
    assert rotated.current.id == "p2"
    assert rotated.digest(key) != old_digest
    assert rotated.matches(key, "p1", old_digest)
    assert not rotated.matches(key, "p2", old_digest)
    assert rotated.candidates(key) == [("p2", rotated.digest(key)), ("p1", old_digest)]
    assert rotated.pepper_ids == ["p2", "p1"]
    # once the old pepper is dropped, the old digest no longer verifies
    assert not Hasher([P2]).matches(key, "p1", old_digest)


def test_hasher_needs_a_pepper() -> None:
    with pytest.raises(ValueError):
        Hasher([])


def test_matches_compares_in_constant_time() -> None:
    key = tokens.generate("kp")
    hasher = Hasher([P1])
    stored = hasher.digest(key)
    with mock.patch("hmac.compare_digest", wraps=hmac.compare_digest) as compare:
        assert hasher.matches(key, "p1", stored)
    compare.assert_called_once_with(stored, stored)
    with mock.patch("hmac.compare_digest", return_value=False) as compare:
        assert not hasher.matches(key, "p1", stored)  # the answer comes from compare_digest
    compare.assert_called_once()


def test_parse_compares_the_checksum_in_constant_time() -> None:
    key = tokens.generate("kp")
    with mock.patch("hmac.compare_digest", return_value=False) as compare:
        assert tokens.parse(key) is None
    compare.assert_called_once_with(key[-6:], key[-6:])


def test_pepper_repr_hides_the_secret() -> None:
    secret = b"super-secret-pepper-value-000000"
    pepper = Pepper("p9", secret)
    for text in (repr(pepper), str(pepper), f"{pepper}", repr([pepper]), repr({"p": pepper})):
        assert "super-secret" not in text
        assert secret.hex() not in text
        assert "p9" in text
    assert "super-secret" not in repr(Hasher([pepper]).__dict__)


def test_fingerprint_is_a_short_public_sha256_fragment() -> None:
    key = tokens.generate("kp")
    fp = tokens.fingerprint(key)
    assert fp == hashlib.sha256(key.encode()).hexdigest()[:12]
    assert key[3:] not in fp
