"""The training store: one folder of fixed-resolution H.264 episodes plus their env actions.

Layout::

    manifest.json        {"format_version", "fps", "resolution": [h, w], "chunk_size", "episodes": [...]}
    videos/<id>.mp4      H.264 yuv420p, a keyframe (IDR) exactly every ``chunk_size`` frames, pts = frame index
    actions/<id>.npz     buttons (T, 20) uint8, camera (T, 2) float32, is_null (T,) bool, esc (T,) bool
    segmentation/<id>.npz   optional, per episode: mask (T, h, w) bool, object_id, interaction, valid (T,)
                         (see minesweep/data/segmentation.py); absent for episodes without the modality

Because every ``chunk_size``-th frame is a keyframe, a window ``[start, start + length)`` is read by seeking to the
keyframe at or before ``start`` and decoding forward: at most ``chunk_size - 1`` frames are decoded and thrown away.
"""

from __future__ import annotations

import json
import os
from collections import OrderedDict
from dataclasses import asdict, dataclass
from fractions import Fraction
from pathlib import Path
from typing import Any, Iterable, Mapping

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from minesweep.data.segmentation import SegmentationError, check_segmentation

__all__ = ["EpisodeRecord", "EpisodeStore", "StoreWriter", "H264Writer", "EpisodeLengthError", "FORMAT_VERSION"]

FORMAT_VERSION = 1
MANIFEST = "manifest.json"
ACTION_KEYS = {"buttons": (np.uint8, (20,)), "camera": (np.float32, (2,)), "is_null": (np.bool_, ()),
               "esc": (np.bool_, ())}


class EpisodeLengthError(ValueError):
    """The video and the action arrays of an episode have different lengths."""

    def __init__(self, episode_id: str, frames: int, actions: int) -> None:
        super().__init__(f"episode {episode_id!r}: video has {frames} frames but there are {actions} actions")
        self.episode_id, self.frames, self.actions = episode_id, frames, actions


@dataclass(frozen=True)
class EpisodeRecord:
    id: str
    length: int
    video: str  # relative to the store root
    actions: str  # relative to the store root
    source: str = ""


class H264Writer:
    """Streams RGB uint8 frames into an H.264 (yuv420p) mp4, frame ``i`` at pts ``i`` with time base ``1/fps``.

    ``gop``: if given, a keyframe exactly every ``gop`` frames (no scene-cut keyframes in between).
    """

    def __init__(self, path: str | Path, width: int, height: int, fps: int = 20, gop: int | None = None,
                 crf: int = 18, preset: str = "veryfast") -> None:
        if width % 2 or height % 2:
            raise ValueError(f"{path}: H.264 yuv420p needs even width and height, got {width}x{height}")
        self.path, self.width, self.height = Path(path), width, height
        self.count = 0
        self._container = av.open(str(self.path), mode="w", format="mp4")
        # mbtree=0: with MB-tree on, libx264 (as bundled with PyAV) encodes small frames (64x64) differently from
        # run to run depending on heap contents; without it the output is reproducible, at a small size cost.
        x264_params = ["mbtree=0"]
        if gop is not None:
            x264_params.append(f"keyint={gop}:min-keyint={gop}:scenecut=0")
        options = {"crf": str(crf), "preset": preset, "x264-params": ":".join(x264_params)}
        self._stream = self._container.add_stream("libx264", rate=fps, options=options)
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, "yuv420p"
        # Frames carry pts in 1/fps; the mp4 muxer picks its own stream time base once the header is written.
        self._time_base = Fraction(1, fps)
        self._stream.time_base = self._time_base
        if gop is not None:
            self._stream.codec_context.gop_size = gop

    def write(self, frame: np.ndarray) -> None:
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise ValueError(f"{self.path}: frame {self.count} is {frame.dtype}{list(frame.shape)}, "
                             f"expected uint8[{self.height}, {self.width}, 3]")
        video_frame = av.VideoFrame.from_ndarray(np.ascontiguousarray(frame), format="rgb24")
        video_frame.pts = self.count
        video_frame.time_base = self._time_base
        self._container.mux(self._stream.encode(video_frame))
        self.count += 1

    def close(self) -> None:
        if self._container is not None:
            try:
                self._container.mux(self._stream.encode(None))  # flush delayed frames
            finally:
                self._container.close()
                self._container = None

    def __enter__(self) -> H264Writer:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


def _env_action_arrays(env_actions: Any, episode_id: str) -> dict[str, np.ndarray]:
    """EnvActions (attributes) or a mapping -> validated arrays with the store dtypes."""
    arrays = {}
    for key, (dtype, tail) in ACTION_KEYS.items():
        value = env_actions[key] if isinstance(env_actions, Mapping) else getattr(env_actions, key, None)
        if value is None:
            raise KeyError(f"episode {episode_id!r}: env actions have no {key!r}")
        value = np.asarray(value).astype(dtype, copy=False)
        if value.ndim != 1 + len(tail) or value.shape[1:] != tail:
            raise ValueError(f"episode {episode_id!r}: actions {key!r} has shape {value.shape}, expected (T, *{tail})")
        arrays[key] = value
    lengths = {k: len(v) for k, v in arrays.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"episode {episode_id!r}: action arrays have different lengths {lengths}")
    return arrays


def _segmentation_rel(episode_id: str) -> str:
    return f"segmentation/{episode_id}.npz"


def _write_json_atomic(path: Path, data: Any) -> None:
    tmp = path.with_name(f".{path.name}.tmp")
    tmp.write_text(json.dumps(data, indent=1))
    os.replace(tmp, path)


class StoreWriter:
    """Builds a store folder episode by episode; ``close()`` writes the manifest (atomically)."""

    def __init__(self, root: str | Path, resolution: tuple[int, int] = (128, 128), fps: int = 20,
                 chunk_size: int = 32, crf: int = 18, preset: str = "veryfast") -> None:
        self.root = Path(root)
        if (self.root / MANIFEST).exists():
            raise FileExistsError(f"{self.root / MANIFEST} already exists: refusing to overwrite a store; "
                                  "delete the folder or write to another one")
        self.resolution = (int(resolution[0]), int(resolution[1]))
        self.fps, self.chunk_size, self.crf, self.preset = int(fps), int(chunk_size), crf, preset
        (self.root / "videos").mkdir(parents=True, exist_ok=True)
        (self.root / "actions").mkdir(parents=True, exist_ok=True)
        self.episodes: list[EpisodeRecord] = []
        self._closed = False

    def add_episode(self, episode_id: str, frames: Iterable[np.ndarray] | np.ndarray, env_actions: Any,
                    source: str = "", segmentation: Mapping[str, np.ndarray] | None = None) -> EpisodeRecord:
        """Encode ``frames`` (an array ``(T, H, W, 3)`` or an iterable of frames or of frame batches) with the
        actions. Nothing of the episode is kept if anything fails (bad frame, iterator error, length mismatch).

        ``segmentation``: optional per-frame object masks at the store resolution (keys of
        :mod:`minesweep.data.segmentation`), one entry per action; written to ``segmentation/<id>.npz``."""
        if not episode_id or any(c in episode_id for c in "/\\\0") or episode_id.startswith("."):
            raise ValueError(f"invalid episode id {episode_id!r}: no path separators, not starting with '.'")
        if any(e.id == episode_id for e in self.episodes):
            raise ValueError(f"episode {episode_id!r} was already added to {self.root}")
        actions = _env_action_arrays(env_actions, episode_id)
        n_actions = len(actions["buttons"])
        if segmentation is not None:
            segmentation = check_segmentation(segmentation, f"episode {episode_id!r}", length=n_actions)
            if segmentation["mask"].shape[1:] != self.resolution:
                raise SegmentationError(f"episode {episode_id!r}: segmentation 'mask' is "
                                        f"{segmentation['mask'].shape[1:]}, the store resolution is {self.resolution}")

        video_rel, actions_rel = f"videos/{episode_id}.mp4", f"actions/{episode_id}.npz"
        video_tmp = self.root / f"videos/.{episode_id}.partial.mp4"
        actions_tmp = self.root / f"actions/.{episode_id}.partial.npz"
        segmentation_tmp = self.root / f"segmentation/.{episode_id}.partial.npz"
        h, w = self.resolution
        try:
            with H264Writer(video_tmp, w, h, self.fps, gop=self.chunk_size, crf=self.crf,
                            preset=self.preset) as video:
                for item in frames:
                    item = np.asarray(item)
                    for frame in item if item.ndim == 4 else (item,):
                        video.write(frame)
            if video.count != n_actions or n_actions == 0:
                raise EpisodeLengthError(episode_id, video.count, n_actions)
            np.savez(actions_tmp, **actions)
            if segmentation is not None:
                (self.root / "segmentation").mkdir(exist_ok=True)
                np.savez_compressed(segmentation_tmp, **segmentation)
                os.replace(segmentation_tmp, self.root / _segmentation_rel(episode_id))
            os.replace(video_tmp, self.root / video_rel)
            os.replace(actions_tmp, self.root / actions_rel)
        except BaseException:
            video_tmp.unlink(missing_ok=True)
            actions_tmp.unlink(missing_ok=True)
            segmentation_tmp.unlink(missing_ok=True)
            if segmentation is not None:
                (self.root / _segmentation_rel(episode_id)).unlink(missing_ok=True)
            raise
        record = EpisodeRecord(episode_id, n_actions, video_rel, actions_rel, str(source))
        self.episodes.append(record)
        return record

    def close(self) -> Path:
        """Write ``manifest.json``; the store is readable from then on."""
        path = self.root / MANIFEST
        if not self._closed:
            _write_json_atomic(path, {
                "format_version": FORMAT_VERSION,
                "fps": self.fps,
                "resolution": list(self.resolution),
                "chunk_size": self.chunk_size,
                "episodes": [asdict(e) for e in self.episodes],
            })
            self._closed = True
        return path

    def __enter__(self) -> StoreWriter:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()


_INHERITED: list = []  # open videos inherited through fork(), kept alive on purpose (see EpisodeStore._video)


class _OpenVideo:
    """An open input container and its video stream (one per episode per process)."""

    def __init__(self, path: Path) -> None:
        self.container = av.open(str(path))
        self.stream = self.container.streams.video[0]
        # Single-threaded decode and colour conversion: frames are small, loader workers already run in parallel,
        # and ffmpeg thread pools do not survive fork() (freeing one in a forked child deadlocks).
        self.stream.codec_context.thread_count = 1
        self.time_base = self.stream.time_base
        self.start = self.stream.start_time or 0  # pts of frame 0 (mp4 edit lists usually make it 0)
        # One reformatter per video keeps its swscale context: frame.to_ndarray(format=...) rebuilds it per frame
        # and is ~4x slower for small frames. The pixels are identical.
        self.reformatter = VideoReformatter()

    def close(self) -> None:
        self.container.close()


class EpisodeStore:
    """Read side of a store folder. Cheap to create and to pickle: videos are opened lazily, per process."""

    max_open = 16  # open containers kept per process (LRU)

    def __init__(self, root: str | Path) -> None:
        self.root = Path(root)
        path = self.root / MANIFEST
        if not path.is_file():
            raise FileNotFoundError(f"no store at {self.root}: {path} does not exist")
        manifest = json.loads(path.read_text())
        if manifest.get("format_version") != FORMAT_VERSION:
            raise ValueError(f"{path}: format_version {manifest.get('format_version')!r}, expected {FORMAT_VERSION}")
        self.fps: int = int(manifest["fps"])
        self.resolution: tuple[int, int] = tuple(manifest["resolution"])
        self.chunk_size: int = int(manifest["chunk_size"])
        self.episodes: list[EpisodeRecord] = [EpisodeRecord(**e) for e in manifest["episodes"]]
        self._by_id = {e.id: e for e in self.episodes}
        self._videos: OrderedDict[str, _OpenVideo] = OrderedDict()
        self._actions: dict[str, dict[str, np.ndarray]] = {}
        self._pid = os.getpid()
        self.decoded_frames = 0  # frames decoded by the last read_frames (seek cost included)

    def __len__(self) -> int:
        return len(self.episodes)

    def episode(self, episode_id: str) -> EpisodeRecord:
        try:
            return self._by_id[episode_id]
        except KeyError:
            raise KeyError(f"unknown episode {episode_id!r} in store {self.root}") from None

    # -- pickling / processes: never share an open container (or its file offset) across processes ------------
    def __getstate__(self) -> dict:
        state = self.__dict__.copy()
        state["_videos"], state["_actions"] = OrderedDict(), {}
        return state

    def _own_handles(self) -> None:
        if self._pid != os.getpid():  # forked after opening: this process opens its own videos
            # Never free the parent's: their ffmpeg objects may reference threads that do not exist in this process.
            _INHERITED.append(self._videos)
            self._videos, self._actions, self._pid = OrderedDict(), {}, os.getpid()

    def _video(self, record: EpisodeRecord) -> _OpenVideo:
        self._own_handles()
        video = self._videos.pop(record.id, None)
        if video is None:
            video = _OpenVideo(self.root / record.video)
            while len(self._videos) >= self.max_open:
                self._videos.popitem(last=False)[1].close()
        self._videos[record.id] = video
        return video

    def close(self) -> None:
        self._own_handles()
        for video in self._videos.values():
            video.close()
        self._videos.clear()

    # -- reading ---------------------------------------------------------------------------------------------
    def read_actions(self, episode_id: str) -> dict[str, np.ndarray]:
        """The env actions of an episode: buttons (T, 20) uint8, camera (T, 2) float32, is_null, esc (T,) bool."""
        record = self.episode(episode_id)
        if episode_id not in self._actions:
            with np.load(self.root / record.actions) as npz:
                self._actions[episode_id] = {k: npz[k] for k in npz.files}
        return self._actions[episode_id]

    def read_segmentation(self, episode_id: str, start: int, length: int) -> dict[str, np.ndarray] | None:
        """Segmentation of frames ``[start, start + length)``: mask (length, h, w) bool, object_id int32,
        interaction int8, valid bool (length,); None when the episode has no segmentation."""
        record = self.episode(episode_id)
        path = self.root / _segmentation_rel(episode_id)
        if not path.is_file():
            return None
        if start < 0 or length < 0 or start + length > record.length:
            raise IndexError(f"episode {episode_id!r}: segmentation frames [{start}, {start + length}) out of range "
                             f"[0, {record.length})")
        # Not cached: masks are large; decompressing one episode's costs about as much as decoding a few frames.
        with np.load(path, allow_pickle=False) as npz:
            missing = [k for k in ("mask", "object_id", "interaction", "valid") if k not in npz.files]
            if missing:
                raise SegmentationError(f"{path} (episode {episode_id!r}): missing {missing}")
            out = {k: npz[k][start:start + length] for k in ("object_id", "interaction", "valid")}
            if len(npz["valid"]) != record.length:
                raise SegmentationError(f"{path} (episode {episode_id!r}): {len(npz['valid'])} frames, the "
                                        f"manifest says {record.length}")
            out["mask"] = npz["mask"][start:start + length] if length else np.zeros((0, *self.resolution), np.bool_)
        return out

    def read_frames(self, episode_id: str, start: int, length: int) -> np.ndarray:
        """Frames ``[start, start + length)`` of an episode as uint8 ``(length, H, W, 3)``.

        Seeks to the keyframe at or before ``start`` and decodes forward from there.
        """
        record = self.episode(episode_id)
        if start < 0 or length < 0 or start + length > record.length:
            raise IndexError(f"episode {episode_id!r}: frames [{start}, {start + length}) out of range "
                             f"[0, {record.length})")
        h, w = self.resolution
        out = np.empty((length, h, w, 3), np.uint8)
        if length == 0:
            return out
        video = self._video(record)
        self.decoded_frames = 0
        keyframe = start - start % self.chunk_size
        got = self._decode_into(video, keyframe, start, out)
        if got < 0:  # the seek landed after `start` (unexpected file layout): decode from the beginning instead
            got = self._decode_into(video, 0, start, out)
        if got != length:
            raise RuntimeError(f"episode {episode_id!r} ({self.root / record.video}): decoded only {max(got, 0)} of "
                               f"frames [{start}, {start + length}); the video is shorter than the manifest says")
        return out

    def _decode_into(self, video: _OpenVideo, keyframe: int, start: int, out: np.ndarray) -> int:
        """Seek to frame ``keyframe``, decode, fill ``out`` with frames from ``start``. Returns the number filled,
        or -1 if the first decoded frame is already past ``start``."""
        keyframe_pts = video.start + int(Fraction(keyframe, self.fps) / video.time_base)
        video.container.seek(keyframe_pts, stream=video.stream, backward=True, any_frame=False)
        filled, end = 0, start + len(out)
        for frame in video.container.decode(video.stream):
            self.decoded_frames += 1
            index = round(float((frame.pts - video.start) * video.time_base) * self.fps)
            if filled == 0 and index > start:
                return -1
            if index < start:
                continue
            out[index - start] = video.reformatter.reformat(frame, format="rgb24", threads=1).to_ndarray()
            filled += 1
            if index + 1 >= end:
                break
        return filled
