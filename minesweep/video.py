"""Writing video: RGB frames into an H.264 mp4 (PyAV). Used by the store's encoder, the recorders of envs/ and the
eval's episode video, so that none of them imports another's module for it."""

from __future__ import annotations

import io
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np

__all__ = ["H264Writer"]


class H264Writer:
    """Streams RGB uint8 frames into an H.264 (yuv420p) mp4, frame ``i`` at pts ``i`` with time base ``1/fps``.

    ``target``: a path or a seekable binary file object (e.g. ``io.BytesIO``).
    ``gop``: if given, a keyframe exactly every ``gop`` frames (no scene-cut keyframes in between).
    """

    def __init__(
        self,
        target: str | Path | io.BytesIO,
        width: int,
        height: int,
        fps: int = 20,
        gop: int | None = None,
        crf: int = 18,
        preset: str = "veryfast",
    ) -> None:
        name = target if isinstance(target, (str, Path)) else "<memory>"
        if width % 2 or height % 2:
            raise ValueError(f"{name}: H.264 yuv420p needs even width and height, got {width}x{height}")
        self.name, self.width, self.height = str(name), width, height
        self.count = 0
        self._container = av.open(str(target) if isinstance(target, (str, Path)) else target, mode="w", format="mp4")
        # mbtree=0: with MB-tree on, libx264 (as bundled with PyAV) encodes small frames (64x64) differently from
        # run to run depending on heap contents; without it the output is reproducible, at a small size cost.
        x264_params = ["mbtree=0"]
        if gop is not None:
            x264_params.append(f"keyint={gop}:min-keyint={gop}:scenecut=0")
        # threads=1: frame-threaded x264 output depends on timing; one thread per encoder keeps a store's bytes
        # (and so its checksums) identical from run to run. Ingest parallelises over episodes instead.
        options = {"crf": str(crf), "preset": preset, "x264-params": ":".join(x264_params), "threads": "1"}
        self._stream = self._container.add_stream("libx264", rate=fps, options=options)
        self._stream.width, self._stream.height, self._stream.pix_fmt = width, height, "yuv420p"
        # Frames carry pts in 1/fps; the mp4 muxer picks its own stream time base once the header is written.
        self._time_base = Fraction(1, fps)
        self._stream.time_base = self._time_base
        if gop is not None:
            self._stream.codec_context.gop_size = gop

    def write(self, frame: np.ndarray) -> None:
        if frame.shape != (self.height, self.width, 3) or frame.dtype != np.uint8:
            raise ValueError(
                f"{self.name}: frame {self.count} is {frame.dtype}{list(frame.shape)}, "
                f"expected uint8[{self.height}, {self.width}, 3]"
            )
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
