"""The SecAgg+ client: one state machine per round (bytes in, bytes out)."""

from __future__ import annotations

import hmac
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, NoReturn

from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from cryptography.hazmat.primitives.asymmetric.x25519 import X25519PrivateKey

from privagg._rng import Rng
from privagg.backends import _shamir
from privagg.backends._graph import (
    GraphParams,
)
from privagg.backends._masking import RingClient
from privagg.backends._primitives import (
    aead_decrypt,
    aead_encrypt,
    clamp_x25519,
    ecdh,
    ed25519_key,
    ed25519_sign,
    ed25519_verify,
    new_x25519,
    x25519_key,
    x25519_public,
)
from privagg.backends.secagg._context import (
    _Config,
    _key_message,
    _pair_seed,
    _pair_sign,
    _partner_message,
    _seed_commitment,
    _share_commitment,
    _share_key,
    _survivor_message,
    _x_coord,
    u0_digest,
)
from privagg.backends.secagg.messages import (
    _B,
    _S,
    SALT_SIZE,
    AdvertiseMessage,
    ConsistencyRequest,
    MaskedInput,
    MaskRequest,
    SecAggKind,
    SetupRequest,
    ShareKeysRequest,
    SharesMessage,
    SignatureMessage,
    UnmaskRequest,
    UnmaskShares,
    _Message,
    open_sealed,
    seal_shares,
)
from privagg.errors import (
    ConfigurationError,
    DeserializationError,
    InsufficientParticipantsError,
    ProtocolError,
)
from privagg.keys import SecretBytes
from privagg.layout import FloatVector
from privagg.protocols import NoiseShare


# -- per-stage state -----------------------------------------------------------------------
# Each stage's handler takes the state the previous stage left and returns the next one;
# a handler that raises leaves the state as it was. Secrets live only in the states that
# still need them: the ephemeral keys and the self-mask seed are gone once the masked
# input is sent, the held shares once they are revealed.
@dataclass(frozen=True)
class _Start:
    """Before ``SETUP``."""


@dataclass(frozen=True, repr=False)
class _RoundView:
    """The round as fixed by ``SETUP`` (public): participants, graph and quorum."""

    participants: tuple[str, ...]
    index: Mapping[str, int]
    graph: GraphParams
    quorum: int
    min_live: int
    u0: bytes
    rparams: bytes


@dataclass(frozen=True, repr=False, eq=False)  # secrets: no field-wise ==
class _Advertised:
    """After ``SETUP``: the round view and this round's fresh secrets."""

    view: _RoundView
    c_sk: SecretBytes
    s_sk: SecretBytes
    # the same two keys as X25519 key objects (built once: each build derives the
    # public key, a scalar multiplication)
    c_key: X25519PrivateKey
    s_key: X25519PrivateKey
    b: SecretBytes
    own_pks: tuple[bytes, bytes, bytes]  # c_pk, s_pk, commitment to b


@dataclass(frozen=True, repr=False, eq=False)  # secrets: no field-wise ==
class _Held:
    """The two shares a holder holds of one owner, with the salts that open the
    owner's commitments to them (v5)."""

    s: int
    b: int
    salt_s: bytes
    salt_b: bytes


@dataclass(frozen=True, repr=False, eq=False)  # secrets: no field-wise ==
class _Shared:
    """After ``SHARE_KEYS``: the relayed keys, the graph and the stage-2 ECDH secrets."""

    adv: _Advertised
    keys: Mapping[str, AdvertiseMessage]
    seed: bytes  # the graph seed
    all_nbrs: Mapping[str, frozenset[str]]
    nbrs: frozenset[str]
    c_shared: Mapping[str, bytes]  # X25519(c_i, c_j) per holder
    held: Mapping[str, _Held]  # owner -> its shares: solo rounds only
    masked_with: frozenset[str]  # solo rounds only


@dataclass(frozen=True, repr=False, eq=False)  # secrets: no field-wise ==
class _Masked:
    """After ``MASK``: the shares this client holds for its partners."""

    view: _RoundView
    seed: bytes
    all_nbrs: Mapping[str, frozenset[str]]
    held: Mapping[str, _Held]  # owner -> its shares
    masked_with: frozenset[str]
    missing: frozenset[str]  # graph neighbours it did not mask with


@dataclass(frozen=True, repr=False, eq=False)  # secrets: no field-wise ==
class _Signed:
    """After ``CONSISTENCY`` (active variant): the survivor set it signed."""

    masked: _Masked
    signed: tuple[str, ...]


@dataclass(frozen=True)
class _Done:
    """After ``UNMASK``: nothing left to answer, nothing secret held."""


_State = _Start | _Advertised | _Shared | _Masked | _Signed | _Done


def _expected_kind(state: _State, active: bool) -> int:
    """The message kind the client accepts in ``state`` (-1: none)."""
    if isinstance(state, _Start):
        return SecAggKind.SETUP
    if isinstance(state, _Advertised):
        return SecAggKind.SHARE_KEYS
    if isinstance(state, _Shared):
        return SecAggKind.MASK
    if isinstance(state, _Masked):
        return SecAggKind.CONSISTENCY if active else SecAggKind.UNMASK
    if isinstance(state, _Signed):
        return SecAggKind.UNMASK
    return -1


# -- client --------------------------------------------------------------------------------
class SecAggClient(RingClient[_Config]):
    """A SecAgg+ client's state machine for one round (bytes in, bytes out).

    The stages are a dispatch table (:data:`_STAGES`): the expected message kind follows
    from the current state object, and the stage's handler maps (state, request) to
    (reply, next state).
    """

    def __init__(
        self,
        cfg: _Config,
        party_id: str,
        round_id: int,
        update: FloatVector,
        weight: float,
        rng: Rng,
        identity: SecretBytes | None,
        directory: Callable[[str], bytes],
        noise: NoiseShare | None = None,
    ) -> None:
        super().__init__(cfg, party_id, round_id, update, weight, rng, noise)
        self._identity = identity
        self._signer: Ed25519PrivateKey | None = None
        self._directory = directory
        self._state: _State = _Start()

    def handle(self, request: bytes) -> bytes:
        """Answer the aggregator's request for the current stage."""
        state = self._state
        kind = _expected_kind(state, self._cfg.active)
        self._cfg.check_header(request, self._round, kind, f"client {self._id!r}")
        stage = _STAGES.get(kind)
        if stage is None:
            raise ProtocolError(f"client {self._id!r} has finished this round")
        msg_type, step = stage
        msg = msg_type.from_bytes(request)
        if msg.party != self._id:
            raise ProtocolError(
                f"client {self._id!r} got a request addressed to {msg.party!r}"
            )
        reply, self._state = step(self, state, msg)
        return reply

    def _identity_key(self) -> Ed25519PrivateKey:
        """The identity signing key, built once per round (a client signs up to 3 times)."""
        if self._signer is None:
            if self._identity is None:
                raise ConfigurationError("the active variant needs an identity key")
            self._signer = ed25519_key(self._identity.reveal())
        return self._signer

    def _setup(self, _: _Start, req: SetupRequest) -> tuple[bytes, _Advertised]:
        ids = req.participants
        if self._id not in ids:
            raise ProtocolError(
                f"client {self._id!r} is not among the round's participants"
            )
        if len(ids) > self._cfg.max_clients:
            raise ProtocolError(
                f"round has {len(ids)} participants, session allows {self._cfg.max_clients}"
            )
        g = self._cfg.graph(len(ids))
        if (req.degree, req.threshold) != (g.degree, g.threshold):
            raise ProtocolError(
                "the aggregator proposed a graph degree/threshold other than the session's"
            )
        participants = tuple(sorted(ids))
        # n, k, t, q and the stage-1 minimum all follow from |U0|, which the key signature
        # binds (with H(U0)): neighbours that saw another U0 reject these keys.
        view = _RoundView(
            participants=participants,
            index={c: i for i, c in enumerate(participants)},
            graph=g,
            quorum=self._cfg.quorum(len(ids)),
            min_live=self._cfg.min_live(len(ids)),
            u0=u0_digest(participants),
            rparams=self._cfg.round_params(len(ids)),
        )
        c_sk = SecretBytes(new_x25519(self._rng), label="secagg c_sk")
        # s_sk is shared in clamped form, the one form the aggregator accepts (with its
        # public key) when it reconstructs it: the check identifies one secret.
        s_sk = SecretBytes(clamp_x25519(new_x25519(self._rng)), label="secagg s_sk")
        b = SecretBytes(self._rng.random_bytes(32), label="secagg self-mask seed")
        b_commit = _seed_commitment(self._cfg, self._round, self._id, b.reveal())
        c_key, s_key = x25519_key(c_sk.reveal()), x25519_key(s_sk.reveal())
        c_pk, s_pk = x25519_public(c_key), x25519_public(s_key)
        sig = b""
        if self._cfg.active:
            sig = ed25519_sign(
                self._identity_key(),
                _key_message(
                    self._cfg,
                    self._round,
                    self._id,
                    c_pk,
                    s_pk,
                    view.u0,
                    view.rparams,
                    b_commit,
                ),
            )
        reply = AdvertiseMessage(
            self._cfg.params_id, self._round, self._id, c_pk, s_pk, sig, b_commit
        ).to_bytes()
        return reply, _Advertised(
            view, c_sk, s_sk, c_key, s_key, b, (c_pk, s_pk, b_commit)
        )

    def _share(self, st: _Advertised, req: ShareKeysRequest) -> tuple[bytes, _Shared]:
        view = st.view
        keys = {k.party: k for k in req.keys}
        mine = keys.get(self._id)
        if mine is None or (mine.c_pk, mine.s_pk, mine.b_commit) != st.own_pks:
            raise ProtocolError(
                f"client {self._id!r}: the relayed key set misstates its own keys"
            )
        # The request carries every advertised key set of the round (U1); the graph seed
        # hashes all of them. The keys of the client's neighbours must be signed over the
        # same H(U0) and round parameters (n, k, t, q, min_live) as its own; the seed
        # itself is signed with the survivor set at stage 3, so every client that reveals a
        # share saw the same U0 and the same graph (see docs/backends/secagg.md).
        for cid, k in keys.items():
            if cid not in view.index:
                raise ProtocolError(
                    f"client {self._id!r}: keys of non-participant {cid!r} relayed"
                )
            if k.c_pk == k.s_pk:
                raise ProtocolError(f"client {cid!r} advertised equal keys")
        if len(
            {k.c_pk for k in keys.values()} | {k.s_pk for k in keys.values()}
        ) != 2 * len(keys):
            raise ProtocolError("two clients advertised the same key")
        seed = self._cfg.graph_seed(self._round, view.participants, keys)
        all_nbrs = self._cfg.neighbours(self._round, view.participants, keys, seed)
        nbrs = all_nbrs[self._id]
        if self._cfg.active:
            for cid in sorted(nbrs & keys.keys()):
                k = keys[cid]
                msg = _key_message(
                    self._cfg,
                    self._round,
                    cid,
                    k.c_pk,
                    k.s_pk,
                    view.u0,
                    view.rparams,
                    k.b_commit,
                )
                if not ed25519_verify(self._directory(cid), k.signature, msg):
                    raise ProtocolError(
                        f"bad signature on the keys of client {cid!r} (forged, or signed for another "
                        "participant list / round parameters)"
                    )
        # Neighbours only: the owner never holds (or reveals) a share of its own secrets,
        # except in a one-client round, where the sum is the input anyway.
        solo = len(view.participants) == 1
        holders = [self._id] if solo else sorted(nbrs & keys.keys())
        t = view.graph.threshold
        if len(holders) < view.min_live:
            raise InsufficientParticipantsError(
                f"client {self._id!r} has {len(holders)} live neighbours; it needs {view.min_live} "
                f"(threshold {t})"
            )
        xs = [_x_coord(view.index, h) for h in holders]
        s_sh = _shamir.share(st.s_sk.reveal(), xs, t, self._rng)
        b_sh = _shamir.share(st.b.reveal(), xs, t, self._rng)
        cts = []
        c_shared: dict[str, bytes] = {}
        held: dict[str, _Held] = {}
        masked_with: frozenset[str] = frozenset()
        c_sk = st.c_key
        for h in holders:
            x = _x_coord(view.index, h)
            dealt = _Held(
                s_sh[x],
                b_sh[x],
                self._rng.random_bytes(SALT_SIZE),
                self._rng.random_bytes(SALT_SIZE),
            )
            if solo:
                held[h] = dealt
                masked_with = frozenset({h})
                continue
            shared = ecdh(c_sk, keys[h].c_pk)
            c_shared[h] = shared
            key, aad = _share_key(
                self._cfg, self._round, shared, self._id, h, view.u0 + seed
            )
            s_enc, b_enc = _shamir.encode_share(dealt.s), _shamir.encode_share(dealt.b)
            commit_s, commit_b = self._commitments(self._id, h, s_enc, b_enc, dealt)
            ct = aead_encrypt(key, s_enc + b_enc + dealt.salt_s + dealt.salt_b, aad)
            cts.append((h, seal_shares(commit_s, commit_b, ct)))
        reply = SharesMessage(
            self._cfg.params_id, self._round, self._id, tuple(cts)
        ).to_bytes()
        return reply, _Shared(
            st, keys, seed, all_nbrs, nbrs, c_shared, held, masked_with
        )

    def _commitments(
        self, dealer: str, holder: str, s_enc: bytes, b_enc: bytes, held: _Held
    ) -> tuple[bytes, bytes]:
        """The dealer's commitments to the two shares it deals ``holder`` (v5)."""
        cfg, rid = self._cfg, self._round
        return (
            _share_commitment(cfg, rid, dealer, holder, _S, s_enc, held.salt_s),
            _share_commitment(cfg, rid, dealer, holder, _B, b_enc, held.salt_b),
        )

    def _mask(self, st: _Shared, req: MaskRequest) -> tuple[bytes, _Masked]:
        view = st.adv.view
        peers: set[str] = set()
        rejected: list[str] = []
        held = dict(st.held)
        size = _shamir.SHARE_SIZE
        for sender, record in req.ciphertexts:
            shared = st.c_shared.get(sender)
            if shared is None:
                raise ProtocolError(
                    f"client {self._id!r}: shares relayed from unexpected {sender!r}"
                )
            key, aad = _share_key(
                self._cfg, self._round, shared, sender, self._id, view.u0 + st.seed
            )
            try:
                commit_s, commit_b, ct = open_sealed(record)
                pt = aead_decrypt(key, ct, aad)
                if len(pt) != 2 * (size + SALT_SIZE):
                    raise DeserializationError()
                s_enc, b_enc = pt[:size], pt[size : 2 * size]
                got = _Held(
                    _shamir.decode_share(s_enc),
                    _shamir.decode_share(b_enc),
                    pt[2 * size : 2 * size + SALT_SIZE],
                    pt[2 * size + SALT_SIZE :],
                )
                # v5: hold only shares that open the dealer's commitments, the ones the
                # aggregator will check them against when they are revealed
                want_s, want_b = self._commitments(sender, self._id, s_enc, b_enc, got)
                if not (
                    hmac.compare_digest(want_s, commit_s)
                    & hmac.compare_digest(want_b, commit_b)
                ):
                    raise DeserializationError()
            except DeserializationError:
                # A bad share record (a ciphertext that does not decrypt, or shares that
                # do not open their commitments): treat the sender as dropped (do not
                # mask with it, hold nothing of it) and report it, so the aggregator
                # excludes it too.
                rejected.append(sender)
                continue
            held[sender] = got
            peers.add(sender)
        solo = len(view.participants) == 1
        if len(peers) < view.graph.threshold and not solo:
            raise InsufficientParticipantsError(
                f"client {self._id!r}: {len(peers)} neighbours shared keys; threshold is {view.graph.threshold}"
            )
        masked_with = st.masked_with if solo else frozenset(peers)
        # The partner attestation: the graph neighbours this client did not mask with,
        # signed with its identity key over its view of the round (active variant).
        missing_set = st.nbrs - peers
        missing = tuple(sorted(missing_set))
        att_sig = b""
        if self._cfg.active:
            att_sig = ed25519_sign(
                self._identity_key(),
                _partner_message(
                    self._cfg, self._round, view.u0 + st.seed, self._id, missing
                ),
            )
        s_sk = st.adv.s_key
        seeds = [(st.adv.b.reveal(), 1)]
        for j in sorted(peers):
            seed = _pair_seed(
                self._cfg, self._round, ecdh(s_sk, st.keys[j].s_pk), self._id, j
            )
            seeds.append((seed, _pair_sign(self._id, j)))
        # Encoding and all k + 1 masks in one cache-blocked pass over the vector.
        y = self._masked_update(seeds)
        reply = MaskedInput(
            self._cfg.params_id,
            self._round,
            self._id,
            y,
            tuple(sorted(rejected)),
            missing,
            att_sig,
        ).to_bytes()
        return reply, _Masked(
            view, st.seed, st.all_nbrs, held, masked_with, frozenset(missing_set)
        )

    def _consistency(
        self, st: _Masked, req: ConsistencyRequest
    ) -> tuple[bytes, _Signed]:
        self._check_survivors(st.view, req.survivors)
        if st.missing & set(req.survivors):
            # A neighbour this client did not mask with cannot have survived an honest
            # round (it was not in U2, or its share ciphertext was rejected).
            raise ProtocolError(
                f"client {self._id!r}: the survivor set includes a neighbour it did not "
                "mask with (selective delivery?)"
            )
        signed = tuple(sorted(req.survivors))
        sig = ed25519_sign(
            self._identity_key(),
            _survivor_message(self._cfg, self._round, signed, st.view.u0 + st.seed),
        )
        reply = SignatureMessage(
            self._cfg.params_id, self._round, self._id, sig
        ).to_bytes()
        return reply, _Signed(st, signed)

    def _check_survivors(self, view: _RoundView, survivors: Sequence[str]) -> None:
        if self._id not in survivors or any(s not in view.index for s in survivors):
            raise ProtocolError(f"client {self._id!r}: invalid survivor set")
        if len(set(survivors)) != len(survivors):
            raise ProtocolError(f"client {self._id!r}: duplicate survivors")
        if len(survivors) < view.quorum:
            raise InsufficientParticipantsError(
                f"{len(survivors)} survivors, {view.quorum} needed"
            )

    def _unmask(
        self, state: _Masked | _Signed, req: UnmaskRequest
    ) -> tuple[bytes, _Done]:
        st = state.masked if isinstance(state, _Signed) else state
        view = st.view
        survivors = tuple(sorted(req.survivors))
        self._check_survivors(view, survivors)
        if self._cfg.active:
            if not isinstance(state, _Signed) or survivors != state.signed:
                raise ProtocolError(
                    f"client {self._id!r}: survivor set differs from the one it signed"
                )
            msg = _survivor_message(
                self._cfg, self._round, survivors, view.u0 + st.seed
            )
            alive = set(survivors)
            valid: set[str] = set()
            for cid, sig in req.signatures:  # a quorum of valid signatures suffices
                if len(valid) >= view.quorum:
                    break
                if cid in alive and ed25519_verify(self._directory(cid), sig, msg):
                    valid.add(cid)
            if len(valid) < view.quorum:
                raise ProtocolError(
                    f"client {self._id!r}: {len(valid)} valid survivor-set signatures, need {view.quorum}"
                )
        alive = set(survivors)
        if self._cfg.active and len(view.participants) > 1:
            self._check_attestations(st, req.attestations, alive)
        out = []
        for owner in sorted(st.masked_with):  # never its own secrets
            h = st.held[owner]
            if owner in alive:  # the share and the salt that opens its commitment
                out.append((owner, _B, _shamir.encode_share(h.b) + h.salt_b))
            else:
                out.append((owner, _S, _shamir.encode_share(h.s) + h.salt_s))
        reply = UnmaskShares(
            self._cfg.params_id, self._round, self._id, tuple(out)
        ).to_bytes()
        return reply, _Done()

    def _check_attestations(
        self,
        st: _Masked,
        attestations: Sequence[tuple[str, tuple[str, ...], bytes]],
        alive: set[str],
    ) -> None:
        """Refuse to reveal anything unless every survivor whose self-mask share this
        client would reveal masked with *all* of its graph neighbours that survived.

        This is what stops a malicious server from isolating a victim ``v`` (security
        review, finding 1): deliver to ``v`` only the share ciphertexts of a set ``A`` of
        neighbours, so that ``v`` masks with ``A`` only, then declare ``A`` dropped. The
        holders would reveal ``A``'s mask keys (dropped) and ``v``'s self-mask seed
        (survivor), unmasking ``x_v`` alone. ``v`` signs the neighbours it did not mask
        with (over its view of the round), so the server cannot hide ``A``'s absence:
        a holder that reveals ``b_v`` is itself a surviving neighbour of ``v``, so it is
        a masking partner of ``v`` whose pairwise mask is never revealed. The whole check
        runs before any share is released: on failure nothing is revealed.
        """
        att = {owner: (missing, sig) for owner, missing, sig in attestations}
        view = st.view.u0 + st.seed
        for owner in sorted(st.masked_with & alive):
            entry = att.get(owner)
            if entry is None:
                raise ProtocolError(
                    f"client {self._id!r}: no partner attestation for survivor {owner!r}"
                )
            missing, sig = entry
            msg = _partner_message(self._cfg, self._round, view, owner, missing)
            if not ed25519_verify(self._directory(owner), sig, msg):
                raise ProtocolError(
                    f"client {self._id!r}: bad partner attestation of {owner!r}"
                )
            if not set(missing) <= st.all_nbrs.get(owner, frozenset()):
                raise ProtocolError(
                    f"client {self._id!r}: the attestation of {owner!r} names non-neighbours"
                )
            if set(missing) & alive:
                raise ProtocolError(
                    f"client {self._id!r}: survivor {owner!r} did not mask with some of "
                    "its surviving neighbours; refusing to reveal its self-mask share "
                    "(selective delivery?)"
                )

    def __repr__(self) -> str:
        return f"SecAggClient(client={self._id!r}, round={self._round})"

    def __reduce__(self) -> NoReturn:
        raise TypeError("SecAggClient holds secret material and cannot be pickled")


# The stages: expected message kind -> (request type, handler).
_Step = Callable[[SecAggClient, Any, Any], tuple[bytes, _State]]
_STAGES: dict[int, tuple[type[_Message], _Step]] = {
    SecAggKind.SETUP: (SetupRequest, SecAggClient._setup),
    SecAggKind.SHARE_KEYS: (ShareKeysRequest, SecAggClient._share),
    SecAggKind.MASK: (MaskRequest, SecAggClient._mask),
    SecAggKind.CONSISTENCY: (ConsistencyRequest, SecAggClient._consistency),
    SecAggKind.UNMASK: (UnmaskRequest, SecAggClient._unmask),
}
