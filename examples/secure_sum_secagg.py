"""Secure sum with SecAgg+ (one untrusted server), surviving dropouts.

Run: python examples/secure_sum_secagg.py

Twenty clients each hold a small model update. Two clients vanish after sharing their
keys (stage 2) and one after uploading its masked update (stage 3); the server still
recovers the exact sum of the updates it received, and learns nothing else.
"""

from __future__ import annotations

import numpy as np

import privagg


def main() -> None:
    rng = np.random.default_rng(
        0
    )  # test data only; privagg's own randomness is a CSPRNG
    updates = {
        f"client-{i:02d}": {
            "dense.weight": rng.uniform(-0.5, 0.5, (16, 8)).astype(np.float32),
            "dense.bias": rng.uniform(-0.5, 0.5, 8).astype(np.float32),
        }
        for i in range(20)
    }
    backend = privagg.get_backend("secagg", bound=1.0)  # active variant, sparse graph
    layout = privagg.Layout.from_arrays(updates["client-00"])
    session = backend.setup(layout, max_clients=len(updates))
    g = session.graph(len(updates))
    print(f"graph: degree k={g.degree}, threshold t={g.threshold}, complete={g.full}")

    result = privagg.run_round(
        session, updates, dropouts={2: {"client-03", "client-11"}, 3: {"client-07"}}
    )
    ref = {
        name: sum(updates[c][name].astype(np.float64) for c in result.contributors)
        for name in layout.names
    }
    err = max(float(np.max(np.abs(result.aggregate[n] - ref[n]))) for n in layout.names)
    print(f"contributors: {len(result.contributors)}, dropped: {list(result.dropped)}")
    print(
        f"max |secure sum - plain sum| = {err:.2e} "
        f"(declared tolerance {backend.tolerance(n_clients=20, max_abs=0.5):.2e})"
    )
    print(f"bytes uploaded per client: {max(result.bytes_sent.values())}")


if __name__ == "__main__":
    main()
