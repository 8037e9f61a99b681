"""Issue #17: the epsilon in report.json must be true for the noise actually added.

One test (or more) per finding; the end-to-end check runs client-level DP with every
backend through the CLI on the demo data with 8 clients and recomputes epsilon
independently from the ledger's recorded parameters and each round's contributors.
"""

from __future__ import annotations

import json
import math
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import torch
from fedtrain_helpers import small_config, two_clients

import privagg
from fedtrain.config import LoraSettings, PrivacyConfig, RoundConfig, RunConfig
from fedtrain.data import RawDataset
from fedtrain.errors import ConfigError, PrivacyRecordError
from fedtrain.experiment import ExperimentSpec, run_experiment
from fedtrain.privacy import epsilon
from fedtrain.server import Federation, _MinHolder
from privagg.dp import DiscreteGaussianEvent, RdpAccountant, encoded_l2_sensitivity

DELTA = 1e-5


def _clients(train: RawDataset, k: int) -> dict[str, RawDataset]:
    size = len(train) // k
    return {f"c{i}": train.subset(range(i * size, (i + 1) * size)) for i in range(k)}


def _gauss_eps(zs: list[float], delta: float = DELTA) -> float:
    """Independent epsilon of composed Gaussian mechanisms (dp_accounting PLD)."""
    import dp_accounting

    acc = dp_accounting.pld.PLDAccountant(value_discretization_interval=1e-4)
    for z in zs:
        acc.compose(dp_accounting.GaussianDpEvent(z))
    return float(acc.get_epsilon(delta))


def _records(folder: Path) -> list[dict[str, Any]]:
    doc = json.loads((folder / "federation.json").read_text())
    recs: list[dict[str, Any]] = doc["records"]
    return recs


# ---------------------------------------------------------------- finding 1


@pytest.mark.parametrize(
    "backend",
    ["secagg", "additive", pytest.param("paillier", marks=pytest.mark.slow)],
)
def test_client_dp_integer_backends_release(
    backend: str, rt_small: tuple[RawDataset, RawDataset]
) -> None:
    """CLI defaults (z=1, C=1, 4 clients): share std 0.5 > the old bound=1.0 headroom.
    Discrete Gaussian shares after encoding, bounds sized from the clip: all release."""
    if backend not in privagg.available_backends():
        pytest.skip(f"{backend} not available")
    train, ev = rt_small
    p = PrivacyConfig(level="client", noise_multiplier=1.0, clip=1.0)
    cfg = small_config(
        backend=backend, privacy=p, rounds=RoundConfig(rounds=1, local_steps=1)
    )
    fed = Federation(cfg, _clients(train, 4), ev)
    assert fed.noise_share is not None and fed.noise_share.stddev == pytest.approx(0.5)
    rec = fed.run_one_round(1)
    assert rec.failed == {} and rec.skipped is None
    assert rec.contributors == ["c0", "c1", "c2", "c3"]
    (entry,) = fed.ledger._ledgers["*"].records
    assert entry["event"]["type"] == "discrete_gaussian"
    assert entry["event"]["num_shares"] == 4
    assert entry["event"]["dimension"] == fed.layout.size
    assert fed.accountant == "rdp" and math.isfinite(rec.epsilon) and rec.epsilon > 0


# ---------------------------------------------------------------- finding 2


def test_fraction_sampling_shares_sized_for_contributors(
    rt_small: tuple[RawDataset, RawDataset],
) -> None:
    """5 clients, q=0.5: round(2.5)=2 contribute; shares sized for 2 (not qN=2.5) and
    the ledger records the noise of the 2 shares actually summed (z exactly)."""
    train, ev = rt_small
    p = PrivacyConfig(level="client", noise_multiplier=1.0, clip=0.5)
    cfg = small_config(
        privacy=p,
        rounds=RoundConfig(
            rounds=1, local_steps=1, sampling="fraction", sample_rate=0.5
        ),
    )
    fed = Federation(cfg, _clients(train, 5), ev)
    rec = fed.run_one_round(1)
    assert fed.min_clients == 2 and len(rec.contributors) == 2
    (entry,) = fed.ledger._ledgers["*"].records
    assert entry["metadata"]["num_contributors"] == 2
    assert entry["event"] == {
        "type": "gaussian",
        "noise_multiplier": pytest.approx(1.0),
    }
    assert rec.epsilon == pytest.approx(_gauss_eps([1.0]), rel=1e-2)


def test_dropouts_below_minimum_refused_and_above_recorded_honestly(
    rt_small: tuple[RawDataset, RawDataset],
) -> None:
    train, ev = rt_small

    def drop(r: int, cid: str, msg: dict[str, np.ndarray]) -> dict[str, np.ndarray]:
        if cid == "c0":
            raise RuntimeError("client went away")
        return msg

    # no dropout tolerance: 3 sampled, 3 needed, one drops -> no release at all
    p = PrivacyConfig(level="client", noise_multiplier=1.0, clip=0.5)
    cfg = small_config(privacy=p, rounds=RoundConfig(rounds=1, local_steps=1))
    fed = Federation(cfg, _clients(train, 3), ev, fail_hook=drop)
    g0 = {k: v.copy() for k, v in fed.global_state.items()}
    rec = fed.run_one_round(1)
    assert rec.skipped is not None and rec.contributors == []
    assert fed.ledger.releases() == [] and rec.epsilon == 0.0
    assert all(np.array_equal(g0[k], fed.global_state[k]) for k in g0)

    # tolerance 1/3: shares sized for 2; 2 contribute -> exactly z; 3 -> more noise
    p2 = PrivacyConfig(
        level="client", noise_multiplier=1.0, clip=0.5, dropout_tolerance=0.34
    )
    cfg2 = small_config(privacy=p2, rounds=RoundConfig(rounds=2, local_steps=1))
    fed2 = Federation(cfg2, _clients(train, 3), ev, fail_hook=drop)
    assert fed2.min_clients == 2
    fed2.run_one_round(1)
    fed2.fail_hook = None
    rec2 = fed2.run_one_round(2)
    e1, e2 = (r["event"] for r in fed2.ledger._ledgers["*"].records)
    assert e1["noise_multiplier"] == pytest.approx(1.0)
    assert e2["noise_multiplier"] == pytest.approx(math.sqrt(3 / 2))
    assert rec2.epsilon == pytest.approx(_gauss_eps([1.0, math.sqrt(1.5)]), rel=1e-2)


def test_holder_refuses_sum_of_too_few() -> None:
    class Inner:
        def recover(self, result: bytes) -> Any:
            return privagg.Recovered(np.zeros(2), ("a",))

    with pytest.raises(privagg.InsufficientParticipantsError, match="not released"):
        _MinHolder(Inner(), 2).recover(b"")
    assert _MinHolder(Inner(), 1).recover(b"").contributors == ("a",)


# ---------------------------------------------------------------- finding 4


def test_fresh_start_keeps_ledgers_unless_new_unit(
    rt_small: tuple[RawDataset, RawDataset], tmp_path: Path
) -> None:
    train, ev = rt_small
    p = PrivacyConfig(level="record", noise_multiplier=1.0, clip=1.0)
    cfg = small_config(
        privacy=p, rounds=RoundConfig(rounds=1, local_steps=1, batch_size=8)
    )
    first = Federation(cfg, two_clients(train), ev, out_dir=tmp_path).run(export=False)
    again = Federation(cfg, two_clients(train), ev, out_dir=tmp_path).run(
        resume=False, export=False
    )
    one = epsilon(noise_multiplier=1.0, sample_rate=0.25, steps=1, delta=DELTA)
    two = epsilon(noise_multiplier=1.0, sample_rate=0.25, steps=2, delta=DELTA)
    assert first.rounds[-1].epsilon == pytest.approx(one, rel=1e-3)
    assert again.rounds[-1].epsilon == pytest.approx(two, rel=1e-3)  # kept counting
    assert again.prior_releases == 2 and again.archived_checkpoint is not None
    assert (again.archived_checkpoint / "meta.json").is_file()
    new_unit = RunConfig.from_dict(
        {**cfg.to_dict(), "privacy": {**cfg.to_dict()["privacy"], "unit": "new-data"}}
    )
    fresh = Federation(new_unit, two_clients(train), ev, out_dir=tmp_path).run(
        resume=False, export=False
    )
    assert fresh.rounds[-1].epsilon == pytest.approx(one, rel=1e-3)
    assert (tmp_path / "privacy-new-data").is_dir()


# ---------------------------------------------------------------- finding 5


@pytest.mark.slow
def test_report_leaves_out_per_client_data_by_default(
    rt_small: tuple[RawDataset, RawDataset], tmp_path: Path
) -> None:
    train, ev = rt_small
    p = PrivacyConfig(level="record", noise_multiplier=1.0, clip=1.0)
    cfg = small_config(privacy=p, rounds=RoundConfig(rounds=1, local_steps=1))
    spec = ExperimentSpec(num_clients=2, partition="iid")
    rep = run_experiment(cfg, train, ev, spec, tmp_path / "a", progress=False)
    text = json.dumps(rep)
    for leak in (
        "train_loss",
        "label_counts",
        "client0",
        "client1",
        "per_client_debug",
    ):
        if leak in ("client0", "client1"):
            # only the per-client epsilon (the guarantee itself) names clients
            assert set(rep["rounds"][0]["epsilon_per_client"]) == {"client0", "client1"}
            assert text.count(leak) == 1
        else:
            assert leak not in text
    assert rep["rounds"][0]["num_contributors"] == 2
    dbg = run_experiment(
        cfg,
        train,
        ev,
        spec,
        tmp_path / "b",
        progress=False,
        report_per_client=True,
    )["per_client_debug"]
    assert "NOT covered" in dbg["WARNING"]
    assert set(dbg["rounds"][0]["train_loss"]) == {"client0", "client1"}
    assert "label_counts" in dbg["clients"]["client0"]


# ---------------------------------------------------------------- finding 6


class _CountingRng:
    def __init__(self) -> None:
        self.inner = privagg.hazmat.DeterministicRng(5)
        self.drawn = 0

    def random_bytes(self, n: int) -> bytes:
        self.drawn += n
        return self.inner.random_bytes(n)


def test_dp_sgd_randomness_from_privagg_rng(
    rt_small: tuple[RawDataset, RawDataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    """DP-SGD noise and Poisson batches come from the injected privagg Rng only."""
    from fedtrain.lora import build_lora
    from fedtrain.models import encode, load_model, load_tokenizer
    from fedtrain.train import DPSGD, make_dp_module, train_local

    train, _ = rt_small
    enc = encode(train, load_tokenizer("minilm"), 16)
    h = build_lora(
        load_model("minilm", "seq_cls", label_names=train.label_names),
        "seq_cls",
        LoraSettings(r=2),
    )
    gsm = make_dp_module(h)
    start = h.get()

    def forbidden(*a: object, **k: object) -> None:
        raise AssertionError("DP randomness must not come from torch/numpy PRNGs")

    monkeypatch.setattr(torch, "normal", forbidden)
    monkeypatch.setattr(torch, "randn", forbidden)

    class NoPrng:
        def __getattr__(self, name: str) -> Any:
            raise AssertionError(f"DP-SGD used the numpy generator ({name})")

    rng_np: Any = NoPrng()
    n_params = sum(int(p.numel()) for p in h.params.values() if p.requires_grad)
    outs = []
    for _ in range(2):
        h.set(start)
        torch.manual_seed(0)  # the model's dropout masks (not DP randomness)
        r = _CountingRng()
        train_local(
            h,
            enc,
            steps=2,
            batch_size=8,
            lr=1e-2,
            weight_decay=0.0,
            device=torch.device("cpu"),
            bf16=False,
            rng=rng_np,
            dp=DPSGD(1.0, 0.5),
            dp_module=gsm,
            dp_rng=r,  # type: ignore[arg-type]
        )
        # 2 steps x (n Poisson decisions + >= n_params Gaussians), 8 bytes each
        assert r.drawn >= 2 * 8 * (len(enc) + n_params)
        outs.append(h.get())
    assert all(np.array_equal(outs[0][k], outs[1][k]) for k in outs[0])


def test_server_dp_randomness_is_csprng_outside_test_mode(
    rt_small: tuple[RawDataset, RawDataset],
) -> None:
    train, ev = rt_small
    fed = Federation(small_config(test_seed=None), two_clients(train), ev)
    assert isinstance(fed._rng("sampling", 1), privagg.SystemRng)
    assert not hasattr(fed, "_secret_rng")
    det = Federation(small_config(), two_clients(train), ev)
    assert isinstance(det._rng("sampling", 1), privagg.hazmat.DeterministicRng)


# ---------------------------------------------------------------- finding 7


def test_local_optimizer_state_kept_per_client(
    rt_small: tuple[RawDataset, RawDataset], tmp_path: Path
) -> None:
    train, ev = rt_small
    cfg = small_config(rounds=RoundConfig(rounds=2, local_steps=2, batch_size=8))
    fed = Federation(cfg, two_clients(train), ev, out_dir=tmp_path)
    fed.run(export=False)
    steps = {k: v for k, v in fed.client_opt["alice"].items() if k.endswith(".step")}
    assert steps and all(float(v) == 4.0 for v in steps.values())  # 2 rounds x 2
    # the checkpoint carries it: a resumed (extended) run continues from it
    cfg3 = RunConfig.from_dict(
        {**cfg.to_dict(), "rounds": {**cfg.to_dict()["rounds"], "rounds": 3}}
    )
    fed3 = Federation(cfg3, two_clients(train), ev, out_dir=tmp_path)
    fed3.run(export=False)
    steps3 = [v for k, v in fed3.client_opt["bob"].items() if k.endswith(".step")]
    assert steps3 and all(float(np.asarray(v).reshape(-1)[0]) == 6.0 for v in steps3)
    flora = small_config(lora=LoraSettings(r=4, alpha=8.0, mode="flora"))
    assert not Federation(flora, two_clients(train), ev).keep_opt_state


# ---------------------------------------------------------------- finding 3


def test_resume_refuses_changed_config_naming_key(
    rt_small: tuple[RawDataset, RawDataset], tmp_path: Path
) -> None:
    train, ev = rt_small
    cfg = small_config(rounds=RoundConfig(rounds=1, local_steps=1, batch_size=8))
    Federation(cfg, two_clients(train), ev, out_dir=tmp_path).run(export=False)
    d = cfg.to_dict()
    for key, value in (("batch_size", 4), ("lr", 1e-3), ("weighting", "uniform")):
        changed = RunConfig.from_dict(
            {**d, "rounds": {**d["rounds"], key: value, "rounds": 2}}
        )
        with pytest.raises(ConfigError, match=rf"rounds\.{key}"):
            Federation(changed, two_clients(train), ev, out_dir=tmp_path).run(
                export=False
            )


def test_resume_refuses_missing_ledger(
    rt_small: tuple[RawDataset, RawDataset], tmp_path: Path
) -> None:
    train, ev = rt_small
    p = PrivacyConfig(level="client", noise_multiplier=1.0, clip=0.5)
    cfg = small_config(privacy=p, rounds=RoundConfig(rounds=1, local_steps=1))
    Federation(cfg, two_clients(train), ev, out_dir=tmp_path).run(export=False)
    (tmp_path / "privacy" / "federation.json").unlink()
    d = cfg.to_dict()
    longer = RunConfig.from_dict({**d, "rounds": {**d["rounds"], "rounds": 2}})
    with pytest.raises(PrivacyRecordError, match="under-report"):
        Federation(longer, two_clients(train), ev, out_dir=tmp_path).run(export=False)


# ---------------------------------------------------------------- finding 8


def test_calibrated_noise_meets_target_and_run_stops_before_exceeding(
    rt_small: tuple[RawDataset, RawDataset],
) -> None:
    train, ev = rt_small
    p = PrivacyConfig(level="record", target_epsilon=3.0, calibrate=True, clip=1.0)
    cfg = small_config(
        privacy=p, rounds=RoundConfig(rounds=2, local_steps=1, batch_size=8)
    )
    fed = Federation(cfg, two_clients(train), ev)
    z = fed.noise_multiplier
    assert z == pytest.approx(
        privagg.dp.noise_multiplier(
            target_epsilon=3.0 * 0.999, delta=DELTA, sample_rate=0.25, steps=2
        ),
        rel=1e-3,
    )
    fed.run_one_round(1)
    eps2 = fed.run_one_round(2).epsilon
    assert 0.95 * 3.0 <= eps2 <= 3.0
    with pytest.raises(privagg.BudgetExceededError, match="remaining"):
        fed.run_one_round(3)  # a round beyond the plan is refused before training
    assert fed.ledger.releases() == [1, 2]


def test_client_level_calibration_integer_backend(
    rt_small: tuple[RawDataset, RawDataset],
) -> None:
    train, ev = rt_small
    p = PrivacyConfig(level="client", target_epsilon=8.0, calibrate=True, clip=0.5)
    cfg = small_config(
        backend="additive", privacy=p, rounds=RoundConfig(rounds=2, local_steps=1)
    )
    fed = Federation(cfg, _clients(train, 3), ev)
    fed.run_one_round(1)
    eps = fed.run_one_round(2).epsilon
    assert 0.95 * 8.0 <= eps <= 8.0


def test_run_stops_on_budget_and_cli_exits_nonzero(
    monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    import fedtrain.experiment as exp
    from fedtrain.cli import main

    seen: dict[str, RunConfig] = {}

    def fake_data(*a: object, **k: object) -> tuple[None, None]:
        return None, None

    def raising(cfg: RunConfig, *a: object, **k: object) -> dict[str, Any]:
        seen["cfg"] = cfg
        raise privagg.BudgetExceededError("spent 1.5, remaining 0.5")

    monkeypatch.setattr(exp, "load_task_data", fake_data)
    monkeypatch.setattr(exp, "run_experiment", raising)
    argv = ["demo", "--out", str(tmp_path), "--backend", "plain", "--no-progress"]
    rc = main([*argv, "--optimizer", "sgd", "--head-clip", "2.0", "--dropout", "0.05"])
    assert rc == 3 and "remaining 0.5" in capsys.readouterr().err
    c = seen["cfg"]
    assert c.rounds.optimizer == "sgd" and c.privacy.head_clip == 2.0
    assert c.model_dropout == 0.05 and not c.privacy.calibrate
    main([*argv, "--target-epsilon", "2"])
    assert seen["cfg"].privacy.calibrate and seen["cfg"].privacy.target_epsilon == 2
    main([*argv, "--target-epsilon", "2", "--noise-multiplier", "1.5"])
    assert not seen["cfg"].privacy.calibrate
    main([*argv, "--privacy-unit", "new"])
    assert seen["cfg"].privacy.unit == "new"

    def stopped(cfg: RunConfig, *a: object, **k: object) -> dict[str, Any]:
        return {
            "main_metric": "accuracy",
            "initial_metrics": {},
            "final_metrics": {},
            "backend": "plain",
            "privacy": {
                "final_epsilon": 1.9,
                "target_epsilon": 2.0,
                "remaining_epsilon": 0.1,
                "stopped": "round 3 refused before training",
            },
        }

    monkeypatch.setattr(exp, "run_experiment", stopped)
    assert main(argv) == 3
    assert "remaining 0.1" in capsys.readouterr().err


def test_flora_refuses_client_dp_and_fedadam() -> None:
    with pytest.raises(ConfigError, match="flora"):
        RunConfig(
            lora=LoraSettings(mode="flora"), privacy=PrivacyConfig(level="client")
        )
    with pytest.raises(ConfigError, match="flora"):
        RunConfig(
            lora=LoraSettings(mode="flora"), rounds=RoundConfig(server_opt="fedadam")
        )


# ---------------------------------------------------------------- finding 9


def test_one_seed_reproduces_a_dp_run_and_dropout_is_zero_under_dp(
    rt_small: tuple[RawDataset, RawDataset],
) -> None:
    train, ev = rt_small
    p = PrivacyConfig(level="record", noise_multiplier=1.0, clip=1.0)
    cfg = small_config(privacy=p, rounds=RoundConfig(rounds=1, local_steps=2))
    states = []
    for _ in range(2):
        torch.manual_seed(12345)  # the global torch state must not matter
        fed = Federation(cfg, two_clients(train), ev)
        fed.run_one_round(1)
        states.append(fed.global_state)
    assert all(np.array_equal(states[0][k], states[1][k]) for k in states[0])
    drops = [
        m.p
        for n, m in fed.handle.model.named_modules()
        if isinstance(m, torch.nn.Dropout) and "lora_dropout" not in n
    ]
    assert drops and all(x == 0.0 for x in drops)
    nodp = Federation(small_config(model_dropout=0.2), two_clients(train), ev)
    assert all(
        m.p == 0.2
        for n, m in nodp.handle.model.named_modules()
        if isinstance(m, torch.nn.Dropout) and "lora_dropout" not in n
    )


# ---------------------------------------------------------------- done criterion


def _recompute(report: dict[str, Any], ledger_dir: Path) -> float:
    """Epsilon from the ledger's recorded parameters and each round's contributors,
    rebuilt without reading the recorded event objects."""
    recs = _records(ledger_dir)
    released = [r for r in report["rounds"] if r["released"]]
    assert [r["metadata"]["num_contributors"] for r in recs] == [
        r["num_contributors"] for r in released
    ]
    zs, acct = [], RdpAccountant()
    for r in recs:
        m = r["metadata"]
        n, s, c = m["num_contributors"], m["share_stddev"], m["clip"]
        if m["mechanism"] == "gaussian":
            zs.append(s * math.sqrt(n) / c)
            assert r["event"]["noise_multiplier"] == pytest.approx(zs[-1])
        else:
            ev = DiscreteGaussianEvent(
                noise_stddev=s * m["scale"],
                l2_sensitivity=encoded_l2_sensitivity(c, m["scale"], m["dimension"]),
                num_shares=n,
                dimension=m["dimension"],
            )
            assert ev.to_dict() == r["event"]
            acct.compose(ev)
    return (
        _gauss_eps(zs, report["privacy"]["delta"])
        if zs
        else acct.epsilon(report["privacy"]["delta"])
    )


@pytest.mark.slow
@pytest.mark.e2e
@pytest.mark.parametrize("backend", ["plain", "ckks", "paillier", "secagg", "additive"])
def test_client_level_dp_end_to_end_every_backend(
    backend: str, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """The demo data, 8 clients, client-level DP with the CLI defaults (z, C)."""
    if backend not in privagg.available_backends():
        pytest.skip(f"{backend} not available")
    from fedtrain.cli import main

    out = tmp_path / backend
    rc = main(
        [
            "demo",
            "--out",
            str(out),
            "--quick",
            "--no-progress",
            "--backend",
            backend,
            "--privacy",
            "client",
            "--noise-multiplier",
            "1.0",
            "--clients",
            "8",
            "--rounds",
            "2",
            "--local-steps",
            "1",
            "--batch-size",
            "4",
            "--max-len",
            "16",
            "--max-train",
            "64",
            "--max-eval",
            "32",
        ]
    )
    assert rc == 0, capsys.readouterr().err
    rep = json.loads((out / "report.json").read_text())
    assert all(r["num_contributors"] == 8 for r in rep["rounds"])
    eps = rep["privacy"]["final_epsilon"]
    again = _recompute(rep, out / "privacy")
    print(f"E2E {backend}: reported {eps:.6f} recomputed {again:.6f}")
    assert eps == pytest.approx(again, rel=1e-2)
    assert rep["rounds"][-1]["epsilon"] == pytest.approx(eps)


def test_noise_domain_comes_from_privagg_not_from_backend_names(
    rt_small: tuple[RawDataset, RawDataset], monkeypatch: pytest.MonkeyPatch
) -> None:
    """A backend fedtrain has never heard of, registered under a new name: fedtrain
    asks privagg (``fixed_point_scale``) whether its noise is discrete and at which
    scale, and accounts the distributed discrete Gaussian accordingly (issue #16)."""
    from privagg import registry
    from privagg.backends.additive import AdditiveBackend

    monkeypatch.setitem(
        registry._REGISTERED, "ring_under_another_name", AdditiveBackend
    )
    train, ev = rt_small
    p = PrivacyConfig(level="client", noise_multiplier=1.0, clip=0.5)
    cfg = small_config(
        backend="ring_under_another_name",
        backend_options={"scale_bits": 12},
        privacy=p,
        rounds=RoundConfig(rounds=1, local_steps=1),
    )
    fed = Federation(cfg, _clients(train, 3), ev)
    assert fed.integer_backend and fed.scale == 2.0**12 and fed.accountant == "rdp"
    meta = fed.client_event(3)[1]
    assert meta["mechanism"] == "distributed_discrete_gaussian"
    assert meta["scale"] == 2.0**12
    plain = Federation(small_config(privacy=p), _clients(train, 3), ev)
    assert not plain.integer_backend
    assert plain.client_event(3)[1]["mechanism"] == "gaussian"


@pytest.mark.parametrize(
    ("factory", "option"),
    [("ckks", "value_bound"), ("paillier", "bound"), ("secagg", "bound")],
)
def test_bound_option_comes_from_privagg_not_from_backend_names(
    rt_small: tuple[RawDataset, RawDataset],
    monkeypatch: pytest.MonkeyPatch,
    factory: str,
    option: str,
) -> None:
    """Client-level DP clips every update to L2 <= C, so fedtrain sets the backend's
    per-coordinate bound to C through the option privagg names
    (``value_bound_option``), for a backend registered under a name fedtrain has
    never heard of; a bound below C is refused (issue #16)."""
    from privagg import registry

    if factory not in privagg.available_backends():
        pytest.skip(f"{factory} not available")
    cls = type(privagg.get_backend(factory))
    assert privagg.value_bound_option(privagg.get_backend(factory)) == option
    monkeypatch.setitem(registry._REGISTERED, "bounded_under_another_name", cls)
    train, ev = rt_small
    p = PrivacyConfig(level="client", noise_multiplier=1.0, clip=0.25)
    rounds = RoundConfig(rounds=1, local_steps=1)
    fed = Federation(
        small_config(backend="bounded_under_another_name", privacy=p, rounds=rounds),
        _clients(train, 3),
        ev,
    )
    assert fed.backend.value_bound == pytest.approx(0.25)
    with pytest.raises(ConfigError, match=f"{option}=0.125 is below the client clip"):
        Federation(
            small_config(
                backend="bounded_under_another_name",
                backend_options={option: 0.125},
                privacy=p,
                rounds=rounds,
            ),
            _clients(train, 3),
            ev,
        )


def test_plain_declares_it_protects_nothing() -> None:
    """The reference backend is the only one that shows the aggregator each update;
    fedtrain asks ``protects_inputs`` instead of comparing names."""
    for name in privagg.available_backends():
        be = privagg.get_backend(name)
        assert privagg.protects_inputs(be) == (name != "plain"), name
        assert (privagg.value_bound_option(be) is None) == (be.value_bound is None)
