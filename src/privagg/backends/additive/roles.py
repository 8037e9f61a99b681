"""The additive-sharing roles: client, servers, coordinator (server 0) and holder."""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence

import numpy as np
import numpy.typing as npt

from privagg._rng import Rng
from privagg.backends._masking import (
    UNREADABLE,
    RingAggregator,
    RingClient,
    decode_total,
    open_result,
    valid_x25519,
)
from privagg.backends._primitives import (
    aead_decrypt,
    aead_encrypt,
    ecdh,
    hkdf,
    new_x25519,
    x25519_key,
    x25519_public,
)
from privagg.backends._ringcode import add_masks
from privagg.backends.additive._context import (
    _DOMAIN,
    _SEED_CT_LEN,
    _Config,
    _ctx,
    _partial_key,
    _process_register,
    _RoundRegister,
)
from privagg.backends.additive.messages import (
    AdditiveKind,
    ClientShares,
    PartialSum,
    ResultMessage,
    ServerRequest,
    ShareRequest,
)
from privagg.errors import (
    ConfigurationError,
    DeserializationError,
    InsufficientParticipantsError,
    ProtocolError,
)
from privagg.keys import SecretKey
from privagg.protocols import Recovered

_log = logging.getLogger(__name__)


# -- roles -------------------------------------------------------------------------------------
class AdditiveClient(RingClient[_Config]):
    """A client: splits its encoded update into one additive share per server."""

    _answered = False  # set once the shares are sent

    def handle(self, request: bytes) -> bytes:
        """Answer the share request."""
        cfg = self._cfg
        cfg.check_header(
            request, self._round, AdditiveKind.REQUEST, f"client {self._id!r}"
        )
        req = ShareRequest.from_bytes(request)
        if req.party != self._id:
            raise ProtocolError(
                f"client {self._id!r} got a request addressed to {req.party!r}"
            )
        if self._answered:
            raise ProtocolError("this client already contributed to this round")
        eph = x25519_key(new_x25519(self._rng))
        epk = x25519_public(eph.private_bytes_raw())
        seeds = []
        masks = []
        for sid, spk in zip(cfg.server_ids, cfg.server_pks, strict=True):
            seed = self._rng.random_bytes(32)
            masks.append((seed, -1))
            ctx = _ctx(cfg, self._round, self._id, sid)
            key = hkdf(
                ecdh(eph, spk),
                salt=cfg.params_id,
                info=_DOMAIN + b"seed-key" + ctx + epk,
            )
            seeds.append((sid, aead_encrypt(key, seed, _DOMAIN + b"seed" + ctx + epk)))
        # Server 0's share: the encoding minus every seed's expansion, in one blocked pass.
        share0 = self._masked_update(masks)
        self._answered = True
        return ClientShares(
            cfg.params_id, self._round, self._id, epk, share0, tuple(seeds)
        ).to_bytes()

    def __repr__(self) -> str:
        return f"AdditiveClient(client={self._id!r}, round={self._round})"


class AdditiveServer:
    """Server ``k >= 1``: decrypts its seeds, sums their expansions, encrypts the sum to the holder."""

    def __init__(
        self,
        cfg: _Config,
        server_id: str,
        round_id: int,
        key: SecretKey[bytes],
        rng: Rng,
        served: _RoundRegister | None = None,
    ) -> None:
        self._cfg = cfg
        self._id = server_id
        self._round = round_id
        self._key = key
        self._rng = rng
        self._served = (
            served
            if served is not None
            else _process_register(cfg.params_id, server_id)
        )
        self._answered = False

    @property
    def party_id(self) -> str:
        """This server's id."""
        return self._id

    def handle(self, request: bytes) -> bytes:
        """Sum this server's shares of the listed contributors.

        Raises:
            ProtocolError: a request for another round or server, a second request, or
                a round this server (this session's register) already served.
            InsufficientParticipantsError: fewer than ``min_contributions`` entries (an
                honest server never sums so few: with server 0's share that would reveal
                their updates).
            DeserializationError: a listed entry this server cannot decrypt.
        """
        cfg = self._cfg
        cfg.check_header(
            request, self._round, AdditiveKind.SERVER_REQUEST, f"server {self._id!r}"
        )
        req = ServerRequest.from_bytes(request)
        if req.party != self._id:
            raise ProtocolError(
                f"server {self._id!r} got a request addressed to {req.party!r}"
            )
        if self._answered:
            raise ProtocolError("this server already answered this round")
        self._served.check(self._round)
        if len(req.entries) < cfg.min_contributions:
            raise InsufficientParticipantsError(
                f"server {self._id!r}: asked to sum {len(req.entries)} client(s), "
                f"at least min_contributions={cfg.min_contributions} required"
            )
        sk = x25519_key(self._key.unsafe_material())
        acc = np.zeros(cfg.size, dtype=cfg.dtype)
        masks = []
        contributors = tuple(sorted(e[0] for e in req.entries))
        # The coordinator sends every server the same accepted entries; a listed entry this
        # server cannot decrypt aborts (DeserializationError / ProtocolError) rather than
        # being dropped silently, which would make the servers sum different client sets.
        for cid, epk, ct in req.entries:
            ctx = _ctx(cfg, self._round, cid, self._id)
            key = hkdf(
                ecdh(sk, epk),
                salt=cfg.params_id,
                info=_DOMAIN + b"seed-key" + ctx + epk,
            )
            seed = aead_decrypt(key, ct, _DOMAIN + b"seed" + ctx + epk)
            if len(seed) != 32:
                raise DeserializationError()
            masks.append((seed, 1))
        add_masks(acc, masks)
        eph = x25519_key(new_x25519(self._rng))
        epk = x25519_public(eph.private_bytes_raw())
        key, aad = _partial_key(
            cfg,
            self._round,
            self._id,
            contributors,
            epk,
            ecdh(eph, cfg.holder_pk),
            ecdh(sk, cfg.holder_pk),
        )
        ct = aead_encrypt(
            key, acc.astype(acc.dtype.newbyteorder("<"), copy=False).tobytes(), aad
        )
        self._served.claim(self._round)
        self._answered = True
        return PartialSum(
            cfg.params_id, self._round, self._id, contributors, epk, ct
        ).to_bytes()

    def __repr__(self) -> str:
        return f"AdditiveServer({self._id!r}, round={self._round})"


class AdditiveAggregator(RingAggregator):
    """The coordinator, which is also server 0.

    ``rejected`` / ``rejection_reasons`` describe the clients whose replies it could not
    use. A refused batch (too few contributors, a server's bad partial sum) ends the
    round: every later ``receive`` / ``result`` call raises the same error family and
    nothing of the round is kept (:class:`~privagg.backends._common.FinishedResult`).
    """

    _LOG_LABEL = "additive"
    _LOGGER = _log

    def __init__(self, cfg: _Config, round_id: int, client_ids: Sequence[str]) -> None:
        if len(set(client_ids)) != len(client_ids):
            raise ConfigurationError("client ids must be unique")
        if set(client_ids) & set(cfg.server_ids):
            raise ConfigurationError("client ids must differ from the server ids")
        if len(client_ids) > cfg.max_clients:
            raise ConfigurationError(
                f"{len(client_ids)} clients, but the session was set up for max_clients={cfg.max_clients}"
            )
        super().__init__()
        self._cfg = cfg
        self._round = round_id
        self._clients = tuple(client_ids)
        self._stage = 0
        self._contributors: tuple[str, ...] = ()
        self._partial0: npt.NDArray[np.unsignedinteger] | None = None
        self._result: bytes | None = None

    def start(self) -> dict[str, bytes]:
        """Ask every client for its shares."""
        if self._stage:
            raise ProtocolError("round already started")
        self._stage = 1
        return {
            c: ShareRequest(self._cfg.params_id, self._round, c).to_bytes()
            for c in self._clients
        }

    def receive(self, replies: Mapping[str, bytes]) -> dict[str, bytes]:
        """Stage 1: sum server 0's shares and relay the seeds; stage 2: collect partial sums.

        Raises:
            ProtocolError: a reply from a party that was not asked at this stage
                (nothing is read or changed), or a call out of order.
            InsufficientParticipantsError: too few contributors, or a server did not
                answer: the round is aborted (as is any other error of this batch).
        """
        self._check_not_aborted()
        if self._stage == 1:
            step, expected = self._on_shares, set(self._clients)
        elif self._stage == 2:
            step, expected = self._on_partials, set(self._cfg.server_ids)
        else:
            raise ProtocolError("receive() called out of order")
        for sender in replies:  # the caller's routing, checked before anything is read
            if sender not in expected:
                raise ProtocolError(f"reply from unexpected party {sender!r}")
        return self._run_stage(step, replies)

    def _forget(self) -> None:
        self._partial0 = None
        self._contributors = ()

    def _on_shares(self, replies: Mapping[str, bytes]) -> dict[str, bytes]:
        cfg = self._cfg
        acc = np.zeros(cfg.size, dtype=cfg.dtype)
        per_server: dict[str, list[tuple[str, bytes, bytes]]] = {
            s: [] for s in cfg.server_ids
        }
        accepted: list[str] = []
        for sender in sorted(replies):
            data = replies[sender]
            # A reply that is not a well-formed message of this session, round and stage
            # labelled with its sender (garbage, cut, another client's, replayed from
            # another round or session) counts as that client not answering: skipped
            # and reported, not allowed to abort the round.
            try:
                msg = cfg.read_reply(data, self._round, ClientShares, sender)
            except UNREADABLE as exc:
                self._drop(sender, type(exc))
                continue
            # Content checks: a client whose entry is unusable (share of the wrong type or
            # size, a server not addressed, a low-order ephemeral key, a seed ciphertext of
            # the wrong length) is skipped and reported, not allowed to abort the round.
            # Every server then gets the same list of accepted entries.
            seeds = dict(msg.seeds)
            if (
                not cfg.check_ring_array(msg.share0)
                or set(seeds) != set(cfg.server_ids)
                or len(seeds) != len(msg.seeds)
                or any(len(ct) != _SEED_CT_LEN for ct in seeds.values())
                or not valid_x25519(msg.ephemeral_pk)
            ):
                self._reject(sender)
                continue
            np.add(acc, msg.share0, out=acc)
            accepted.append(sender)
            for sid in cfg.server_ids:
                per_server[sid].append((sender, msg.ephemeral_pk, seeds[sid]))
        if len(accepted) < cfg.min_contributions:
            raise InsufficientParticipantsError(
                f"{len(accepted)} client(s) contributed, at least "
                f"min_contributions={cfg.min_contributions} required"
            )
        self._contributors = tuple(sorted(accepted))
        self._partial0 = acc
        if not cfg.server_ids:
            return self._finish(())
        self._stage = 2
        return {
            sid: ServerRequest(
                cfg.params_id, self._round, sid, tuple(per_server[sid])
            ).to_bytes()
            for sid in cfg.server_ids
        }

    def _on_partials(self, replies: Mapping[str, bytes]) -> dict[str, bytes]:
        cfg = self._cfg
        missing = set(cfg.server_ids) - set(replies)
        if missing:
            raise InsufficientParticipantsError(
                f"server(s) {sorted(missing)} did not answer; round aborted"
            )
        parts: list[tuple[str, bytes, bytes | memoryview]] = []
        for sid in cfg.server_ids:
            data = replies[sid]
            cfg.check_header(
                data, self._round, AdditiveKind.PARTIAL, f"reply of {sid!r}"
            )
            msg = PartialSum.from_bytes(data)
            if msg.party != sid:
                raise ProtocolError(
                    f"server {sid!r} sent a reply labelled as another party"
                )
            if msg.contributors != self._contributors:
                raise ProtocolError(f"server {sid!r} summed a different set of clients")
            parts.append((sid, msg.ephemeral_pk, msg.ciphertext))
        return self._finish(tuple(parts))

    def _finish(
        self, parts: tuple[tuple[str, bytes, bytes | memoryview], ...]
    ) -> dict[str, bytes]:
        partial0 = self._partial0
        if partial0 is None:
            raise ProtocolError(
                "server 0's partial sum is gone (round already finished)"
            )
        self._result = ResultMessage(
            self._cfg.params_id,
            self._round,
            "holder",
            self._contributors,
            partial0,
            parts,
        ).to_bytes()
        self._partial0 = None
        self._stage = 3
        return {}

    def __repr__(self) -> str:
        return f"AdditiveAggregator(round={self._round}, clients={len(self._clients)})"


class AdditiveHolder:
    """Authenticates and decrypts the servers' partial sums and adds them.

    It releases a sum only if every server ``k >= 1`` proved (by the authenticated
    encryption of its partial sum) that it summed exactly the result's contributor list,
    that list has at least ``min_contributions`` clients, and the round id was not
    recovered before by this session's holder.
    """

    def __init__(
        self,
        cfg: _Config,
        key: SecretKey[bytes],
        recovered: _RoundRegister | None = None,
    ) -> None:
        self._cfg = cfg
        self._key = key
        self._recovered = (
            recovered
            if recovered is not None
            else _process_register(cfg.params_id, "the holder")
        )

    def recover(self, result: bytes) -> Recovered:
        """Combine the partial sums into the float sum.

        Raises:
            ParameterMismatchError: a result of another session.
            ProtocolError: a result that lacks a server's partial sum, or a round id this
                holder already recovered.
            InsufficientParticipantsError: fewer than ``min_contributions`` contributors.
            DeserializationError: a partial sum that does not authenticate as its
                server's sum over exactly the result's contributor list (forged,
                re-labelled, or the servers summed different sets), or is malformed.
        """
        cfg = self._cfg
        open_result(
            cfg,
            result,
            AdditiveKind.RESULT,
            what="an additive-sharing result",
            other="parameters or keys",
        )
        msg = ResultMessage.from_bytes(result)
        if not cfg.check_ring_array(msg.partial0):
            raise ProtocolError("result has the wrong type or size")
        if {p[0] for p in msg.partials} != set(cfg.server_ids):
            raise ProtocolError("the result does not carry every server's partial sum")
        self._recovered.check(msg.round_id)
        if len(msg.contributors) < cfg.min_contributions:
            raise InsufficientParticipantsError(
                f"the result has {len(msg.contributors)} contributor(s), at least "
                f"min_contributions={cfg.min_contributions} required"
            )
        if list(msg.contributors) != sorted(msg.contributors):
            raise ProtocolError(
                "the result's contributor list is not in canonical order"
            )
        acc = msg.partial0  # decoded into a fresh array: add in place
        sk = x25519_key(self._key.unsafe_material())
        # Every partial sum is opened against the result's one contributor list: all of
        # them open only if every server summed exactly that set (and made the sum).
        for sid, epk, ct in msg.partials:
            spk = cfg.server_pks[cfg.server_ids.index(sid)]
            key, aad = _partial_key(
                cfg,
                msg.round_id,
                sid,
                msg.contributors,
                epk,
                ecdh(sk, epk),
                ecdh(sk, spk),
            )
            raw = aead_decrypt(key, bytes(ct), aad)  # bytes already: no copy
            dt = np.dtype(cfg.dtype).newbyteorder("<")
            if (
                len(raw) != cfg.size * dt.itemsize
            ):  # also catches a length frombuffer rejects
                raise DeserializationError()
            part = np.frombuffer(raw, dtype=dt)
            np.add(acc, part, out=acc)
        self._recovered.claim(msg.round_id)
        vec = decode_total(cfg, acc, len(msg.contributors))
        return Recovered(vec, msg.contributors)

    def __repr__(self) -> str:
        return "AdditiveHolder(<key hidden>)"
