"""Weighted secure sum with the Paillier backend, roles kept apart.

Run: python examples/secure_sum_paillier.py

The result holder generates the key pair and keeps the secret key; the clients and the
aggregator build their session from the public key alone, so only the holder can decrypt.
"""

from __future__ import annotations

import numpy as np

import privagg
from privagg.backends.paillier import PaillierBackend


def main() -> None:
    rng = np.random.default_rng(0)  # test data only; privagg draws its own secrets
    updates = {
        f"client-{i}": {
            "lora_B": rng.uniform(-1, 1, size=(64, 8)),
            "bias": rng.uniform(-1, 1, size=(8,)),
        }
        for i in range(3)
    }
    weights = {"client-0": 0.5, "client-1": 0.3, "client-2": 0.2}
    layout = privagg.Layout.from_arrays(updates["client-0"])
    # 3072-bit modulus (~128-bit security, the default); key_bits=2048 is ~112-bit
    backend = privagg.get_backend("paillier", key_bits=3072, bound=1.0, scale_bits=20)
    assert isinstance(backend, PaillierBackend)

    # result holder: key pair; only the public key is published
    public_key, secret_key = backend.keygen()
    published = public_key.to_bytes()

    # clients and aggregator: a session without the secret key
    # (the fingerprint reaches clients over an authenticated channel; size and
    # fingerprint are checked before any big-integer work)
    trusted_fp = public_key.fingerprint
    public_session = backend.session(
        layout,
        backend.load_public_key(published, expected_fingerprint=trusted_fp),
        max_clients=3,
        max_weight=1.0,
    )
    aggregator = public_session.aggregator(round_id=0, client_ids=list(updates))
    requests = aggregator.start()
    replies = {
        cid: public_session.client(
            cid, 0, layout.flatten(updates[cid]), weight=weights[cid]
        ).handle(req)
        for cid, req in requests.items()
    }
    aggregator.receive(replies)
    protected = aggregator.result()  # ciphertexts only

    # result holder: the same parameters plus the secret key
    holder_session = backend.session(
        layout, public_key, secret_key, max_clients=3, max_weight=1.0
    )
    recovered = holder_session.holder().recover(protected)
    total = layout.unflatten(recovered.vector)

    ref = sum(weights[c] * updates[c]["lora_B"] for c in updates)
    err = float(np.max(np.abs(total["lora_B"] - ref)))
    tol = backend.tolerance(n_clients=3, max_abs=1.0)
    print(f"contributors: {recovered.contributors}")
    print(
        f"upload per client: {len(replies['client-0'])} bytes for {layout.size} values"
    )
    print(f"max abs error vs numpy: {err:.2e} (declared tolerance {tol:.2e})")
    assert err <= tol


if __name__ == "__main__":
    main()
