"""Review r7 (outside reviewer) of the DP noise binding in ``params_id`` (#14):
``privagg.backends._masking.noise_binding`` / ``RingSizing`` and
``privagg.backends._common.noise_descriptor``, for SecAgg+ (passive, active) and
additive.

Attack: two roles given different noise shares that still compute the same
``params_id`` (type confusion, float formatting, numpy types, bool, str), and inputs
that make the binding raise something outside the ``PrivaggError`` tree. The binding is
documented (docs/dp.md, "Every role has the same share") to bind the share's type, its
``stddev`` as an IEEE-754 double when it is a real number, and its headroom; a share
without a numeric ``stddev`` is bound by type and headroom only. Findings: a real number
whose conversion to float raises ``TypeError`` escapes untyped (open, LOW); the documented
limits (a non-real ``stddev`` such as a 0-d numpy array is not bound; values closer than
a double's precision collide) are pinned.
"""

from __future__ import annotations

import decimal
import fractions
import math
import numbers
from typing import Any

import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

import privagg
from privagg.backends._common import noise_descriptor
from privagg.backends._masking import noise_binding
from privagg.dp import DiscreteGaussianShare, SkellamShare
from tests.privagg.test_masking_noise_binding import CASES
from tests.privagg.test_review_r5_noise_binding import _pid, _Third


# -- equal descriptions <=> equal values -----------------------------------------------------
@given(
    a=st.floats(allow_nan=False, allow_infinity=False),
    b=st.floats(allow_nan=False, allow_infinity=False),
)
def test_r7_finite_doubles_are_bound_bit_for_bit(a: float, b: float) -> None:
    """Refused: two finite ``stddev`` doubles get the same binding iff they are the
    same double bit for bit (so 0.0 and -0.0 differ, subnormals differ); numpy's
    float64 and a Python float of one value agree (the same share)."""
    same = noise_binding(_Third(a), 1.0) == noise_binding(_Third(b), 1.0)
    assert same is (np.float64(a).tobytes() == np.float64(b).tobytes())
    assert noise_binding(_Third(np.float64(a)), 1.0) == noise_binding(_Third(a), 1.0)


@given(h1=st.floats(0.0, 1e300), h2=st.floats(0.0, 1e300))
def test_r7_headroom_is_bound(h1: float, h2: float) -> None:
    """Refused: two equal shares sized for different headrooms get different parts."""
    same = noise_binding(_Third(1.0), h1) == noise_binding(_Third(1.0), h2)
    assert same is (h1 == h2 and math.copysign(1, h1) == math.copysign(1, h2))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (np.float32(0.1), 0.1),  # float32(0.1) is another double than 0.1
        (np.float16(1.5), 1.5000001),
        (True, 1.0),  # bool is not bound as a number: never equal to 1.0
        (fractions.Fraction(1, 3), 1 / 3 + 2**-54 * 3),
    ],
)
def test_r7_type_confusions_get_distinct_bindings(a: Any, b: Any) -> None:
    """Refused: numpy scalars narrower than a double, bool against 1.0 and a
    Fraction against a nearby float are not confused."""
    assert noise_binding(_Third(a), 1.0) != noise_binding(_Third(b), 1.0)


def test_r7_builtin_shares_refuse_non_real_stddev() -> None:
    """Refused: the built-in shares do not accept a str, bool, complex or array
    ``stddev`` (so the documented non-numeric fallback concerns third-party shares
    only)."""
    for bad in ("0.1", True, 1 + 0j, np.array([0.1]), None):
        for cls in (DiscreteGaussianShare, SkellamShare):
            with pytest.raises(privagg.PrivaggError):
                cls(bad)


# -- documented limits, pinned ------------------------------------------------------------------
@pytest.mark.parametrize(
    ("a", "b"),
    [
        (np.array(0.1), np.array(10.0)),  # a 0-d numpy array is not numbers.Real
        ("0.1", "10"),
        (1 + 0j, 10 + 0j),
        (False, True),
    ],
    ids=["0d-array", "str", "complex", "bool"],
)
@pytest.mark.parametrize("case", CASES)
def test_r7_non_real_stddev_is_not_bound_documented_limit(
    case: str, a: Any, b: Any
) -> None:
    """Pinned limit (LOW, documented in docs/dp.md: "For a share without a numeric
    stddev only its type and headroom are bound"): a third-party share whose
    ``stddev`` is a 0-d numpy array (``np.asarray(0.1)``), a str, a complex or a bool
    is treated as having none: two such shares 100x apart with the same headroom get
    the same ``params_id``. Only the headroom (a different one for a share whose
    headroom follows its stddev) tells them apart."""
    assert _pid(case, _Third(a)) == _pid(case, _Third(b))


@pytest.mark.parametrize(
    ("a", "b"),
    [
        (decimal.Decimal("0.1"), decimal.Decimal("0.1000000000000000000001")),
        (fractions.Fraction(1, 10), 0.1),
        (np.longdouble("0.1"), np.longdouble("0.1") + np.longdouble(2) ** -66),
    ],
    ids=["decimal", "fraction", "longdouble"],
)
def test_r7_stddev_closer_than_a_double_collides_documented_limit(
    a: Any, b: Any
) -> None:
    """Pinned limit (documented: "bound as a double"): real values that round to the
    same double share the binding. The noise they describe differs by less than one
    part in 2^52; not an attack."""
    if isinstance(b, np.longdouble) and np.finfo(np.longdouble).nmant <= 52:
        assert a == b  # no extended precision on this platform: the same value
    assert a != b or np.finfo(np.longdouble).nmant <= 52
    assert noise_binding(_Third(a), 1.0) == noise_binding(_Third(b), 1.0)


# -- untyped errors ---------------------------------------------------------------------------
class _BrokenReal(numbers.Real):
    """A registered real number (e.g. a third-party unit or tensor type) whose float
    conversion raises TypeError."""

    def __float__(self) -> float:
        raise TypeError("no float for you")

    def _nope(self, *args: Any) -> Any:
        raise TypeError("unsupported")

    __trunc__ = __floor__ = __ceil__ = __round__ = _nope
    __lt__ = __le__ = __abs__ = __neg__ = __pos__ = _nope
    __add__ = __radd__ = __mul__ = __rmul__ = _nope
    __truediv__ = __rtruediv__ = __pow__ = __rpow__ = _nope
    __floordiv__ = __rfloordiv__ = __mod__ = __rmod__ = __eq__ = _nope
    __hash__ = object.__hash__


def test_r7_real_stddev_whose_float_raises_type_error_is_typed() -> None:
    """Fixed (review r7, LOW; TypeError is caught too since): ``noise_descriptor`` catches OverflowError, ValueError
    and ArithmeticError from ``float(stddev)`` but not TypeError (nor any other), so
    ``setup(noise=...)`` with such a third-party share raises a bare TypeError; the
    docs promise ConfigurationError for a stddev that "cannot be read"."""
    with pytest.raises(privagg.ConfigurationError):
        noise_descriptor(_Third(_BrokenReal()))  # type: ignore[arg-type]


@pytest.mark.parametrize(
    "bad",
    [
        math.nan,
        -math.inf,
        decimal.Decimal("NaN"),
        decimal.Decimal("sNaN"),
        decimal.Decimal("1e400"),
        fractions.Fraction(10**400, 3),
        10**400,
        np.float64("nan"),
    ],
    ids=["nan", "-inf", "dnan", "dsnan", "dhuge", "fhuge", "ihuge", "npnan"],
)
def test_r7_non_finite_stddev_is_a_typed_error(bad: Any) -> None:
    """Refused: NaN, infinities, signalling NaN and values beyond a double are a
    ConfigurationError from the binding, never another exception."""
    with pytest.raises(privagg.ConfigurationError):
        noise_binding(_Third(bad), 1.0)
