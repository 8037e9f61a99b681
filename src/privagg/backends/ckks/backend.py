"""The CKKS backend: codecs of the one-shot roles, sessions, dealing and loading."""

from __future__ import annotations

import math
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, ClassVar, NoReturn

import numpy as np

from privagg._oneshot import OneShotSession
from privagg._rng import Rng, SystemRng
from privagg.backends._ckks_params import PRESETS
from privagg.backends._common import noise_descriptor
from privagg.backends.ckks._pool import _decrypt_packed, _encrypt_packed
from privagg.backends.ckks._release import (
    _check_count,
    _check_release_range,
    _check_values,
    _FloodSampler,
    _round_release,
)
from privagg.backends.ckks._sealwrap import _BLOCK
from privagg.backends.ckks._wireformat import (
    _MAX_CONTRIBUTIONS,
    _body_buffer,
    _read_body,
)
from privagg.backends.ckks.keys import (
    CkksPublicContext,
    CkksSecretContext,
    keygen,
)
from privagg.distribution import Dealing, DealtMaterial
from privagg.encoding import noise_headroom
from privagg.envelope import (
    PayloadWriter,
    Scheme,
)
from privagg.errors import (
    ConfigurationError,
    DeserializationError,
    EncodingOverflowError,
    MissingKeyError,
    ParameterMismatchError,
)
from privagg.keys import (
    NoProtection,
    Protection,
    fingerprint,
)
from privagg.layout import FloatVector, Layout
from privagg.protocols import NoiseShare, check_setup_args


# -- codecs ----------------------------------------------------------------------------------
@dataclass
class _ClientCodec:
    context: CkksPublicContext
    size: int
    max_weight: float
    threads: int | None
    noise: NoiseShare | None

    def protect(self, update: FloatVector, weight: float, rng: Rng) -> bytes:
        params = self.context.params
        v = np.asarray(update, dtype=np.float64).reshape(-1)
        if v.size != self.size:
            raise ParameterMismatchError(
                f"update has {v.size} values, layout has {self.size}"
            )
        if not np.isfinite(v).all():
            raise ConfigurationError("CKKS cannot encrypt NaN or infinite values")
        if not (math.isfinite(weight) and 0 <= weight <= self.max_weight * (1 + 1e-12)):
            raise ConfigurationError(
                f"weight must be in [0, {self.max_weight}], got {weight}"
            )
        _check_values(v, params, 1.0)
        v = weight * v
        if self.noise is not None:
            v = v + self.noise.sample_real(v.size, rng=rng)
            if not np.isfinite(v).all():
                raise ConfigurationError("DP noise produced non-finite values")
        st = self.context.seal_state()
        buf, room = _body_buffer(1, self.size, -(-self.size // st.n) * st.ct_bytes)
        _encrypt_packed(self.context, v, self.threads, room)
        del v, room  # the weighted (and noised) copy is not needed while copying out
        return bytes(buf)


@dataclass
class _CombineCodec:
    context: CkksPublicContext
    size: int
    per_contribution: float = 1.0  # max |weighted value| + DP noise, per contribution
    max_clients: int = _MAX_CONTRIBUTIONS

    def combine(self, bodies: Sequence[bytes | memoryview]) -> bytes:
        """Sum block by block modulo each prime; validates every body first.

        ``bodies`` are client contributions (in contributor-id order, as the one-shot
        aggregator passes them): each must carry ``count == 1``. Before this check a
        single client could claim any count up to 2**40 and so make ``combine`` raise
        (modulus overflow) or the holder refuse the round (count vs contributor list).

        Raises:
            DeserializationError: a malformed body, another size/parameter set, or a
                contribution whose count is not 1 (its position is named).
            EncodingOverflowError: more bodies than the session's ``max_clients`` (its
                headroom was sized for that many), or a sum the modulus cannot hold.
        """
        if len(bodies) > self.max_clients:
            raise EncodingOverflowError(
                f"{len(bodies)} contributions exceed the session's max_clients="
                f"{self.max_clients} (the headroom was checked for that many)"
            )
        st = self.context.seal_state()
        parsed = [_read_body(b, st, self.size) for b in bodies]
        if not parsed:
            raise DeserializationError()
        for i, (c, _, _) in enumerate(parsed):
            if c != 1:
                raise DeserializationError(
                    f"contribution #{i} of {len(parsed)} (contributors in id order) "
                    f"claims {c} contributions; a client contribution must have count 1"
                )
        _check_count(
            self.context.params, sum(c for c, _, _ in parsed), self.per_contribution
        )
        n_ct = parsed[0][2]
        cb = st.ct_bytes
        count = sum(c for c, _, _ in parsed)
        if count > _MAX_CONTRIBUTIONS:
            raise DeserializationError()
        buf, out = _body_buffer(count, self.size, n_ct * cb)
        for a in range(0, n_ct, _BLOCK):
            b = min(a + _BLOCK, n_ct)
            acc = st.unpack(parsed[0][1][a * cb : b * cb], b - a)
            for _, packed, _ in parsed[1:]:
                st.add_into(acc, st.unpack(packed[a * cb : b * cb], b - a))
            out[a * cb : b * cb] = st.pack(acc)
        del out
        return bytes(buf)


class _RecoverCodec:
    """Holder side: decrypt, check the contribution count, flood and round."""

    __slots__ = ("_ctx", "_max_clients", "_per", "_rng", "_size", "_threads")

    def __init__(
        self,
        ctx: CkksSecretContext,
        size: int,
        threads: int | None,
        rng: Rng,
        per_contribution: float = 1.0,
        max_clients: int = _MAX_CONTRIBUTIONS,
    ) -> None:
        if not isinstance(ctx, CkksSecretContext):
            raise MissingKeyError(
                "recovering a CKKS aggregate needs the secret context"
            )
        self._ctx = ctx
        self._size = size
        self._threads = threads
        self._rng = rng
        self._per = per_contribution
        self._max_clients = max_clients

    def recover(self, body: bytes | memoryview, n_contributions: int) -> FloatVector:
        if n_contributions > self._max_clients:
            raise EncodingOverflowError(
                f"{n_contributions} contributions exceed the session's max_clients="
                f"{self._max_clients}"
            )
        count, packed, n_ct = _read_body(body, self._ctx.seal_state(), self._size)
        if count != n_contributions:
            raise DeserializationError(
                "aggregate count does not match its contributor list"
            )
        _check_count(self._ctx.params, count, self._per)
        params = self._ctx.params
        flood = _FloodSampler(params, count, n_ct, self._rng)  # drawn block by block
        raw = _decrypt_packed(self._ctx, packed, n_ct, self._size, self._threads, flood)
        _check_release_range(params, raw, count, self._per)
        return _round_release(params, raw, count)

    def __repr__(self) -> str:
        return f"<CKKS recover codec {self._ctx.secret_key!r}>"

    def __reduce__(self) -> NoReturn:
        raise TypeError("the CKKS holder holds a secret key and cannot be pickled")


def _no_holder() -> NoReturn:
    raise MissingKeyError(
        "this CKKS session holds only the public context: only the result holder "
        "(built from the secret context) can recover"
    )


#: The dealt material of CKKS (kept name): privagg's one :class:`DealtMaterial`.
CkksMaterial = DealtMaterial


# -- backend ---------------------------------------------------------------------------------
class CkksBackend:
    """CKKS (TenSEAL/SEAL) additive aggregation.

    Args:
        preset: "secure" (default: N=4096, 22.25 bytes/value, 2**40
            coefficient-domain noise flooding, sums up to 2**10.5), "secure-large"
            (N=8192, 30 bytes/value, same flooding, sums up to 2**36.5), "compact"
            (N=4096, 15 bytes/value, heuristic flooding: not for releases beyond the
            key holder) or "test-fast".
        poly_modulus_degree: overrides the preset (custom path; validated, see
            :class:`CkksParams`), like the next five.
        data_bits: overrides the preset.
        special_bits: overrides the preset.
        scale_bits: overrides the preset.
        value_bound: overrides the preset.
        flood_bits: overrides the preset.
        threads: worker processes for large updates (None: all cores; 1: inline).
    """

    name: ClassVar[str] = "ckks"
    value_bound_option: ClassVar[str] = "value_bound"
    """The constructor option that sets :attr:`value_bound` (:class:`privagg.BoundOption`)."""

    def __init__(
        self,
        *,
        preset: str = "secure",
        poly_modulus_degree: int | None = None,
        data_bits: Sequence[int] | None = None,
        special_bits: int | str | None = "preset",
        scale_bits: int | None = None,
        value_bound: float | None = None,
        flood_bits: int | str | None = "preset",
        threads: int | None = None,
    ) -> None:
        if not isinstance(preset, str) or preset not in PRESETS:
            raise ConfigurationError(
                f"preset must be one of {sorted(PRESETS)}, got {preset!r}"
            )
        if threads is not None and (
            isinstance(threads, bool) or not isinstance(threads, int) or threads < 1
        ):
            raise ConfigurationError(
                f"threads must be None or an int >= 1, got {threads!r}"
            )
        changes: dict[str, Any] = {}
        if poly_modulus_degree is not None:
            changes["poly_modulus_degree"] = poly_modulus_degree
        if data_bits is not None:
            if isinstance(data_bits, (str, bytes)) or not isinstance(
                data_bits, Sequence
            ):
                raise ConfigurationError(
                    f"data_bits must be a sequence of ints, got {data_bits!r}"
                )
            changes["data_bits"] = tuple(data_bits)
        if special_bits != "preset":
            changes["special_bits"] = special_bits
        if scale_bits is not None:
            changes["scale_bits"] = scale_bits
        if value_bound is not None:
            changes["value_bound"] = value_bound
        if flood_bits != "preset":
            changes["flood_bits"] = flood_bits
        self.params = (
            PRESETS[preset].with_options(**changes) if changes else PRESETS[preset]
        )
        self.preset = preset
        self.threads = threads

    @property
    def value_bound(self) -> float | None:
        """Largest |value| per coordinate, before weighting."""
        return float(self.params.value_bound)

    def tolerance(self, *, n_clients: int, max_abs: float) -> float:
        """Declared max abs error of a released sum (see :meth:`CkksParams.tolerance`)."""
        return self.params.tolerance(n_clients, max_abs)

    def keygen(self) -> CkksSecretContext:
        """A fresh key pair for these parameters (run once, by the result holder).

        Returns:
            The holder's :class:`CkksSecretContext`; hand only its ``.public``
            (:class:`CkksPublicContext`) to clients and the aggregator.
        """
        return keygen(self.params)

    def session_check(
        self,
        layout: Layout,
        *,
        max_clients: int,
        max_weight: float = 1.0,
        noise: NoiseShare | None = None,
    ) -> float:
        """Validate session options without touching keys.

        Args:
            layout: the update layout.
            max_clients: most contributions one aggregate may hold.
            max_weight: largest client weight.
            noise: the clients' DP noise share, if any.

        Returns:
            The DP noise headroom for ``max_clients`` (0.0 without noise).

        Raises:
            ConfigurationError: bad layout, ``max_clients`` or ``max_weight``, or sums
                that could wrap the modulus (max_clients * max_weight * value_bound,
                plus the noise headroom, too large).
        """
        if not isinstance(layout, Layout):
            raise ConfigurationError("layout must be a privagg.Layout")
        max_clients, max_weight = check_setup_args(max_clients, max_weight)
        p = self.params
        extra = noise_headroom(noise, max_clients, dim=layout.size)
        p.check_headroom(
            max_clients * float(max_weight) * p.value_bound + extra, max_clients
        )
        return extra

    def session(
        self,
        layout: Layout,
        context: CkksPublicContext | CkksSecretContext,
        *,
        max_clients: int,
        max_weight: float = 1.0,
        noise: NoiseShare | None = None,
        rng: Rng | None = None,
    ) -> OneShotSession:
        """A session for one party from its own key material.

        Clients and the aggregator pass the :class:`CkksPublicContext`: their session
        encrypts and combines, and its ``holder()`` raises
        :class:`~privagg.MissingKeyError`. Only the result holder passes the
        :class:`CkksSecretContext`. ``params_id`` depends on the *public* key only (plus
        parameters, layout and options), so sessions built separately by each party
        from the same key pair agree and their messages interoperate. Every party must
        use the same backend options, layout, ``max_clients``, ``max_weight`` and
        noise: all of them enter ``params_id``.

        Args:
            layout: the update layout.
            context: the public context (clients, aggregator) or the secret context
                (result holder).
            max_clients: most contributions one aggregate may hold; ``combine``
                refuses more.
            max_weight: largest client weight.
            noise: the clients' DP noise share, if any.
            rng: randomness for the holder's flooding noise (default: the OS).

        Returns:
            A one-shot session.

        Raises:
            ConfigurationError: bad options or a ``context`` of another type, or sums
                that could wrap the modulus.
            ParameterMismatchError: ``context`` uses other CKKS parameters than this
                backend.
        """
        if isinstance(context, CkksSecretContext):
            secret: CkksSecretContext | None = context
            public = context.public
        elif isinstance(context, CkksPublicContext):
            secret, public = None, context
        else:
            raise ConfigurationError(
                "context must be a CkksPublicContext or a CkksSecretContext, got "
                f"{type(context).__name__}"
            )
        if public.params != self.params:
            raise ParameterMismatchError("the given CKKS keys use other parameters")
        extra = self.session_check(
            layout, max_clients=max_clients, max_weight=max_weight, noise=noise
        )
        p = self.params
        # Bound to params_id (v2): the key and CKKS parameters (public.fingerprint covers
        # CkksParams.to_bytes: N, primes, scale, value_bound, flood_bits), the layout,
        # and the session options every party must share: max_clients, max_weight and
        # the DP noise configuration (type, stddev, headroom for max_clients).
        session_options = (
            PayloadWriter()
            .int_big(max_clients)
            .f64(float(max_weight))
            .f64(float(extra))
            .blob(noise_descriptor(noise))
            .getvalue()
        )
        params_id = fingerprint(
            b"ckks/v2", public.fingerprint, layout.fingerprint, session_options
        )
        size = layout.size
        client = _ClientCodec(public, size, float(max_weight), self.threads, noise)
        per = float(max_weight) * p.value_bound + extra / max_clients
        combine = _CombineCodec(public, size, per, max_clients)
        recover: Callable[[], _RecoverCodec]
        if secret is None:
            recover = _no_holder
        else:
            keys = secret
            recover_rng = rng or SystemRng()

            def recover() -> _RecoverCodec:
                return _RecoverCodec(
                    keys, size, self.threads, recover_rng, per, max_clients
                )

        session = OneShotSession(
            "ckks",
            Scheme.CKKS,
            layout,
            params_id,
            client,
            combine,
            recover,
            max_weight=float(max_weight),
        )
        if secret is not None:
            session.ckks_keys = secret  # type: ignore[attr-defined]
        return session

    def setup(
        self,
        layout: Layout,
        *,
        max_clients: int,
        max_weight: float = 1.0,
        noise: NoiseShare | None = None,
        rng: Rng | None = None,
        keys: CkksSecretContext | None = None,
    ) -> OneShotSession:
        """Generate keys (or use ``keys``) and build every role in one process.

        Raises:
            ConfigurationError: bad max_clients/max_weight, or sums that could wrap
                the modulus (max_clients * max_weight * value_bound too large).
            ParameterMismatchError: ``keys`` use other CKKS parameters.
        """
        # validate the cheap things before generating a key
        self.session_check(
            layout, max_clients=max_clients, max_weight=max_weight, noise=noise
        )
        if keys is None:
            keys = keygen(self.params)
        return self.session(
            layout,
            keys,
            max_clients=max_clients,
            max_weight=max_weight,
            noise=noise,
            rng=rng,
        )

    # -- deployment: one role per process -----------------------------------------------
    def dealing(self) -> Dealing:
        """``DEALER``: the holder's secret key must be made once and handed out."""
        return Dealing.DEALER

    def deal(
        self,
        layout: Layout,
        party_ids: Sequence[str],
        *,
        max_clients: int,
        max_weight: float = 1.0,
        protection: Protection | None = None,
    ) -> DealtMaterial:
        """Make every role's material for a deployment (the operator's one-time step).

        Clients and the aggregator get the :class:`CkksPublicContext` (parameters and
        public key: no secret). The result holder gets the :class:`CkksSecretContext`
        exported with ``protection``; without one it is exported with an explicit
        :class:`~privagg.NoProtection`, so write it only to a 0600 file (as
        ``fedtrain.flower.material.deal`` does) on the holder's machine.

        Args:
            layout: the update layout (validated against the options; keys do not
                depend on it).
            party_ids: the client parties (non-empty, unique).
            max_clients: the sessions' ``max_clients`` (validated before keygen).
            max_weight: the sessions' ``max_weight``.
            protection: how to export the holder's secret key (default: none, the
                file mode protects it).

        Returns:
            One blob per role.

        Raises:
            ConfigurationError: empty or repeated party ids, or bad session options.
        """
        if not party_ids or len(set(party_ids)) != len(party_ids):
            raise ConfigurationError("party_ids must be non-empty and unique")
        self.session_check(layout, max_clients=max_clients, max_weight=max_weight)
        secret = self.keygen()
        public = secret.public.to_bytes()
        # An explicit protection choice: NoProtection only when the caller gave none.
        holder = secret.to_bytes(protection=protection or NoProtection())
        return DealtMaterial(public, holder, dict.fromkeys(party_ids, public))

    def load_role(
        self,
        layout: Layout,
        role: str,
        party_id: str | None,
        material: bytes,
        *,
        max_clients: int,
        max_weight: float = 1.0,
        protection: Protection | None = None,
        rng: Rng | None = None,
        noise: NoiseShare | None = None,
    ) -> OneShotSession:
        """A session for one role, built from that role's material only.

        ``"aggregator"`` and ``"client"`` accept only a public context: given the
        holder's file they raise instead of loading the secret key. ``"holder"``
        needs the secret context.

        Args:
            layout: the update layout.
            role: ``"aggregator"``, ``"client"`` or ``"holder"``.
            party_id: the client's party id (required for ``"client"``).
            material: this role's blob from :meth:`deal`.
            max_clients: as given to :meth:`deal`.
            max_weight: as given to :meth:`deal`.
            protection: how the holder's secret was exported (default: none).
            rng: randomness for the holder's flooding noise (default: the OS).
            noise: the clients' DP noise share, as for :meth:`setup`: every role
                must be given the same one (it enters ``params_id`` and the
                headroom); only a client adds it.

        Returns:
            A session; only ``role``'s method is usable (the aggregator's and the
            clients' ``holder()`` raise :class:`~privagg.MissingKeyError`).

        Raises:
            ConfigurationError: an unknown role, or a client without a party id.
            DeserializationError: malformed material, or secret material given to the
                aggregator or a client.
            MissingKeyError: the holder was given public material.
            ParameterMismatchError: material for other CKKS parameters.
        """
        context: CkksPublicContext | CkksSecretContext
        if role in ("aggregator", "client"):
            if role == "client" and not party_id:
                raise ConfigurationError("a CKKS client role needs its party id")
            try:
                context = CkksPublicContext.from_bytes(material)
            except DeserializationError:
                raise DeserializationError(
                    f"the CKKS {role} material must be a public context "
                    "(parameters + public key only)"
                ) from None
        elif role == "holder":
            context = CkksSecretContext.from_bytes(
                material, protection=protection or NoProtection()
            )
        else:
            raise ConfigurationError(
                f"role must be aggregator, client or holder, got {role!r}"
            )
        return self.session(
            layout,
            context,
            max_clients=max_clients,
            max_weight=max_weight,
            noise=noise,
            rng=rng,
        )

    def __repr__(self) -> str:
        return f"CkksBackend(preset={self.preset!r}, params={self.params!r})"
