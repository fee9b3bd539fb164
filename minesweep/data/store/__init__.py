"""The training store: episodes packed into a few large shard files, with an index for one-seek window reads.

Layout of a store folder::

    manifest.json     dataset facts: format/action-space version, fps, resolution, codec, chunk size, where the
                      actions come from (``labels``: "human", or "idm:<checkpoint hash>" for a pseudo-labelled
                      store, whose actions then carry a per-frame ``label_confidence``), counts, and every shard's
                      size and sha256. Written last: a folder without it is an unfinished ingest.
    index.npy         one row per episode (id, length, shard, byte ranges): what readers load, memory-mapped,
                      so a worker holds only the pages it touches, never the whole dataset's metadata.
    episodes.jsonl    the same rows plus each episode's sha256 and source file, one JSON line per episode,
                      appended as ingest goes: the journal a killed ingest resumes from.
    shards/shard-NNNNN.bin
                      episodes back to back: the video bytes, the actions (an uncompressed .npz), and, for
                      episodes that have the segmentation modality, its masks (bit-packed rows, one per frame,
                      so a window's masks are one read; the per-frame ids are in the actions .npz).

Integrity (format 4): every read is checked against a checksum per decoding unit (CRC32 of each h264 GOP, XXH3-64
of each raw frame and mask row: ``_unit_hashes``), so damaged bytes raise
:class:`CorruptDataError` instead of decoding into wrong frames or actions. The units are: each ``chunk_size``-frame
GOP of an h264 video (the bytes from its keyframe to the next; a window decodes whole GOPs) plus the container
metadata around them, checked when a video is opened; each frame of a raw video and each mask row (a window reads
exactly its frames, so per-frame sums never make a read bigger); the actions block as a whole (read once per
episode, then cached). The per-unit sums live in the actions .npz (``integrity.*`` arrays, never returned by
:meth:`EpisodeStore.read_actions`); the actions block's own CRC is in the index row. The sha256 sums (per episode
in the index, per shard in the manifest) cover whole files and are checked by ``minesweep-data verify``.

Video codecs (one per store):

* ``h264``: each episode is an mp4 (H.264 yuv420p) with a keyframe exactly every ``chunk_size`` frames and pts =
  frame index, so a window ``[start, start + n)`` is one seek to the keyframe at or before ``start`` and at most
  ``chunk_size - 1`` frames decoded and thrown away. ~1.4 KB/frame at 128x128.
* ``raw``: uint8 frames ``(T, H, W, 3)``; a window is one ``pread``. 48 KB/frame at 128x128: tests, small data.

A store is appended to episode by episode (:class:`StoreWriter`); shards roll over at ``shard_size`` bytes, so a
dataset of millions of episodes is a few thousand files, not millions.

Modules: ``format`` (files, index rows, manifest, checksums, errors), ``encode`` (one episode into bytes), ``writer``
(:class:`StoreWriter`), ``reader`` (:class:`EpisodeStore`), ``verify`` (:func:`verify_store`).
"""

from minesweep.data.store.encode import EncodedEpisode, encode_episode
from minesweep.data.store.format import (
    ACTION_SPACE_VERSION,
    CODECS,
    DEFAULT_SHARD_SIZE,
    EVENT_DTYPE,
    EVENTS,
    FORMAT_VERSION,
    HUMAN_LABELS,
    INDEX,
    JOURNAL,
    LABEL_CONFIDENCE,
    MANIFEST,
    SHARDS,
    CorruptDataError,
    EpisodeLengthError,
    EpisodeRecord,
)
from minesweep.data.store.reader import EpisodeStore
from minesweep.data.store.verify import VerifyReport, verify_store
from minesweep.data.store.writer import StoreWriter

__all__ = [
    "ACTION_SPACE_VERSION",
    "CODECS",
    "DEFAULT_SHARD_SIZE",
    "EVENTS",
    "EVENT_DTYPE",
    "FORMAT_VERSION",
    "HUMAN_LABELS",
    "INDEX",
    "LABEL_CONFIDENCE",
    "JOURNAL",
    "MANIFEST",
    "SHARDS",
    "CorruptDataError",
    "EncodedEpisode",
    "EpisodeLengthError",
    "EpisodeRecord",
    "EpisodeStore",
    "StoreWriter",
    "VerifyReport",
    "encode_episode",
    "verify_store",
]
