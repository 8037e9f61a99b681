"""The client's local minimum policy: what a SuperNode accepts from the untrusted ServerApp.

The ServerApp names the backend, its options, ``max_clients``, ``max_weight`` and the
layout in every request (the :class:`~fedtrain.flower.material.SessionSpec`). It is
untrusted, so a client never takes those values on faith: before it computes its
update, builds a role or sends a byte for a round, it checks the session against a
:class:`ClientPolicy` and refuses anything weaker with :class:`PolicyError`.

The policy is read **only from the node config** (``flower-supernode --node-config``,
written by the SuperNode's operator), never from the run config or a message (both come
from the ServerApp). Its defaults are safe: they are at least as strict as privagg's own
defaults, so a server that sends no options gets what privagg would use, and a server
that sends weaker ones is refused. An operator may relax a bound (for tests, or a
federation that knowingly accepts a weaker setting) only in the node config.

What is checked, per backend (all values public):

* every backend: the backend is in ``privagg-backends``; ``max_clients`` <=
  ``privagg-max-clients`` (default 1000) and ``max_weight`` <= ``privagg-max-weight``
  (default 1.0); the layout's fingerprint equals ``privagg-layout-fingerprint`` if set;
  the options equal ``privagg-backend-options`` exactly if that is set.
* ``secagg``: ``corruption_rate`` >= ``privagg-min-corruption-rate`` (default 0.1, the
  privagg default; ``corruption_rate=0`` gives threshold ``t = 1``, where one share is
  the secret itself), ``sigma`` >= ``privagg-min-sigma`` (default 40, the privagg
  default) and ``dropout_rate`` <= ``privagg-max-dropout-rate`` (default 1/3, the
  privagg default; a larger assumed dropout lowers the threshold). At stage 0 the
  round's ``SetupRequest`` is checked too: at most ``max_clients`` participants,
  threshold ``t`` >= ``min(privagg-min-threshold, n - 1)`` (default 2) and graph degree
  ``k`` >= ``min(privagg-min-degree, n - 1)`` (default 2) for its ``n`` participants
  (with ``n = 2``, ``t = k = 1`` is all there is: the sum of two reveals the other
  input to either of them), and at least ``privagg-min-participants`` participants
  (default 1: no floor; the floors on ``t`` and ``k`` are capped at ``n - 1``, so a
  server that runs a round of two, this node and one colluder, learns this node's
  input unless the operator sets a floor). A node with ``privagg-identity-directory`` set accepts
  active SecAgg+ only (``active`` true), so a server cannot downgrade it to passive.
* ``ckks``: the preset is in ``privagg-ckks-presets`` (default ``secure,secure-large``:
  ``compact`` and ``test-fast`` have only heuristic flooding) and the resolved
  parameters flood with at least ``privagg-min-ckks-flood-bits`` (default 40) bits (an
  override of a secure preset cannot switch flooding off).
* ``paillier``: the modulus has at least ``privagg-min-paillier-key-bits`` (default
  2048) bits.
* ``plain`` has no security options (it is insecure by design): listing it in
  ``privagg-backends`` is the operator's explicit acceptance.
* any other backend: the policy cannot judge its options, so it is accepted only with
  ``privagg-backend-options`` pinned.

The option values the server leaves out are the backend's own defaults (read from its
constructor's signature), so the policy checks what the session will actually use.

**Differential-privacy floors** (:class:`DPFloors`, the field :attr:`ClientPolicy.dp`).
A ``fedtrain`` run's DP parameters (``privacy`` in the run config's ``fedtrain-run``)
are the ServerApp's choice too. A node's operator can set floors, read only from the
node config like the rest of this policy; a run below one is refused before the node
loads its data or model, trains, or computes a noise share (record level: in
:func:`fedtrain.flower.run_task.client_update`; client level: there and in
:func:`fedtrain.flower.run_task.session_noise`; a task without DP, ``lora`` or
``synthetic``, in the ClientApp before the task runs). Each key unset: no check (the
behaviour before these keys existed).

* ``fedtrain-min-noise-multiplier`` (float >= 0): the run's noise multiplier ``z`` (the
  configured ``privacy.noise_multiplier``, or with ``privacy.calibrate`` the one the
  node calibrates itself from ``privacy.target_epsilon``) must be at least this; a run
  without DP (``privacy.level = "none"``, or a task without DP) has ``z = 0``.
* ``fedtrain-min-dp-clients`` (int >= 1): client level: the run's ``min_clients`` (the
  contributors the noise is sized for, configured or derived from the sampling) must be
  at least this. It is the smallest crowd a release may hold, not a noise floor: each
  node's own share has std ``z C / sqrt(min_clients)``, smaller for a larger value.
* ``fedtrain-require-dp`` (bool, ``true``/``false``): refuse a run without DP.
* ``fedtrain-max-epsilon`` (float > 0): the run must carry a budget
  ``privacy.target_epsilon`` of at most this (a DP run without one, or a run without
  DP, is refused), at a ``privacy.delta`` of at most ``fedtrain-max-delta``.
* ``fedtrain-max-delta`` (float in (0, 1)): the run's ``privacy.delta`` must be at most
  this; with ``fedtrain-max-epsilon`` set and this unset, ``1e-5`` (fedtrain's default
  delta) applies.

There is no clip ceiling: the noise's std is ``z`` times the clip at both levels, so a
larger clip with the same ``z`` has the same epsilon (the clip is a utility choice).
"""

from __future__ import annotations

import hmac
import inspect
import json
import math
from collections.abc import Callable, Mapping
from dataclasses import dataclass, fields
from typing import Any, TypeVar

import privagg
from fedtrain.config import PrivacyConfig
from fedtrain.flower.errors import PolicyError
from fedtrain.flower.material import SessionSpec
from privagg import Layout

__all__ = ["ClientPolicy", "DPFloors", "PolicyError"]

_T = TypeVar("_T")

#: Backends whose options this module knows how to judge.
_JUDGED = frozenset({"plain", "secagg", "ckks", "paillier"})


def _parse_bool_free(kind: Callable[[Any], _T]) -> Callable[[Any], _T]:
    """A converter that refuses bools (``True`` is not the number 1 here)."""

    def convert(value: Any) -> _T:
        if isinstance(value, bool):
            raise TypeError("bool")
        return kind(value)

    return convert


def _names(value: Any) -> frozenset[str]:
    return frozenset(s.strip() for s in str(value).split(",") if s.strip())


#: fedtrain's default ``privacy.delta``: the delta ceiling of a node that sets
#: ``fedtrain-max-epsilon`` and no ``fedtrain-max-delta``
DEFAULT_MAX_DELTA = 1e-5

_RUN = "run config 'fedtrain-run'"


def _finite_float(value: Any) -> float:
    if isinstance(value, bool) or not isinstance(value, (int, float, str)):
        raise TypeError(type(value).__name__)
    out = float(value)
    if not math.isfinite(out):
        raise ValueError("not finite")
    return out


def _strict_int(value: Any) -> int:
    if isinstance(value, bool):
        raise TypeError("bool")
    if isinstance(value, int):
        return value
    if isinstance(value, str) and value.strip().isdigit():
        return int(value.strip())
    raise TypeError(type(value).__name__)


def _strict_bool(value: Any) -> bool:
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "false"):
        return value.lower() == "true"
    raise TypeError(type(value).__name__)


@dataclass(frozen=True)
class DPFloors:
    """A node's floors on a ``fedtrain`` run's differential privacy (see the module
    docstring; node config keys ``fedtrain-<field with dashes>``).

    Attributes:
        min_noise_multiplier: smallest noise multiplier ``z`` accepted, or None.
        min_dp_clients: client level: smallest ``min_clients`` accepted, or None.
        require_dp: refuse a run without DP.
        max_epsilon: largest ``privacy.target_epsilon`` accepted (a run without one is
            refused), or None.
        max_delta: largest ``privacy.delta`` accepted, or None (with ``max_epsilon``
            set: :data:`DEFAULT_MAX_DELTA`).
    """

    min_noise_multiplier: float | None = None
    min_dp_clients: int | None = None
    require_dp: bool = False
    max_epsilon: float | None = None
    max_delta: float | None = None

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> DPFloors:
        """Read the floors from a Flower node config (never from the run config).

        Raises:
            PolicyError: a value of the wrong type or out of range (the message names
                the key).
        """
        rules: dict[str, tuple[Callable[[Any], Any], Callable[[Any], bool], str]] = {
            "min_noise_multiplier": (_finite_float, lambda v: v >= 0, "a float >= 0"),
            "min_dp_clients": (_strict_int, lambda v: v >= 1, "an int >= 1"),
            "require_dp": (_strict_bool, lambda v: True, "true or false"),
            "max_epsilon": (_finite_float, lambda v: v > 0, "a float > 0"),
            "max_delta": (_finite_float, lambda v: 0 < v < 1, "a float in (0, 1)"),
        }
        values: dict[str, Any] = {}
        for name, (convert, ok, want) in rules.items():
            key = "fedtrain-" + name.replace("_", "-")
            if key not in node_config:
                continue
            raw = node_config[key]
            try:
                value = convert(raw)
            except (TypeError, ValueError, OverflowError):
                value = None
            if value is None or not ok(value):
                raise PolicyError(
                    f"node config {key!r} must be {want}, got {str(raw)[:40]!r}"
                )
            values[name] = value
        return cls(**values)

    @property
    def delta_ceiling(self) -> float | None:
        """The largest delta accepted (None: any)."""
        if self.max_delta is not None:
            return self.max_delta
        return DEFAULT_MAX_DELTA if self.max_epsilon is not None else None

    def check_no_dp(self, what: str) -> None:
        """Refuse a run without DP (``what`` names it) if any floor asks for DP.

        Raises:
            PolicyError: ``fedtrain-require-dp``, ``fedtrain-min-noise-multiplier`` > 0
                or ``fedtrain-max-epsilon`` is set.
        """
        if self.require_dp:
            key = "fedtrain-require-dp"
        elif self.min_noise_multiplier:
            key = "fedtrain-min-noise-multiplier"
        elif self.max_epsilon is not None:
            key = "fedtrain-max-epsilon"
        else:
            return
        raise PolicyError(
            f"{what} has no differential privacy; this node's node config {key!r} "
            "asks for it"
        )

    def check_run(
        self,
        privacy: PrivacyConfig,
        *,
        noise_multiplier: float | None = None,
        min_clients: int | None = None,
    ) -> None:
        """Refuse a run whose DP is below these floors.

        Args:
            privacy: the run's ``privacy`` (from the run config).
            noise_multiplier: the run's effective ``z`` when the caller computed it
                (``privacy.calibrate``: the node's own calibration); None: the
                configured one, or (calibrated) no ``z`` check yet.
            min_clients: client level: the run's effective ``min_clients``
                (configured or derived); None: the configured one, if any.

        Raises:
            PolicyError: below a floor (the message names the node config key and
                the run config field).
        """
        level = str(privacy.level)
        if level == "none":
            self.check_no_dp(f"{_RUN} privacy.level = 'none'")
            return
        if self.max_epsilon is not None:
            eps = privacy.target_epsilon
            if eps is None:
                raise PolicyError(
                    f"{_RUN} sets no privacy.target_epsilon (no epsilon budget); this "
                    "node's node config 'fedtrain-max-epsilon' asks for one of at most "
                    f"{self.max_epsilon}"
                )
            if not eps <= self.max_epsilon:
                raise PolicyError(
                    f"{_RUN} privacy.target_epsilon = {eps} exceeds this node's "
                    f"maximum {self.max_epsilon} (node config 'fedtrain-max-epsilon')"
                )
        ceiling = self.delta_ceiling
        if ceiling is not None and not privacy.delta <= ceiling:
            key = (
                "fedtrain-max-delta"
                if self.max_delta is not None
                else ("fedtrain-max-epsilon, with no fedtrain-max-delta")
            )
            raise PolicyError(
                f"{_RUN} privacy.delta = {privacy.delta} exceeds this node's maximum "
                f"{ceiling} (node config {key!r})"
            )
        z = noise_multiplier
        field_ = "the noise multiplier calibrated from privacy.target_epsilon"
        if z is None and not privacy.calibrate:
            z, field_ = privacy.noise_multiplier, "privacy.noise_multiplier"
        floor = self.min_noise_multiplier
        if floor is not None and z is not None and not z >= floor:
            raise PolicyError(
                f"{_RUN} {field_} = {z:.6g} is below this node's floor {floor} "
                "(node config 'fedtrain-min-noise-multiplier')"
            )
        m = privacy.min_clients if min_clients is None else min_clients
        if (
            level == "client"
            and self.min_dp_clients is not None
            and m is not None
            and m < self.min_dp_clients
        ):
            raise PolicyError(
                f"{_RUN} privacy.min_clients = {m} (the contributors the noise is "
                f"sized for) is below this node's floor {self.min_dp_clients} (node "
                "config 'fedtrain-min-dp-clients')"
            )


@dataclass(frozen=True)
class ClientPolicy:
    """A client's minimum requirements on the sessions it takes part in.

    Each field is read from the node config key ``privagg-<field with dashes>``
    (``min_sigma`` from ``privagg-min-sigma``); see the module docstring.

    Attributes:
        backends: backends this client accepts (``privagg-backends``, required).
        backend_options: JSON text of the exact options required, or "" (any options
            that meet the bounds below).
        max_clients: largest ``max_clients`` (and round size) accepted.
        max_weight: largest ``max_weight`` accepted.
        layout_fingerprint: hex of the expected ``Layout.fingerprint``, or "" (any).
        min_corruption_rate: SecAgg+: smallest ``corruption_rate`` accepted.
        min_sigma: SecAgg+: smallest statistical security parameter accepted.
        max_dropout_rate: SecAgg+: largest ``dropout_rate`` accepted.
        min_threshold: SecAgg+: smallest Shamir threshold ``t`` (capped at ``n - 1``).
        min_degree: SecAgg+: fewest graph partners ``k`` (capped at ``n - 1``).
        min_participants: SecAgg+: fewest participants ``n`` in a round's setup.
        ckks_presets: CKKS presets accepted.
        min_ckks_flood_bits: CKKS: smallest ``flood_bits`` accepted.
        min_paillier_key_bits: Paillier: smallest modulus size accepted.
        identity_directory: path of the node's SecAgg+ public-key directory, or "";
            if set, only active SecAgg+ is accepted (a server cannot downgrade a node
            that has identities to the passive variant).
        dp: the node's floors on a ``fedtrain`` run's differential privacy (node
            config keys ``fedtrain-...``, see :class:`DPFloors`).
    """

    backends: frozenset[str] = frozenset()
    backend_options: str = ""
    max_clients: int = 1000
    max_weight: float = 1.0
    layout_fingerprint: str = ""
    min_corruption_rate: float = 0.1
    min_sigma: int = 40
    max_dropout_rate: float = 1 / 3
    min_threshold: int = 2
    min_degree: int = 2
    min_participants: int = 1
    ckks_presets: frozenset[str] = frozenset({"secure", "secure-large"})
    min_ckks_flood_bits: int = 40
    min_paillier_key_bits: int = 2048
    identity_directory: str = ""
    dp: DPFloors = DPFloors()

    @classmethod
    def from_node_config(cls, node_config: Mapping[str, Any]) -> ClientPolicy:
        """Read the policy from a Flower node config (the SuperNode operator's file).

        Args:
            node_config: ``context.node_config``. Never pass the run config: it is the
                ServerApp's.

        Raises:
            PolicyError: ``privagg-backends`` is missing or a value does not convert.
        """
        converters: dict[str, Callable[[Any], Any]] = {
            "backends": _names,
            "ckks_presets": _names,
            "backend_options": str,
            "identity_directory": str,
            "layout_fingerprint": lambda v: str(v).strip().lower(),
            "max_clients": _parse_bool_free(int),
            "min_sigma": _parse_bool_free(int),
            "min_threshold": _parse_bool_free(int),
            "min_degree": _parse_bool_free(int),
            "min_participants": _parse_bool_free(int),
            "min_ckks_flood_bits": _parse_bool_free(int),
            "min_paillier_key_bits": _parse_bool_free(int),
            "max_weight": _parse_bool_free(float),
            "min_corruption_rate": _parse_bool_free(float),
            "max_dropout_rate": _parse_bool_free(float),
        }
        values: dict[str, Any] = {"dp": DPFloors.from_node_config(node_config)}
        for f in fields(cls):
            if f.name == "dp":
                continue
            key = "privagg-" + f.name.replace("_", "-")
            if key not in node_config:
                continue
            try:
                values[f.name] = converters[f.name](node_config[key])
            except (TypeError, ValueError, OverflowError) as exc:
                raise PolicyError(
                    f"node config {key!r}: bad value {node_config[key]!r}"
                ) from exc
        policy = cls(**values)
        if not policy.backends:
            raise PolicyError(
                "node config 'privagg-backends' (comma-separated backends this client "
                "accepts) is missing or empty"
            )
        for name in ("max_weight", "min_corruption_rate", "max_dropout_rate"):
            if not math.isfinite(getattr(policy, name)):
                raise PolicyError(f"node config policy {name!r} must be finite")
        return policy

    # -- the session, before anything is computed --------------------------------------
    def check_session(self, spec: SessionSpec, layout: Layout) -> None:
        """Refuse a session weaker than this policy (before the round starts).

        Raises:
            PolicyError: the session is outside the policy.
            privagg.ConfigurationError: the options do not make a valid backend.
        """
        if spec.backend not in self.backends:
            raise PolicyError(
                f"this client accepts backends {sorted(self.backends)} (node config "
                f"'privagg-backends'), the server asked for {spec.backend!r}"
            )
        if self.backend_options:
            if _pinned_options(self.backend_options) != dict(spec.options):
                raise PolicyError(
                    "the server's backend options differ from 'privagg-backend-options'"
                )
        elif spec.backend not in _JUDGED:
            raise PolicyError(
                f"backend {spec.backend!r}: this client cannot judge its options; pin "
                "them in node config 'privagg-backend-options' to accept it"
            )
        if spec.max_clients > self.max_clients:
            raise PolicyError(
                f"max_clients {spec.max_clients} exceeds this client's limit "
                f"{self.max_clients} (node config 'privagg-max-clients')"
            )
        if not spec.max_weight <= self.max_weight:
            raise PolicyError(
                f"max_weight {spec.max_weight} exceeds this client's limit "
                f"{self.max_weight} (node config 'privagg-max-weight')"
            )
        if self.layout_fingerprint and not hmac.compare_digest(
            layout.fingerprint.hex(), self.layout_fingerprint
        ):
            raise PolicyError(
                "the server's layout differs from node config 'privagg-layout-fingerprint'"
            )
        if spec.backend in _JUDGED:
            backend = spec.backend_object()  # validates the options
            judge = {
                "secagg": self._check_secagg,
                "ckks": self._check_ckks,
                "paillier": self._check_paillier,
            }.get(spec.backend)
            if judge is not None:
                judge(backend, spec.options)

    def _check_secagg(self, backend: object, options: Mapping[str, Any]) -> None:
        if self.identity_directory and _option(backend, options, "active") is not True:
            raise PolicyError(
                "this node has a SecAgg+ identity directory (node config "
                "'privagg-identity-directory'): it takes part in active SecAgg+ only"
            )
        corruption = float(_option(backend, options, "corruption_rate"))
        sigma = int(_option(backend, options, "sigma"))
        dropout = float(_option(backend, options, "dropout_rate"))
        if not corruption >= self.min_corruption_rate:
            raise PolicyError(
                f"secagg corruption_rate {corruption} is below this client's minimum "
                f"{self.min_corruption_rate} (node config 'privagg-min-corruption-rate')"
            )
        if sigma < self.min_sigma:
            raise PolicyError(
                f"secagg sigma {sigma} is below this client's minimum {self.min_sigma} "
                "(node config 'privagg-min-sigma')"
            )
        if not dropout <= self.max_dropout_rate:
            raise PolicyError(
                f"secagg dropout_rate {dropout} is above this client's maximum "
                f"{self.max_dropout_rate} (node config 'privagg-max-dropout-rate')"
            )

    def _check_ckks(self, backend: object, options: Mapping[str, Any]) -> None:
        preset = str(getattr(backend, "preset", ""))
        params = getattr(backend, "params", None)
        flood = getattr(params, "flood_bits", None)
        if preset not in self.ckks_presets:
            raise PolicyError(
                f"ckks preset {preset!r} is not in this client's accepted presets "
                f"{sorted(self.ckks_presets)} (node config 'privagg-ckks-presets')"
            )
        if not isinstance(flood, int) or flood < self.min_ckks_flood_bits:
            raise PolicyError(
                f"ckks flood_bits {flood!r} is below this client's minimum "
                f"{self.min_ckks_flood_bits} (node config 'privagg-min-ckks-flood-bits')"
            )

    def _check_paillier(self, backend: object, options: Mapping[str, Any]) -> None:
        bits = getattr(backend, "effective_key_bits", None)
        if not isinstance(bits, int) or bits < self.min_paillier_key_bits:
            raise PolicyError(
                f"paillier key size {bits!r} is below this client's minimum "
                f"{self.min_paillier_key_bits} (node config "
                "'privagg-min-paillier-key-bits')"
            )

    # -- the round, at stage 0 -------------------------------------------------------------
    def check_secagg_setup(self, request: bytes) -> None:
        """Check a SecAgg+ stage-0 request (the round's participants, degree, threshold).

        The client role checks that ``(k, t)`` is what the (already policy-checked)
        options give for ``n`` participants; this adds the policy's absolute floors.

        Raises:
            PolicyError: too many or too few participants, or ``t`` / ``k`` below the
                floor (also when the request is not a SecAgg+ setup request: nothing
                is checked, nothing is sent).
        """
        try:
            req = privagg.SetupRequest.from_bytes(request)
        except privagg.PrivaggError as exc:
            raise PolicyError(
                "the round's first request is not a SecAgg+ setup request"
            ) from exc
        n = len(req.participants)
        if n > self.max_clients:
            raise PolicyError(
                f"the round has {n} participants, more than this client's limit "
                f"{self.max_clients} (node config 'privagg-max-clients')"
            )
        if n < self.min_participants:
            raise PolicyError(
                f"the round has {n} participants, fewer than this client's minimum "
                f"{self.min_participants} (node config 'privagg-min-participants')"
            )
        dp_floor = self.dp.min_dp_clients
        if dp_floor is not None and n < dp_floor:
            # the noise share is sized for >= dp_floor contributors: a round with
            # fewer would release a sum with less noise than the node's floor
            raise PolicyError(
                f"the round has {n} participants, fewer than this node's DP floor "
                f"{dp_floor} (node config 'fedtrain-min-dp-clients')"
            )
        floor_t = min(self.min_threshold, max(n - 1, 1))
        floor_k = min(self.min_degree, max(n - 1, 1))
        if req.threshold < floor_t:
            raise PolicyError(
                f"the round's threshold t={req.threshold} for n={n} is below this "
                f"client's minimum {floor_t} (node config 'privagg-min-threshold')"
            )
        if req.degree < floor_k:
            raise PolicyError(
                f"the round's graph degree k={req.degree} for n={n} is below this "
                f"client's minimum {floor_k} (node config 'privagg-min-degree')"
            )


def _pinned_options(text: str) -> Any:
    """Parse the pinned options (JSON object text) from the node config.

    Raises:
        PolicyError: not a JSON object.
    """
    try:
        value = json.loads(text)
    except (ValueError, RecursionError) as exc:
        raise PolicyError("node config 'privagg-backend-options' is not JSON") from exc
    if not isinstance(value, dict):
        raise PolicyError("node config 'privagg-backend-options' must be a JSON object")
    return value


def _option(backend: object, options: Mapping[str, Any], name: str) -> Any:
    """The value the backend uses for ``name``: the server's, else the default."""
    if name in options:
        return options[name]
    param = inspect.signature(type(backend)).parameters.get(name)
    if param is None or param.default is inspect.Parameter.empty:
        raise PolicyError(
            f"backend {type(backend).__name__}: cannot tell which {name!r} it uses"
        )
    return param.default
