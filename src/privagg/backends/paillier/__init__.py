"""Paillier backend: packed (BatchCrypt-style), DJN-randomised, CRT-decrypted, threaded.

Roles and keys
--------------
The *result holder* generates the key pair and keeps the secret key (the primes ``p``,
``q``, wrapped in :class:`privagg.SecretKey`); clients and the aggregator only ever see
the public key ``(n, h)``. Clients encrypt, the aggregator multiplies ciphertexts
(adds plaintexts) without any key material, the holder decrypts the single aggregate.
In :meth:`PaillierBackend.setup` one process plays the trusted dealer; across machines
use :meth:`PaillierBackend.keygen` on the holder and :meth:`PaillierBackend.session`
on every party (clients and aggregator without the secret key). Clients must check the
public key's fingerprint (or the session's ``params_id``) against the holder's, obtained
over an authenticated channel. The aggregator must be honest-but-curious: the holder
decrypts whatever it is given as "the aggregate" (``docs/backends/paillier.md``).

Scheme (g = n + 1, Damgard-Jurik-Nielsen randomness, s = 1)
----------------------------------------------------------
* keygen: ``p, q`` random ``key_bits/2``-bit primes ``= 3 (mod 4)`` from the injected
  Rng (top two bits set so ``n = pq`` has exactly ``key_bits`` bits; ``n`` a Blum
  integer, as ``h = -x**2`` assumes); ``x`` uniform in ``Z_n^*``, ``h = -x**2 mod n``.
  3072 bits by default (~128-bit security, NIST SP 800-57 Part 1 Table 2); 2048
  (~112-bit) by explicit choice. Public key ``(n, h)``; every party computes
  ``h_s = h**n mod n**2`` itself when it loads the key, so ``h_s`` is an n-th residue
  by construction (a supplied ``h_s`` such as ``1 + n`` would make ciphertexts
  readable: it cannot be expressed).
* encrypt ``m`` in ``[0, n)``: ``c = (1 + m*n) * h_s**a mod n**2`` with ``a`` uniform in
  ``[0, 2**ceil(key_bits/2))``. ``h_s**a = (h**a)**n``, so this is textbook Paillier with
  ``r = h**a mod n``, the DJN short-exponent variant. ``h_s**a`` uses a fixed-base
  table (8-bit windows): ``ceil(key_bits/16)`` modular multiplications, no squarings.
* decrypt: CRT, ``m_p = L_p(c**(p-1) mod p**2) * h_p mod p`` (likewise ``q``), combined
  with ``p**-1 mod q`` (Paillier 1999, sec. 7), as in phe's ``raw_decrypt``.

Values are quantised with the shared :class:`~privagg.encoding.FixedPointEncoder` at a
fixed public scale (no per-value exponent: phe's ``EncryptedNumber.exponent`` leaks
magnitude, nothing here does) and packed into slots; see
:mod:`privagg.backends.paillier._slots` for the slot-layout maths and ``docs/backends/paillier.md``.

Parallelism: gmpy2 releases the GIL inside multiplications and ``powmod`` when its
context sets ``allow_release_gil``; encryption and decryption run in a thread pool of
``workers`` threads (default ``os.cpu_count()``), so no key material ever leaves the
process.
"""

from privagg.backends.paillier.backend import PaillierBackend
from privagg.backends.paillier.keys import KEY_SIZES, PaillierPublicKey, load_secret_key

__all__ = ["KEY_SIZES", "PaillierBackend", "PaillierPublicKey", "load_secret_key"]
