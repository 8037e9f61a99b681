"""Secure sum of adapter updates with the CKKS backend, role by role.

Run: ``python examples/secure_sum_ckks.py``

1. The key holder generates a key pair and keeps the secret context (saved 0600).
2. Clients and the aggregator receive only the *public* context bytes.
3. Each client encrypts its (weighted) update; the aggregator adds ciphertexts;
   the holder decrypts, floods and rounds (IND-CPA-D mitigation) before release.
"""

from __future__ import annotations

import tempfile
from pathlib import Path

import numpy as np

import privagg
from privagg.backends.ckks import CkksBackend, CkksPublicContext, CkksSecretContext


def main() -> None:
    rng = np.random.default_rng(0)
    updates = [
        {
            "lora_A": rng.normal(0, 0.02, (8, 256)).astype(np.float32),
            "lora_B": rng.normal(0, 0.02, (256, 8)).astype(np.float32),
        }
        for _ in range(5)
    ]
    weights = [1.0, 0.5, 0.5, 1.0, 0.25]

    # One call: every role in this process (simulation).
    total = privagg.secure_sum(updates, backend="ckks", weights=weights)
    ref = sum(
        w * u["lora_A"].astype(np.float64)
        for w, u in zip(weights, updates, strict=True)
    )
    print("secure_sum max error:", float(np.max(np.abs(total["lora_A"] - ref))))

    # Role by role, with explicit key distribution.
    backend = CkksBackend(preset="secure")
    holder_keys = backend.keygen()
    with tempfile.TemporaryDirectory() as d:
        key_file = holder_keys.save(
            Path(d) / "ckks.key",
            protection=privagg.PasswordProtection("a long passphrase"),
        )
        print("secret context written with mode", oct(key_file.stat().st_mode & 0o777))
        reloaded = CkksSecretContext.load(
            key_file, protection=privagg.PasswordProtection("a long passphrase")
        )
    public_bytes = holder_keys.public.to_bytes()  # what clients and the aggregator get
    public = CkksPublicContext.from_bytes(public_bytes)
    try:
        public.decrypt(public.encrypt(np.zeros(1)))
    except privagg.MissingKeyError as exc:
        print("aggregator context cannot decrypt:", exc)

    layout = privagg.Layout.from_arrays(updates[0])
    session = backend.setup(
        layout, max_clients=len(updates), max_weight=1.0, keys=reloaded
    )
    result = privagg.run_round(
        session,
        {f"client-{i}": u for i, u in enumerate(updates)},
        weights={f"client-{i}": w for i, w in enumerate(weights)},
    )
    print("contributors:", result.contributors)
    print("bytes uploaded per value:", result.bytes_sent["client-0"] / layout.size)
    print(
        "max error:",
        float(np.max(np.abs(result.aggregate["lora_A"] - ref))),
        "declared bound:",
        backend.tolerance(n_clients=len(updates), max_abs=0.2),
    )


if __name__ == "__main__":
    main()
