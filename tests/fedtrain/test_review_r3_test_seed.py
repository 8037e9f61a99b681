"""Outside review r3 of 48aa8b5: a node refuses a DP run whose run config sets
test_seed unless its node config allows it. These attacks were REFUSED (passing tests
here document the refusal; a failure would mean the attack works)."""

from __future__ import annotations

from typing import Any

import numpy as np
import pytest
from flwr.app import RecordDict
from test_flower_run_task import _run
from test_flower_run_task_client_dp import CLIENT
from test_flower_run_task_dp import RECORD
from test_review_flower_client_dp import LAYOUT, _ctx

from fedtrain.flower import run_task
from fedtrain.flower.errors import PolicyError


def _cfg(privacy: dict[str, Any], seed: int) -> dict[str, Any]:
    d = _run("seq_cls", "plain", privacy=privacy, test_seed=seed)
    return {**run_task.run_config_entry(d), "task": "fedtrain"}


@pytest.mark.parametrize("privacy", [RECORD, CLIENT], ids=["record", "client"])
def test_r3_test_seed_is_refused_before_any_data_model_or_training(
    privacy: dict[str, Any], monkeypatch: pytest.MonkeyPatch
) -> None:
    """No data is loaded, no model built and no step trained (nothing that could
    draw DP randomness) before the refusal; test_seed = 0 (falsy) is refused too."""

    def boom(*a: Any, **k: Any) -> Any:
        raise AssertionError("reached before the test_seed check")

    for name in ("_shared", "local_update", "load_client_start", "apply_global"):
        monkeypatch.setattr(run_task, name, boom)
    for seed in (11, 0):
        node = {"party-id": "client-0", "partition-id": 0}
        with pytest.raises(PolicyError, match="test_seed"):
            run_task.client_update(
                "client-0", 1, LAYOUT, RecordDict(), _ctx(_cfg(privacy, seed), node)
            )


@pytest.mark.parametrize(
    "allow",
    [" true", "true ", "true\n", "on", "1", "yes", "t", 1.0, np.bool_(True), ["true"]],
    ids=repr,
)
def test_r3_near_true_allow_flag_values_are_refused(allow: Any) -> None:
    config = run_task.FlowerRun.from_run_config(_cfg(RECORD, 11)).config
    with pytest.raises(PolicyError):
        run_task.check_test_seed(config, {run_task.ALLOW_TEST_SEED: allow})
