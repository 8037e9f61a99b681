"""Secure sum with additive secret sharing among three non-colluding servers.

Run: python examples/secure_sum_additive.py

Each client splits its update into three additive shares (one ring vector for the
aggregator, who is server 0, and a 32-byte encrypted PRG seed for each of the other two
servers). Each server sums its shares; only the result holder sees the total.
"""

from __future__ import annotations

import numpy as np

import privagg


def main() -> None:
    rng = np.random.default_rng(1)  # test data only
    updates = [{"w": rng.uniform(-1, 1, 1000)} for _ in range(10)]
    total = privagg.secure_sum(updates, backend="additive", n_servers=3, bound=1.0)
    ref = np.sum([u["w"] for u in updates], axis=0)
    print(f"max |secure sum - plain sum| = {np.max(np.abs(total['w'] - ref)):.2e}")

    backend = privagg.get_backend("additive", n_servers=3)
    session = backend.setup(privagg.Layout.from_arrays(updates[0]), max_clients=10)
    print("extra servers:", sorted(session.servers(0)))
    named = {f"c{i}": u for i, u in enumerate(updates)}
    result = privagg.run_round(session, named, dropouts={0: {"c4"}})
    print(f"c4 dropped; contributors: {list(result.contributors)}")


if __name__ == "__main__":
    main()
