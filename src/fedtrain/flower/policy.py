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
from fedtrain.flower.errors import PolicyError
from fedtrain.flower.material import SessionSpec
from privagg import Layout

__all__ = ["ClientPolicy", "PolicyError"]

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
        values: dict[str, Any] = {}
        for f in fields(cls):
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
