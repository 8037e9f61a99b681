"""Frozen, validated configuration dataclasses for a federated LoRA run."""

from __future__ import annotations

import dataclasses
import json
import math
import re
from collections.abc import Mapping
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal

from fedtrain.errors import ConfigError

__all__ = [
    "AggregationMode",
    "LoraMode",
    "LoraSettings",
    "PrivacyConfig",
    "PrivacyLevel",
    "RoundConfig",
    "RunConfig",
    "Task",
]

Task = Literal["seq_cls", "token_cls", "causal_lm"]
AggregationMode = Literal["ffa", "fedit", "flora", "alternating"]
"""The LoRA modes as strings (accepted wherever a :class:`LoraMode` is)."""


class LoraMode(StrEnum):
    """How clients' LoRA factors are aggregated (see :mod:`fedtrain.lora`).

    A ``StrEnum``: ``LoraMode.FFA == "ffa"``, and every configuration field, CLI
    option and JSON file keeps taking the plain string.
    """

    FFA = "ffa"
    """FFA-LoRA: A shared and frozen, only B (and the head) trained; exact."""
    FEDIT = "fedit"
    """A and B averaged separately: the inexact baseline."""
    FLORA = "flora"
    """FLoRA stacking: exact, any ranks, but the sum reveals every client's update."""
    ALTERNATING = "alternating"
    """RoLoRA: B in odd rounds, A in even rounds; exact, trains both factors."""


class PrivacyLevel(StrEnum):
    """Which differential privacy a run provides (see :class:`PrivacyConfig`).

    A ``StrEnum``: ``PrivacyLevel.RECORD == "record"``; the strings stay accepted.
    """

    NONE = "none"
    """No differential privacy."""
    RECORD = "record"
    """Record-level DP-SGD inside each client (epsilon per client)."""
    CLIENT = "client"
    """Client-level DP: clipped updates plus distributed Gaussian noise shares."""


_TASKS = ("seq_cls", "token_cls", "causal_lm")
_MODES = tuple(m.value for m in LoraMode)
_POOLINGS = ("auto", "cls", "pooler", "mean")
_SERVER_OPTS = ("fedavg", "fedadam", "fedyogi")
_SAMPLING = ("poisson", "fraction")
_PRIVACY = tuple(p.value for p in PrivacyLevel)


@dataclass(frozen=True)
class LoraSettings:
    """LoRA adapter settings.

    Attributes:
        r: rank used by every client (``ffa``/``fedit``); in ``flora`` the default
            and maximum rank (a client rank above it is a RankMismatchError).
        alpha: LoRA scaling numerator (scaling = alpha / r).
        dropout: LoRA dropout.
        target_modules: module names to adapt; ``None`` lets the model family pick.
        mode: aggregation mode (a :class:`LoraMode`; its string is accepted and
            converted): ``ffa`` (default, exact), ``fedit`` (inexact), ``flora``,
            ``alternating`` (RoLoRA: B in odd rounds, A in even rounds, the other
            factor shared and frozen; exact, trains both factors).
        client_ranks: ``flora`` only: rank per client id (heterogeneous ranks).
        a_seed: shared seed from which the LoRA A matrices are initialised
            (public, identical for all clients; not a secret).
        pooling: ``seq_cls``: how the head reads the encoder: ``auto`` (the model's
            sentence-transformers pooling when it has one, else the native head),
            ``mean``, ``cls`` or ``pooler`` (see :mod:`fedtrain.models`).
        head_steps: LP-FT: in every round the first ``head_steps`` local steps
            train the task head alone, on pooled features computed once with the
            adapter frozen (cheap: no encoder pass per step); the remaining steps
            train adapter and head. ``seq_cls`` with a pooled head only. Under
            DP-SGD every step is the same Poisson-sampled Gaussian release, so the
            accounting does not change.
    """

    r: int = 8
    alpha: float = 16.0
    dropout: float = 0.0
    target_modules: tuple[str, ...] | None = None
    mode: LoraMode | AggregationMode = LoraMode.FFA
    client_ranks: Mapping[str, int] | None = None
    a_seed: int = 0
    pooling: Literal["auto", "cls", "pooler", "mean"] = "auto"
    head_steps: int = 0

    def __post_init__(self) -> None:
        if self.pooling not in _POOLINGS:
            raise ConfigError(
                f"pooling must be one of {_POOLINGS}, got {self.pooling!r}"
            )
        if not isinstance(self.head_steps, int) or self.head_steps < 0:
            raise ConfigError(
                f"head_steps must be an int >= 0, got {self.head_steps!r}"
            )
        if not isinstance(self.r, int) or self.r < 1:
            raise ConfigError(f"lora r must be a positive int, got {self.r!r}")
        if not self.alpha > 0:
            raise ConfigError(f"lora alpha must be > 0, got {self.alpha!r}")
        if not 0.0 <= self.dropout < 1.0:
            raise ConfigError(f"lora dropout must be in [0, 1), got {self.dropout!r}")
        if self.mode not in _MODES:
            raise ConfigError(f"lora mode must be one of {_MODES}, got {self.mode!r}")
        object.__setattr__(self, "mode", LoraMode(self.mode))
        if self.target_modules is not None:
            object.__setattr__(self, "target_modules", tuple(self.target_modules))
            if not self.target_modules:
                raise ConfigError("target_modules must not be empty")
        if self.client_ranks is not None:
            if self.mode != "flora":
                raise ConfigError(
                    "client_ranks (heterogeneous ranks) need mode='flora'"
                )
            for cid, rk in self.client_ranks.items():
                if not isinstance(rk, int) or rk < 1:
                    raise ConfigError(
                        f"client {cid!r}: rank {rk!r} must be a positive int"
                    )
            object.__setattr__(self, "client_ranks", dict(self.client_ranks))

    @property
    def scaling(self) -> float:
        """The LoRA scaling factor alpha / r."""
        return self.alpha / self.r

    def rank_of(self, client_id: str) -> int:
        """Return the rank client ``client_id`` trains with."""
        if self.client_ranks is not None and client_id in self.client_ranks:
            return self.client_ranks[client_id]
        return self.r


@dataclass(frozen=True)
class RoundConfig:
    """Round structure and optimisation.

    Attributes:
        rounds: number of federated rounds.
        sampling: ``poisson`` (each client independently with rate ``sample_rate``,
            as DP accounting assumes) or ``fraction`` (a fixed fraction per round).
        sample_rate: client sampling rate q (or the fraction).
        local_steps: local optimizer steps per round (takes precedence over epochs).
        local_epochs: local epochs per round when ``local_steps`` is None.
        batch_size: local (expected) batch size.
        lr: local learning rate (AdamW) of the LoRA factors.
        head_lr: local learning rate of the task head (classification tasks);
            None uses ``lr``.
        optimizer: local optimizer, ``adamw`` or ``sgd`` (momentum 0.9).
        weight_decay: local weight decay.
        server_opt: ``fedavg``, ``fedadam`` or ``fedyogi`` on the aggregated delta.
        server_lr: server learning rate.
        server_betas: (beta1, beta2) for FedAdam/FedYogi.
        server_tau: adaptivity epsilon for FedAdam/FedYogi.
        weighting: ``examples`` (FedAvg by example count) or ``uniform``.
    """

    rounds: int = 3
    sampling: Literal["poisson", "fraction"] = "fraction"
    sample_rate: float = 1.0
    local_steps: int | None = 20
    local_epochs: float | None = None
    batch_size: int = 16
    lr: float = 2e-3
    head_lr: float | None = None
    optimizer: Literal["adamw", "sgd"] = "adamw"
    weight_decay: float = 0.0
    server_opt: Literal["fedavg", "fedadam", "fedyogi"] = "fedavg"
    server_lr: float = 1.0
    server_betas: tuple[float, float] = (0.9, 0.99)
    server_tau: float = 1e-3
    weighting: Literal["examples", "uniform"] = "examples"

    def __post_init__(self) -> None:
        if not isinstance(self.rounds, int) or self.rounds < 1:
            raise ConfigError(f"rounds must be a positive int, got {self.rounds!r}")
        if self.sampling not in _SAMPLING:
            raise ConfigError(
                f"sampling must be one of {_SAMPLING}, got {self.sampling!r}"
            )
        if not 0.0 < self.sample_rate <= 1.0:
            raise ConfigError(
                f"sample_rate must be in (0, 1], got {self.sample_rate!r}"
            )
        if self.local_steps is None and self.local_epochs is None:
            raise ConfigError("set local_steps or local_epochs")
        if self.local_steps is not None and self.local_steps < 1:
            raise ConfigError(f"local_steps must be >= 1, got {self.local_steps!r}")
        if self.local_epochs is not None and not self.local_epochs > 0:
            raise ConfigError(f"local_epochs must be > 0, got {self.local_epochs!r}")
        if self.batch_size < 1:
            raise ConfigError(f"batch_size must be >= 1, got {self.batch_size!r}")
        if not (self.lr > 0 and self.server_lr > 0):
            raise ConfigError("lr and server_lr must be > 0")
        if self.optimizer not in ("adamw", "sgd"):
            raise ConfigError(
                f"optimizer must be 'adamw' or 'sgd', got {self.optimizer!r}"
            )
        if self.head_lr is not None and not self.head_lr > 0:
            raise ConfigError(f"head_lr must be > 0, got {self.head_lr!r}")
        if self.server_opt not in _SERVER_OPTS:
            raise ConfigError(
                f"server_opt must be one of {_SERVER_OPTS}, got {self.server_opt!r}"
            )
        if self.weighting not in ("examples", "uniform"):
            raise ConfigError(
                f"weighting must be 'examples' or 'uniform', got {self.weighting!r}"
            )
        object.__setattr__(self, "server_betas", tuple(self.server_betas))


@dataclass(frozen=True)
class PrivacyConfig:
    """Which differential privacy the run provides.

    Attributes:
        level: a :class:`PrivacyLevel` (its string is accepted and converted):
            ``none``; ``record`` (DP-SGD inside each client: each client's records
            are protected, epsilon per client); ``client`` (each client's whole
            update is clipped and distributed Gaussian noise is added before
            protection: a client's participation is protected).
        noise_multiplier: Gaussian noise multiplier z (std = z * clip).
        clip: per-example gradient clip (record) or per-update L2 clip (client).
            With ``head_clip`` set (record level only), the clip of the LoRA group.
        head_clip: record level: clip the task head's per-example gradient
            separately to this norm (group-wise clipping, same noise multiplier;
            see :class:`fedtrain.train.DPSGD`). None: one flat clip.
        delta: the delta of (epsilon, delta)-DP.
        target_epsilon: optional budget; a round that would exceed it is refused.
        accountant: ``pld`` or ``rdp`` (privagg.dp accountants).
        update_clip: optional L2 clip of the whole update for ``record``/``none``
            (bounds the values handed to integer backends).
        calibrate: compute ``noise_multiplier`` from ``target_epsilon`` with
            privagg's calibration for the planned rounds, steps and sampling
            (``noise_multiplier`` is then ignored).
        min_clients: ``client`` level: the guaranteed minimum number of contributors
            the noise shares are sized for (each adds std ``z C / sqrt(min_clients)``);
            a round with fewer is refused. None: the clients a round samples
            (``round(q N)`` under fixed-fraction sampling, ``floor(q N)`` under
            Poisson) less ``dropout_tolerance``.
        dropout_tolerance: ``client`` level: fraction of the sampled clients that may
            drop while the round still releases (used when ``min_clients`` is None).
        unit: the privacy unit: runs in the same folder with the same unit compose
            into the same ledgers, also after ``--no-resume``; name a new unit only
            for data that is really new.
    """

    level: PrivacyLevel | Literal["none", "record", "client"] = PrivacyLevel.NONE
    noise_multiplier: float = 1.0
    clip: float = 1.0
    head_clip: float | None = None
    delta: float = 1e-5
    target_epsilon: float | None = None
    accountant: Literal["pld", "rdp"] = "pld"
    update_clip: float | None = None
    calibrate: bool = False
    min_clients: int | None = None
    dropout_tolerance: float = 0.0
    unit: str = "default"

    def __post_init__(self) -> None:
        if self.calibrate and self.target_epsilon is None:
            raise ConfigError("calibrate needs target_epsilon")
        if self.min_clients is not None and (
            not isinstance(self.min_clients, int) or self.min_clients < 1
        ):
            raise ConfigError(
                f"min_clients must be an int >= 1, got {self.min_clients!r}"
            )
        if not 0.0 <= self.dropout_tolerance < 1.0:
            raise ConfigError(
                f"dropout_tolerance must be in [0, 1), got {self.dropout_tolerance!r}"
            )
        if not re.fullmatch(r"[A-Za-z0-9_.-]{1,64}", str(self.unit)) or self.unit in (
            ".",
            "..",
        ):
            raise ConfigError(
                f"privacy unit must be 1-64 characters [A-Za-z0-9_.-], got {self.unit!r}"
            )
        if self.level not in _PRIVACY:
            raise ConfigError(
                f"privacy level must be one of {_PRIVACY}, got {self.level!r}"
            )
        object.__setattr__(self, "level", PrivacyLevel(self.level))
        if not (math.isfinite(self.clip) and self.clip > 0):
            raise ConfigError(f"clip must be finite and > 0, got {self.clip!r}")
        if self.head_clip is not None:
            if not (math.isfinite(self.head_clip) and self.head_clip > 0):
                raise ConfigError(
                    f"head_clip must be finite and > 0, got {self.head_clip!r}"
                )
            if self.level != "record":
                raise ConfigError("head_clip applies to record-level DP only")
        if not (math.isfinite(self.noise_multiplier) and self.noise_multiplier >= 0):
            raise ConfigError(
                f"noise_multiplier must be >= 0, got {self.noise_multiplier!r}"
            )
        if self.level != "none" and self.noise_multiplier <= 0:
            raise ConfigError(
                f"privacy level {str(self.level)!r} needs noise_multiplier > 0"
            )
        if not 0.0 < self.delta < 1.0:
            raise ConfigError(f"delta must be in (0, 1), got {self.delta!r}")
        if self.target_epsilon is not None and not self.target_epsilon > 0:
            raise ConfigError(
                f"target_epsilon must be > 0, got {self.target_epsilon!r}"
            )
        if self.accountant not in ("pld", "rdp"):
            raise ConfigError(
                f"accountant must be 'pld' or 'rdp', got {self.accountant!r}"
            )
        if self.update_clip is not None and not self.update_clip > 0:
            raise ConfigError(f"update_clip must be > 0, got {self.update_clip!r}")


@dataclass(frozen=True)
class RunConfig:
    """A whole federated run.

    Attributes:
        task: ``seq_cls``, ``token_cls`` or ``causal_lm``.
        model: model name, path, alias (``minilm``, ``smollm2``) or ``.gguf`` file.
        max_len: maximum sequence length in tokens.
        lora: LoRA settings.
        rounds: round settings.
        privacy: privacy settings.
        backend: privagg backend name (``plain``, ``ckks``, ``paillier``, ``secagg``...).
        backend_options: keyword options for ``privagg.get_backend``.
        device: ``auto``, ``cpu`` or ``cuda``.
        bf16: use bf16 autocast on CUDA.
        eval_batch_size: evaluation batch size.
        seed: seed for non-secret randomness (torch: model head init, dropout;
            numpy: data order without DP); DP noise, Poisson batches and client
            sampling use privagg's CSPRNG unless ``test_seed`` is set.
        test_seed: TESTS ONLY: makes DP noise and client sampling reproducible
            (fixed AES-CTR streams derived from it).
        model_dropout: dropout probability of the base model's dropout layers (not
            LoRA's, see ``LoraSettings.dropout``); None: 0 under DP, the model's own
            otherwise.
    """

    task: Task = "seq_cls"
    model: str = "minilm"
    max_len: int = 64
    lora: LoraSettings = field(default_factory=LoraSettings)
    rounds: RoundConfig = field(default_factory=RoundConfig)
    privacy: PrivacyConfig = field(default_factory=PrivacyConfig)
    backend: str = "plain"
    backend_options: Mapping[str, Any] = field(default_factory=dict)
    device: Literal["auto", "cpu", "cuda"] = "auto"
    bf16: bool = True
    eval_batch_size: int = 64
    seed: int = 0
    test_seed: int | None = None
    model_dropout: float | None = None

    def __post_init__(self) -> None:
        if self.model_dropout is not None and not 0.0 <= self.model_dropout < 1.0:
            raise ConfigError(
                f"model_dropout must be in [0, 1), got {self.model_dropout!r}"
            )
        if self.lora.mode == "flora" and self.privacy.level == "client":
            raise ConfigError(
                "flora with client-level DP is refused: every client's factors occupy "
                "their own slot, so the sum reveals each client's update"
            )
        if self.lora.mode == "flora" and self.rounds.server_opt != "fedavg":
            raise ConfigError(
                f"flora with server_opt={self.rounds.server_opt!r} is refused: flora "
                "merges each round's exact update into the base weights (fedavg only)"
            )
        if self.task not in _TASKS:
            raise ConfigError(f"task must be one of {_TASKS}, got {self.task!r}")
        if not isinstance(self.max_len, int) or self.max_len < 8:
            raise ConfigError(f"max_len must be an int >= 8, got {self.max_len!r}")
        if self.device not in ("auto", "cpu", "cuda"):
            raise ConfigError(f"device must be auto, cpu or cuda, got {self.device!r}")
        if not self.model:
            raise ConfigError("model must be a non-empty name or path")
        if not self.backend:
            raise ConfigError("backend must be a non-empty privagg backend name")
        for name in ("seed", "test_seed"):
            value = getattr(self, name)
            if value is None and name == "test_seed":
                continue
            if isinstance(value, bool) or not isinstance(value, int):
                raise ConfigError(f"{name} must be an int, got {value!r}")
            if not 0 <= value < 2**63:  # torch and numpy seeds: non-negative, 64-bit
                raise ConfigError(f"{name} must be in [0, 2**63), got {value!r}")
        object.__setattr__(self, "backend_options", dict(self.backend_options))

    def to_dict(self) -> dict[str, Any]:
        """Return a JSON-serialisable dict of this configuration."""
        out: dict[str, Any] = json.loads(
            json.dumps(dataclasses.asdict(self), default=list)
        )
        return out

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]) -> RunConfig:
        """Rebuild a configuration from :meth:`to_dict` output.

        Args:
            d: the dict.

        Returns:
            The configuration.

        Raises:
            ConfigError: on unknown or invalid fields, or values of the wrong kind
                (the only error this raises for any input).
        """
        try:
            d = dict(d)
            lora = dict(d.pop("lora", {}))
            if lora.get("target_modules") is not None:
                lora["target_modules"] = tuple(lora["target_modules"])
            rnd = dict(d.pop("rounds", {}))
            if "server_betas" in rnd:
                rnd["server_betas"] = tuple(rnd["server_betas"])
            return cls(
                lora=LoraSettings(**lora),
                rounds=RoundConfig(**rnd),
                privacy=PrivacyConfig(**dict(d.pop("privacy", {}))),
                **d,
            )
        except ConfigError:
            raise
        except (TypeError, ValueError, AttributeError, OverflowError) as exc:
            # a value of the wrong kind (a list for a mapping, an int too large for a
            # float): refused as configuration, never an untyped error (issue #13)
            raise ConfigError(f"invalid run configuration: {exc}") from exc
