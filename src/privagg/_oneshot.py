"""Reusable roles for one-shot schemes (plain, CKKS, Paillier).

The roles handle everything protocol-level: round and parameter checks, client ids,
replay and duplicate rejection, contributor bookkeeping. A backend supplies only the
cryptography through three small codecs (:class:`ClientCodec`, :class:`CombineCodec`,
:class:`RecoverCodec`): composition, not inheritance.
"""

from __future__ import annotations

import hmac
import threading
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from typing import NoReturn, Protocol

from privagg._rng import Rng, SystemRng
from privagg.backends._common import FinishedResult
from privagg.envelope import Scheme
from privagg.errors import (
    ConfigurationError,
    InsufficientParticipantsError,
    ParameterMismatchError,
    ProtocolError,
)
from privagg.layout import FloatVector, Layout
from privagg.messages import AggregateMessage, Contribution, RoundRequest
from privagg.protocols import Recovered, Responder

__all__ = [
    "ClientCodec",
    "CombineCodec",
    "OneShotAggregator",
    "OneShotClient",
    "OneShotHolder",
    "OneShotSession",
    "RecoverCodec",
]


class ClientCodec(Protocol):
    """Client side: protect one weighted update into an opaque body."""

    def protect(self, update: FloatVector, weight: float, rng: Rng) -> bytes: ...


class CombineCodec(Protocol):
    """Aggregator side: combine bodies without learning them."""

    def combine(self, bodies: Sequence[bytes | memoryview]) -> bytes: ...


class RecoverCodec(Protocol):
    """Holder side: recover the float sum from a combined body."""

    def recover(
        self, body: bytes | memoryview, n_contributions: int
    ) -> FloatVector: ...


def _check_params(got: bytes, want: bytes, what: str) -> None:
    if not hmac.compare_digest(got, want):
        raise ParameterMismatchError(
            f"{what} was made under different parameters or keys"
        )


@dataclass
class OneShotClient:
    """A one-shot client: answers the single request with its protected update."""

    scheme: Scheme
    params_id: bytes
    party_id: str
    round_id: int
    codec: ClientCodec
    update: FloatVector
    weight: float
    rng: Rng = field(default_factory=SystemRng)
    _answered: bool = False

    def handle(self, request: bytes) -> bytes:
        """Check the request and return the protected update."""
        req = RoundRequest.from_bytes(request)
        if req.scheme != self.scheme:
            raise ProtocolError("request is for another scheme")
        _check_params(req.params_id, self.params_id, "the request")
        if req.round_id != self.round_id or req.client_id != self.party_id:
            raise ProtocolError("request is for another round or client")
        if self._answered:
            raise ProtocolError("this client already contributed to this round")
        body = self.codec.protect(self.update, self.weight, self.rng)
        self._answered = True
        return Contribution(
            self.scheme, self.params_id, self.round_id, self.party_id, body
        ).to_bytes()

    def __repr__(self) -> str:
        return f"OneShotClient({self.scheme.name}, client={self.party_id!r}, round={self.round_id})"


@dataclass
class OneShotAggregator(FinishedResult):
    """A one-shot aggregator: one request per client, then combine what came back."""

    scheme: Scheme
    params_id: bytes
    round_id: int
    client_ids: tuple[str, ...]
    codec: CombineCodec
    min_contributions: int = 1
    _result: bytes | None = None
    _started: bool = False

    def __post_init__(self) -> None:
        if len(set(self.client_ids)) != len(self.client_ids):
            raise ConfigurationError("client ids must be unique")

    def start(self) -> dict[str, bytes]:
        """Send every client a request for this round."""
        if self._started:
            raise ProtocolError("round already started")
        self._started = True
        return {
            cid: RoundRequest(
                self.scheme, self.params_id, self.round_id, cid
            ).to_bytes()
            for cid in self.client_ids
        }

    def receive(self, replies: Mapping[str, bytes]) -> dict[str, bytes]:
        """Validate every reply, then combine. Replies from unknown parties are errors.

        Raises:
            ProtocolError: a reply from a party that was not asked (nothing is read or
                changed), or a call out of order.
            InsufficientParticipantsError, ProtocolError, DeserializationError: a bad
                reply or too few of them: the round is aborted (every later ``receive``
                and ``result`` call raises; see :class:`FinishedResult`).
        """
        self._check_not_aborted()
        if not self._started or self._result is not None:
            raise ProtocolError("receive() called out of order")
        expected = set(self.client_ids)
        for sender in replies:  # the caller's routing, checked before anything is read
            if sender not in expected:
                raise ProtocolError(f"reply from unexpected party {sender!r}")
        return self._run_stage(self._combine, replies)

    def _combine(self, replies: Mapping[str, bytes]) -> dict[str, bytes]:
        bodies: list[bytes | memoryview] = []
        contributors: list[str] = []
        for sender, data in replies.items():
            msg = Contribution.from_bytes(data)
            if msg.scheme != self.scheme:
                raise ProtocolError(f"client {sender!r} answered with another scheme")
            _check_params(
                msg.params_id, self.params_id, f"client {sender!r}'s contribution"
            )
            if msg.round_id != self.round_id:
                raise ProtocolError(
                    f"client {sender!r} sent a contribution for another round (replay?)"
                )
            if msg.client_id != sender:
                raise ProtocolError(
                    f"client {sender!r} sent a contribution labelled as another party"
                )
            bodies.append(msg.body)
            contributors.append(sender)
        if len(contributors) < self.min_contributions:
            raise InsufficientParticipantsError(
                f"{len(contributors)} contribution(s) arrived, at least {self.min_contributions} needed"
            )
        order = sorted(range(len(contributors)), key=contributors.__getitem__)
        body = self.codec.combine([bodies[i] for i in order])
        self._result = AggregateMessage(
            self.scheme,
            self.params_id,
            self.round_id,
            tuple(contributors[i] for i in order),
            body,
        ).to_bytes()
        return {}


@dataclass
class OneShotHolder:
    """A one-shot result holder.

    Defence in depth against an aggregator that deviates from the protocol: the holder
    recovers each round id at most once and refuses aggregates with fewer than
    ``min_contributions`` contributors, so a replayed or single-client "aggregate" is
    not decrypted. (Against a fully malicious aggregator that fabricates contributions
    this is not enough: see each backend's threat model.) "At most once" holds for
    concurrent calls too: a round id is reserved before decryption starts, and freed
    again only if the recovery fails.
    """

    scheme: Scheme
    params_id: bytes
    codec: RecoverCodec
    min_contributions: int = 1
    _recovered_rounds: set[int] = field(default_factory=set)
    _pending_rounds: set[int] = field(default_factory=set, repr=False, compare=False)
    _lock: threading.Lock = field(
        default_factory=threading.Lock, repr=False, compare=False
    )

    def recover(self, result: bytes) -> Recovered:
        """Check the aggregate's parameters and round, and recover the float sum."""
        msg = AggregateMessage.from_bytes(result)
        if msg.scheme != self.scheme:
            raise ProtocolError("aggregate is of another scheme")
        _check_params(msg.params_id, self.params_id, "the aggregate")
        rid = msg.round_id
        if rid in self._recovered_rounds:
            raise ProtocolError(f"round {rid} was already recovered (replay?)")
        if len(msg.contributors) < self.min_contributions:
            raise InsufficientParticipantsError(
                f"aggregate has {len(msg.contributors)} contributor(s), "
                f"at least {self.min_contributions} required"
            )
        with self._lock:  # check and reserve at once (review: concurrent replays)
            if rid in self._recovered_rounds or rid in self._pending_rounds:
                raise ProtocolError(f"round {rid} was already recovered (replay?)")
            self._pending_rounds.add(rid)
        try:
            vec = self.codec.recover(msg.body, len(msg.contributors))
            with self._lock:
                self._recovered_rounds.add(rid)
        finally:
            with self._lock:
                self._pending_rounds.discard(rid)
        return Recovered(vec, msg.contributors)

    def __reduce__(self) -> NoReturn:
        raise TypeError("a result holder may hold a secret key and cannot be pickled")


@dataclass
class OneShotSession:
    """A session for a one-shot scheme, built from the backend's codecs."""

    backend_name: str
    scheme: Scheme
    layout: Layout
    params_id: bytes
    client_codec: ClientCodec
    combine_codec: CombineCodec
    recover_codec: Callable[[], RecoverCodec]
    max_weight: float | None = None
    min_contributions: int = 1
    _holder: OneShotHolder | None = field(default=None, repr=False)
    _round_counter: int = field(default=0, repr=False)

    def __post_init__(self) -> None:
        if not isinstance(self.min_contributions, int) or self.min_contributions < 1:
            raise ConfigurationError(
                f"min_contributions must be an int >= 1, got {self.min_contributions!r}"
            )

    def next_round_id(self) -> int:
        """A round id this session has not handed out before (for ``run_round``)."""
        used = self._holder._recovered_rounds if self._holder is not None else set()
        while self._round_counter in used:
            self._round_counter += 1
        rid = self._round_counter
        self._round_counter += 1
        return rid

    def aggregator(self, round_id: int, client_ids: Sequence[str]) -> OneShotAggregator:
        """The aggregator for one round."""
        return OneShotAggregator(
            self.scheme,
            self.params_id,
            round_id,
            tuple(client_ids),
            self.combine_codec,
            self.min_contributions,
        )

    def client(
        self,
        client_id: str,
        round_id: int,
        update: FloatVector,
        *,
        weight: float = 1.0,
        rng: Rng | None = None,
    ) -> OneShotClient:
        """A client for one round."""
        if update.shape != (self.layout.size,):
            raise ParameterMismatchError(
                f"client {client_id!r}: update has {update.shape}, layout size is {self.layout.size}"
            )
        return OneShotClient(
            self.scheme,
            self.params_id,
            client_id,
            round_id,
            self.client_codec,
            update,
            float(weight),
            rng or SystemRng(),
        )

    def servers(self, round_id: int) -> dict[str, Responder]:
        """One-shot schemes have no extra servers."""
        return {}

    def holder(self) -> OneShotHolder:
        """The result holder (for CKKS and Paillier: whoever holds the secret key).

        The same object for the whole session, so it remembers which rounds it
        recovered.
        """
        if self._holder is None:
            self._holder = OneShotHolder(
                self.scheme,
                self.params_id,
                self.recover_codec(),
                self.min_contributions,
            )
        return self._holder
