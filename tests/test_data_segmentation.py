"""The segmentation modality: synth sidecar -> ingest (resized) -> store -> dataset batches; bad files skipped
with a reason; reference windows from another window of the same episode."""

import json

import numpy as np
import pytest
import torch
from torch.utils.data import default_collate

from minesweep.data.ingest.contractor import ingest
from minesweep.data.ingest.resize import resize_masks
from minesweep.data.loading.datamodule import MineDataModule, WindowDataset
from minesweep.data.recordings.synth import generate_recordings
from minesweep.data.segmentation import (
    INTERACTION_TYPES,
    SegmentationError,
    check_segmentation,
    read_sidecar,
    sidecar_path,
)
from minesweep.data.store import EpisodeStore, StoreWriter

W, H, N = 96, 64, 72


@pytest.fixture(scope="module")
def raw(tmp_path_factory):
    out = tmp_path_factory.mktemp("seg_raw")
    generate_recordings(out, episodes=3, frames=N, seed=2, width=W, height=H)
    return out


@pytest.fixture(scope="module")
def store(raw, tmp_path_factory):
    dst = tmp_path_factory.mktemp("seg_store") / "store"
    report = ingest(raw, dst, resolution=(32, 48), print_summary=False)
    assert not report.skipped
    return EpisodeStore(dst)


def red_pixels(frames: np.ndarray) -> np.ndarray:
    f = frames.astype(int)
    return (f[..., 0] > 150) & (f[..., 1] < 100) & (f[..., 2] < 100)


def test_synth_sidecar_marks_the_target(raw):
    import av

    mp4 = raw / "synth-0000.mp4"
    seg = read_sidecar(sidecar_path(mp4), length=N)
    assert seg["mask"].shape == (N, H, W)
    with av.open(str(mp4)) as c:
        frames = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(c.streams.video[0])])
    red = red_pixels(frames)
    valid = seg["valid"]
    assert valid.mean() > 0.5  # the agent keeps its target on screen most of the time
    # Every red (target) pixel lies in the mask; most of the mask is the target (its edge is darker red).
    assert (red & ~seg["mask"]).sum() <= 0.02 * red.sum()
    assert (red & seg["mask"]).sum() >= 0.4 * seg["mask"].sum()
    assert not seg["mask"][~valid].any() and (seg["object_id"][~valid] == -1).all()
    # Hindsight labels: broken targets are 'mine', the last one (if unbroken) 'approach'; ids count up.
    ids = seg["object_id"][valid]
    assert (np.diff(ids) >= 0).all()
    last = ids.max()
    mine, approach = INTERACTION_TYPES.index("mine"), INTERACTION_TYPES.index("approach")
    assert (seg["interaction"][valid][ids < last] == mine).all()
    assert set(seg["interaction"][valid][ids == last]) <= {mine, approach}


def test_synth_without_segmentation_writes_no_sidecar(tmp_path):
    generate_recordings(tmp_path, episodes=1, frames=8, seed=0, width=32, height=32, segmentation=False)
    assert not sidecar_path(tmp_path / "synth-0000.mp4").exists()


def test_ingest_carries_resized_segmentation_into_the_store(raw, store):
    for record in store.episodes:
        seg = store.read_segmentation(record.id, 0, record.length)
        source = read_sidecar(sidecar_path(raw / record.source), length=record.length)
        assert seg["mask"].shape == (record.length, 32, 48) and seg["mask"].dtype == np.bool_
        np.testing.assert_array_equal(seg["valid"], source["valid"])
        np.testing.assert_array_equal(seg["object_id"], source["object_id"])
        np.testing.assert_array_equal(seg["interaction"], source["interaction"])
        np.testing.assert_array_equal(seg["mask"], resize_masks(source["mask"], (32, 48)))
        assert (seg["mask"].any(axis=(1, 2)) == source["mask"].any(axis=(1, 2))).all()  # no object lost
    part = store.read_segmentation(store.episodes[0].id, 5, 7)
    full = store.read_segmentation(store.episodes[0].id, 0, N)
    for key in part:
        np.testing.assert_array_equal(part[key], full[key][5:12])
    with pytest.raises(IndexError, match="out of range"):
        store.read_segmentation(store.episodes[0].id, N - 2, 5)


def test_store_segmentation_is_optional_and_checked(tmp_path):
    frames = np.zeros((4, 16, 16, 3), np.uint8)
    actions = {"buttons": np.zeros((4, 20)), "camera": np.zeros((4, 2)), "is_null": np.zeros(4), "esc": np.zeros(4)}
    seg = {
        "mask": np.zeros((4, 16, 16), bool),
        "object_id": np.zeros(4, int),
        "interaction": np.ones(4, int),
        "valid": np.ones(4, bool),
    }
    with StoreWriter(tmp_path / "s", resolution=(16, 16)) as writer:
        writer.add_episode("plain", frames, actions)
        writer.add_episode("seg", frames, actions, segmentation=seg)
        with pytest.raises(SegmentationError, match="'bad'.*3 frames, the episode has 4"):
            writer.add_episode("bad", frames, actions, segmentation={k: v[:3] for k, v in seg.items()})
        with pytest.raises(SegmentationError, match="'bad'.*resolution"):
            writer.add_episode("bad", frames, actions, segmentation={**seg, "mask": np.zeros((4, 8, 8), bool)})
    s = EpisodeStore(tmp_path / "s")
    assert [e.id for e in s.episodes] == ["plain", "seg"]  # nothing of the failed episode is kept
    assert not (tmp_path / "s" / "segmentation" / "bad.npz").exists()
    assert s.read_segmentation("plain", 0, 4) is None
    assert s.read_segmentation("seg", 0, 4)["interaction"].tolist() == [1, 1, 1, 1]
    # Mixed store: the dataset adds segment_* to every item; episodes without are invalid throughout.
    items = [WindowDataset(s, win_len=3)[i] for i in range(4)]
    batch = default_collate(items)
    assert batch["segment_mask"].shape == (4, 3, 16, 16)
    assert batch["segment_valid"].tolist() == [[False] * 3, [False, False, False], [True] * 3, [True, False, False]]
    assert (batch["segment_interaction"][~batch["segment_valid"]] == -1).all()


def test_check_segmentation_names_the_key():
    good = {
        "mask": np.zeros((2, 4, 4), bool),
        "object_id": np.zeros(2, int),
        "interaction": np.zeros(2, int),
        "valid": np.array([True, False]),
    }
    with pytest.raises(SegmentationError, match=r"f\.npz: segmentation lacks \['valid'\]"):
        check_segmentation({k: v for k, v in good.items() if k != "valid"}, "f.npz")
    with pytest.raises(SegmentationError, match="'interaction' at frame 1 is 9"):
        check_segmentation({**good, "interaction": np.array([0, 9])}, "f.npz")
    with pytest.raises(SegmentationError, match="'object_id' must be integers"):
        check_segmentation({**good, "object_id": np.zeros(2)}, "f.npz")
    fixed = check_segmentation({**good, "mask": np.ones((2, 4, 4), bool)}, "f.npz")
    assert not fixed["mask"][1].any() and fixed["object_id"][1] == -1  # invalid frames are emptied


def test_ingest_skips_an_episode_with_a_bad_sidecar(raw, tmp_path):
    src = tmp_path / "src"
    src.mkdir()
    for suffix in (".mp4", ".jsonl", ".segmentation.npz"):
        for i in (0, 1):
            (src / f"synth-000{i}{suffix}").write_bytes((raw / f"synth-000{i}{suffix}").read_bytes())
    seg = read_sidecar(src / "synth-0001.segmentation.npz")
    np.savez(src / "synth-0001.segmentation.npz", **{k: v[:10] for k, v in seg.items()})  # truncated
    report = ingest(src, tmp_path / "dst", resolution=(32, 48), print_summary=False)
    assert report.ingested == ["synth-0000"]
    (skip,) = report.skipped
    assert skip["episode"] == "synth-0001" and skip["file"].endswith("synth-0001.segmentation.npz")
    assert "10 frames, the episode has 72" in skip["reason"]
    assert json.loads((tmp_path / "dst" / "ingest_report.json").read_text())["skipped"][0]["episode"] == "synth-0001"


def test_dataset_items_carry_segmentation_with_frame_skip_and_padding(store):
    ds = WindowDataset(store, win_len=16, frame_skip=2)
    record = store.episodes[ds.windows[2][0]]
    item = ds[2]  # episode 0, frames 64, 66, 68, 70 then padding
    episode, start, _ = ds.windows[2]
    seg = store.read_segmentation(record.id, 0, record.length)
    n = len(range(start, record.length, 2))
    np.testing.assert_array_equal(item["segment_mask"][:n].numpy(), seg["mask"][start::2])
    np.testing.assert_array_equal(item["segment_valid"][:n].numpy(), seg["valid"][start::2])
    assert not item["segment_valid"][n:].any() and not item["segment_mask"][n:].any()
    assert item["segment_interaction"].dtype == torch.int64
    padding = ds._padding()
    assert padding["segment_mask"].shape == item["segment_mask"].shape and not padding["segment_valid"].any()
    # No segmentation keys for a store without the modality, or when switched off.
    assert "segment_mask" not in WindowDataset(store, win_len=4, segmentation=False)[0]


def test_reference_window_is_another_non_overlapping_window_of_the_same_episode(store):
    torch.manual_seed(0)
    ds = WindowDataset(store, win_len=16, reference_window="other")
    starts = set()
    for index in range(len(ds)):
        episode, start, _ = ds.windows[index]
        item = ds[index]
        ref = int(item["reference_start"])
        record = store.episodes[episode]
        assert abs(ref - start) >= 16 and 0 <= ref <= record.length - 16
        np.testing.assert_array_equal(item["reference_image"].numpy(), store.read_frames(record.id, ref, 16))
        assert item["reference_mask"].sum() == 16
        starts.add(ref)
    assert len(starts) > 3  # drawn, not fixed
    # An episode too short for a second window: the window itself is the reference.
    short = WindowDataset(store, win_len=40, reference_window="other")
    item = short[0]
    assert int(item["reference_start"]) == short.windows[0][1]
    assert torch.equal(item["reference_image"], item["image"])
    with pytest.raises(ValueError, match="reference_window"):
        WindowDataset(store, reference_window="future")


def test_datamodule_decides_segmentation_for_the_whole_store(store):
    dm = MineDataModule(
        str(store.root), win_len=8, batch_size=2, num_workers=0, val_fraction=0.34, reference_window="other"
    )
    dm.setup()
    train, val = next(iter(dm.train_dataloader())), next(iter(dm.val_dataloader()))
    for batch in (train, val):
        assert batch["segment_mask"].shape == (2, 8, 32, 48)
        assert batch["reference_image"].shape == (2, 8, 32, 48, 3)
