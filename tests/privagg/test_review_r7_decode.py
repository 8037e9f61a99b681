"""Review r7 (outside reviewer) of ``privagg.backends._shamir.decode`` (Berlekamp-Welch
with a check, leave-one-out for the one extra error, point validation).

Attacks: wrong decoding without an error (a wrong secret returned), the error bound
off by one at both parities of ``m - t`` and on both sides of
``LEAVE_ONE_OUT_MAX_SHARES``, errors placed in the interpolation head or among the
surplus, erasures (fewer points), and inputs of the wrong type. Decoding is right at
the bound and never returns a secret the check refuses beyond it (refused). Open (LOW):
non-integer points escape as a bare ``TypeError`` instead of ``ConfigurationError``
(internal API; the aggregator only passes ints).
"""

from __future__ import annotations

import hashlib
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from privagg.backends import _shamir
from privagg.errors import ConfigurationError
from privagg.hazmat import DeterministicRng

P = _shamir.PRIME
CAP = _shamir.LEAVE_ONE_OUT_MAX_SHARES


def _codeword(m: int, t: int, seed: int) -> tuple[bytes, dict[int, int]]:
    secret = hashlib.sha256(b"r7/%d" % seed).digest()
    return secret, _shamir.share(
        secret, list(range(1, m + 1)), t, DeterministicRng(seed)
    )


def _corrupt(pts: dict[int, int], xs: list[int], seed: int) -> dict[int, int]:
    out = dict(pts)
    for x in xs:
        out[x] = (
            out[x] + 1 + int.from_bytes(hashlib.sha256(b"%d/%d" % (seed, x)).digest())
        ) % P
    return out


@st.composite
def _case(draw: Any, max_m: int = 14) -> tuple[int, int, list[int], int]:
    m = draw(st.integers(1, max_m))
    t = draw(st.integers(1, m))
    e = draw(st.integers(0, m))
    wrong = draw(st.permutations(range(1, m + 1)))[:e]
    return m, t, sorted(wrong), draw(st.integers(0, 2**16))


@settings(max_examples=150, deadline=None)
@given(case=_case())
def test_r7_checked_decode_is_exact_within_the_bound_and_never_wrong_beyond(
    case: tuple[int, int, list[int], int],
) -> None:
    """Refused: with the check, any placement of ``e <= max_wrong_shares`` wrong
    shares gives the secret and exactly their x's; more give None or the secret (with
    independent random errors, never another value: the check would refuse it)."""
    m, t, wrong, seed = case
    secret, pts = _codeword(m, t, seed)
    got = _shamir.decode(_corrupt(pts, wrong, seed), t, lambda s: s == secret)
    if len(wrong) <= _shamir.max_wrong_shares(m, t, checked=True):
        assert got == (secret, frozenset(wrong))
    else:
        assert got is None or got[0] == secret


@settings(max_examples=150, deadline=None)
@given(case=_case())
def test_r7_unchecked_decode_is_exact_within_the_unique_bound(
    case: tuple[int, int, list[int], int],
) -> None:
    """Refused: without a check, any ``e <= (m - t) // 2`` wrong shares are corrected
    and named exactly."""
    m, t, wrong, seed = case
    if len(wrong) > (m - t) // 2:
        return
    secret, pts = _codeword(m, t, seed)
    assert _shamir.decode(_corrupt(pts, wrong, seed), t) == (secret, frozenset(wrong))


@pytest.mark.parametrize("m", [CAP - 1, CAP, CAP + 1, CAP + 2])
def test_r7_the_leave_one_out_bound_at_the_cap(m: int) -> None:
    """Refused / exact off-by-one check at the cap: for ``m - t`` odd the bound is
    ``(m - t + 1) // 2`` up to ``m = 32`` and ``(m - t) // 2`` above; at the bound
    (the liars spread over head and surplus) the secret and names are exact, one more
    gives None (never a secret the check refuses)."""
    t = m - 5  # m - t = 5: odd
    secret, pts = _codeword(m, t, m)
    bound = _shamir.max_wrong_shares(m, t, checked=True)
    assert bound == (3 if m <= CAP else 2)
    xs = sorted(pts)
    liars = [xs[0], xs[t - 1], xs[-1], xs[-2]][: bound + 1]
    check = lambda s: s == secret  # noqa: E731
    assert _shamir.decode(_corrupt(pts, liars[:bound], 1), t, check) == (
        secret,
        frozenset(liars[:bound]),
    )
    assert _shamir.decode(_corrupt(pts, liars, 1), t, check) is None


def test_r7_erasures_leave_a_shorter_code_with_its_own_bound() -> None:
    """Refused: dropping shares (erasures) shrinks the bound with ``m``: m = 9, t = 3
    corrects 3; after 2 erasures (m = 7) 2 are corrected and the third aborts, even
    though it was correctable before; never a wrong secret."""
    secret, pts = _codeword(9, 3, 4)
    check = lambda s: s == secret  # noqa: E731
    liars = [2, 5, 8]
    assert _shamir.decode(_corrupt(pts, liars, 2), 3, check) == (
        secret,
        frozenset(liars),
    )
    erased = {x: v for x, v in _corrupt(pts, liars, 2).items() if x not in (1, 9)}
    assert _shamir.max_wrong_shares(7, 3, checked=True) == 2
    assert _shamir.decode(erased, 3, check) is None
    erased2 = {x: v for x, v in _corrupt(pts, liars[:2], 2).items() if x not in (1, 9)}
    assert _shamir.decode(erased2, 3, check) == (secret, frozenset(liars[:2]))


@pytest.mark.parametrize(
    "points",
    [{1: 1, 2: 2, 3: 3}, {P - 1: 5, P - 2: 6, 1: 7}],
    ids=["small", "huge-x"],
)
def test_r7_any_t_points_decode_to_a_secret_or_none(points: dict[int, int]) -> None:
    """Refused: arbitrary values at valid x's (even near the prime) never raise an
    untyped error: a 32-byte secret (the interpolation) or None."""
    got = _shamir.decode(points, 3)
    assert got is None or (len(got[0]) == 32 and got[1] == frozenset())


@pytest.mark.parametrize("kind", ["float-x", "float-y", "float-t"])
def test_r7_non_integer_points_are_a_typed_error(kind: str) -> None:
    """Fixed (review r7, LOW, internal API; decode now checks the types): ``decode`` validates the range of the
    points (ConfigurationError) but not their type: a float x, a float share value
    or a float threshold raises a bare TypeError from ``pow``/``>>``/slicing. The
    aggregator only passes ints, so this is hygiene; the docstring promises
    ConfigurationError for "a share value that is not a canonical field element"."""
    _, pts = _codeword(5, 3, 1)
    t: Any = 3
    if kind == "float-x":
        pts[1.5] = pts.pop(1)  # type: ignore[index]
    elif kind == "float-y":
        pts[1] = 2.5  # type: ignore[assignment]
    else:
        t = 3.0
    with pytest.raises(ConfigurationError):
        _shamir.decode(pts, t)
