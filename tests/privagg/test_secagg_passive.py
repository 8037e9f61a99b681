"""SecAgg+ semi-honest variant on the complete graph (Bonawitz et al. 2017): contract suite.

(One contract subclass per module: hypothesis refuses one @given test run from two classes.)
"""

from __future__ import annotations

from privagg.backends.secagg import SecAggBackend
from tests.privagg.contract.backend_contract import BackendContract


class TestSecAggPassiveContract(BackendContract):
    max_clients = 4
    n_clients = 4

    def make_backend(self) -> SecAggBackend:
        return SecAggBackend(active=False, full_graph=True)
