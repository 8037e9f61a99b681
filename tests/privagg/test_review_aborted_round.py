"""Outside security review of 8539b36 / d5710df (issue #14): a refused batch ends the
round (``FinishedResult._run_stage``) in every aggregator, the aggregator forgets the
round after an abort, and the ring aggregators report ``rejection_reasons``.

Each test is one attack, as a malicious coordinator (it calls the aggregator in any
order with any batch), a malicious client (crafted bytes, replays, a wrong share) or a
caller that retries: an abort must be final for every later call and keep nothing
usable, a routing refusal must change nothing, a finished round must keep its result,
and the report must carry no byte a client chose. A refused attack is pinned to its
exact outcome.
"""

from __future__ import annotations

import copy
import hashlib
import logging
from collections.abc import Callable, Mapping
from typing import Any

import numpy as np
import pytest

import privagg
from privagg import (
    InsufficientParticipantsError,
    Layout,
    PrivaggError,
    ProtocolError,
)
from privagg.backends import _shamir
from privagg.backends import additive as ad
from privagg.backends._common import FinishedResult
from privagg.backends._masking import RingAggregator
from privagg.backends.secagg import SecAggBackend
from privagg.backends.secagg.aggregator import SecAggAggregator
from privagg.backends.secagg.messages import UnmaskShares
from privagg.hazmat import DeterministicRng
from tests.privagg.test_review_secagg_drop import _forge_shares

SIZE = 8
N = 5
# bytes no honest message contains: any window of them in a report or log is a leak
PLANT = b"PLANTED-client-chosen-\xfe\xed\xfa\xce-SECRET-\x00\x01"


def _ups(n: int = N, seed: int = 5) -> dict[str, np.ndarray]:
    g = np.random.default_rng(seed)
    return {f"c{i:02d}": g.uniform(-1, 1, SIZE) for i in range(n)}


def _layout() -> Layout:
    return Layout.from_arrays({"w": np.zeros(SIZE)})


def _session(name: str) -> privagg.Session:
    layout = _layout()
    if name == "plain":
        return privagg.get_backend("plain").setup(layout, max_clients=N)
    if name == "additive":
        return ad.AdditiveBackend(n_servers=2, min_contributions=3).setup(
            layout, max_clients=N
        )
    return SecAggBackend(active=name == "secagg-active").setup(layout, max_clients=N)


BACKENDS = ["plain", "additive", "secagg-passive", "secagg-active"]


class _Round:
    """One round with honest parties; ``replies()`` answers the pending requests."""

    def __init__(self, name: str, round_id: int = 1) -> None:
        self.ups = _ups()
        self.session = _session(name)
        self.clients = {
            c: self.session.client(c, round_id, u, rng=DeterministicRng(i))
            for i, (c, u) in enumerate(sorted(self.ups.items()))
        }
        self.servers = self.session.servers(round_id)
        self.agg = self.session.aggregator(round_id, sorted(self.ups))
        self.requests: dict[str, bytes] = {}

    def start(self) -> None:
        self.requests = self.agg.start()

    def replies(self, skip: frozenset[str] = frozenset()) -> dict[str, bytes]:
        parties = {**self.clients, **self.servers}
        return {
            p: parties[p].handle(r) for p, r in self.requests.items() if p not in skip
        }

    def step(self, replies: Mapping[str, bytes]) -> None:
        self.requests = self.agg.receive(replies)

    def finish(self) -> privagg.protocols.Recovered:
        while not self.agg.done:
            self.step(self.replies())
        return self.session.holder().recover(self.agg.result())

    def check_sum(
        self, rec: privagg.protocols.Recovered, contributors: set[str]
    ) -> None:
        assert set(rec.contributors) == contributors
        want = sum(self.ups[c] for c in sorted(contributors))
        np.testing.assert_allclose(rec.vector, want, atol=1e-3)


def _state(agg: object) -> dict[str, Any]:
    """A deep copy of the aggregator's state (callables and configs by identity)."""
    out: dict[str, Any] = {}
    for k, v in vars(agg).items():
        if callable(v) or k in ("_cfg", "codec"):
            out[k] = v
        else:
            out[k] = copy.deepcopy(v)
    return out


def _same_state(a: Mapping[str, Any], b: Mapping[str, Any]) -> None:
    assert a.keys() == b.keys()
    for k in a:
        x, y = a[k], b[k]
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            assert isinstance(x, np.ndarray) and isinstance(y, np.ndarray), k
            assert np.array_equal(x, y), k
        else:
            assert x is y or x == y, k


def _assert_aborted(
    agg: privagg.protocols.AggregatorRole, family: type[PrivaggError]
) -> None:
    """Every later call raises ``family`` ("aborted"), never anything else."""
    assert not agg.done
    with pytest.raises(family, match="earlier refusal"):
        agg.result()
    for batch in ({}, {"nobody": b"x"}, {"c00": b""}):
        with pytest.raises(family, match="earlier refusal"):
            agg.receive(batch)
    with pytest.raises(ProtocolError, match="already started"):
        agg.start()  # no restart of an aborted round either
    with pytest.raises(family, match="earlier refusal"):
        agg.result()
    assert not agg.done


# -- an abort is final, for every later call, in every aggregator -----------------------
def _stages(name: str) -> list[int]:
    return {"plain": [0], "additive": [0, 1], "secagg-passive": [0, 1, 2, 3]}.get(
        name, [0, 1, 2, 3, 4]
    )


@pytest.mark.parametrize(
    ("name", "stage"), [(n, s) for n in BACKENDS for s in _stages(n)]
)
def test_abort_at_any_stage_is_final_and_keeps_nothing(name: str, stage: int) -> None:
    """The coordinator refuses a batch (an empty one: too few) at ``stage``; the honest
    batch, an unexpected party, a restart, a result: all raise the abort's family, and
    the ring aggregators hold no sum, key, share or contributor list any more."""
    r = _Round(name)
    r.start()
    for _ in range(stage):
        r.step(r.replies())
    honest = r.replies()
    reasons_before = dict(getattr(r.agg, "rejection_reasons", {}))
    with pytest.raises(InsufficientParticipantsError) as first:
        r.agg.receive({})
    assert "earlier refusal" not in str(first.value)  # its own reason
    with pytest.raises(InsufficientParticipantsError, match="earlier refusal"):
        r.agg.receive(honest)
    _assert_aborted(r.agg, InsufficientParticipantsError)
    assert getattr(r.agg, "rejection_reasons", {}) == reasons_before
    if isinstance(r.agg, SecAggAggregator):
        a = r.agg
        assert a._acc is None and a._keys == {} and a._routed == {}
        assert a._nbrs == {} and a._seed == b"" and a._asked == frozenset()
        assert a._u3 == () and a._u2 == frozenset() and a._attest == {}
    if isinstance(r.agg, ad.AdditiveAggregator):
        assert r.agg._partial0 is None and r.agg._contributors == ()
    assert r.agg._result is None  # type: ignore[attr-defined]


@pytest.mark.parametrize("name", BACKENDS)
def test_protocol_error_abort_is_final_too(name: str) -> None:
    """An abort that is not for too few (one-shot: a garbage contribution; additive: a
    server's unusable partial sum; SecAgg+: shares that do not reconstruct a dropped
    client's advertised key, more wrong ones than can be corrected) is final with ProtocolError, never the insufficient
    family, and never a retry that succeeds."""
    r = _Round(name)
    r.start()
    if name == "plain":
        bad = {**r.replies(), "c00": PLANT}
        good = None
    elif name == "additive":
        r.step(r.replies())
        good = r.replies()
        bad = dict.fromkeys(good, PLANT)
    else:
        bad, good = _wrong_mask_key_share(r)
    with pytest.raises(PrivaggError) as first:
        r.agg.receive(bad)
    assert not isinstance(first.value, InsufficientParticipantsError)
    assert PLANT.decode("latin-1") not in str(first.value)
    if good is not None:
        with pytest.raises(ProtocolError, match="earlier refusal") as later:
            r.agg.receive(good)
        assert not isinstance(later.value, InsufficientParticipantsError)
    _assert_aborted(r.agg, ProtocolError)


# -- a routing refusal is not an abort and changes nothing -----------------------------
@pytest.mark.parametrize(
    ("name", "stage"), [(n, s) for n in BACKENDS for s in _stages(n)]
)
def test_routing_refusal_changes_nothing_then_the_round_succeeds(
    name: str, stage: int
) -> None:
    """At ``stage`` the coordinator first hands the honest batch plus a reply from a
    party that was not asked (an outsider; at a later stage also a client left out
    earlier, or a server at a client stage): ProtocolError, the aggregator's state is
    unchanged (deep compare), and the honest batch then finishes the exact round."""
    r = _Round(name)
    with pytest.raises(ProtocolError, match="out of order"):
        r.agg.receive({"c00": b"x"})  # before start: refused, not an abort
    r.start()
    skipped: frozenset[str] = frozenset()
    for i in range(stage):
        # a client silent at stage 0 of SecAgg+ is left out of the later stages
        skip = (
            frozenset({"c04"}) if i == 0 and name.startswith("secagg") else frozenset()
        )
        skipped |= skip
        r.step(r.replies(skip))
    honest = r.replies()
    intruders: list[dict[str, bytes]] = [{"outsider": honest[next(iter(honest))]}]
    intruders += [{c: PLANT} for c in sorted(skipped)]
    intruders += [{s: PLANT} for s in r.servers if s not in honest]
    intruders += [{c: PLANT} for c in r.clients if c not in honest and c not in skipped]
    for extra in intruders:
        before = _state(r.agg)
        with pytest.raises(ProtocolError, match="unexpected party") as exc:
            r.agg.receive({**honest, **extra})
        assert "earlier refusal" not in str(exc.value)
        _same_state(before, _state(r.agg))
        assert not r.agg.done
    r.step(honest)
    rec = r.finish()
    r.check_sum(rec, set(r.ups) - skipped)
    if isinstance(r.agg, RingAggregator):
        assert r.agg.rejection_reasons == {}


@pytest.mark.parametrize("name", BACKENDS)
def test_a_finished_round_keeps_its_result(name: str) -> None:
    """After the last stage, another batch (the last one replayed, or garbage) is an
    out-of-order call: refused without an abort; ``done`` and ``result()`` unchanged."""
    r = _Round(name)
    r.start()
    last: dict[str, bytes] = {}
    while not r.agg.done:
        last = r.replies()
        r.step(last)
    result = r.agg.result()
    for batch in (last, {}, {"c00": PLANT}):
        with pytest.raises(ProtocolError, match="out of order") as exc:
            r.agg.receive(batch)
        assert "earlier refusal" not in str(exc.value)
        assert r.agg.done and r.agg.result() == result
    r.check_sum(r.session.holder().recover(result), set(r.ups))


def test_run_stage_forgets_even_a_result_set_before_the_error() -> None:
    """A step that set a result and then failed leaves no result (``_run_stage``)."""

    class _Agg(FinishedResult):
        forgot = False

        def _forget(self) -> None:
            self.forgot = True

        def step(self, replies: Mapping[str, bytes]) -> dict[str, bytes]:
            self._result = b"partial"
            raise ValueError("late failure")

    agg = _Agg()
    with pytest.raises(ValueError, match="late failure"):
        agg._run_stage(agg.step, {})
    assert agg.forgot and not agg.done
    with pytest.raises(ProtocolError, match="earlier refusal"):
        agg.result()


# -- a malicious client at SecAgg+'s last stage ---------------------------------------
def _wrong_mask_key_share(
    r: _Round,
    liars: tuple[str, ...] = ("c00", "c01"),
    delta: Callable[[str], int] | None = None,
) -> tuple[dict[str, bytes], dict[str, bytes]]:
    """Run SecAgg+ to its unmask stage with c04 silent from the masking stage on, and
    return (the unmask batch where each of ``liars`` reveals a wrong share of c04's
    mask key, its right one plus ``delta(liar)``, as c04 dealt it to it: it opens c04's
    commitment, v5, see ``_forge_shares``; the honest batch). c04's four holders
    (c00..c03, t = 3) allow one wrong share to be corrected: the default two liars are
    one too many. The default offsets are unrelated (a hash of the liar's id), so no
    subset of the wrong shares happens to interpolate the right key."""
    off = delta or (
        lambda c: 1 + int.from_bytes(hashlib.sha256(c.encode()).digest(), "big")
    )
    r.step(r.replies())  # keys
    r.step(r.replies())  # shares
    r.step(r.replies(frozenset({"c04"})))  # masked inputs: c04 dropped
    if isinstance(r.agg, SecAggAggregator) and r.agg._cfg.active:
        r.step(r.replies())  # survivor-set signatures
    honest = r.replies()
    forged_batch = dict(honest)
    assert isinstance(r.agg, SecAggAggregator)
    for liar in liars:
        assert any(
            o == "c04" for o, _, _ in UnmaskShares.from_bytes(honest[liar]).shares
        )

        def change(o: str, w: int, s: bytes, liar: str = liar) -> bytes:
            if o != "c04":
                return s
            v = (_shamir.decode_share(s) + off(liar)) % _shamir.PRIME
            return _shamir.encode_share(v)

        forged_batch[liar] = _forge_shares(honest[liar], change, dealt=r.agg)
    return forged_batch, honest


@pytest.mark.parametrize("active", [False, True])
def test_wrong_mask_key_share_after_abort_reveals_nothing_more(active: bool) -> None:
    """c00 and c01 (survivors) send wrong shares of dropped c04's mask key, one more
    than its four holders' shares can correct (t = 3): ProtocolError. The round is
    over: the honest batch (with their right shares) is refused, nothing of the masked
    sum or of the other shares is kept, and there is no result."""
    r = _Round("secagg-active" if active else "secagg-passive")
    r.start()
    bad, honest = _wrong_mask_key_share(r)
    with pytest.raises(ProtocolError, match="do not reconstruct"):
        r.agg.receive(bad)
    assert isinstance(r.agg, SecAggAggregator)
    assert r.agg._acc is None and r.agg._keys == {} and r.agg._peers == {}
    assert r.agg._holders_of == {} and r.agg._u3 == ()
    with pytest.raises(ProtocolError, match="earlier refusal"):
        r.agg.receive(honest)
    _assert_aborted(r.agg, ProtocolError)


@pytest.mark.parametrize("active", [False, True])
@pytest.mark.parametrize("liar", ["c00", "c01", "c02", "c03"])
def test_one_wrong_mask_key_share_should_not_abort_a_round_honest_shares_finish(
    active: bool, liar: str
) -> None:
    """Was a strict xfail (the t = 3 shares with the smallest x were used and the round
    aborted): one wrong share of dropped c04's mask key (c04 dealt it), among its four
    holders' shares, is corrected (the advertised key checks the result); the sum is
    exact and the dealer c04 is named (v5), the holder still a contributor."""
    r = _Round("secagg-active" if active else "secagg-passive")
    r.start()
    bad, _ = _wrong_mask_key_share(r, (liar,))
    r.step(bad)
    rec = r.session.holder().recover(r.agg.result())
    r.check_sum(rec, set(r.ups) - {"c04"})
    assert isinstance(r.agg, SecAggAggregator)
    assert r.agg.rejection_reasons == {"c04": "dealt wrong mask-key shares"}


def test_beyond_the_bound_coordinated_wrong_shares_never_name_a_holder() -> None:
    """Was a pinned limit (v4): c00's and c01's shares of c04's key (two, one more
    than the bound) both 1 too high. Over x = 1, 2, 3 the offsets cancel at 0
    (Lagrange weights 3 and -3), so the shares of c00..c02 interpolate the right key
    and c03's honest share is the one that disagrees: the key checks and the sum is
    exact, and v4 named the honest c03. Since v5 a share that reaches decoding opens
    its dealer's commitment, so the wrong shares are c04's doing and c04 alone is
    named, whichever share the decoder finds off."""
    r = _Round("secagg-passive")
    r.start()
    bad, _ = _wrong_mask_key_share(r, ("c00", "c01"), lambda c: 1)
    r.step(bad)
    r.check_sum(r.session.holder().recover(r.agg.result()), set(r.ups) - {"c04"})
    assert isinstance(r.agg, SecAggAggregator)
    assert r.agg.rejection_reasons == {"c04": "dealt wrong mask-key shares"}


# -- what the report and the log carry ------------------------------------------------
def _crafted(r: _Round, honest: Mapping[str, bytes]) -> dict[str, bytes]:
    """Every client but c00/c01 honest; c00 answers the planted bytes, c01 its honest
    reply with the planted bytes spliced in (a readable header, a cut body)."""
    out = dict(honest)
    out["c00"] = PLANT
    h = honest["c01"]
    out["c01"] = h[:40] + PLANT + h[40 + len(PLANT) :]
    return out


def _scan(text: str) -> None:
    for blob in (PLANT,):
        assert blob.hex() not in text
        for i in range(len(blob) - 8):
            w = blob[i : i + 8]
            assert w.decode("latin-1") not in text
            assert w.hex() not in text
            assert repr(w)[2:-1] not in text
    assert "PLANTED" not in text and "SECRET" not in text


@pytest.mark.parametrize(
    ("name", "stage"),
    [("additive", 0)]
    + [(n, s) for n in ("secagg-passive", "secagg-active") for s in (0, 1, 2)],
)
def test_rejection_reasons_and_log_carry_no_client_bytes(
    name: str, stage: int, caplog: pytest.LogCaptureFixture
) -> None:
    """Two clients answer with planted bytes at ``stage`` (the additive coordinator
    reads client replies at its first stage only): their reasons are a fixed
    phrase or ``unreadable reply: <ErrorType>``; no window of the planted bytes is in
    the report, the log, or the error of a refused batch."""
    caplog.set_level(logging.DEBUG)
    r = _Round(name)
    r.start()
    for _ in range(stage):
        r.step(r.replies())
    honest = r.replies()
    error = ""
    try:
        r.step(_crafted(r, honest))
    except PrivaggError as exc:  # e.g. too few left for the quorum: its text too
        error = f"{type(exc).__name__}: {exc}"
    assert isinstance(r.agg, RingAggregator)
    reasons = r.agg.rejection_reasons
    assert set(reasons) == {"c00", "c01"} == r.agg.rejected
    for why in reasons.values():
        kind = why.removeprefix("unreadable reply: ")
        assert (
            kind.isidentifier() and kind.endswith("Error")
        ) or why == "unusable reply"
    _scan(repr(reasons) + caplog.text + error)


@pytest.mark.parametrize("name", BACKENDS)
def test_error_of_a_refused_batch_carries_no_client_bytes(name: str) -> None:
    """Every client answers the planted bytes (the one-shot aggregator: the first one
    aborts): the refusal names no window of them."""
    r = _Round(name)
    r.start()
    honest = r.replies()
    with pytest.raises(PrivaggError) as exc:
        r.agg.receive(dict.fromkeys(honest, PLANT))
    _scan(f"{exc.value!r} {exc.value}")


# -- helpers are what they claim ------------------------------------------------------
def test_state_compare_detects_a_change() -> None:
    """_same_state is not vacuous: a changed report or array is seen."""
    r = _Round("secagg-passive")
    r.start()
    before = _state(r.agg)
    assert isinstance(r.agg, SecAggAggregator)
    r.agg.rejection_reasons["c00"] = "x"
    with pytest.raises(AssertionError):
        _same_state(before, _state(r.agg))
    del r.agg.rejection_reasons["c00"]
    _same_state(before, _state(r.agg))
    check: Callable[[], None] = lambda: _scan(PLANT[3:13].decode("latin-1"))  # noqa: E731
    with pytest.raises(AssertionError):
        check()


def test_one_shot_refusal_names_no_client_chosen_label() -> None:
    """c00 answers a well-formed contribution that carries a label of its choosing (not
    its id): the round is aborted for good, and the refusal's text (which the Flower
    ServerApp logs when the run ends) carries none of the label's bytes."""
    from privagg.messages import Contribution

    r = _Round("plain")
    r.start()
    honest = r.replies()
    msg = Contribution.from_bytes(honest["c00"])
    label = PLANT.decode("latin-1")
    forged = Contribution(msg.scheme, msg.params_id, msg.round_id, label, msg.body)
    with pytest.raises(ProtocolError) as exc:
        r.agg.receive({**honest, "c00": forged.to_bytes()})
    _scan(f"{exc.value!r} {exc.value}")
    _assert_aborted(r.agg, ProtocolError)


def test_additive_partial_sum_label_is_not_echoed() -> None:
    """Server 1 answers its partial sum labelled with bytes of its choosing: the round
    is aborted (ProtocolError, for good) and the refusal's text names none of them."""
    from privagg.backends.additive.messages import PartialSum

    r = _Round("additive")
    r.start()
    r.step(r.replies())
    good = r.replies()
    (sid,) = good
    m = PartialSum.from_bytes(good[sid])
    label = PLANT.decode("latin-1")
    forged = PartialSum(
        m.params_id, m.round_id, label, m.contributors, m.ephemeral_pk, m.ciphertext
    )
    with pytest.raises(ProtocolError, match="another party") as exc:
        r.agg.receive({sid: forged.to_bytes()})
    _scan(f"{exc.value!r} {exc.value}")
    _assert_aborted(r.agg, ProtocolError)
