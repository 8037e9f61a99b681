"""Hazardous materials: low-level pieces that are easy to misuse.

Use them only if you know why the recipes in :mod:`privagg` do not fit.

* :class:`DeterministicRng`: a seeded AES-CTR stream for known-answer tests. Anyone who
  knows the seed can reproduce every "random" value, so never protect real data with it.
* :func:`aes_ctr_keystream`: the project's only PRG.
* :mod:`privagg._oneshot`: the generic one-shot roles, to build a new backend.
* :mod:`privagg.hazmat.ckks`: ``raw_decrypt``, a CKKS decryption without flooding
  (imported on its own: it needs TenSEAL).
"""

from privagg._rng import (
    DeterministicRng,
    aes_ctr_keystream,
    randbelow,
    uniform01,
    uniform_u64,
)
from privagg.encoding import from_ring, to_ring

__all__ = [
    "DeterministicRng",
    "aes_ctr_keystream",
    "from_ring",
    "randbelow",
    "to_ring",
    "uniform01",
    "uniform_u64",
]
