"""Hazardous CKKS operations, for the key holders only (needs TenSEAL).

* :func:`raw_decrypt`: decrypt a CKKS update or aggregate *without* flooding noise or
  release rounding. A raw CKKS decryption can leak the secret key when it leaves the key
  holders (IND-CPA-D, Li-Micciancio 2021): publish only through the holder role or
  :meth:`privagg.backends.ckks.CkksSecretContext.release`.
"""

from privagg.backends.ckks.keys import raw_decrypt

__all__ = ["raw_decrypt"]
