"""A real training run on a store with flipped bytes: it stops naming the episode (data.on_corrupt=raise), or
trains on with those windows masked and counted (skip). Before store format 3 it trained on wrong pixels, rc 0."""

import pytest
from hydra import compose, initialize_config_dir

from minesweep.data.loading.datamodule import MineDataModule
from minesweep.data.store import CorruptDataError, EpisodeStore
from minesweep.train import train
from tests.conftest import CONF_DIR
from tests.helpers import SMALL_RUN
from tests.test_train_run import logged

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def corrupt_store(tmp_path_factory):
    root = tmp_path_factory.mktemp("demo") / "store"
    MineDataModule(
        root=str(root), demo={"episodes": 4, "frames": 64, "width": 96, "height": 64, "seed": 2, "resolution": 64}
    ).prepare_data()
    store = EpisodeStore(root)
    with open(root / "shards/shard-00000.bin", "r+b") as f:
        for position, record in enumerate(store.episodes):  # one byte in every episode's first GOP
            offset = record.video_offset + int(store._video_bounds(position, record)[0]) + 50
            f.seek(offset)
            byte = f.read(1)
            f.seek(offset)
            f.write(bytes([byte[0] ^ 0x10]))
    return root


def config(store, output_dir, *overrides):
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        return compose(
            "train",
            overrides=[
                *SMALL_RUN,
                f"data.root={store}",
                f"paths.output_dir={output_dir}",
                "logger=csv",
                "trainer.max_steps=-1",
                "+trainer.max_epochs=1",
                "data.val_fraction=0.25",
                *overrides,
            ],
        )


def test_training_on_a_corrupt_store_stops_naming_the_episode(corrupt_store, tmp_path):
    with pytest.raises(CorruptDataError, match=r"episode 'synth-000\d' \(position \d\), video frames \[0, 32\)"):
        train(config(corrupt_store, tmp_path))


def test_training_with_on_corrupt_skip_masks_and_counts_the_windows(corrupt_store, tmp_path):
    train(config(corrupt_store, tmp_path, "data.on_corrupt=skip"))
    counts = [value for _, value in logged(tmp_path, "data/corrupt_windows")]
    # the epoch's 3 train episodes x 2 windows of 16 frames in the damaged GOP (frames [0, 32))
    assert counts == [6.0], counts
