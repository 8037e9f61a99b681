from __future__ import annotations

import pytest

from fedtrain.config import LoraSettings, PrivacyConfig, RoundConfig, RunConfig
from fedtrain.errors import ConfigError


@pytest.mark.parametrize(
    "make",
    [
        lambda: LoraSettings(r=0),
        lambda: LoraSettings(mode="bogus"),  # type: ignore[arg-type]
        lambda: LoraSettings(client_ranks={"a": 2}),  # heterogeneous ranks need flora
        lambda: LoraSettings(mode="flora", client_ranks={"a": 0}),
        lambda: RoundConfig(rounds=0),
        lambda: RoundConfig(sample_rate=0.0),
        lambda: RoundConfig(local_steps=None, local_epochs=None),
        lambda: RoundConfig(server_opt="sgd"),  # type: ignore[arg-type]
        lambda: RoundConfig(optimizer="lion"),  # type: ignore[arg-type]
        lambda: RoundConfig(head_lr=0.0),
        lambda: PrivacyConfig(level="record", head_clip=0.0),
        lambda: PrivacyConfig(level="client", head_clip=1.0),  # record level only
        lambda: PrivacyConfig(level="record", noise_multiplier=0.0),
        lambda: PrivacyConfig(clip=-1.0),
        lambda: PrivacyConfig(delta=1.0),
        lambda: RunConfig(task="qa"),  # type: ignore[arg-type]
        lambda: RunConfig(max_len=2),
    ],
)
def test_invalid_configs_raise(make: object) -> None:
    with pytest.raises(ConfigError):
        make()  # type: ignore[operator]


def test_roundtrip_dict() -> None:
    cfg = RunConfig(
        task="token_cls",
        lora=LoraSettings(
            r=4, mode="flora", client_ranks={"a": 2}, target_modules=("query",)
        ),
        rounds=RoundConfig(
            sampling="poisson",
            sample_rate=0.5,
            head_lr=0.02,
            optimizer="sgd",
        ),
        privacy=PrivacyConfig(
            level="record",
            noise_multiplier=1.3,
            target_epsilon=4.0,
            calibrate=True,
            min_clients=2,
            dropout_tolerance=0.25,
            unit="cohort-2",
        ),
        model_dropout=0.05,
        backend="ckks",
        backend_options={"poly_degree": 8192},
    )
    back = RunConfig.from_dict(cfg.to_dict())
    assert back == cfg
    with pytest.raises(ConfigError):
        RunConfig.from_dict({"unknown": 1})
