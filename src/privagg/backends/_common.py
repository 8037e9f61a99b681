"""Small pieces the backends' roles share.

* :class:`FinishedResult`: an aggregator's ``done`` / ``result()`` pair, and the rule
  that a round ends at its first refusal (:meth:`FinishedResult._run_stage`);
* :func:`noise_descriptor`: what a one-shot backend's ``params_id`` binds of the
  clients' DP noise share.
"""

from __future__ import annotations

import decimal
import math
import numbers
from collections.abc import Callable, Mapping

from privagg.envelope import PayloadWriter
from privagg.errors import (
    ConfigurationError,
    InsufficientParticipantsError,
    ProtocolError,
)
from privagg.protocols import NoiseShare

__all__ = ["FinishedResult", "noise_descriptor"]


class FinishedResult:
    """An aggregator's finished (or aborted) round: ``done`` and the result for the holder.

    A round ends at its first refusal: once a batch of replies is refused (too few
    contributors, or any other error raised while the batch is read), every later
    ``receive`` and ``result`` call raises :class:`InsufficientParticipantsError`
    (when the refusal was one) or :class:`ProtocolError`, and the aggregator forgets
    what it had of the round (:meth:`_forget`: shares, partial or masked sums, keys);
    only its report of the clients it rejected (ids and error types) stays. A batch refused by the routing checks
    made before anything is read (a reply from a party that was not asked, a call out
    of order) is not a refusal of the round: nothing was read or changed.
    """

    _result: bytes | None = None
    _aborted: type[ProtocolError] | None = None

    @property
    def done(self) -> bool:
        """True once the round's result is ready."""
        return self._result is not None

    def result(self) -> bytes:
        """The round's result, for the result holder.

        Raises:
            InsufficientParticipantsError, ProtocolError: the round was aborted.
            ProtocolError: the round has not finished.
        """
        self._check_not_aborted()
        if self._result is None:
            raise ProtocolError("the round has not finished")
        return self._result

    def _check_not_aborted(self) -> None:
        """Raise the aborted round's error family if a batch was refused before."""
        if self._aborted is not None:
            raise self._aborted(
                "this round was aborted by an earlier refusal; its aggregator takes "
                "no more replies and has no result (start a new round)"
            )

    def _run_stage(
        self,
        step: Callable[[Mapping[str, bytes]], dict[str, bytes]],
        replies: Mapping[str, bytes],
    ) -> dict[str, bytes]:
        """``step(replies)``; any error it raises aborts the round for good."""
        try:
            return step(replies)
        except Exception as exc:
            self._aborted = (
                InsufficientParticipantsError
                if isinstance(exc, InsufficientParticipantsError)
                else ProtocolError
            )
            self._result = None
            self._forget()
            raise

    def _forget(self) -> None:
        """Drop what the aggregator holds of an aborted round (subclasses add theirs)."""


def noise_descriptor(noise: NoiseShare | None) -> bytes:
    """What ``params_id`` binds of the DP noise share: its type and its ``stddev``."""
    w = PayloadWriter()
    if noise is None:
        return w.text("none").getvalue()
    t = type(noise)
    try:  # a third-party share's property may raise anything
        stddev = getattr(noise, "stddev", None)
    except Exception as exc:
        raise ConfigurationError(
            f"the noise share {t.__qualname__}: its stddev cannot be read"
        ) from exc
    w.text(f"{t.__module__}.{t.__qualname__}")
    if isinstance(stddev, numbers.Real | decimal.Decimal) and not isinstance(
        stddev, bool
    ):
        # any real number (numpy floats, Fraction, Decimal) is bound by its value as
        # a double: a plain float is encoded as before
        try:
            value = float(stddev)
        except (OverflowError, ValueError, ArithmeticError, TypeError) as exc:
            raise ConfigurationError(
                f"the noise share {t.__qualname__}: stddev is not a finite double"
            ) from exc
        if not math.isfinite(value):
            raise ConfigurationError(
                f"the noise share {t.__qualname__}: stddev is not a finite double"
            )
        return w.u8(1).f64(value).getvalue()
    return w.u8(0).getvalue()
