"""EpisodeStore / StoreWriter: round trip, keyframe layout, seek-based window reads, errors."""

import json
import pickle

import av
import numpy as np
import pytest

from minesweep.data.store import EpisodeLengthError, EpisodeStore, StoreWriter

H, W, FPS, T = 64, 96, 20, 90


def make_frames(n: int, seed: int = 0) -> np.ndarray:
    """Smooth gradients with a moving block: every frame differs, compresses like real video."""
    rng = np.random.default_rng(seed)
    y, x = np.mgrid[0:H, 0:W]
    frames = np.empty((n, H, W, 3), np.uint8)
    for t in range(n):
        frames[t, ..., 0] = (x * 2 + t * 3) % 256
        frames[t, ..., 1] = (y * 3 + t) % 256
        frames[t, ..., 2] = 90
        c = (t * 5) % (W - 16)
        frames[t, 20:36, c:c + 16] = rng.integers(0, 256, 3)
    return frames


def make_actions(n: int, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    return {
        "buttons": rng.integers(0, 2, (n, 20)).astype(np.uint8),
        "camera": rng.normal(0, 5, (n, 2)).astype(np.float32),
        "is_null": rng.random(n) < 0.2,
        "esc": rng.random(n) < 0.05,
    }


def decode_all(path) -> np.ndarray:
    with av.open(str(path)) as c:
        return np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])


@pytest.fixture(scope="module")
def store_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("store")
    with StoreWriter(root, resolution=(H, W), fps=FPS) as writer:
        writer.add_episode("ep-a", make_frames(T), make_actions(T), source="a.mp4")
        # an iterator of single frames and of batches both work
        frames_b = make_frames(40, seed=1)
        writer.add_episode("ep-b", (f for f in frames_b), make_actions(40, seed=1), source="b.mp4")
        writer.add_episode("ep-c", [frames_b[:10], frames_b[10:33]], make_actions(33, seed=2))
    return root


def test_manifest(store_root):
    manifest = json.loads((store_root / "manifest.json").read_text())
    assert manifest["format_version"] == 1
    assert manifest["fps"] == FPS and manifest["resolution"] == [H, W] and manifest["chunk_size"] == 32
    assert [(e["id"], e["length"]) for e in manifest["episodes"]] == [("ep-a", T), ("ep-b", 40), ("ep-c", 33)]
    e = manifest["episodes"][0]
    assert e["video"] == "videos/ep-a.mp4" and e["actions"] == "actions/ep-a.npz" and e["source"] == "a.mp4"
    store = EpisodeStore(store_root)
    assert store.fps == FPS and store.resolution == (H, W) and len(store.episodes) == 3
    assert not list(store_root.rglob(".*partial*")), "temporary files left behind"


def test_keyframe_every_32_frames_and_pts_are_frame_indices(store_root):
    with av.open(str(store_root / "videos/ep-a.mp4")) as c:
        stream = c.streams.video[0]
        packets = sorted((p.pts, p.is_keyframe) for p in c.demux(stream) if p.size)
        assert len(packets) == T
        keyframes = [i for i, (_, key) in enumerate(packets) if key]
        assert keyframes == list(range(0, T, 32))
        c.seek(0)
        indices = [round(float(f.pts * stream.time_base) * FPS) for f in c.decode(stream)]
        assert indices == list(range(T))


def test_round_trip_frames_and_actions(store_root):
    store = EpisodeStore(store_root)
    frames = store.read_frames("ep-a", 0, T)
    assert frames.dtype == np.uint8 and frames.shape == (T, H, W, 3)
    # lossy, but close to what was written
    assert np.abs(frames.astype(int) - make_frames(T)).mean() < 3
    actions = store.read_actions("ep-a")
    for key, value in make_actions(T).items():
        assert actions[key].dtype == value.dtype
        np.testing.assert_array_equal(actions[key], value)
    assert store.read_frames("ep-c", 0, 33).shape == (33, H, W, 3)


@pytest.mark.parametrize("start,length", [(0, 32), (32, 32), (40, 32), (33, 57), (70, 5), (89, 1), (5, 0)])
def test_window_equals_sequential_decode(store_root, start, length):
    sequential = decode_all(store_root / "videos/ep-a.mp4")
    store = EpisodeStore(store_root)
    store.read_frames("ep-b", 3, 10)  # the same store hops between episodes and positions
    np.testing.assert_array_equal(store.read_frames("ep-a", start, length), sequential[start:start + length])
    np.testing.assert_array_equal(store.read_frames("ep-a", 1, 4), sequential[1:5])


def test_window_read_decodes_from_the_keyframe_not_from_zero(store_root):
    store = EpisodeStore(store_root)
    store.read_frames("ep-a", 70, 5)
    assert store.decoded_frames == (70 - 64) + 5
    store.read_frames("ep-a", 64, 26)
    assert store.decoded_frames == 26


def test_store_pickles_without_open_videos(store_root):
    store = EpisodeStore(store_root)
    first = store.read_frames("ep-b", 30, 4)
    clone = pickle.loads(pickle.dumps(store))
    np.testing.assert_array_equal(clone.read_frames("ep-b", 30, 4), first)


def test_errors_name_what_is_wrong(store_root, tmp_path):
    with pytest.raises(FileNotFoundError, match=str(tmp_path)):
        EpisodeStore(tmp_path)
    store = EpisodeStore(store_root)
    with pytest.raises(KeyError, match="nope"):
        store.read_frames("nope", 0, 1)
    with pytest.raises(KeyError, match="nope"):
        store.read_actions("nope")
    with pytest.raises(IndexError, match="ep-c"):
        store.read_frames("ep-c", 30, 5)
    with pytest.raises(FileExistsError, match="manifest.json"):
        StoreWriter(store_root)


def test_failed_episode_leaves_nothing_behind(tmp_path):
    with StoreWriter(tmp_path, resolution=(H, W)) as writer:
        with pytest.raises(EpisodeLengthError, match="bad.*10 frames.*12 actions"):
            writer.add_episode("bad", make_frames(10), make_actions(12))

        def broken():
            yield from make_frames(5)
            raise OSError("disk vanished")

        with pytest.raises(OSError, match="disk vanished"):
            writer.add_episode("broken", broken(), make_actions(5))
        with pytest.raises(ValueError, match="frame 0"):
            writer.add_episode("wrong-size", np.zeros((3, H + 2, W, 3), np.uint8), make_actions(3))
        writer.add_episode("good", make_frames(3), make_actions(3))
    assert [e.id for e in EpisodeStore(tmp_path).episodes] == ["good"]
    assert sorted(p.name for p in (tmp_path / "videos").iterdir()) == ["good.mp4"]
    assert sorted(p.name for p in (tmp_path / "actions").iterdir()) == ["good.npz"]
