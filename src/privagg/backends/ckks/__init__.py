"""CKKS homomorphic aggregation on TenSEAL (Microsoft SEAL through ``tenseal.sealapi``).

The aggregator adds ciphertexts and never holds a key that decrypts them. It must be
honest-but-curious: a malicious aggregator can present one client's ciphertext (or one
plus its own encryptions of known values) as "the aggregate" and have the holder decrypt
it; contributions are not authenticated to the holder (``docs/backends/ckks.md``).

* **Keys** (:func:`keygen`): a :class:`CkksSecretContext` for the result holder (the
  secret key, wrapped in :class:`privagg.SecretKey`) and a :class:`CkksPublicContext`
  (parameters + public encryption key, *no* secret key and no Galois/relinearization
  keys: none is ever generated) for clients and the aggregator.
* **Per-role sessions** (:meth:`CkksBackend.session`): clients and the aggregator
  build their session from the public context alone (``holder()`` raises
  :class:`~privagg.MissingKeyError`), the holder from the secret context; all agree on
  ``params_id``. :meth:`CkksBackend.deal` / :meth:`CkksBackend.load_role` are the
  deployment hook (``fedtrain.flower.material``): public context for clients and the
  aggregator, secret context (explicitly protected export) for the holder only.
* **Packing**: a whole flat update goes into ``ceil(size / N)`` ciphertexts, N real
  values each (the real *and* imaginary parts of the N/2 complex slots).
* **Wire format**: SEAL's ciphertext coefficients (NTT form, one row per data prime)
  bit-packed at the prime's width: 15 bytes per value for one 60-bit prime (``compact``),
  22.25 for 60 + 29 bits (``secure``), 30 for two 60-bit primes (``secure-large``).
  SEAL writes them; privagg reads the raw words from SEAL's own serialization (raw
  zstd blocks, or SEAL's own linked zstd for compressed frames) and never
  re-implements encryption.
* **Aggregation**: coefficient-wise addition modulo each prime (exactly what SEAL's
  ``add`` does), vectorized with numpy; the aggregate counts its contributions. A
  client contribution must say ``count == 1``; only aggregates carry larger counts.
* **Release** (IND-CPA-D, Li-Micciancio 2021; Li-Micciancio-Schultz-Sorrell 2022):
  before decrypting, the holder adds integer flooding noise ``f`` (rounded Gaussian,
  std ``2**flood_bits`` times the modelled coefficient-domain decryption noise, drawn
  from the injected :class:`~privagg.Rng`) to the aggregate's *coefficients*: SEAL
  transforms ``(f, 1)`` to NTT form and the evaluator adds it (the ``1`` is cancelled
  in ``c1`` beforehand), then decrypts and decodes. SEAL's float64 decoding error is
  thus post-processing of an already flooded value. The result is rounded to a
  power-of-two grid. See ``docs/backends/ckks.md``.

Randomness note: SEAL samples its encryption and key randomness from its own CSPRNG
(Blake2xb seeded from the OS); privagg's injected :class:`~privagg.Rng` drives the
flooding noise and DP noise. Seeding SEAL from the injected Rng is not possible
without seed reuse across ciphertexts (SEAL's fixed-seed factories repeat streams).
"""

from privagg.backends._ckks_params import PRESETS, CkksParams
from privagg.backends.ckks._wireformat import EncryptedUpdate
from privagg.backends.ckks.backend import CkksBackend, CkksMaterial
from privagg.backends.ckks.keys import CkksPublicContext, CkksSecretContext, keygen

__all__ = [
    "PRESETS",
    "CkksBackend",
    "CkksMaterial",
    "CkksParams",
    "CkksPublicContext",
    "CkksSecretContext",
    "EncryptedUpdate",
    "keygen",
]
