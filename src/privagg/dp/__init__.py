"""Differential privacy for privagg: clipping, noise, accountants, distributed DP.

Quick start::

    import privagg.dp as dp

    eps = dp.epsilon(noise_multiplier=1.1, sample_rate=0.01, steps=10_000, delta=1e-5)
    z = dp.noise_multiplier(target_epsilon=3.0, delta=1e-5, sample_rate=0.01, steps=10_000)

See ``docs/dp.md`` for what each mechanism guarantees and how it is accounted.
"""

from privagg.dp.accountants import (
    ACCOUNTANTS,
    Accountant,
    PldAccountant,
    RdpAccountant,
    make_accountant,
)
from privagg.dp.adaptive_clip import AdaptiveClipper, update_noise_multiplier
from privagg.dp.calibrate import calibrate_noise_multiplier, epsilon, noise_multiplier
from privagg.dp.clipping import (
    clip_l2,
    clip_per_layer,
    global_l2_norm,
    per_layer_total_norm,
    split_budget,
)
from privagg.dp.distributed import (
    AccountedNoiseShare,
    DiscreteGaussianShare,
    SkellamShare,
    _deprecated_noise_share,
    dp_fedavg_aggregate,
    dp_fedavg_event,
    encoded_l2_sensitivity,
    survivors,
)
from privagg.dp.events import (
    EVENT_TYPES,
    ComposedEvent,
    DiscreteGaussianEvent,
    Event,
    GaussianEvent,
    LaplaceEvent,
    PoissonSampledEvent,
    SampledWithoutReplacementEvent,
    SelfComposedEvent,
    SkellamEvent,
    event_from_dict,
    to_dp_accounting,
)
from privagg.dp.ledger import PrivacyLedger
from privagg.dp.noise import (
    sample_discrete_gaussian,
    sample_discrete_laplace,
    sample_gaussian,
    sample_poisson,
    sample_skellam,
)

__all__ = [
    "ACCOUNTANTS",
    "EVENT_TYPES",
    "AccountedNoiseShare",
    "Accountant",
    "AdaptiveClipper",
    "ComposedEvent",
    "DiscreteGaussianEvent",
    "DiscreteGaussianShare",
    "Event",
    "GaussianEvent",
    "LaplaceEvent",
    "PldAccountant",
    "PoissonSampledEvent",
    "PrivacyLedger",
    "RdpAccountant",
    "SampledWithoutReplacementEvent",
    "SelfComposedEvent",
    "SkellamEvent",
    "SkellamShare",
    "calibrate_noise_multiplier",
    "clip_l2",
    "clip_per_layer",
    "dp_fedavg_aggregate",
    "dp_fedavg_event",
    "encoded_l2_sensitivity",
    "epsilon",
    "event_from_dict",
    "global_l2_norm",
    "make_accountant",
    "noise_multiplier",
    "per_layer_total_norm",
    "sample_discrete_gaussian",
    "sample_discrete_laplace",
    "sample_gaussian",
    "sample_poisson",
    "sample_skellam",
    "split_budget",
    "survivors",
    "to_dp_accounting",
    "update_noise_multiplier",
]


def __getattr__(name: str) -> object:
    if name == "NoiseShare":  # deprecated: privagg.NoiseShare or AccountedNoiseShare
        return _deprecated_noise_share()
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
