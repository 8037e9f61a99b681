"""Plain backend: the cost of privagg's protocol plumbing over a bare numpy sum.

Anchor: ``np.sum`` of the same float64 vectors. Ratio = privagg round time / numpy time.
"""

from __future__ import annotations

import numpy as np
from _common import emit, parser, timed

import privagg


def main() -> None:
    args = parser(__doc__ or "").parse_args()
    n, size = (5, 100_000) if args.quick else (10, 1_000_000)
    rng = np.random.default_rng(0)
    ups = {f"c{i}": {"w": rng.normal(size=size)} for i in range(n)}
    layout = privagg.Layout.from_arrays(ups["c0"])
    session = privagg.get_backend("plain").setup(layout, max_clients=n)
    res, t_priv = timed(lambda: privagg.run_round(session, ups), repeat=3)
    ref, t_np = timed(lambda: np.sum([u["w"] for u in ups.values()], axis=0), repeat=3)
    err = float(np.max(np.abs(res.aggregate["w"] - ref)))
    emit(
        "plain",
        {
            "clients": n,
            "values": size,
            "privagg_round_s": t_priv,
            "numpy_sum_s": t_np,
            "ratio_vs_numpy": t_priv / t_np,
            "max_abs_error": err,
        },
    )


if __name__ == "__main__":
    main()
