"""Slot packing of signed fixed-point integers into Paillier plaintexts (BatchCrypt style).

A plaintext of a ``key_bits``-bit modulus ``n`` holds ``k`` slots of ``w`` bits each:
slot ``j`` occupies bits ``[w*j, w*(j+1))`` (slot 0 is the least significant).

Offset encoding
---------------
Each slot carries a signed value ``s`` in ``[-2**(w-1), 2**(w-1))`` as the unsigned
``s + 2**(w-1)`` in ``[0, 2**w)`` (the two's-complement bits of ``s`` with the top bit
flipped). A client's plaintext is then::

    P = sum_j (s_j + 2**(w-1)) * 2**(w*j)  -  C,    C = sum_{j<k} 2**(w-1) * 2**(w*j)

i.e. ``P = sum_j s_j * 2**(w*j)`` exactly, reduced mod ``n``. Multiplying ciphertexts
adds plaintexts mod ``n``, so the holder decrypts ``T = sum_i P_i mod n`` and computes
``T' = (T + C) mod n = sum_j (S_j + 2**(w-1)) * 2**(w*j)`` where ``S_j = sum_i s_ij``
is the slot's signed sum. This identity holds, with no carry between slots, whenever
every ``S_j`` lies in ``[-2**(w-1), 2**(w-1))`` and ``w*k <= key_bits - 1``: then each
``S_j + 2**(w-1)`` is a ``w``-bit digit and ``T' < 2**(w*k) <= n``. The offset is added
once by the holder, so the result does not depend on the (aggregator-reported) number of
contributors.

The slot width ``w`` comes from :meth:`privagg.encoding.FixedPointEncoder.sum_bits`
(``max_clients`` contributions of ``max_weight * bound``, plus the DP noise allowance),
which is exactly the width of a signed ring holding every possible sum.

Integrity margin: ``k = floor((key_bits - 1 - MARGIN_BITS) / w)``. A valid aggregate
satisfies ``T' < 2**(w*k) <= 2**(key_bits - 1 - MARGIN_BITS)``; a ciphertext decrypted
under the wrong key, or tampered with, decrypts to an (essentially) uniform value mod
``n >= 2**(key_bits-1)`` and passes this check with probability at most
``2**-MARGIN_BITS``.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import numpy.typing as npt

from privagg.errors import ConfigurationError, EncodingOverflowError

__all__ = ["MARGIN_BITS", "SlotLayout"]

#: bits of every plaintext kept free to detect wrong-key / tampered decryptions
MARGIN_BITS = 64
_NUMPY_MAX_SLOT_BITS = 62


@dataclass(frozen=True, slots=True)
class SlotLayout:
    """How ``n_values`` signed integers are packed into plaintexts.

    Attributes:
        slot_bits: ``w``, bits per slot (a signed sum lives in ``[-2**(w-1), 2**(w-1))``).
        slots: ``k``, slots per plaintext.
        n_values: number of values packed (the layout size).
    """

    slot_bits: int
    slots: int
    n_values: int

    def __post_init__(self) -> None:
        if self.slot_bits < 2 or self.slots < 1 or self.n_values < 0:
            raise ConfigurationError(
                f"invalid slot layout (slot_bits={self.slot_bits}, slots={self.slots}, "
                f"n_values={self.n_values})"
            )

    @classmethod
    def for_key(cls, *, key_bits: int, slot_bits: int, n_values: int) -> SlotLayout:
        """The densest layout for a ``key_bits``-bit modulus.

        Raises:
            EncodingOverflowError: one slot does not fit the plaintext.
        """
        usable = key_bits - 1 - MARGIN_BITS
        if slot_bits > usable:
            raise EncodingOverflowError(
                f"a slot needs {slot_bits} bits but a {key_bits}-bit key leaves {usable}"
            )
        return cls(slot_bits, usable // slot_bits, n_values)

    @property
    def n_plaintexts(self) -> int:
        """Plaintexts (= ciphertexts) per vector: ``ceil(n_values / slots)``, at least 1."""
        return max(1, -(-self.n_values // self.slots))

    @property
    def offset(self) -> int:
        """Per-slot offset ``2**(w-1)``."""
        return 1 << (self.slot_bits - 1)

    @property
    def offset_pattern(self) -> int:
        """``C = sum_j 2**(w-1) * 2**(w*j)`` over all ``k`` slots."""
        w, k = self.slot_bits, self.slots
        return self.offset * (((1 << (w * k)) - 1) // ((1 << w) - 1))

    @property
    def total_bits(self) -> int:
        """``w * k``: bits of a packed plaintext."""
        return self.slot_bits * self.slots

    # -- packing ------------------------------------------------------------------------
    def check_values(self, values: npt.NDArray[np.int64]) -> None:
        """Raise :class:`EncodingOverflowError` unless every value fits one slot."""
        lo, hi = -self.offset, self.offset - 1
        if values.size and (int(values.min()) < lo or int(values.max()) > hi):
            raise EncodingOverflowError(
                f"a value does not fit a {self.slot_bits}-bit slot; nothing was encrypted"
            )

    def pack(self, values: npt.NDArray[np.int64]) -> list[int]:
        """Pack signed int64 ``values`` into plaintext integers (not yet reduced mod n).

        Returns ``n_plaintexts`` Python ints ``P = sum_j s_j * 2**(w*j)`` (may be negative).

        Raises:
            ConfigurationError: wrong number of values.
            EncodingOverflowError: a value outside ``[-2**(w-1), 2**(w-1))``.
        """
        vals = np.asarray(values, dtype=np.int64).reshape(-1)
        if vals.size != self.n_values:
            raise ConfigurationError(
                f"expected {self.n_values} values, got {vals.size}"
            )
        self.check_values(vals)
        return self.pack_block(vals, 0, self.n_plaintexts)

    def pack_block(
        self, values: npt.NDArray[np.int64], start: int, stop: int
    ) -> list[int]:
        """Plaintexts ``start .. stop - 1`` of the packed vector :meth:`pack` returns.

        ``values`` is the whole (already checked, see :meth:`check_values`) int64 vector;
        only slots ``start*k .. stop*k - 1`` are read (those past ``n_values`` are 0), so
        the temporaries are those of one block (about ``64 + 3*w`` bytes a slot).
        """
        w, k, m = self.slot_bits, self.slots, stop - start
        padded = np.zeros(m * k, dtype=np.int64)
        seg = values[start * k : stop * k]
        padded[: seg.size] = seg
        # two's-complement bits, most significant first, sign-extended to w bits
        raw = np.unpackbits(padded.astype(">i8").view(np.uint8).reshape(-1, 8), axis=1)
        if w <= 64:
            bits = raw[:, 64 - w :]
        else:
            ext = np.repeat(raw[:, :1], w - 64, axis=1)
            bits = np.concatenate([ext, raw], axis=1)
        bits = np.ascontiguousarray(bits)
        bits[:, 0] ^= 1  # + 2**(w-1): offset encoding
        rows = bits.reshape(m, k, w)[:, ::-1, :].reshape(m, k * w)
        pad = (-k * w) % 8
        if pad:
            rows = np.concatenate([np.zeros((m, pad), dtype=np.uint8), rows], axis=1)
        packed = np.packbits(rows, axis=1)
        c = self.offset_pattern
        return [int.from_bytes(packed[i].tobytes(), "big") - c for i in range(m)]

    def unpack(self, totals: Sequence[int]) -> npt.NDArray[np.int64] | list[int]:
        """Split offset-restored totals ``T'`` into signed slot sums.

        Args:
            totals: ``T' = (T + C) mod n`` for each plaintext, each in ``[0, 2**(w*k))``.

        Returns:
            int64 array of the ``n_values`` signed sums when ``w <= 62``, else a list of
            Python ints.

        Raises:
            ValueError: wrong count or a total out of range (the caller maps this to a
                typed error).
        """
        w, k, m = self.slot_bits, self.slots, self.n_plaintexts
        if len(totals) != m:
            raise ValueError("wrong number of plaintexts")
        limit = 1 << (w * k)
        for t in totals:
            if not 0 <= t < limit:
                raise ValueError("plaintext out of range")
        if w > _NUMPY_MAX_SLOT_BITS:
            mask = (1 << w) - 1
            out: list[int] = []
            for t in totals:
                out.extend(((t >> (w * j)) & mask) - self.offset for j in range(k))
            return out[: self.n_values]
        sums = np.empty(self.n_values, dtype=np.int64)
        self.unpack_into(totals, 0, sums)
        return sums

    def unpack_into(
        self, totals: Sequence[int], start: int, out: npt.NDArray[np.int64]
    ) -> None:
        """Unpack plaintexts ``start .. start + len(totals) - 1`` into ``out`` (``w <= 62``).

        ``out`` holds the whole vector (``n_values`` int64); only the slots of these
        plaintexts are written, so the temporaries are those of one block.

        Raises:
            ValueError: a total outside ``[0, 2**(w*k))``, a block past the last
                plaintext, or a layout too wide for int64 slots.
        """
        w, k, m = self.slot_bits, self.slots, len(totals)
        if w > _NUMPY_MAX_SLOT_BITS or start < 0 or start + m > self.n_plaintexts:
            raise ValueError("block outside the packed vector")
        limit = 1 << (w * k)
        for t in totals:
            if not 0 <= t < limit:
                raise ValueError("plaintext out of range")
        nbytes = (w * k + 7) // 8
        pad = nbytes * 8 - w * k
        buf = np.frombuffer(
            b"".join(int(t).to_bytes(nbytes, "big") for t in totals), dtype=np.uint8
        )
        bits = np.unpackbits(buf.reshape(m, nbytes), axis=1)[:, pad:]
        lo = start * k
        hi = min(lo + m * k, self.n_values)
        slots = bits.reshape(m, k, w)[:, ::-1, :].reshape(m * k, w)[: hi - lo]
        weights = np.left_shift(np.uint64(1), np.arange(w - 1, -1, -1, dtype=np.uint64))
        unsigned = slots.astype(np.uint64) @ weights
        out[lo:hi] = unsigned.astype(np.int64) - np.int64(self.offset)
