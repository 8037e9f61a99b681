"""``privagg.identity.check_public_key``: the public-key checks of a directory, for an
identity key received elsewhere (the pinned Flower result holder's, issue #14)."""

from __future__ import annotations

import pytest
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey

import privagg
from privagg import SystemRng
from privagg.identity import check_public_key

_P = 2**255 - 19


def test_a_real_key_passes() -> None:
    seed = SystemRng().random_bytes(32)
    key = Ed25519PrivateKey.from_private_bytes(seed).public_key().public_bytes_raw()
    assert check_public_key(key) == key


@pytest.mark.parametrize(
    "key",
    [
        b"",
        b"\x00" * 31,
        b"\x00" * 33,
        "00" * 32,
        None,
        b"\x01" + b"\x00" * 31,  # the identity point (y = 1)
        b"\x00" * 32,  # y = 0: order 4
        (_P - 1).to_bytes(32, "little"),  # y = -1: order 2
        _P.to_bytes(32, "little"),  # y = p: not canonical
        (2**255 - 1).to_bytes(32, "little"),  # y >= p
    ],
)
def test_small_order_non_canonical_and_malformed_keys_are_refused(key: object) -> None:
    with pytest.raises(privagg.ConfigurationError):
        check_public_key(key)
