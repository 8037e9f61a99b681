"""The contract every privagg backend must pass.

Subclass :class:`BackendContract` in ``tests/privagg/test_<backend>.py``::

    class TestCkksContract(BackendContract):
        def make_backend(self):
            return CkksBackend(preset="test-fast")

and override the class attributes / hooks where the backend differs (``keyed``,
``max_clients``, ``secrets``). The suite skips itself when collected directly.
"""

from __future__ import annotations

import copy
import logging
import pickle
from collections.abc import Callable, Mapping
from typing import Any, ClassVar

import numpy as np
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import privagg
from privagg import (
    ConfigurationError,
    DeserializationError,
    InsufficientParticipantsError,
    Layout,
    ParameterMismatchError,
    PrivaggError,
    ProtocolError,
    SecretBytes,
    SecretKey,
)
from privagg.protocols import Backend, Session

Update = dict[str, np.ndarray]


def layout_updates(
    rng: np.random.Generator, n: int, bound: float, size: int = 7
) -> list[Update]:
    """``n`` updates of a fixed mixed layout with values in [-bound, bound] (test data only)."""
    out = []
    for _ in range(n):
        out.append(
            {
                "layer.weight": rng.uniform(-bound, bound, size=(size, 2)).astype(
                    np.float64
                ),
                "layer.bias": rng.uniform(-bound, bound, size=(size,)).astype(
                    np.float32
                ),
                "scalar": np.asarray(rng.uniform(-bound, bound), dtype=np.float64),
            }
        )
    return out


class Recorder:
    """Drives a round like :func:`privagg.run_round` and records every message."""

    def __init__(self) -> None:
        self.requests: list[bytes] = []
        self.replies: list[tuple[str, bytes]] = []
        self.result: bytes | None = None

    def run(
        self,
        session: Session,
        vectors: Mapping[str, np.ndarray],
        round_id: int = 0,
        tamper: Callable[[str, bytes, int], bytes] | None = None,
    ) -> privagg.Recovered:
        clients = {cid: session.client(cid, round_id, v) for cid, v in vectors.items()}
        parties: dict[str, Any] = {**clients, **session.servers(round_id)}
        agg = session.aggregator(round_id, list(vectors))
        out = agg.start()
        stage = 0
        while not agg.done:
            replies = {}
            for pid, req in out.items():
                self.requests.append(req)
                rep = parties[pid].handle(req)
                if tamper is not None:
                    rep = tamper(pid, rep, stage)
                self.replies.append((pid, rep))
                replies[pid] = rep
            out = agg.receive(replies)
            stage += 1
        self.result = agg.result()
        return session.holder().recover(self.result)


class BackendContract:
    """Abstract contract suite. Subclasses implement :meth:`make_backend`."""

    #: True when two setups of the same layout use different keys (all but "plain").
    keyed: ClassVar[bool] = True
    #: most clients the hypothesis test draws
    max_clients: ClassVar[int] = 4
    #: clients in the fixed-size tests (dropout test drops one of them)
    n_clients: ClassVar[int] = 4

    # -- hooks ------------------------------------------------------------------------
    def make_backend(self) -> Backend:
        raise NotImplementedError

    def secrets(self, session: Session) -> list[object]:
        """Objects holding secret material in ``session`` (keys, seeds)."""
        return []

    # -- helpers ------------------------------------------------------------------------
    @pytest.fixture(autouse=True)
    def _skip_abstract(self) -> None:
        if type(self).make_backend is BackendContract.make_backend:
            pytest.skip("abstract contract suite")

    @classmethod
    def _backend(cls) -> Backend:
        cache = cls.__dict__.get("_cached_backend")
        if cache is None:
            cache = cls().make_backend()
            cls._cached_backend = cache  # type: ignore[attr-defined]
        return cache

    def bound(self) -> float:
        b = self._backend().value_bound
        return 1.0 if b is None else min(float(b), 1e3)

    def _session(
        self, layout: Layout, n: int | None = None, max_weight: float = 1.0
    ) -> Session:
        return self._backend().setup(
            layout, max_clients=n or self.max_clients, max_weight=max_weight
        )

    def _vectors(self, layout: Layout, ups: list[Update]) -> dict[str, np.ndarray]:
        return {f"c{i}": layout.flatten(u) for i, u in enumerate(ups)}

    # -- correctness ------------------------------------------------------------------------
    # One @given method inherited by several backend classes runs under several
    # executors; that is the point of a contract suite, so the check does not apply.
    @settings(suppress_health_check=[HealthCheck.differing_executors])
    @given(data=st.data())
    def test_weighted_sum_matches_reference(self, data: st.DataObject) -> None:
        n = data.draw(st.integers(1, self.max_clients), label="n")
        size = data.draw(st.integers(1, 40), label="size")
        bound = self.bound()
        vals = data.draw(
            st.lists(
                st.lists(
                    st.floats(-bound, bound, allow_nan=False),
                    min_size=size,
                    max_size=size,
                ),
                min_size=n,
                max_size=n,
            ),
            label="values",
        )
        weights = data.draw(
            st.lists(st.floats(0.0, 1.0, allow_nan=False), min_size=n, max_size=n),
            label="w",
        )
        ups = [{"w": np.asarray(v, dtype=np.float64)} for v in vals]
        layout = Layout.from_arrays(ups[0])
        session = self._session(layout, self.max_clients)
        res = privagg.run_round(
            session,
            {f"c{i}": u for i, u in enumerate(ups)},
            weights={f"c{i}": w for i, w in enumerate(weights)},
        )
        ref = sum(w * np.asarray(v) for w, v in zip(weights, vals, strict=True))
        tol = self._backend().tolerance(n_clients=n, max_abs=bound)
        assert np.max(np.abs(res.aggregate["w"] - ref)) <= tol
        assert res.contributors == tuple(sorted(f"c{i}" for i in range(n)))

    def test_secure_sum_keeps_names_shapes_dtypes(self) -> None:
        rng = np.random.default_rng(1)
        ups = layout_updates(rng, 3, self.bound())
        out = privagg.secure_sum(ups, backend=self._backend(), weights=[0.5, 0.25, 1.0])
        assert set(out) == set(ups[0])
        for k, v in ups[0].items():
            assert out[k].shape == v.shape and out[k].dtype == v.dtype
        ref = (
            0.5 * ups[0]["layer.weight"]
            + 0.25 * ups[1]["layer.weight"]
            + ups[2]["layer.weight"]
        )
        tol = self._backend().tolerance(n_clients=3, max_abs=self.bound())
        assert np.max(np.abs(out["layer.weight"] - ref)) <= tol

    def test_dropout_before_upload_excludes_client(self) -> None:
        rng = np.random.default_rng(2)
        ups = layout_updates(rng, self.n_clients, self.bound())
        layout = Layout.from_arrays(ups[0])
        session = self._session(layout, self.n_clients)
        upd = {f"c{i}": u for i, u in enumerate(ups)}
        res = privagg.run_round(session, upd, dropouts={0: {"c1"}})
        assert "c1" not in res.contributors and "c1" in res.dropped
        ref = sum(layout.flatten(u) for i, u in enumerate(ups) if i != 1)
        tol = self._backend().tolerance(n_clients=self.n_clients, max_abs=self.bound())
        assert np.max(np.abs(res.vector - ref)) <= tol

    # -- bad input ------------------------------------------------------------------------
    def test_layout_mismatch_rejected(self) -> None:
        rng = np.random.default_rng(3)
        ups = layout_updates(rng, 2, self.bound())
        bad = dict(ups[1])
        bad["layer.bias"] = bad["layer.bias"][:-1]
        with pytest.raises(ParameterMismatchError):
            privagg.secure_sum([ups[0], bad], backend=self._backend())
        renamed = {("x" + k): v for k, v in ups[1].items()}
        with pytest.raises(ParameterMismatchError):
            privagg.secure_sum([ups[0], renamed], backend=self._backend())

    @pytest.mark.parametrize("value", [np.nan, np.inf, -np.inf])
    def test_non_finite_rejected(self, value: float) -> None:
        ups = [{"a": np.zeros(3)}, {"a": np.array([0.0, value, 0.0])}]
        with pytest.raises(ConfigurationError):
            privagg.secure_sum(ups, backend=self._backend())

    def test_bad_weights_and_empty_input_rejected(self) -> None:
        ups = [{"a": np.zeros(3)}, {"a": np.ones(3)}]
        be = self._backend()
        with pytest.raises(ConfigurationError):
            privagg.secure_sum([], backend=be)
        for w in ([1.0], [1.0, -1.0], [1.0, float("nan")], [1.0, 2.0, 3.0]):
            with pytest.raises(ConfigurationError):
                privagg.secure_sum(ups, backend=be, weights=w)

    # -- wire format ------------------------------------------------------------------------
    def _recorded(self) -> tuple[Recorder, Session, Layout]:
        rng = np.random.default_rng(4)
        ups = layout_updates(rng, 3, self.bound())
        layout = Layout.from_arrays(ups[0])
        session = self._session(layout, 3)
        rec = Recorder()
        rec.run(session, self._vectors(layout, ups))
        return rec, session, layout

    def test_every_message_round_trips_through_from_bytes(self) -> None:
        rec, _, _ = self._recorded()
        assert rec.result is not None
        msgs = [*rec.requests, *(r for _, r in rec.replies), rec.result]
        for data in msgs:
            obj = privagg.from_bytes(data)
            assert obj.to_bytes() == data
            assert type(obj).from_bytes(data).to_bytes() == data

    def test_truncated_and_bit_flipped_messages_rejected(self) -> None:
        rec, _, _ = self._recorded()
        assert rec.result is not None
        msgs = [*rec.requests[:2], *(r for _, r in rec.replies[:2]), rec.result]
        for data in msgs:
            for cut in {0, 1, 10, len(data) // 2, len(data) - 1}:
                with pytest.raises(DeserializationError):
                    privagg.from_bytes(data[:cut])
            for pos in {0, 5, 60, len(data) // 2, len(data) - 1}:
                flipped = bytearray(data)
                flipped[pos] ^= 0x01
                with pytest.raises(DeserializationError):
                    privagg.from_bytes(bytes(flipped))

    def _rejected(
        self,
        session: Session,
        vecs: Mapping[str, np.ndarray],
        bad_reply: Callable[[bytes], bytes],
        round_id: int = 0,
    ) -> None:
        """c0's first reply replaced by ``bad_reply(honest)``: the round aborts with a
        typed error, or the aggregator drops c0 (as if it had not answered) and the
        result is the exact sum of *all* the others; never a result that counts c0 or
        leaves out an honest client."""

        def tamper(pid: str, rep: bytes, stage: int) -> bytes:
            return bad_reply(rep) if pid == "c0" and stage == 0 else rep

        try:
            res = Recorder().run(session, vecs, round_id=round_id, tamper=tamper)
        except PrivaggError:
            return
        assert sorted(res.contributors) == sorted(set(vecs) - {"c0"})
        ref = sum(vecs[c] for c in res.contributors)
        tol = self._backend().tolerance(n_clients=len(vecs), max_abs=self.bound())
        assert np.max(np.abs(res.vector - ref)) <= tol

    def test_tampered_client_reply_rejected_by_aggregator(self) -> None:
        rng = np.random.default_rng(5)
        ups = layout_updates(rng, 3, self.bound())
        layout = Layout.from_arrays(ups[0])
        session = self._session(layout, 3)

        def flip(rep: bytes) -> bytes:
            b = bytearray(rep)
            b[len(b) // 2] ^= 0x80
            return bytes(b)

        self._rejected(session, self._vectors(layout, ups), flip)

    def test_reply_from_other_session_rejected(self) -> None:
        rng = np.random.default_rng(6)
        ups = layout_updates(rng, 3, self.bound())
        layout = Layout.from_arrays(ups[0])
        other_layout = Layout.from_arrays({"other": np.zeros(5)})
        s_a = self._session(layout, 3)
        sessions = [self._session(other_layout, 3)]
        if self.keyed:
            sessions.append(self._session(layout, 3))
        vecs = self._vectors(layout, ups)
        for rid, s_b in enumerate(sessions):  # a fresh round id per round
            foreign = s_b.client("c0", rid, np.zeros(s_b.layout.size))
            foreign_reply = foreign.handle(
                s_b.aggregator(rid, list(vecs)).start()["c0"]
            )
            # every message carries params_id, so the first stage already tells it
            self._rejected(s_a, vecs, lambda _, r=foreign_reply: r, round_id=rid)

    def test_replayed_reply_from_other_round_rejected(self) -> None:
        rng = np.random.default_rng(7)
        ups = layout_updates(rng, 3, self.bound())
        layout = Layout.from_arrays(ups[0])
        session = self._session(layout, 3)
        vecs = self._vectors(layout, ups)
        old = session.aggregator(1, list(vecs)).start()
        stale = session.client("c0", 1, vecs["c0"]).handle(old["c0"])
        self._rejected(session, vecs, lambda _: stale, round_id=2)
        # and a client refuses a request for another round
        reqs = session.aggregator(3, list(vecs)).start()
        with pytest.raises(PrivaggError):
            session.client("c1", 1, vecs["c1"]).handle(reqs["c1"])

    def test_refused_batch_ends_the_round(self) -> None:
        """A batch refused for too few contributors ends the round: the honest batch
        given next is refused with the same error family, and there is no result."""
        rng = np.random.default_rng(9)
        ups = layout_updates(rng, self.n_clients, self.bound())
        layout = Layout.from_arrays(ups[0])
        session = self._session(layout, self.n_clients)
        vecs = self._vectors(layout, ups)
        agg = session.aggregator(0, list(vecs))
        requests = agg.start()
        honest = {
            c: session.client(c, 0, vecs[c]).handle(req) for c, req in requests.items()
        }
        with pytest.raises(InsufficientParticipantsError):
            agg.receive({})
        with pytest.raises(InsufficientParticipantsError, match="aborted"):
            agg.receive(honest)
        assert not agg.done
        with pytest.raises(InsufficientParticipantsError, match="aborted"):
            agg.result()
        # every later call (review of 8539b36): a batch with a party that was not asked
        # names the abort, not the routing; no restart; still no result
        with pytest.raises(InsufficientParticipantsError, match="aborted"):
            agg.receive({**honest, "not-a-party": b"x"})
        with pytest.raises(ProtocolError, match="already started"):
            agg.start()
        assert not agg.done
        with pytest.raises(InsufficientParticipantsError, match="aborted"):
            agg.result()

    # -- secrets ------------------------------------------------------------------------
    def test_secrets_never_pickle_print_or_log(
        self, caplog: pytest.LogCaptureFixture
    ) -> None:
        rng = np.random.default_rng(8)
        ups = layout_updates(rng, 3, self.bound())
        layout = Layout.from_arrays(ups[0])
        with caplog.at_level(logging.DEBUG):
            session = self._session(layout, 3)
            privagg.run_round(session, {f"c{i}": u for i, u in enumerate(ups)})
        secrets = self.secrets(session)
        for s in secrets:
            assert isinstance(s, (SecretKey, SecretBytes)), type(s)
            with pytest.raises(TypeError):
                pickle.dumps(s)
            with pytest.raises(TypeError):
                copy.deepcopy(s)
            text = repr(s) + str(s)
            assert len(text) < 200
            if isinstance(s, SecretBytes):
                raw = s.reveal()
                for blob in (text, caplog.text, repr(session)):
                    assert raw.hex() not in blob
        if secrets:
            with pytest.raises(TypeError):
                pickle.dumps(session.holder())

    def test_tolerance_is_declared(self) -> None:
        be = self._backend()
        tol = be.tolerance(n_clients=10, max_abs=1.0)
        assert np.isfinite(tol) and tol >= 0
