"""Video IO in one place (PyAV): writing RGB frames into an H.264 mp4 (the store's encoder, the recorders of envs/,
the eval's episode video) and opening a stored episode's mp4 for decoding (the store's reader), byte ranges of a
shard read with ``pread``."""

from __future__ import annotations

import io
import os
from fractions import Fraction
from pathlib import Path
from typing import Any

import av
import numpy as np
from av.video.reformatter import VideoReformatter

__all__ = ["ByteRange", "H264Writer", "OpenVideo"]


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


class ByteRange(io.RawIOBase):
    """A read-only file object over bytes ``[offset, offset + size)`` of an open file descriptor (``pread``: no
    shared file position, so any number of these can read one shard at once)."""

    def __init__(self, fd: int, offset: int, size: int) -> None:
        super().__init__()
        self.fd, self.offset, self.size, self.pos = fd, offset, size, 0

    def readable(self) -> bool:
        return True

    def seekable(self) -> bool:
        return True

    def readinto(self, buffer: Any) -> int:
        n = max(0, min(len(buffer), self.size - self.pos))
        if n == 0:
            return 0
        got = os.preadv(self.fd, [memoryview(buffer)[:n]], self.offset + self.pos)
        self.pos += got
        return got

    def seek(self, offset: int, whence: int = io.SEEK_SET) -> int:
        base = {io.SEEK_SET: 0, io.SEEK_CUR: self.pos, io.SEEK_END: self.size}[whence]
        self.pos = max(0, base + offset)
        return self.pos

    def tell(self) -> int:
        return self.pos


class OpenVideo:
    """An open mp4 container of one episode and its video stream (one per episode per process)."""

    def __init__(self, source: ByteRange) -> None:
        self.container = av.open(source, mode="r")
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
