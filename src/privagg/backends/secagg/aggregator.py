"""The untrusted SecAgg+ aggregator: one state machine per round."""

from __future__ import annotations

import hmac
import logging
from collections.abc import Callable, Mapping, Sequence
from typing import Any

import numpy as np
import numpy.typing as npt

from privagg.backends import _shamir
from privagg.backends._graph import (
    GraphParams,
)
from privagg.backends._masking import UNREADABLE, RingAggregator, valid_x25519
from privagg.backends._primitives import (
    clamp_x25519,
    ecdh,
    ed25519_verify,
    x25519_key,
    x25519_public,
)
from privagg.backends._ringcode import add_masks
from privagg.backends.secagg._context import (
    _Config,
    _key_message,
    _pair_seed,
    _pair_sign,
    _partner_message,
    _seed_commitment,
    _share_commitment,
    _survivor_message,
    _x_coord,
    u0_digest,
)
from privagg.backends.secagg.messages import (
    _B,
    _S,
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
    open_sealed,
)
from privagg.errors import (
    ConfigurationError,
    DeserializationError,
    InsufficientParticipantsError,
    ProtocolError,
)

_log = logging.getLogger(__name__)


def mask_key_check(s_pk: bytes) -> Callable[[bytes], bool]:
    """The check of a reconstructed mask key: in clamped form (the form clients share,
    SecAgg+ v4) and with public key ``s_pk``. Exactly one 32-byte string passes: keys
    equal up to the bits X25519 clamping ignores have the same public key, but only
    one of them is clamped."""

    def check(raw: bytes) -> bool:
        return clamp_x25519(raw) == raw and x25519_public(x25519_key(raw)) == s_pk

    return check


# -- aggregator ----------------------------------------------------------------------------
class SecAggAggregator(RingAggregator):
    """The untrusted SecAgg+ server's state machine for one round.

    ``rejected`` / ``rejection_reasons`` describe the clients dropped for replies it
    could not use. ``disputes`` maps each client whose share record a neighbour
    refused in an accepted upload to the neighbours that refused it (the client is
    left out; its reason is ``"share refused by a neighbour"`` unless it also
    dropped or sent an unusable upload itself): a refusal carries no evidence the
    aggregator can check without reading the refuser's shares, so either side may be
    the liar and both are named. A refused batch (too few clients left at any stage,
    a secret that does not reconstruct) ends the round: every later ``receive`` / ``result`` call
    raises the same error family and nothing of the round is kept
    (:class:`~privagg.backends._common.FinishedResult`).
    """

    _LOG_LABEL = "SecAgg+"
    _LOGGER = _log

    def __init__(
        self,
        cfg: _Config,
        round_id: int,
        client_ids: Sequence[str],
        directory: Callable[[str], bytes],
    ) -> None:
        if len(set(client_ids)) != len(client_ids):
            raise ConfigurationError("client ids must be unique")
        if not client_ids:
            raise ConfigurationError("a round needs at least one client")
        if len(client_ids) > cfg.max_clients:
            raise ConfigurationError(
                f"{len(client_ids)} clients, but the session was set up for max_clients={cfg.max_clients}"
            )
        super().__init__()
        self._cfg = cfg
        self._round = round_id
        self._u0 = tuple(sorted(client_ids))
        self._graph = cfg.graph(len(self._u0))
        self._quorum = cfg.quorum(len(self._u0))
        self._min_live = cfg.min_live(len(self._u0))
        self._u0_digest = u0_digest(self._u0)
        self._rparams = cfg.round_params(len(self._u0))
        self._seed = b""
        self._nbrs: dict[str, frozenset[str]] = {}  # known once the keys are advertised
        self._rejected_by: dict[str, frozenset[str]] = {}
        #: client -> the neighbours that refused its share record (see the class doc)
        self.disputes: dict[str, frozenset[str]] = {}
        self._holders_of: dict[str, frozenset[str]] = {}  # see _holders
        self._peers: dict[str, frozenset[str]] = {}
        self._attest: dict[str, tuple[tuple[str, ...], bytes]] = {}
        self._directory = directory
        self._expect: int | None = None
        self._asked: frozenset[str] = frozenset()  # who got the current stage's request
        self._keys: dict[str, AdvertiseMessage] = {}
        self._routed: dict[str, list[tuple[str, bytes]]] = {}
        # (dealer, holder) -> the dealer's commitments to the (s, b) shares it dealt (v5)
        self._commits: dict[tuple[str, str], tuple[bytes, bytes]] = {}
        self._u2: frozenset[str] = frozenset()
        self._u3: tuple[str, ...] = ()
        self._acc: npt.NDArray[np.unsignedinteger] | None = None
        self._result: bytes | None = None

    @property
    def graph(self) -> GraphParams:
        """The round's degree and threshold."""
        return self._graph

    def _msg(self, cls: type[Any], **kw: Any) -> Callable[[str], bytes]:
        """party -> the bytes of ``cls(params_id, round, party, **kw)``: the fields every
        party gets are encoded once (the round's broadcasts, O(n) each)."""
        params_id, round_id = self._cfg.params_id, self._round
        body = cls(params_id, round_id, "", **kw).body()
        return lambda party: cls.seal_body(params_id, round_id, party, body)

    def start(self) -> dict[str, bytes]:
        """Stage 0: send the participant list and (k, t) to every client."""
        if self._expect is not None:
            raise ProtocolError("round already started")
        self._expect = SecAggKind.ADVERTISE
        mk = self._msg(
            SetupRequest,
            participants=self._u0,
            degree=self._graph.degree,
            threshold=self._graph.threshold,
        )
        self._asked = frozenset(self._u0)
        return {cid: mk(cid) for cid in self._u0}

    def _decode(
        self,
        replies: Mapping[str, bytes],
        cls: type[Any],
        allowed: frozenset[str] | set[str],
    ) -> dict[str, Any]:
        """The stage's replies that decode, by sender.

        A reply that is not a well-formed message of this session, round and stage
        labelled with its sender (garbage, cut, replayed from another round, from
        another session, another party's) is ignored and its sender treated as
        dropped at this stage, the case the protocol already recovers from: one client
        cannot abort the round by answering garbage. A reply from a party that was not
        asked is the caller's routing error.

        Raises:
            ProtocolError: a reply from a party outside ``allowed``.
        """
        out = {}
        for sender, data in replies.items():
            if sender not in allowed:
                raise ProtocolError(f"reply from unexpected party {sender!r}")
            try:
                out[sender] = self._cfg.read_reply(data, self._round, cls, sender)
            except UNREADABLE as exc:
                self._drop(sender, type(exc))
        return out

    def _need(self, n: int, what: str) -> None:
        if n < self._graph.threshold:
            raise InsufficientParticipantsError(
                f"{n} {what}, fewer than the threshold {self._graph.threshold}; round aborted"
            )

    def receive(self, replies: Mapping[str, bytes]) -> dict[str, bytes]:
        """Process one stage's replies; return the next stage's requests ({} when done).

        Raises:
            ProtocolError: a reply from a party that was not sent this stage's request
                (nothing is read or changed), or a call out of order.
            InsufficientParticipantsError: too few clients left to go on: the round is
                aborted (as is any other error of this batch).
        """
        self._check_not_aborted()
        stage = self._expect
        if stage is None or self._result is not None:
            raise ProtocolError("receive() called out of order")
        # Only the parties asked at this stage may answer, before anything is read: a
        # client dropped at an earlier stage (or left out of this one) cannot come back.
        for sender in replies:
            if sender not in self._asked:
                raise ProtocolError(f"reply from unexpected party {sender!r}")
        step: Callable[[Mapping[str, bytes]], dict[str, bytes]] = self._on_unmask
        if stage == SecAggKind.ADVERTISE:
            step = self._on_advertise
        elif stage == SecAggKind.SHARES:
            step = self._on_shares
        elif stage == SecAggKind.MASKED:
            step = self._on_masked
        elif stage == SecAggKind.SIGNATURE:
            step = self._on_signatures
        out = self._run_stage(step, replies)
        self._asked = frozenset(out)
        return out

    def _forget(self) -> None:
        self._asked = frozenset()
        self._keys = {}
        self._nbrs = {}
        self._seed = b""
        self._routed = {}
        self._commits = {}
        self._rejected_by = {}
        self._holders_of = {}
        self._peers = {}
        self._attest = {}
        self._u2 = frozenset()
        self._u3 = ()
        self._acc = None

    def _on_advertise(self, replies: Mapping[str, bytes]) -> dict[str, bytes]:
        msgs: dict[str, AdvertiseMessage] = self._decode(
            replies, AdvertiseMessage, set(self._u0)
        )
        rejected: set[str] = set()
        for cid, m in msgs.items():
            # A bad signature, or a low-order / equal / duplicated X25519 key, would make the
            # client's neighbours abort: drop that client here instead (a stage-0 dropout).
            if self._cfg.active and not ed25519_verify(
                self._directory(cid),
                m.signature,
                _key_message(
                    self._cfg,
                    self._round,
                    cid,
                    m.c_pk,
                    m.s_pk,
                    self._u0_digest,
                    self._rparams,
                    m.b_commit,
                ),
            ):
                rejected.add(cid)
            elif m.c_pk == m.s_pk or not (
                valid_x25519(m.c_pk) and valid_x25519(m.s_pk)
            ):
                rejected.add(cid)
        seen: dict[bytes, str] = {}
        for cid in sorted(msgs):
            for pk in (msgs[cid].c_pk, msgs[cid].s_pk):
                if pk in seen:
                    rejected |= {cid, seen[pk]}
                seen[pk] = cid
        for cid in sorted(rejected):
            self._reject(cid, "invalid keys")
        msgs = {c: m for c, m in msgs.items() if c not in rejected}
        self._need(len(msgs), "clients advertised valid keys")
        self._keys = msgs
        # The graph seed hashes every (signed) advertised key set, after stage 0.
        self._seed = self._cfg.graph_seed(self._round, self._u0, msgs)
        self._nbrs = self._cfg.neighbours(self._round, self._u0, msgs, self._seed)
        # Clients with too few live neighbours would refuse to share: treat them as dropped.
        live = [
            c
            for c in sorted(msgs)
            if len(self._nbrs[c] & msgs.keys()) >= self._min_live
        ]
        self._need(len(live), "clients have enough live neighbours")
        self._expect = SecAggKind.SHARES
        mk = self._msg(ShareKeysRequest, keys=tuple(msgs[j] for j in sorted(msgs)))
        return {cid: mk(cid) for cid in live}

    def _on_shares(self, replies: Mapping[str, bytes]) -> dict[str, bytes]:
        msgs: dict[str, SharesMessage] = self._decode(
            replies, SharesMessage, set(self._keys)
        )
        for sender in sorted(msgs):
            want = self._nbrs[sender] & self._keys.keys()
            if {r for r, _ in msgs[sender].ciphertexts} != want:
                self._reject(sender)  # shares for the wrong parties: a stage-1 dropout
                del msgs[sender]
        self._need(len(msgs), "clients shared keys")
        u2 = frozenset(msgs)
        routed: dict[str, list[tuple[str, bytes]]] = {cid: [] for cid in u2}
        commits: dict[tuple[str, str], tuple[bytes, bytes]] = {}
        for sender in sorted(msgs):
            for recipient, record in msgs[sender].ciphertexts:
                if recipient in u2:
                    routed[recipient].append((sender, record))
                    commit_s, commit_b, _ = open_sealed(record)
                    commits[sender, recipient] = (commit_s, commit_b)
        self._u2 = u2
        self._commits = commits
        self._routed = routed
        self._expect = SecAggKind.MASKED
        return {
            cid: MaskRequest(
                self._cfg.params_id, self._round, cid, tuple(routed[cid])
            ).to_bytes()
            for cid in sorted(u2)
        }

    def _holders(self, owner: str) -> frozenset[str]:
        """Clients holding shares of ``owner``'s secrets: its neighbours in U2 that accepted
        its share ciphertext (never ``owner`` itself). Fixed once the masked inputs are
        in (``_rejected_by``); computed once per owner from then on."""
        held = self._holders_of.get(owner)
        if held is None:
            if len(self._u0) == 1:
                held = frozenset({owner})  # a one-client round (the sum is the input)
            else:
                held = frozenset(
                    i
                    for i in self._nbrs[owner] & self._u2
                    if owner not in self._rejected_by.get(i, ())
                )
            self._holders_of[owner] = held
        return held

    def _on_masked(self, replies: Mapping[str, bytes]) -> dict[str, bytes]:
        dtype = self._cfg.dtype
        msgs: dict[str, MaskedInput] = {}
        for sender, msg in self._decode(replies, MaskedInput, self._u2).items():
            routed_from = {s for s, _ in self._routed[sender]}
            partners = routed_from - set(msg.rejected)
            if (
                msg.masked.dtype != np.dtype(dtype)
                or msg.masked.shape != (self._cfg.size,)
                or not set(msg.rejected) <= routed_from
                or set(msg.missing) != self._nbrs[sender] - partners
                or not self._attestation_ok(sender, msg)
            ):
                # An unusable upload: ignore it (as if the client dropped before uploading).
                self._reject(sender)
                continue
            msgs[sender] = msg
        # A client whose share ciphertext some uploader rejected is treated as dropped at
        # stage 2 (its upload is ignored, its mask key is recovered): the rejecting client
        # did not mask with it, so its pairwise masks would not cancel.
        self._rejected_by = {c: frozenset(m.rejected) for c, m in msgs.items()}
        refusers: dict[str, set[str]] = {}
        for refuser, refused in self._rejected_by.items():
            for cid in refused:
                refusers.setdefault(cid, set()).add(refuser)
        # kept as the round's report (it outlives _forget, as rejection_reasons does)
        self.disputes = {cid: frozenset(refusers[cid]) for cid in sorted(refusers)}
        for cid, by in self.disputes.items():
            _log.warning(
                "SecAgg+ round %d: %s's share record refused by %s (unproven: either "
                "side may have lied)",
                self._round,
                cid,
                ", ".join(sorted(by)),
            )
        accused = set(self.disputes)
        for cid in sorted(accused & set(msgs)):
            self._reject(cid, "share refused by a neighbour")
        self._holders_of = {}
        acc = np.zeros(self._cfg.size, dtype=dtype)
        u3 = []
        for sender in sorted(msgs):
            if sender in accused:
                continue
            np.add(acc, msgs[sender].masked, out=acc)
            u3.append(sender)
        self._need(len(u3), "masked inputs arrived")
        if len(u3) < self._quorum:
            raise InsufficientParticipantsError(
                f"{len(u3)} masked inputs arrived; unmasking needs {self._quorum}; round aborted"
            )
        self._u3 = tuple(u3)
        self._peers = {
            c: frozenset(s for s, _ in self._routed[c]) - self._rejected_by[c]
            for c in self._u3
        }
        self._attest = {c: (msgs[c].missing, msgs[c].signature) for c in self._u3}
        self._acc = acc
        self._precheck(set(self._u3))
        self._expect = (
            SecAggKind.SIGNATURE if self._cfg.active else SecAggKind.UNMASK_SHARES
        )
        if self._cfg.active:
            mk = self._msg(ConsistencyRequest, survivors=self._u3)
            return {cid: mk(cid) for cid in self._u3}
        return self._unmask_requests(self._u3, ())

    def _attestation_ok(self, sender: str, msg: MaskedInput) -> bool:
        """The sender's signed partner attestation (active variant; see
        :meth:`SecAggClient._check_attestations`)."""
        if not self._cfg.active or len(self._u0) == 1:
            return True
        return ed25519_verify(
            self._directory(sender),
            msg.signature,
            _partner_message(
                self._cfg,
                self._round,
                self._u0_digest + self._seed,
                sender,
                msg.missing,
            ),
        )

    def _unmask_requests(
        self, recipients: Sequence[str], sigs: tuple[tuple[str, bytes], ...]
    ) -> dict[str, bytes]:
        """The last stage's requests: each recipient gets the survivor set, the survivor-set
        signatures and the partner attestations of its surviving neighbours."""
        alive = set(self._u3)
        att: dict[str, tuple[tuple[str, tuple[str, ...], bytes], ...]] = {}
        for cid in sorted(recipients):
            att[cid] = ()
            if self._cfg.active:
                att[cid] = tuple(
                    (o, *self._attest[o]) for o in sorted(self._nbrs[cid] & alive)
                )
        return UnmaskRequest.for_recipients(
            self._cfg.params_id, self._round, self._u3, sigs, att
        )

    def _needed(self) -> list[str]:
        """Owners whose secret must be reconstructed: every survivor, and each client of
        U2 outside U3 that a survivor masked with."""
        alive = set(self._u3)
        out = list(self._u3)
        out += [
            j
            for j in sorted(self._u2 - alive)
            if any(j in self._peers[i] for i in alive)
        ]
        return out

    def _precheck(self, responders: set[str]) -> None:
        """Abort (before asking for any share) if some secret could not be recovered."""
        for owner in self._needed():
            n = len(self._holders(owner) & responders)
            if n < self._graph.threshold:
                raise InsufficientParticipantsError(
                    f"only {n} live holders of a needed secret, threshold {self._graph.threshold}; round aborted"
                )

    def _on_signatures(self, replies: Mapping[str, bytes]) -> dict[str, bytes]:
        msgs: dict[str, SignatureMessage] = self._decode(
            replies, SignatureMessage, set(self._u3)
        )
        smsg = _survivor_message(
            self._cfg, self._round, self._u3, self._u0_digest + self._seed
        )
        sigs = []
        for cid in sorted(msgs):
            if not ed25519_verify(self._directory(cid), msgs[cid].signature, smsg):
                # Not counted (as if it had not answered): one client cannot abort the
                # round this late (second review, finding 4).
                self._reject(cid, "invalid signature")
                continue
            sigs.append((cid, msgs[cid].signature))
        if len(sigs) < self._quorum:
            raise InsufficientParticipantsError(
                f"{len(sigs)} survivor-set signatures, {self._quorum} needed; round aborted"
            )
        signers = {cid for cid, _ in sigs}
        self._precheck(signers)
        self._expect = SecAggKind.UNMASK_SHARES
        return self._unmask_requests(sorted(signers), tuple(sigs))

    def _on_unmask(self, replies: Mapping[str, bytes]) -> dict[str, bytes]:
        msgs: dict[str, UnmaskShares] = self._decode(
            replies, UnmaskShares, set(self._u3)
        )
        alive = set(self._u3)
        index = {c: i for i, c in enumerate(self._u0)}
        got: dict[str, dict[int, int]] = {}
        for sender in sorted(msgs):
            m = msgs[sender]
            # A reply with a share its sender cannot hold, or of the wrong kind, is
            # ignored whole (the sender is treated as dropped): one client cannot abort
            # the round after the others revealed (second review, finding 4).
            if any(
                owner not in self._u2
                or sender not in self._holders(owner)
                or which != (_B if owner in alive else _S)
                for owner, which, _ in m.shares
            ):
                self._reject(sender)
                continue
            # v5: a revealed share that does not open its dealer's commitment is this
            # holder's doing: it is named and that share is an erasure; its shares
            # that open are the ones their dealers committed to, and are used
            opened = [
                (owner, rec[: _shamir.SHARE_SIZE])
                for owner, which, rec in m.shares
                if self._opens(owner, sender, which, rec)
            ]
            if len(opened) != len(m.shares):
                self._reject(sender, "share does not open its commitment")
            try:  # all of a reply's shares, or none of them
                shares = [(owner, _shamir.decode_share(sh)) for owner, sh in opened]
            except DeserializationError as exc:
                self._drop(sender, type(exc))  # a non-canonical share
                continue
            for owner, v in shares:
                got.setdefault(owner, {})[_x_coord(index, sender)] = v
        t = self._graph.threshold
        needed = self._needed()
        for owner in needed:
            if len(got.get(owner, {})) < t:
                raise InsufficientParticipantsError(
                    f"too few shares arrived to unmask (threshold {t}); round aborted"
                )
        acc = self._acc
        if acc is None:
            raise ProtocolError(
                "the masked sum of this round is gone (already unmasked)"
            )
        seeds: list[tuple[bytes, int]] = []
        for owner in needed:
            secret = self._recover(owner, got[owner], owner in alive)
            if owner in alive:
                seeds.append((secret, -1))
                continue
            s_sk = x25519_key(secret)
            for i in sorted(i for i in alive if owner in self._peers[i]):
                seed = _pair_seed(
                    self._cfg, self._round, ecdh(s_sk, self._keys[i].s_pk), i, owner
                )
                seeds.append((seed, -_pair_sign(i, owner)))
        add_masks(acc, seeds)
        self._acc = None
        self._result = ResultMessage(
            self._cfg.params_id, self._round, "holder", self._u3, acc
        ).to_bytes()
        return {}

    def _opens(self, owner: str, holder: str, which: int, revealed: bytes) -> bool:
        """Whether ``revealed`` (share || salt) opens ``owner``'s commitment to the share
        of kind ``which`` it dealt ``holder`` (v5). A one-client round deals no
        commitments (the sum is the input anyway): nothing to open."""
        if len(self._u0) == 1:
            return True
        size = _shamir.SHARE_SIZE
        commit_s, commit_b = self._commits[owner, holder]
        got = _share_commitment(
            self._cfg,
            self._round,
            owner,
            holder,
            which,
            revealed[:size],
            revealed[size:],
        )
        return hmac.compare_digest(got, commit_s if which == _S else commit_b)

    def _recover(self, owner: str, points: Mapping[int, int], alive: bool) -> bytes:
        """``owner``'s secret from its holders' shares (x -> value), correcting wrong ones.

        Every reconstructed secret is checked, and only a secret that passes is used: a
        dropped client's mask key must be in clamped form and give the public key it
        advertised (one secret passes: the check cannot be fooled by a key equal up to
        X25519 clamping); a survivor's self-mask seed must match the commitment it
        advertised (and signed, active variant) at stage 0.

        Every share here opened the commitment its dealer sent with it (v5, checked in
        :meth:`_on_unmask`), so a share that is wrong was dealt wrong: ``owner`` is
        named in ``rejection_reasons`` ("dealt wrong self-mask shares" / "dealt wrong
        mask-key shares"), never the holders. Up to
        :func:`~privagg.backends._shamir.max_wrong_shares` (checked) wrong shares,
        ``(m - t + 1) // 2`` of ``m``, are corrected; more abort the round
        (:class:`ProtocolError` naming ``owner``), as do shares that agree on a seed
        that does not match the owner's own commitment. A named survivor's masked
        input is in the sum and its self-mask must still be removed, so it stays a
        contributor; it is only reported.

        Raises:
            ProtocolError: the shares do not decode within the bound to a secret that
                passes the check.
        """
        check: Callable[[bytes], bool]
        if alive:
            commit = self._keys[owner].b_commit

            def check(raw: bytes) -> bool:
                return _seed_commitment(self._cfg, self._round, owner, raw) == commit

        else:
            check = mask_key_check(self._keys[owner].s_pk)
        found = _shamir.decode(points, self._graph.threshold, check)
        if found is None:
            raise ProtocolError(
                f"shares of {owner!r} do not reconstruct its advertised key"
                if not alive
                else f"shares of {owner!r}'s self-mask seed do not decode to its "
                "committed seed"
            )
        secret, wrong = found
        if wrong:
            self._convict(
                owner,
                "dealt wrong self-mask shares"
                if alive
                else "dealt wrong mask-key shares",
            )
        return secret

    def __repr__(self) -> str:
        return f"SecAggAggregator(round={self._round}, clients={len(self._u0)})"
