"""The smallest privagg program: sum three updates with the plaintext reference backend.

Run: python examples/secure_sum_plain.py
Swap ``backend="plain"`` for "ckks", "paillier", "secagg" or "additive" to protect them.
"""

from __future__ import annotations

import numpy as np

import privagg


def main() -> None:
    rng = np.random.default_rng(0)  # test data only; privagg draws its own secrets
    updates = [
        {
            "lora_B": rng.normal(size=(8, 4)).astype(np.float32),
            "bias": rng.normal(size=(4,)),
        }
        for _ in range(3)
    ]
    total = privagg.secure_sum(updates, backend="plain", weights=[0.5, 0.3, 0.2])
    ref = sum(w * u["lora_B"] for w, u in zip([0.5, 0.3, 0.2], updates, strict=True))
    err = float(np.max(np.abs(total["lora_B"] - ref)))
    print(f"backends available: {privagg.available_backends()}")
    print(
        f"weighted sum of 3 updates: shapes {[(k, v.shape) for k, v in total.items()]}"
    )
    print(f"max abs error vs numpy: {err:.2e}")
    assert err < 1e-6


if __name__ == "__main__":
    main()
