"""Multi-server additive secret sharing over ``Z_2**bits`` (secure while one server is honest).

There are ``n_servers`` non-colluding servers. Server 0 is the aggregator (the party that
drives the round); servers ``1 .. n_servers - 1`` are the extra responders of
:meth:`AdditiveSession.servers`. Each client encodes its weighted update ``x`` into the
ring and splits it into ``n_servers`` additive shares:

* for each server ``k >= 1`` a fresh 32-byte seed ``r_k``; that server's share is
  ``PRG(r_k)`` (AES-256-CTR), and only the seed travels, AES-256-GCM-encrypted to the
  server under ``HKDF(X25519(client ephemeral key, server key))``;
* server 0's share is ``x - sum_k PRG(r_k)``, sent to the aggregator as ring words.

Every share alone is uniformly distributed (computationally, for the PRG ones), so any
coalition that misses at least one server learns nothing about ``x``. Each server sums
its shares over the clients that answered; servers ``k >= 1`` encrypt their partial sums
to the result holder, and server 0 forwards them with its own partial sum. The holder
adds the partial sums and decodes. Server 0 sees its partial sum, which is masked by the
others; only the holder (or all servers together) learns the total.

Contributor-set agreement (against a malicious coordinator). Server 0 chooses which
clients every other server sums, so on its own it could ask an honest server for the
sum over one victim and have the holder release that client's update. Therefore:

* each server ``k >= 1`` encrypts its partial sum in the authenticated mode of HPKE
  (RFC 9180 ``AuthEncap``): the AES-256-GCM key is
  ``HKDF(X25519(eph, holder) || X25519(server k, holder))`` over a context that holds
  params_id, the round id, the server id, the SHA-256 of the sorted contributor list it
  summed, the ephemeral key and both static public keys; the contributor digest is also
  the associated data. Only server ``k`` and the holder can compute the static term, so
  a partial sum that opens is server ``k``'s statement "I summed exactly this list in
  this round"; the coordinator can neither forge one nor re-label one;
* the holder opens every partial sum against the one contributor list of the result, so
  it releases only if *all* servers summed the same set, and refuses lists shorter than
  ``min_contributions`` (an honest server refuses to sum such a list in the first place);
* every server and the holder serve a round id at most once (per session object), so
  the coordinator cannot obtain two partial sums of one round over different subsets.

No new trust is needed: the keys are the servers' and the holder's existing X25519 keys,
already fingerprinted in params_id. Clients are not authenticated in this backend, so a
coordinator that can inject clients of its own (Sybils) still meets any
``min_contributions`` with them; see ``docs/backends/additive.md``.

A client that does not answer is simply not in the sum (exact for the others); a server
that does not answer aborts the round.
"""

from privagg.backends.additive.backend import AdditiveBackend, AdditiveSession
from privagg.backends.additive.messages import (
    AdditiveKind,
    ClientShares,
    PartialSum,
    ResultMessage,
    ServerRequest,
    ShareRequest,
)
from privagg.backends.additive.roles import (
    AdditiveAggregator,
    AdditiveClient,
    AdditiveHolder,
    AdditiveServer,
)

__all__ = [
    "AdditiveAggregator",
    "AdditiveBackend",
    "AdditiveClient",
    "AdditiveHolder",
    "AdditiveKind",
    "AdditiveServer",
    "AdditiveSession",
    "ClientShares",
    "PartialSum",
    "ResultMessage",
    "ServerRequest",
    "ShareRequest",
]
