"""What every SecAgg+ role shares: the session's public configuration, the transcript
messages clients sign and the key derivations."""

from __future__ import annotations

import hashlib
import struct
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import ClassVar

from privagg.backends._graph import (
    GraphParams,
    choose_parameters,
    consistency_quorum,
    harary_neighbours,
    min_live_neighbours,
)
from privagg.backends._masking import (
    RingConfig,
    ids_digest,
    kdf_context,
    party_field,
)
from privagg.backends._primitives import (
    hkdf,
)
from privagg.backends.secagg.messages import (
    AdvertiseMessage,
)
from privagg.envelope import (
    Scheme,
)

_DOMAIN = b"privagg/secagg/v2/"  # v2: signed partner attestations (stage 2)
# SecAgg+ v4 (params_id tag b"secagg/v4"): the advertised keys carry a commitment to the
# self-mask seed, signed with them; the shared mask key is in clamped form.
# SecAgg+ v5 (params_id tag b"secagg/v5"): every dealt share carries a salted commitment
# (sent in clear beside its ciphertext, opened when the share is revealed), so a wrong
# share is attributed to whoever made it; the share keys bind the graph seed (every
# advertised key set), so a client shown a different key set cannot exchange shares.


# -- shared configuration ------------------------------------------------------------------
@dataclass(frozen=True)
class _Config(RingConfig):
    """Public parameters of a session (identical for every role)."""

    SCHEME: ClassVar[Scheme] = Scheme.SECAGG

    dropout_rate: float
    corruption_rate: float
    sigma: int
    eta: int
    full_graph: bool
    active: bool

    def graph(self, n: int) -> GraphParams:
        return choose_parameters(
            n,
            dropout_rate=self.dropout_rate,
            corruption_rate=self.corruption_rate,
            sigma=self.sigma,
            eta=self.eta,
            full_graph=self.full_graph,
            population=self.max_clients,
        )

    def quorum(self, n: int) -> int:
        """Survivors (and, if active, survivor-set signatures) needed before unmasking."""
        # A survivor's self-mask seed needs t live *other* holders: t + 1 survivors at least.
        t1 = min(self.graph(n).threshold + 1, n)
        if not self.active:
            return t1
        return consistency_quorum(
            n,
            corruption_rate=self.corruption_rate,
            threshold=t1,
            population=self.max_clients,
        )

    def min_live(self, n: int) -> int:
        """Fewest advertised neighbours a client accepts at stage 1 (>= t)."""
        g = self.graph(n)
        return min_live_neighbours(
            n, g.degree, g.threshold, dropout_rate=self.dropout_rate, eta=self.eta
        )

    def round_params(self, n: int) -> bytes:
        """(k, t, q, min_live) for a round of ``n`` clients, as bound into key signatures."""
        g = self.graph(n)
        return struct.pack(
            ">IIIII", n, g.degree, g.threshold, self.quorum(n), self.min_live(n)
        )

    def graph_seed(
        self,
        round_id: int,
        participants: Sequence[str],
        keys: Mapping[str, AdvertiseMessage],
    ) -> bytes:
        """SHA-256 over (params, round, H(U0)) and every advertised key set of U1."""
        h = hashlib.sha256(
            _DOMAIN
            + b"graph"
            + self.params_id
            + round_id.to_bytes(8, "big")
            + u0_digest(participants)
        )
        for cid in sorted(keys):
            k = keys[cid]
            h.update(_field(cid) + k.c_pk + k.s_pk + k.b_commit)
        return h.digest()

    def neighbours(
        self,
        round_id: int,
        participants: Sequence[str],
        keys: Mapping[str, AdvertiseMessage],
        seed: bytes | None = None,
    ) -> dict[str, frozenset[str]]:
        """The graph over U0, ordered by :meth:`graph_seed` (all advertised keys, U1)."""
        ids = sorted(participants)
        seed = seed if seed is not None else self.graph_seed(round_id, ids, keys)
        return harary_neighbours(ids, self.graph(len(ids)).degree, seed)


def _field(party: str) -> bytes:
    """A party id in a v2 transcript or key context (length in characters: see
    :func:`privagg.backends._masking.party_field`)."""
    return party_field(party, length="chars")


def u0_digest(participants: Sequence[str]) -> bytes:
    """H(U0): SHA-256 of the sorted, length-prefixed participant ids."""
    return ids_digest(sorted(participants), domain=_DOMAIN + b"U0", field=_field)


def _key_message(
    cfg: _Config,
    round_id: int,
    cid: str,
    c_pk: bytes,
    s_pk: bytes,
    u0: bytes,
    rparams: bytes,
    b_commit: bytes,
) -> bytes:
    """What a client signs at stage 0: its keys, H(U0), the round's (n, k, t, q,
    min_live) and the commitment to its self-mask seed (32 bytes, v4)."""
    ctx = kdf_context(
        cfg.params_id, round_id, _field(cid), c_pk, s_pk, u0, rparams, b_commit
    )
    return _DOMAIN + b"keys" + ctx


def _seed_commitment(cfg: _Config, round_id: int, cid: str, b: bytes) -> bytes:
    """SHA-256 commitment to client ``cid``'s self-mask seed ``b`` (32 random bytes, so
    the hash hides it), domain-separated and bound to the session (params_id), the
    round and the client: a commitment is valid for one seed of one client in one
    round. The aggregator accepts a reconstructed seed only if it matches."""
    ctx = kdf_context(cfg.params_id, round_id, _field(cid))
    return hashlib.sha256(_DOMAIN + b"self-mask-commitment" + ctx + b).digest()


def _survivor_message(
    cfg: _Config, round_id: int, survivors: Sequence[str], view: bytes
) -> bytes:
    """What a client signs at stage 3: the survivor set U3 and its view of the round,
    ``view = H(U0) || graph seed`` (so all clients that reveal shares agree on U0 and on
    the graph, not only on U3)."""
    digest = ids_digest(sorted(survivors), field=_field)
    return _DOMAIN + b"survivors" + kdf_context(cfg.params_id, round_id, view, digest)


def _partner_message(
    cfg: _Config, round_id: int, view: bytes, cid: str, missing: Sequence[str]
) -> bytes:
    """What a client signs at stage 2 (active variant): the graph neighbours it did *not*
    mask with, bound to its view ``H(U0) || graph seed`` of the round.

    Holders check this attestation before they reveal the client's self-mask shares: if
    a survivor is among the neighbours it did not mask with, the server could have
    steered its masking partners (selective delivery, then selective drop) and the
    holders refuse (see :meth:`SecAggClient._check_attestations`).
    """
    digest = ids_digest(sorted(missing), field=_field)
    ctx = kdf_context(cfg.params_id, round_id, view, _field(cid), digest)
    return _DOMAIN + b"partners" + ctx


def _share_commitment(
    cfg: _Config,
    round_id: int,
    dealer: str,
    holder: str,
    which: int,
    share: bytes,
    salt: bytes,
) -> bytes:
    """SHA-256 commitment to the share of kind ``which`` (``_S``: mask key, ``_B``:
    self-mask seed) that ``dealer`` deals to ``holder`` (v5).

    ``share`` is the canonical 33-byte encoding, ``salt`` 32 fresh secret bytes of the
    dealer's (one per dealer, holder and kind, so a revealed share and salt say nothing
    of the other kind's share); both have fixed sizes, and the context binds the
    session, the round, both parties and the kind. The dealer sends it in clear beside
    the share ciphertext; the holder checks the decrypted share opens it before it
    holds the share; the aggregator checks the revealed share opens it. So a revealed
    share that opens its commitment is the one the dealer committed to (a wrong one is
    the dealer's fault), and one that does not open it is the holder's."""
    ctx = kdf_context(
        cfg.params_id, round_id, _field(dealer), _field(holder), bytes([which])
    )
    return hashlib.sha256(_DOMAIN + b"share-commitment" + ctx + share + salt).digest()


def _share_key(
    cfg: _Config,
    round_id: int,
    shared: bytes,
    sender: str,
    recipient: str,
    view: bytes,
) -> tuple[bytes, bytes]:
    """The AES-GCM key and AAD of the share ciphertext ``sender`` -> ``recipient``.

    ``view = H(U0) || graph seed``: the graph seed hashes every advertised key set
    (v5), so a client that was shown a key set differing from its neighbour's in any
    key cannot decrypt that neighbour's shares (it refuses them, and the aggregator
    treats the sender as dropped), instead of masking with a key its partner does not
    have (review r7)."""
    ctx = kdf_context(cfg.params_id, round_id, view, _field(sender), _field(recipient))
    key = hkdf(shared, salt=cfg.params_id, info=_DOMAIN + b"share-key" + ctx)
    return key, _DOMAIN + b"share-aad" + ctx


def _pair_seed(cfg: _Config, round_id: int, shared: bytes, a: str, b: str) -> bytes:
    lo, hi = sorted((a, b))
    return hkdf(
        shared,
        salt=cfg.params_id,
        info=_DOMAIN + b"mask" + round_id.to_bytes(8, "big") + _field(lo) + _field(hi),
    )


def _pair_sign(me: str, other: str) -> int:
    return 1 if me < other else -1


def _x_coord(index: Mapping[str, int], cid: str) -> int:
    return index[cid] + 1
