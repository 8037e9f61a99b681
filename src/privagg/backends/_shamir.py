"""Shamir secret sharing of 32-byte secrets over the prime field GF(2**256 + 297).

``2**256 + 297`` is the smallest prime above ``2**256``, so every 32-byte secret is a
field element and a share is one 33-byte field element. A secret is the constant term of
a random polynomial of degree ``t - 1``; the share of the holder with x-coordinate
``x`` (``1 <= x < PRIME``) is the polynomial's value at ``x``. Any ``t`` shares
reconstruct the secret by Lagrange interpolation at 0; any ``t - 1`` shares are
independent uniform field elements (perfect secrecy).

Shares travel inside AES-GCM (see :mod:`privagg.backends._primitives`), so a share
altered in transit is rejected by the tag before it reaches :func:`reconstruct`. A share
its *holder* got wrong (a malicious holder) is another matter: :func:`decode` treats the
shares as a Reed-Solomon codeword and corrects a bounded number of wrong ones
(Berlekamp-Welch), using an optional check of the secret (SecAgg+: the recovered mask
key must give the advertised public key) as a verifier.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from functools import lru_cache, partial

from privagg._rng import Rng
from privagg.errors import ConfigurationError, DeserializationError

__all__ = [
    "LEAVE_ONE_OUT_MAX_SHARES",
    "PRIME",
    "SHARE_SIZE",
    "decode",
    "decode_share",
    "max_wrong_shares",
    "encode_share",
    "random_element",
    "reconstruct",
    "share",
]

PRIME = (1 << 256) + 297
SHARE_SIZE = 33
_SECRET_SIZE = 32


def random_element(rng: Rng) -> int:
    """A uniform field element (rejection sampling on 257-bit strings)."""
    while True:
        v = int.from_bytes(rng.random_bytes(SHARE_SIZE), "big") & ((1 << 257) - 1)
        if v < PRIME:
            return v


def share(secret: bytes, xs: Sequence[int], threshold: int, rng: Rng) -> dict[int, int]:
    """Split a 32-byte ``secret`` into one share per x-coordinate in ``xs``.

    Args:
        secret: exactly 32 bytes.
        xs: distinct x-coordinates in ``[1, PRIME)`` (one per holder).
        threshold: shares needed to reconstruct, ``1 <= threshold <= len(xs)``.
        rng: randomness for the polynomial's coefficients.

    Returns:
        x -> share value.
    """
    if len(secret) != _SECRET_SIZE:
        raise ConfigurationError(
            f"secrets must be {_SECRET_SIZE} bytes, got {len(secret)}"
        )
    if len(set(xs)) != len(xs) or any(not 0 < x < PRIME for x in xs):
        raise ConfigurationError(
            "share x-coordinates must be distinct and in [1, PRIME)"
        )
    if not 1 <= threshold <= len(xs):
        raise ConfigurationError(
            f"threshold must be in [1, {len(xs)}], got {threshold}"
        )
    coeffs = [int.from_bytes(secret, "big")] + [
        random_element(rng) for _ in range(threshold - 1)
    ]
    out = {}
    for x in xs:
        acc = 0
        for c in reversed(coeffs):  # Horner
            acc = (acc * x + c) % PRIME
        out[x] = acc
    return out


def reconstruct(points: Mapping[int, int], threshold: int) -> bytes:
    """Recover the 32-byte secret from at least ``threshold`` shares (x -> value).

    Uses the ``threshold`` shares with the smallest x. Shares that are not from one
    polynomial give a wrong value (or one that is not a 32-byte secret, which raises
    :class:`DeserializationError`); with more shares than ``threshold`` and possibly
    wrong ones, use :func:`decode`.

    Raises:
        ConfigurationError: fewer than ``threshold`` shares.
        DeserializationError: the interpolated value is not a 32-byte secret.
    """
    if threshold < 1 or len(points) < threshold:
        raise ConfigurationError(f"need {threshold} shares, got {len(points)}")
    xs = sorted(points)[:threshold]
    secret = 0
    for i, xi in enumerate(xs):
        num, den = 1, 1
        for j, xj in enumerate(xs):
            if i != j:
                num = num * xj % PRIME
                den = den * (xj - xi) % PRIME
        secret = (secret + points[xi] * num * pow(den, -1, PRIME)) % PRIME
    if secret >> (8 * _SECRET_SIZE):
        raise DeserializationError()
    return secret.to_bytes(_SECRET_SIZE, "big")


# -- decoding with wrong shares ------------------------------------------------------------
# Shares of one secret are a Reed-Solomon codeword: the values at m distinct points of a
# polynomial f of degree < t, f(0) the secret. Two distinct polynomials of degree < t agree
# on at most t - 1 points (at most t - 2 besides 0 when they agree at 0), which bounds how
# many wrong shares can be corrected and makes the liars' names sound (see decode).


@lru_cache(maxsize=4096)
def _inv(a: int) -> int:
    """The inverse of a nonzero field element (x-coordinates and their differences are
    small integers, so the cache hits)."""
    return pow(a % PRIME, -1, PRIME)


def _newton(xs: Sequence[int], ys: Sequence[int]) -> list[int]:
    """Newton divided differences of the polynomial of degree < len(xs) through the
    points."""
    c = list(ys)
    for j in range(1, len(xs)):
        for i in range(len(xs) - 1, j - 1, -1):
            c[i] = (c[i] - c[i - 1]) * _inv(xs[i] - xs[i - j]) % PRIME
    return c


def _newton_eval(xs: Sequence[int], c: Sequence[int], x: int) -> int:
    acc = c[-1]
    for i in range(len(c) - 2, -1, -1):
        acc = (acc * (x - xs[i]) + c[i]) % PRIME
    return acc


def _horner(coeffs: Sequence[int], x: int) -> int:
    acc = 0
    for c in reversed(coeffs):
        acc = (acc * x + c) % PRIME
    return acc


def _solve(rows: list[list[int]], ncols: int) -> list[int] | None:
    """One solution of the linear system (each row: ``ncols`` coefficients, then the
    right-hand side) over the field, free variables 0; None if it has none."""
    rows = [row[:] for row in rows]
    pivots: list[int] = []
    r = 0
    for col in range(ncols):
        piv = next((i for i in range(r, len(rows)) if rows[i][col]), None)
        if piv is None:
            continue
        rows[r], rows[piv] = rows[piv], rows[r]
        inv = pow(rows[r][col], -1, PRIME)
        rows[r] = [v * inv % PRIME for v in rows[r]]
        for i in range(len(rows)):
            if i != r and rows[i][col]:
                f = rows[i][col]
                rows[i] = [
                    (a - f * b) % PRIME for a, b in zip(rows[i], rows[r], strict=True)
                ]
        pivots.append(col)
        r += 1
    if any(row[ncols] for row in rows[r:]):
        return None  # 0 = nonzero: inconsistent
    sol = [0] * ncols
    for i, col in enumerate(pivots):
        sol[col] = rows[i][ncols]
    return sol


def _berlekamp_welch(
    xs: Sequence[int], ys: Sequence[int], t: int, e: int
) -> list[int] | None:
    """The coefficients of the polynomial of degree < ``t`` within ``e`` errors of the
    points, if there is one (``len(xs) >= t + 2 * e``: then it is unique); else None.

    Solves ``Q(x_i) = y_i * E(x_i)`` for ``E`` monic of degree ``e`` and ``Q`` of degree
    ``< t + e``, then divides: O(m^3) field operations for ``m`` points.
    """
    nq = t + e
    rows = []
    for x, y in zip(xs, ys, strict=True):
        pw = [1] * (nq + 1)
        for j in range(1, nq + 1):
            pw[j] = pw[j - 1] * x % PRIME
        rows.append(
            pw[:nq] + [(-y * pw[j]) % PRIME for j in range(e)] + [y * pw[e] % PRIME]
        )
    sol = _solve(rows, nq + e)
    if sol is None:
        return None
    rem = sol[:nq]
    den = [*sol[nq:], 1]  # E, monic
    quot = [0] * t
    for i in range(nq - 1, e - 1, -1):  # long division by the monic E
        c = rem[i]
        quot[i - e] = c
        if c:
            for j in range(e + 1):
                rem[i - e + j] = (rem[i - e + j] - c * den[j]) % PRIME
    if any(rem[:e]):
        return None
    return quot


#: The most shares for which :func:`decode` spends ``m`` extra decodings (leave one out)
#: to correct the one more wrong share a check allows when ``m - t`` is odd.
LEAVE_ONE_OUT_MAX_SHARES = 32


def max_wrong_shares(m: int, threshold: int, *, checked: bool) -> int:
    """How many wrong shares :func:`decode` corrects among ``m`` shares.

    ``(m - t) // 2`` (unique decoding); one more when the secret can be ``checked`` and
    ``m - t`` is odd, i.e. ``(m - t + 1) // 2``, up to :data:`LEAVE_ONE_OUT_MAX_SHARES`
    shares (that case tries each share left out: ``m`` more decodings).
    """
    if m < threshold:
        return 0
    r = (m - threshold) // 2
    if checked and (m - threshold) % 2 and m <= LEAVE_ONE_OUT_MAX_SHARES:
        r += 1
    return r


def decode(
    points: Mapping[int, int],
    threshold: int,
    check: Callable[[bytes], bool] | None = None,
) -> tuple[bytes, frozenset[int]] | None:
    """Recover the 32-byte secret from ``m >= threshold`` shares of which up to
    :func:`max_wrong_shares` may be wrong (any values), and name the wrong ones.

    A candidate polynomial ``p`` is accepted only if ``p(0)`` is a 32-byte secret,
    ``check(secret)`` holds (when given) and ``p`` disagrees with at most
    ``E = max_wrong_shares(m, t, checked=check is not None)`` shares. With at most ``E``
    wrong shares, ``p`` is then the dealer's polynomial: another polynomial of degree
    ``< t`` agrees with at most ``t - 1`` honest shares (``t - 2`` if it has the same
    value at 0, the case a check leaves when ``m - t`` is odd), too few to reach
    ``m - E`` agreements. So the returned x-coordinates are exactly those of the wrong
    shares. The names are exact only if the check identifies one secret: a check that
    several values pass (e.g. an X25519 public key alone, which keys equal up to
    clamping share) lets ``E`` liars on ``f + delta*g``, ``g(0) = 1`` and vanishing on
    ``t - 1`` honest x's, pass with honest holders named and without knowing the
    secret (review r4); SecAgg+ therefore checks keys in clamped form and seeds
    against a hash commitment.

    Work: one interpolation (no wrong share: the usual case), else one Berlekamp-Welch
    decoding (O(m^3) field operations), and when the one extra wrong share is allowed, at
    most ``m`` more decodings of ``m - 1`` shares; ``check`` runs at most ``m + 2``
    times. More wrong shares than ``E``: None (never a secret that fails the check),
    or, if more than ``E`` holders colluded on one wrong polynomial and no check can
    tell, a wrong secret: decoding cannot do better.

    Returns:
        (secret, x-coordinates of the wrong shares), or None.

    Raises:
        ConfigurationError: a threshold, x-coordinate or share value that is not an
            ``int``, fewer than ``threshold`` shares, an x-coordinate outside
            ``[1, PRIME)`` (so the x's are distinct mod PRIME, as :func:`share` requires)
            or a share value that is not a canonical field element.
    """
    t = threshold
    m = len(points)
    if not all(
        type(v) is int for v in (t, *points.keys(), *points.values())
    ):  # exact ints: bool, float and int subclasses are not field elements
        raise ConfigurationError("shares, x-coordinates and threshold are ints")
    if t < 1 or m < t:
        raise ConfigurationError(f"need {t} shares, got {m}")
    if any(not 0 < x < PRIME for x in points):  # distinct: they are a mapping's keys
        raise ConfigurationError(
            "share x-coordinates must be distinct and in [1, PRIME)"
        )
    if any(not 0 <= y < PRIME for y in points.values()):
        raise ConfigurationError("share values must be field elements in [0, PRIME)")
    xs = sorted(points)
    bound = max_wrong_shares(m, t, checked=check is not None)

    def accept(at: Callable[[int], int]) -> tuple[bytes, frozenset[int]] | None:
        secret = at(0)
        if secret >> (8 * _SECRET_SIZE):
            return None
        wrong = frozenset(x for x in xs if at(x) != points[x])
        if len(wrong) > bound:
            return None
        raw = secret.to_bytes(_SECRET_SIZE, "big")
        if check is not None and not check(raw):
            return None
        return raw, wrong

    head = xs[:t]
    c = _newton(head, [points[x] for x in head])
    found = accept(lambda x: _newton_eval(head, c, x))
    if found is not None or m == t:
        return found
    r = (m - t) // 2
    tries = [xs]
    if bound > r:  # the one extra wrong share: it is among the left-out ones
        tries += [[x for x in xs if x != out] for out in xs]
    for sub in tries:
        coeffs = _berlekamp_welch(sub, [points[x] for x in sub], t, r)
        if coeffs is not None:
            found = accept(partial(_horner, coeffs))
            if found is not None:
                return found
    return None


def encode_share(v: int) -> bytes:
    """A field element as 33 big-endian bytes."""
    return v.to_bytes(SHARE_SIZE, "big")


def decode_share(b: bytes) -> int:
    """Inverse of :func:`encode_share`; rejects non-canonical encodings."""
    if len(b) != SHARE_SIZE:
        raise DeserializationError()
    v = int.from_bytes(b, "big")
    if v >= PRIME:
        raise DeserializationError()
    return v
