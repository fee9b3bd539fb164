"""minesweep-data label: an IDM trained on an easy synthetic world labels videos and stores; resume, bad videos,
label source, confidence masking."""

from __future__ import annotations

import hashlib
import json
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir

from minesweep.data.cli import main as data_cli
from minesweep.data.ingest.label import label, label_source, window_starts
from minesweep.data.loading.datamodule import WindowDataset
from minesweep.data.store import HUMAN_LABELS, LABEL_CONFIDENCE, EpisodeStore, StoreWriter, encode_episode
from minesweep.train import train
from minesweep.video import H264Writer
from tests.conftest import CONF_DIR

pytestmark = pytest.mark.slow

RES = 32
MARKS = {0: (slice(2, 10), slice(2, 10)), 2: (slice(22, 30), slice(22, 30))}  # attack: top left, forward: bottom right


def easy_episode(length: int, seed: int) -> tuple[np.ndarray, dict[str, np.ndarray]]:
    """A world where the action shows in the next frame: a white square for each pressed button (attack, forward),
    over a moving gradient."""
    rng = np.random.default_rng(seed)
    buttons = np.zeros((length, 20), np.uint8)
    for column in MARKS:
        buttons[:, column] = rng.random(length) < 0.35
    y, x = np.mgrid[0:RES, 0:RES]
    frames = np.empty((length, RES, RES, 3), np.uint8)
    for t in range(length):
        frames[t] = (((x + 3 * t) % 32) * 4)[..., None]
        if t > 0:
            for column, (rows, cols) in MARKS.items():
                if buttons[t - 1, column]:
                    frames[t, rows, cols] = 255
    actions = {
        "buttons": buttons,
        "camera": np.zeros((length, 2), np.float32),
        "is_null": buttons.sum(1) == 0,
        "esc": np.zeros(length, bool),
    }
    return frames, actions


def write_store(root: Path, episodes: int, length: int, first_seed: int = 0) -> Path:
    with StoreWriter(root, resolution=(RES, RES), codec="raw") as writer:
        for i in range(episodes):
            frames, actions = easy_episode(length, first_seed + i)
            writer.append(encode_episode(f"ep{i:03d}", frames, actions, (RES, RES), "raw"))
    return root


@pytest.fixture(scope="module")
def idm_checkpoint(tmp_path_factory) -> Path:
    """An idm_tiny (smaller: 32x32 frames) trained on 12 easy episodes through train.py."""
    tmp = tmp_path_factory.mktemp("idm")
    store = write_store(tmp / "train_store", episodes=12, length=96)
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        cfg = compose(
            "train",
            overrides=[
                "policy=idm_tiny",
                "policy.hidsize=32",
                "policy.img_shape=[32,32,8]",
                "policy.conv3d_params.outchan=8",
                "policy.impala_chans=[8,16,16]",
                "policy.timesteps=16",
                "policy.attention_memory_size=16",
                "objective=[idm]",
                f"data.root={store}",
                "data.demo=null",
                "data.win_len=16",
                "data.batch_size=8",
                "data.num_workers=0",
                "data.episode_continuous_batch=false",
                "data.sampling=frames",
                "data.val_fraction=0.1",
                "trainer.max_steps=100",
                "trainer.val_check_interval=100",
                "trainer.limit_val_batches=2",
                "trainer.accelerator=cpu",
                "optim.learning_rate=2e-3",
                "optim.warmup_steps=10",
                "callbacks.progress_bar=null",
                "callbacks.final_eval=null",
                "logger=csv",
                f"paths.output_dir={tmp / 'run'}",
            ],
        )
    metrics = train(cfg)
    assert metrics["val/idm/buttons_exact"] > 0.9, metrics
    return tmp / "run" / "checkpoints" / "last.ckpt"


def accuracy(labelled: EpisodeStore, truth: EpisodeStore) -> float:
    """Frames whose 20 labelled buttons all match the true ones, over every episode (but each episode's last frame,
    whose action no frame shows)."""
    right = total = 0
    for episode in truth.episodes:
        predicted = labelled.read_actions(episode.id)["buttons"][:-1]
        actual = truth.read_actions(episode.id)["buttons"][:-1]
        right += int((predicted == actual).all(1).sum())
        total += len(actual)
    return right / total


def test_window_starts_cover_every_frame_and_end_with_the_episode():
    for length in range(1, 80):
        for window, stride in ((16, 8), (16, 16), (8, 3)):
            starts = window_starts(length, window, stride)
            covered = np.zeros(length, bool)
            for s in starts:
                covered[s : s + window] = True
            assert covered.all()
            assert starts == sorted(set(starts)) and starts[0] == 0
            assert starts[-1] + window >= length and (length <= window or starts[-1] + window == length)


def test_labelling_a_store_recovers_the_true_actions(idm_checkpoint, tmp_path):
    truth = write_store(tmp_path / "unseen", episodes=4, length=80, first_seed=100)  # worlds the IDM never saw
    report = label(truth, tmp_path / "labelled", idm_checkpoint, progress=False, print_summary=False)
    assert len(report.ingested) == 4 and not report.skipped
    labelled, original = EpisodeStore(tmp_path / "labelled"), EpisodeStore(truth)
    assert accuracy(labelled, original) > 0.9
    assert labelled.labels == label_source(idm_checkpoint) and labelled.labels.startswith("idm:")
    assert original.labels == HUMAN_LABELS
    confidence = labelled.read_actions(0)[LABEL_CONFIDENCE]
    assert confidence.shape == (80,) and ((confidence > 0) & (confidence <= 1)).all()
    frames = labelled.read_frames(0, 0, 80)
    np.testing.assert_array_equal(frames, original.read_frames(0, 0, 80))  # the video itself is unchanged


def test_videos_are_labelled_bad_ones_reported_and_a_resumed_run_gives_the_same_bytes(idm_checkpoint, tmp_path):
    videos = tmp_path / "videos"
    videos.mkdir()
    for i in range(3):
        frames, _ = easy_episode(60, 200 + i)
        with H264Writer(videos / f"clip{i}.mp4", RES, RES, crf=0) as writer:
            for frame in frames:
                writer.write(frame)
    (videos / "broken.mp4").write_bytes(b"not a video at all" * 100)

    whole = tmp_path / "whole"
    assert data_cli(["label", str(videos), str(whole), "--idm", str(idm_checkpoint), "--no-progress"]) == 0
    report = json.loads((whole / "ingest_report.json").read_text())
    assert sorted(report["ingested"]) == ["clip0", "clip1", "clip2"]
    assert [(p["episode"], Path(p["file"]).name) for p in report["skipped"]] == [("broken", "broken.mp4")]

    # Resume: a first run over two of the videos, killed before it closed (no manifest), then the full run.
    partial_videos = tmp_path / "partial_videos"
    partial_videos.mkdir()
    for name in ("broken.mp4", "clip0.mp4", "clip1.mp4"):
        shutil.copy(videos / name, partial_videos / name)
    resumed = tmp_path / "resumed"
    label(partial_videos, resumed, idm_checkpoint, progress=False, print_summary=False)
    (resumed / "manifest.json").unlink()
    (resumed / "index.npy").unlink()
    again = label(videos, resumed, idm_checkpoint, progress=False, print_summary=False, workers=2)
    assert again.already == 2 and again.ingested == ["clip2"]

    def digest(root: Path) -> dict[str, str]:
        return {
            p.relative_to(root).as_posix(): hashlib.sha256(p.read_bytes()).hexdigest()
            for p in sorted(root.rglob("*"))
            if p.is_file() and p.name != "ingest_report.json"
        }

    assert digest(resumed) == digest(whole)


def test_a_store_labelled_by_another_checkpoint_is_not_appended_to(idm_checkpoint, tmp_path):
    truth = write_store(tmp_path / "truth", episodes=1, length=40)
    label(truth, tmp_path / "labelled", idm_checkpoint, progress=False, print_summary=False)
    other = tmp_path / "other.ckpt"
    saved = torch.load(idm_checkpoint, weights_only=True)
    saved["note"] = "another IDM"
    torch.save(saved, other)
    with pytest.raises(ValueError, match="labels"):
        label(truth, tmp_path / "labelled", other, progress=False, print_summary=False)


def test_a_checkpoint_that_is_not_an_idm_is_refused(tmp_path, store):
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        cfg = compose(
            "train",
            overrides=[
                f"data.root={store}",
                "data.demo=null",
                "data.num_workers=0",
                "data.episode_continuous_batch=false",
                "policy.hidsize=32",
                "trainer.max_steps=1",
                "trainer.limit_val_batches=1",
                "trainer.accelerator=cpu",
                "callbacks.progress_bar=null",
                "callbacks.final_eval=null",
                "logger=csv",
                f"paths.output_dir={tmp_path / 'run'}",
            ],
        )
    train(cfg)
    with pytest.raises(ValueError, match="not an inverse dynamics model"):
        label(store, tmp_path / "out", tmp_path / "run" / "checkpoints" / "last.ckpt", progress=False)


def test_min_label_confidence_masks_the_unsure_frames(idm_checkpoint, tmp_path):
    truth = write_store(tmp_path / "truth", episodes=2, length=40)
    label(truth, tmp_path / "labelled", idm_checkpoint, progress=False, print_summary=False)
    labelled = EpisodeStore(tmp_path / "labelled")
    confidence = labelled.read_actions(0)[LABEL_CONFIDENCE]
    threshold = float(np.median(confidence))
    dataset = WindowDataset(labelled, [0], win_len=40, min_label_confidence=threshold)
    mask = dataset[0]["mask"].numpy()
    np.testing.assert_array_equal(mask, (confidence >= threshold).astype(np.float32))
    everything = WindowDataset(labelled, [0], win_len=40)[0]["mask"].numpy()
    assert everything.all()
    human = WindowDataset(EpisodeStore(truth), [0], win_len=40, min_label_confidence=0.99)[0]["mask"].numpy()
    assert human.all()  # a human-labelled store has no confidence: nothing is masked
    with pytest.raises(ValueError, match="min_label_confidence"):
        WindowDataset(labelled, [0], win_len=40, min_label_confidence=1.5)


class WindowStartIdm(torch.nn.Module):
    """Predicts, for every frame of a window, the window's start written in binary over the 20 buttons (frame t's
    pixels hold t), with a confidence that falls with the distance to the window's centre."""

    def __init__(self) -> None:
        super().__init__()
        self.anchor = torch.nn.Parameter(torch.zeros(()))  # predict_actions finds the device through a parameter

    def forward(self, batch: dict) -> tuple[dict, None]:
        image = batch["image"].long()
        B, T = image.shape[:2]
        start = image[:, 0, 0, 0, 0] + 256 * image[:, 0, 0, 0, 1]  # frames t = (t % 256, t // 256, 0)
        bits = (start[:, None] >> torch.arange(20)) & 1  # (B, 20)
        buttons = torch.full((B, T, 20, 2), -5.0)
        buttons.scatter_(-1, bits[:, None, :, None].expand(B, T, 20, 1), -0.01)
        camera = torch.full((B, T, 2, 11), -5.0)
        camera[..., 5] = -0.01
        return {"pi_logits": {"buttons": buttons.log_softmax(-1), "camera": camera.log_softmax(-1)}}, None


@pytest.mark.parametrize(("length", "window", "stride"), [(5, 8, 4), (8, 8, 4), (37, 8, 4), (50, 16, 5), (64, 16, 16)])
def test_each_frame_is_labelled_by_the_window_whose_centre_is_nearest(length, window, stride):
    from minesweep.data.ingest.label import predict_actions

    t = np.arange(length)
    frames = np.zeros((length, 4, 4, 3), np.uint8)
    frames[:, :, :, 0], frames[:, :, :, 1] = (t % 256)[:, None, None], (t // 256)[:, None, None]
    buttons, camera, confidence = predict_actions(WindowStartIdm(), frames, window, stride)
    chosen = (buttons.astype(np.int64) << np.arange(20)).sum(1)
    starts = window_starts(length, window, stride)
    for frame in range(length):  # brute force: the covering window nearest by centre, the earlier one on a tie
        covering = [s for s in starts if s <= frame < s + window]
        best = min(covering, key=lambda s: (abs(frame - s - (window - 1) / 2), s))
        assert chosen[frame] == best, (frame, chosen[frame], best)
    p_button = np.exp(-0.01) / (np.exp(-0.01) + np.exp(-5.0))
    p_axis = np.exp(-0.01) / (np.exp(-0.01) + 10 * np.exp(-5.0))
    assert (camera == 5).all() and np.allclose(confidence, p_button**20 * p_axis**2)


def test_human_and_idm_labelled_stores_mix_by_weight(idm_checkpoint, tmp_path):
    from minesweep.data.loading.datamodule import MineDataModule

    truth = write_store(tmp_path / "truth", episodes=2, length=40)
    label(truth, tmp_path / "labelled", idm_checkpoint, progress=False, print_summary=False)
    data = MineDataModule(
        root=[str(truth), str(tmp_path / "labelled")],
        weights=[0.25, 0.75],
        sampling="frames",
        win_len=8,
        batch_size=4,
        num_workers=0,
        val_fraction=0.25,
        min_label_confidence=0.5,
    )
    data.setup()
    assert [s.labels.split(":")[0] for s in data.store.stores] == ["human", "idm"]
    batch = next(iter(data.train_dataloader()))
    assert batch["image"].shape == (4, 8, RES, RES, 3) and batch["mask"].shape == (4, 8)
