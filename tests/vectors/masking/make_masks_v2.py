"""Regenerate ``masks_v2.json``: known answers of the SecAgg+/additive mask PRG (v3).

Independent of the code under test: this script imports nothing from privagg. It
computes each vector from the specification with the Python standard library (HKDF,
RFC 5869, written out below over ``hmac``/``hashlib``) and ``cryptography``'s AES-128 in
CTR mode used directly:

    key  = HKDF-SHA256(IKM = seed, salt = "" (i.e. 32 zero bytes), info = INFO, L = 16)
    mask = AES-128-CTR(key, counter block 0^128) keystream of size * itemsize bytes,
           read as little-endian uint32 / uint64 words.

Seeds are SHA-256 of a public label, so anyone can re-derive them. The script also
checks its HKDF against RFC 5869 test case 3 and its AES-128-CTR against NIST SP
800-38A F.5.1 before writing anything.

Usage (from the repository root)::

    python tests/vectors/masking/make_masks_v2.py          # rewrite masks_v2.json
    python tests/vectors/masking/make_masks_v2.py --check  # exit 1 if it would change
"""

from __future__ import annotations

import hashlib
import hmac
import json
import sys
from pathlib import Path

from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

INFO = b"privagg/mask-prg/v1/aes-128-ctr"
OUT = Path(__file__).with_name("masks_v2.json")
CASES = [
    (1, "uint32"),
    (7, "uint32"),
    (1000, "uint32"),
    (5, "uint64"),
    (1000, "uint64"),
]
ITEMSIZE = {"uint32": 4, "uint64": 8}


def hkdf_sha256(ikm: bytes, salt: bytes, info: bytes, length: int) -> bytes:
    """RFC 5869 HKDF with SHA-256 (extract, then expand)."""
    prk = hmac.new(salt or bytes(32), ikm, hashlib.sha256).digest()
    okm, block = b"", b""
    for i in range(1, -(-length // 32) + 1):
        block = hmac.new(prk, block + info + bytes([i]), hashlib.sha256).digest()
        okm += block
    return okm[:length]


def aes128_ctr(key: bytes, nbytes: int, counter: bytes = bytes(16)) -> bytes:
    enc = Cipher(algorithms.AES128(key), modes.CTR(counter)).encryptor()
    return enc.update(bytes(nbytes)) + enc.finalize()


def _self_check() -> None:
    # RFC 5869 A.3: SHA-256, zero-length salt and info.
    okm = hkdf_sha256(bytes([0x0B] * 22), b"", b"", 42)
    assert okm.hex() == (
        "8da4e775a563c18f715f802a063c5a31b8a11f5c5ee1879ec3454e5f3c738d2d"
        "9d201395faa4b61a96c8"
    ), "HKDF self-check failed"
    # NIST SP 800-38A F.5.1 (CTR-AES128.Encrypt), first block.
    ks = aes128_ctr(
        bytes.fromhex("2b7e151628aed2a6abf7158809cf4f3c"),
        16,
        bytes.fromhex("f0f1f2f3f4f5f6f7f8f9fafbfcfdfeff"),
    )
    pt = bytes.fromhex("6bc1bee22e409f96e93d7e117393172a")
    ct = bytes(a ^ b for a, b in zip(ks, pt, strict=True))
    assert ct.hex() == "874d6191b620e3261bef6864990db6ce", "AES-CTR self-check failed"


def vectors() -> dict[str, object]:
    _self_check()
    masks = []
    for i, (size, dtype) in enumerate(CASES):
        seed = hashlib.sha256(f"privagg/masks_v2/seed/{i}".encode()).digest()
        key = hkdf_sha256(seed, b"", INFO, 16)
        ks = aes128_ctr(key, size * ITEMSIZE[dtype])
        w = ITEMSIZE[dtype]
        words = [int.from_bytes(ks[j : j + w], "little") for j in range(0, len(ks), w)]
        masks.append(
            {
                "seed": seed.hex(),
                "mask_key": key.hex(),
                "size": size,
                "dtype": dtype,
                "first_words": words[:4],
                "sha256": hashlib.sha256(ks).hexdigest(),
            }
        )
    return {
        "description": (
            "Known answers of the SecAgg+/additive mask PRG of SecAgg+ v3 and additive v3 "
            "(params_id tags secagg/v3, additive/v3; envelope format 2): "
            "mask_key = HKDF-SHA256(seed, "
            "salt empty, info = 'privagg/mask-prg/v1/aes-128-ctr', L = 16); mask = "
            "AES-128-CTR keystream of mask_key (zero counter block) of size * itemsize "
            "bytes read as little-endian words; sha256 is over those keystream bytes. "
            "Computed independently of privagg by make_masks_v2.py (stdlib HKDF, "
            "cryptography AES-128-CTR)."
        ),
        "info": INFO.decode(),
        "masks": masks,
    }


def main(argv: list[str]) -> int:
    text = json.dumps(vectors(), indent=1) + "\n"
    if "--check" in argv:
        same = OUT.exists() and OUT.read_text(encoding="utf-8") == text
        print("up to date" if same else f"{OUT} differs")
        return 0 if same else 1
    OUT.write_text(text, encoding="utf-8")
    print(f"wrote {OUT}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
