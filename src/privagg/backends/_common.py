"""Small pieces the backends' roles share.

* :class:`FinishedResult`: an aggregator's ``done`` / ``result()`` pair;
* :func:`noise_descriptor`: what a one-shot backend's ``params_id`` binds of the
  clients' DP noise share.
"""

from __future__ import annotations

from privagg.envelope import PayloadWriter
from privagg.errors import ProtocolError
from privagg.protocols import NoiseShare

__all__ = ["FinishedResult", "noise_descriptor"]


class FinishedResult:
    """An aggregator's finished round: ``done`` and the result for the holder."""

    _result: bytes | None = None

    @property
    def done(self) -> bool:
        """True once the round's result is ready."""
        return self._result is not None

    def result(self) -> bytes:
        """The round's result, for the result holder.

        Raises:
            ProtocolError: the round has not finished.
        """
        if self._result is None:
            raise ProtocolError("the round has not finished")
        return self._result


def noise_descriptor(noise: NoiseShare | None) -> bytes:
    """What ``params_id`` binds of the DP noise share: its type and its ``stddev``."""
    w = PayloadWriter()
    if noise is None:
        return w.text("none").getvalue()
    t = type(noise)
    stddev = getattr(noise, "stddev", None)
    w.text(f"{t.__module__}.{t.__qualname__}")
    if isinstance(stddev, (int, float)) and not isinstance(stddev, bool):
        return w.u8(1).f64(float(stddev)).getvalue()
    return w.u8(0).getvalue()
