"""SecAgg+ (Bell et al., CCS 2020): masking-based secure aggregation with dropout recovery.

One untrusted aggregator learns the sum of the surviving clients' updates and nothing
else; clients may drop out at any stage. With ``full_graph=True`` the protocol is the
complete-graph protocol of Bonawitz et al. (CCS 2017). See ``docs/backends/secagg.md``
for the design, the threat model and the choice of the graph degree and threshold.

Stages (each is one request from the aggregator and one reply from each client; a
missing reply is a dropout):

0. ``SETUP`` -> ``ADVERTISE``: the round's participant list ``U0`` and ``(k, t)``; each
   client makes two fresh X25519 key pairs (``c`` for encryption, ``s`` for masking) and a
   32-byte self-mask seed ``b``, and advertises the public keys and a SHA-256
   commitment to ``b`` (v4), signed with its long-term Ed25519 identity key when
   ``active=True`` over (keys, H(U0), n, k, t, q, m, commitment).
1. ``SHARE_KEYS`` -> ``SHARES``: the aggregator relays every advertised key set (U1); the
   graph seed hashes them all. Each client checks its neighbours' signatures (same H(U0)
   and parameters), requires at least ``m >= t`` live neighbours, Shamir-shares ``s_sk``
   and ``b`` (threshold ``t``) among its live neighbours only (never itself) and encrypts
   each pair of shares with AES-256-GCM under ``HKDF(ECDH(c_i, c_j))``, binding
   (params, round, H(U0), sender, recipient) as associated data.
2. ``MASK`` -> ``MASKED``: each client decrypts the shares addressed to it (a sender whose
   ciphertext fails is treated as dropped and reported), requires ``t`` of them, and uploads
   ``y_i = x_i + PRG(b_i) + sum_j +-PRG(s_ij) mod 2**bits`` (PRG: AES-256-CTR).
3. (``active=True`` only) ``CONSISTENCY`` -> ``SIGNATURE``: each survivor signs (H(U0), graph
   seed, ``U3``); clients later refuse to unmask unless a quorum ``q`` signed the same.
4. ``UNMASK`` -> ``UNMASK_SHARES``: each survivor sends its shares of ``b_i`` for survivors
   and of ``s_sk_j`` for dropped neighbours (never both for one client); the aggregator
   reconstructs (correcting a bounded number of wrong shares, a mask key checked in
   clamped form against its advertised public key, a seed against its commitment), removes the masks and emits ``RESULT`` (the
   unmasked sum).

Every message carries the scheme, kind, params_id and round id in its envelope and the
sending/receiving party in its payload; duplicates, replays, messages of another round or
session and out-of-order stages raise :class:`~privagg.errors.ProtocolError`.
"""

from privagg.backends.secagg._context import u0_digest
from privagg.backends.secagg.aggregator import SecAggAggregator
from privagg.backends.secagg.backend import (
    SecAggBackend,
    SecAggHolder,
    SecAggMaterial,
    SecAggSession,
)
from privagg.backends.secagg.client import SecAggClient
from privagg.backends.secagg.messages import (
    AdvertiseMessage,
    ConsistencyRequest,
    MaskedInput,
    MaskRequest,
    ResultMessage,
    SecAggKind,
    SetupRequest,
    ShareKeysRequest,
    SharesMessage,
    SignatureMessage,
    UnmaskRequest,
    UnmaskShares,
)

__all__ = [
    "AdvertiseMessage",
    "ConsistencyRequest",
    "MaskRequest",
    "MaskedInput",
    "ResultMessage",
    "SecAggAggregator",
    "SecAggBackend",
    "SecAggClient",
    "SecAggHolder",
    "SecAggKind",
    "SecAggMaterial",
    "SecAggSession",
    "SetupRequest",
    "ShareKeysRequest",
    "SharesMessage",
    "SignatureMessage",
    "UnmaskRequest",
    "UnmaskShares",
    "u0_digest",
]
