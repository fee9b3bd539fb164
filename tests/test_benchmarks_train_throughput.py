import importlib.util

import pytest

from tests.conftest import REPO


def load_benchmark():
    spec = importlib.util.spec_from_file_location("train_throughput", REPO / "benchmarks" / "train_throughput.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_bare_loop_takes_as_many_batches_as_it_times_across_epoch_ends():
    # The bare loop divided by the steps asked for, but read one epoch at most: on the demo (57 batches an epoch)
    # `--warmup 10 --steps 60` timed 47 steps and divided by 60.
    first_batches = load_benchmark().first_batches
    epoch = ["a", "b", "c"]
    assert first_batches(epoch, 7) == ["a", "b", "c", "a", "b", "c", "a"]
    assert first_batches(epoch, 2) == ["a", "b"]
    with pytest.raises(ValueError, match="no batches"):
        first_batches([], 1)
