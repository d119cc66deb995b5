"""The model zoo (issue 16): every listed architecture completes a short search through the Python API, with real
pruning wherever torch-pruning can follow the model, and what the search could not cut is in the run's record.
The table of the same runs is benchmarks/zoo.md (`python benchmarks/zoo.py`)."""

from __future__ import annotations

import sys
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).parent / "fixtures"))
import zoo  # noqa: E402

# torch-pruning 1.6 cannot trace ShuffleNetV2 as a whole (its channel shuffle is a reshape it divides by zero on):
# its groups are found within the parts it can trace (each block's branches), and the run says so.
IN_PARTS = {"shufflenet_v2_x0_5"}


@pytest.fixture(scope="module")
def ray_once():
    """One local Ray for the whole zoo: each search uses the Ray it finds instead of starting its own."""
    import ray

    ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    ray.shutdown()


@pytest.mark.slow
@pytest.mark.parametrize("name", zoo.ZOO)
def test_architecture_completes_a_short_search(name, ray_once, tmp_path):
    row = zoo.run(name, tmp_path / name)
    assert row.trial_state == "COMPLETE", row.error
    assert row.layers_quantizable > 0
    assert row.groups_searched > 0
    assert ("(whole model)" in row.limits) == (name in IN_PARTS), row.limits
    # the trial is the uniform 50%-pruned + int8 configuration: channels really removed from its model
    assert row.channels_after < row.channels_before, row
    if name == "option_a_resnet":  # the stem's group cannot be cut (the zero padding no longer matches)
        assert row.limits["conv1"].startswith("not pruned")
    if name == "squeezenet1_0":  # its classifier is a convolution: pruning it would drop classes
        assert row.limits["classifier.1"].startswith("not pruned") and "(1, 10)" in row.limits["classifier.1"]
