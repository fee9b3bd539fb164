"""Import a dataset converted for MineStudio (CraftJarvis/MineStudio, ``minestudio/data/minecraft``) into our store.

The layout, as MineStudio's converter (``tools/convertion.py``) writes it and its reader (``core.py``,
``callbacks/image.py``, ``callbacks/action.py``) reads it::

    SRC/
      image/ (or video/)   part-*/   one LMDB environment each (data.mdb)
      action/              part-*/
      event/               (optional) one LMDB environment of events, written by MineStudio's event converter
      meta_info/, ...      (other modalities: not imported)

In every LMDB environment:

* ``"__chunk_size__"`` -> pickled int (32), ``"__num_episodes__"`` and ``"__num_total_frames__"`` -> pickled ints,
  ``"__chunk_infos__"`` -> pickled list of ``{"episode": name, "episode_idx": i, "num_frames": n}``;
* ``str((episode_idx, chunk_start)).encode()`` -> one chunk of ``chunk_size`` frames starting at frame
  ``chunk_start`` (0, 32, 64, ...). ``episode_idx`` is local to that LMDB environment: modalities are joined by
  the episode *name*.
* image chunks are the bytes of a small mp4 (H.264, RGB frames as ``av`` decodes them with ``format="rgb24"``);
  action chunks are a pickled dict of arrays, one row per frame: the 20 button keys of the VPT action space
  (``attack``, ``forward``, ..., ``hotbar.1``..``hotbar.9``), ``camera`` ``(n, 2)`` in degrees ``[pitch, yaw]``,
  and, from the OpenAI contractor converter, also ``ESC``, ``swapHands`` and ``pickItem``.

The ``event`` environment holds ``"__event_info__"`` -> pickled ``{name: {"__num_items__": n, ...}}``, an optional
``"__codebook__"`` -> pickled ``{episode name: id}``, and ``str((name, i))`` -> pickled ``(episode or its id, frame,
value)`` for ``i < n``. Each item becomes the event ``(frame, name)`` of that episode (the store's events,
:mod:`minesweep.data.events`; MineStudio's reader also drops events before frame 128 as "dirty": here they are kept,
and ``data.events`` sampling decides). An item that is missing, unreadable or outside its episode is noted in the
report, never silently dropped; the episode is imported with its other events.

MineStudio's converter keeps only whole chunks, and its ``num_frames`` counts whole chunks. This importer keeps
every frame it finds: a final chunk shorter than ``chunk_size`` is imported, and chunks stored past
``num_frames`` too (noted in the report). MineStudio frames already carry the GUI cursor (its converter draws it),
so nothing is drawn here.

Pickles are read with a restricted unpickler: plain data and numpy arrays only, never arbitrary code.
Each bad episode (missing modality or chunk, undecodable chunk, bad action pickle, frame/action count mismatch) is
reported with the reason and the frame where it applies; the other episodes are imported.
"""

from __future__ import annotations

import io
import json
import pickle
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import av
import numpy as np
from av.video.reformatter import VideoReformatter

from minesweep.actions.contractor import MOUSE_COUNTS_TO_DEGREES, NUMBER_LIMITS
from minesweep.actions.space import BUTTONS
from minesweep.data.ingest.resize import resize_bilinear
from minesweep.data.store import EpisodeLengthError, StoreWriter

#: The contractor bound on mouse counts per step, in degrees (1500: over four turns in a step is a glitch).
CAMERA_LIMIT_DEGREES = NUMBER_LIMITS["mouse.dx"] * MOUSE_COUNTS_TO_DEGREES

__all__ = ["ImportReport", "MineStudioFormatError", "import_minestudio", "restricted_loads", "REPORT"]

REPORT = "import_report.json"
IMAGE_MODALITIES = ("image", "video")  # MineStudio's ImageKernelCallback accepts either folder name
ACTION_MODALITY = "action"
EVENT_MODALITY = "event"
META_KEYS = ("__chunk_size__", "__chunk_infos__", "__num_episodes__", "__num_total_frames__")
_DECODE_ERRORS = (av.error.FFmpegError, OSError, ValueError, EOFError, RuntimeError, StopIteration)

# MineStudio's action dicts use the MineRL env key names, which are ours (BUTTONS); map them explicitly anyway so
# a renamed key fails loudly instead of shifting columns.
BUTTON_KEYS: dict[str, int] = {name: i for i, name in enumerate(BUTTONS)}
# Keys outside BUTTONS: ESC goes to the store's ``esc``; swapHands and pickItem are dropped (as VPT's
# ActionTransformer drops them) but, as in the reference, a step pressing them is not null.
_ESC_KEY = "ESC"
_EXTRA_INPUT_KEYS = ("swapHands", "pickItem")


class MineStudioFormatError(ValueError):
    """The MineStudio dataset (or one of its episodes) does not have the expected layout."""

    def __init__(self, message: str, frame: int | None = None, file: Path | None = None) -> None:
        super().__init__(message)
        self.frame, self.file = frame, file


@dataclass
class ImportReport:
    """Like :class:`minesweep.data.ingest.contractor.IngestReport`, plus notes on imported episodes."""

    src: str
    dst: str
    ingested: list[str] = field(default_factory=list)
    skipped: list[dict] = field(default_factory=list)  # {episode, file, reason, frame (int or None)}
    notes: list[dict] = field(default_factory=list)  # {episode, note}: imported, but worth knowing

    def skip(self, episode: str, file: Path | str, reason: str, frame: int | None = None) -> None:
        self.skipped.append({"episode": episode, "file": str(file), "reason": reason, "frame": frame})

    def to_json(self) -> str:
        return json.dumps(asdict(self), indent=1)


# --------------------------------------------------------------------------- restricted pickles

_ALLOWED_GLOBALS = {
    # numpy arrays and scalars, numpy 1.x and 2.x module names (pickle protocols 2-5)
    *((m, n) for m in ("numpy.core.multiarray", "numpy._core.multiarray") for n in ("_reconstruct", "scalar")),
    ("numpy.core.numeric", "_frombuffer"),
    ("numpy._core.numeric", "_frombuffer"),
    ("numpy", "ndarray"),
    ("numpy", "dtype"),
    ("_codecs", "encode"),  # protocol 2 stores bytes as latin-1 text re-encoded by this
    ("collections", "OrderedDict"),
    # protocols 0-2 name builtins "__builtin__" (Python 2); Unpickler.find_class maps them to builtins
    *((m, n) for m in ("builtins", "__builtin__") for n in ("set", "frozenset", "bytearray", "complex")),
}


class _DataOnlyUnpickler(pickle.Unpickler):
    """Unpickles plain data and numpy arrays only: any other global (a class or function) is refused."""

    def find_class(self, module: str, name: str) -> Any:
        if (module, name) not in _ALLOWED_GLOBALS:
            raise pickle.UnpicklingError(
                f"refusing to load {module}.{name}: MineStudio chunks hold only plain data and numpy arrays"
            )
        return super().find_class(module, name)


def restricted_loads(data: bytes) -> Any:
    """``pickle.loads`` limited to plain data and numpy arrays (never runs code from the pickle)."""
    return _DataOnlyUnpickler(io.BytesIO(data)).load()


# --------------------------------------------------------------------------- LMDB parts


@dataclass
class _EpisodeRef:
    part: Path  # the LMDB environment folder
    env: Any  # its open lmdb.Environment
    idx: int  # episode_idx inside that environment
    num_frames: int
    chunk_size: int


def _part_dirs(folder: Path) -> list[Path]:
    return sorted(p for p in folder.iterdir() if p.is_dir() and (p / "data.mdb").is_file())


def _load_part(part: Path, envs: list, modality: str, refs: dict[str, _EpisodeRef], report: ImportReport) -> None:
    """Open one LMDB environment (once: lmdb refuses a second open in the same process) and index its episodes."""
    import lmdb

    try:
        env = lmdb.open(str(part), readonly=True, lock=False, readahead=False, subdir=True)
    except lmdb.Error as err:
        report.skip("*", part, f"cannot open the LMDB environment: {err}")
        return
    envs.append(env)
    try:
        with env.begin() as txn:
            meta = {}
            for key in META_KEYS:
                raw = txn.get(key.encode())
                if raw is None:
                    raise MineStudioFormatError(f"no {key!r} key: not a MineStudio {modality} part")
                meta[key] = restricted_loads(raw)
        chunk_size = int(meta["__chunk_size__"])
        infos = meta["__chunk_infos__"]
        if chunk_size <= 0 or not isinstance(infos, list):
            raise MineStudioFormatError(
                f"bad metadata: __chunk_size__={chunk_size!r}, __chunk_infos__ is {type(infos).__name__}"
            )
    except (MineStudioFormatError, pickle.UnpicklingError, EOFError, TypeError, ValueError, lmdb.Error) as err:
        report.skip("*", part, f"{modality} part unreadable, all its episodes are lost: {err}")
        return
    for n, info in enumerate(infos):
        try:
            name, idx, num_frames = str(info["episode"]), int(info["episode_idx"]), int(info["num_frames"])
        except (KeyError, TypeError, ValueError) as err:
            report.skip(
                "*",
                part,
                f"__chunk_infos__[{n}] is not {{episode, episode_idx, num_frames}}: {info!r} "
                f"({type(err).__name__}: {err})",
            )
            continue
        if name in refs:
            report.skip(name, part, f"episode also in {refs[name].part} ({modality}): the duplicate is ignored")
            continue
        refs[name] = _EpisodeRef(part, env, idx, num_frames, chunk_size)


def _chunks(ref: _EpisodeRef, modality: str) -> Iterator[tuple[int, bytes]]:
    """``(chunk_start, bytes)`` for consecutive chunks from frame 0 until a key is missing. Raises if that happens
    before ``num_frames`` is covered."""
    start = 0
    with ref.env.begin(buffers=False) as txn:
        while True:
            key = str((ref.idx, start))
            raw = txn.get(key.encode())
            if raw is None:
                if start < ref.num_frames:
                    raise MineStudioFormatError(
                        f"{modality} chunk {key} is missing ({ref.part}; the metadata says {ref.num_frames} frames)",
                        frame=start,
                        file=ref.part,
                    )
                return
            yield start, raw
            start += ref.chunk_size


def _read_events(folder: Path, report: ImportReport) -> dict[str, list[tuple[int, str]]]:
    """Every event of the ``event`` LMDB environment (module docstring), by episode name: ``[(frame, name), ...]``."""
    import lmdb

    events: dict[str, list[tuple[int, str]]] = {}
    if not (folder / "data.mdb").is_file():
        report.notes.append({"episode": "*", "note": f"{folder} holds no LMDB environment: no events imported"})
        return events
    try:
        env = lmdb.open(str(folder), readonly=True, lock=False, readahead=False, subdir=True)
    except lmdb.Error as err:
        report.notes.append({"episode": "*", "note": f"{folder}: cannot open the event LMDB ({err}): no events"})
        return events
    try:
        with env.begin() as txn:
            try:
                info = restricted_loads(txn.get(b"__event_info__") or b"")
                codebook_raw = txn.get(b"__codebook__")
                codebook = {} if codebook_raw is None else restricted_loads(codebook_raw)
                if not isinstance(info, dict) or not isinstance(codebook, dict):
                    raise TypeError("__event_info__ and __codebook__ must be dicts")
            except (pickle.UnpicklingError, EOFError, TypeError, ValueError) as err:
                report.notes.append({"episode": "*", "note": f"{folder}: unreadable event index ({err}): no events"})
                return events
            names_by_id = {str(v): str(k) for k, v in codebook.items()}
            for name in sorted(info):
                try:
                    count = int(info[name]["__num_items__"])
                except (KeyError, TypeError, ValueError):
                    report.notes.append({"episode": "*", "note": f"{folder}: event {name!r} has no __num_items__"})
                    continue
                for i in range(count):
                    key = str((name, i))
                    raw = txn.get(key.encode())
                    if raw is None:
                        report.notes.append({"episode": "*", "note": f"{folder}: event item {key} is missing"})
                        continue
                    try:
                        episode, frame, _value = restricted_loads(raw)
                        frame = int(frame)
                    except (pickle.UnpicklingError, EOFError, TypeError, ValueError) as err:
                        report.notes.append({"episode": "*", "note": f"{folder}: event item {key} unreadable: {err}"})
                        continue
                    episode = names_by_id.get(str(episode), str(episode)) if codebook else str(episode)
                    events.setdefault(episode, []).append((frame, str(name)))
    finally:
        env.close()
    return events


def _episode_events(name: str, length: int, found: list[tuple[int, str]], report: ImportReport) -> list:
    """The events of an imported episode within its ``length`` frames; the others are noted."""
    inside = [(f, n) for f, n in found if 0 <= f < length]
    if len(inside) < len(found):
        outside = sorted({f for f, _ in found if not 0 <= f < length})
        report.notes.append(
            {
                "episode": name,
                "note": f"{len(found) - len(inside)} event(s) at frames {outside[:5]} outside its "
                f"{length} frames were not imported",
            }
        )
    return inside


# --------------------------------------------------------------------------- one episode


def _action_chunk(raw: bytes, start: int, part: Path) -> dict[str, np.ndarray]:
    """Decode one pickled action chunk into (buttons, camera, esc, is_null) arrays of equal length."""
    try:
        data = restricted_loads(raw)
    except (pickle.UnpicklingError, EOFError, TypeError, ValueError, AttributeError, IndexError) as err:
        raise MineStudioFormatError(
            f"action chunk at frame {start} ({part}) cannot be unpickled: {type(err).__name__}: {err}",
            frame=start,
            file=part,
        ) from err
    if not isinstance(data, dict):
        raise MineStudioFormatError(
            f"action chunk at frame {start} ({part}) is a {type(data).__name__}, expected a dict of arrays",
            frame=start,
            file=part,
        )
    missing = [k for k in (*BUTTON_KEYS, "camera") if k not in data]
    if missing:
        raise MineStudioFormatError(
            f"action chunk at frame {start} ({part}) has no {missing} (keys: {sorted(map(str, data))})",
            frame=start,
            file=part,
        )
    camera = np.asarray(data["camera"])
    n = len(camera)
    if camera.shape != (n, 2) or not np.issubdtype(camera.dtype, np.number) or not np.isfinite(camera).all():
        raise MineStudioFormatError(
            f"action chunk at frame {start} ({part}): 'camera' must be finite numbers of "
            f"shape (n, 2), got {camera.dtype}{list(camera.shape)}",
            frame=start,
            file=part,
        )
    if (np.abs(camera) > CAMERA_LIMIT_DEGREES).any():
        bad = int(np.flatnonzero((np.abs(camera) > CAMERA_LIMIT_DEGREES).any(1))[0])
        raise MineStudioFormatError(
            f"action chunk at frame {start} ({part}): 'camera' {camera[bad].tolist()} at "
            f"frame {start + bad} is out of range (|degrees| <= {CAMERA_LIMIT_DEGREES:g})",
            frame=start,
            file=part,
        )

    def column(key: str) -> np.ndarray:
        value = np.asarray(data[key])
        if value.shape not in ((n,), (n, 1)) or not (np.issubdtype(value.dtype, np.number) or value.dtype == np.bool_):
            raise MineStudioFormatError(
                f"action chunk at frame {start} ({part}): {key!r} has "
                f"{value.dtype}{list(value.shape)}, expected {n} numbers like 'camera'",
                frame=start,
                file=part,
            )
        return value.reshape(n) != 0

    buttons = np.zeros((n, len(BUTTONS)), np.uint8)
    for key, col in BUTTON_KEYS.items():
        buttons[:, col] = column(key)
    esc = column(_ESC_KEY) if _ESC_KEY in data else np.zeros(n, bool)
    other = np.zeros(n, bool)
    for key in _EXTRA_INPUT_KEYS:
        if key in data:
            other |= column(key)
    is_null = ~(buttons.any(1) | esc | other | (camera != 0).any(1))
    return {"buttons": buttons, "camera": camera.astype(np.float32), "esc": esc, "is_null": is_null}


def _decode_chunk(raw: bytes, start: int, part: Path, reformatter: VideoReformatter) -> np.ndarray:
    try:
        with av.open(io.BytesIO(raw), "r") as container:
            if not container.streams.video:
                raise ValueError("no video stream")
            frames = [
                reformatter.reformat(f, format="rgb24").to_ndarray()
                for f in container.decode(container.streams.video[0])
            ]
    except _DECODE_ERRORS as err:
        raise MineStudioFormatError(
            f"video chunk at frame {start} ({part}) cannot be decoded: {type(err).__name__}: {err}",
            frame=start,
            file=part,
        ) from err
    if not frames:
        raise MineStudioFormatError(f"video chunk at frame {start} ({part}) has no frames", frame=start, file=part)
    return np.stack(frames)


def _check_chunk_length(n: int, start: int, chunk_size: int, last: bool, what: str, part: Path) -> None:
    # Only the final chunk may be short: a short chunk in the middle would shift every later frame.
    if n > chunk_size or (n < chunk_size and not last):
        raise MineStudioFormatError(
            f"{what} chunk at frame {start} ({part}) has {n} frames; chunks hold "
            f"{chunk_size} (only the last one may hold fewer)",
            frame=start,
            file=part,
        )


def _episode_actions(ref: _EpisodeRef) -> tuple[dict[str, np.ndarray], list[int]]:
    chunks = [(start, _action_chunk(raw, start, ref.part)) for start, raw in _chunks(ref, ACTION_MODALITY)]
    lengths = [len(c["buttons"]) for _, c in chunks]
    for i, ((start, _), n) in enumerate(zip(chunks, lengths, strict=False)):
        _check_chunk_length(n, start, ref.chunk_size, i == len(chunks) - 1, "action", ref.part)
    if not chunks:
        raise MineStudioFormatError(f"no action chunks ({ref.part})", frame=0, file=ref.part)
    actions = {k: np.concatenate([c[k] for _, c in chunks]) for k in chunks[0][1]}
    return actions, lengths


def _episode_frames(ref: _EpisodeRef, action_lengths: list[int], resolution: tuple[int, int]) -> Iterator[np.ndarray]:
    """Decoded, resized frame batches, one per chunk, each checked against the action chunk of the same start."""
    reformatter = VideoReformatter()
    raw_chunks = list(_chunks(ref, "video"))  # keys only checked here; bytes are small (a few KB per chunk)
    for i, (start, raw) in enumerate(raw_chunks):
        frames = _decode_chunk(raw, start, ref.part, reformatter)
        _check_chunk_length(len(frames), start, ref.chunk_size, i == len(raw_chunks) - 1, "video", ref.part)
        if i >= len(action_lengths) or len(frames) != action_lengths[i]:
            actions = action_lengths[i] if i < len(action_lengths) else 0
            raise MineStudioFormatError(
                f"video chunk at frame {start} has {len(frames)} frames but the action chunk has {actions}",
                frame=start,
                file=ref.part,
            )
        if frames.shape[1:3] != resolution:
            frames = resize_bilinear(frames, resolution)
        yield frames
    if len(raw_chunks) < len(action_lengths):
        start = len(raw_chunks) * ref.chunk_size
        raise MineStudioFormatError(
            f"the video ends at frame {start} but there are {sum(action_lengths)} actions", frame=start, file=ref.part
        )


def _store_id(name: str) -> str:
    """A store episode id: path separators and NULs replaced, no leading dot."""
    out = name.replace("/", "__").replace("\\", "__").replace("\0", "_")
    return "_" + out[1:] if out.startswith(".") else out


def _import_one(
    writer: StoreWriter,
    name: str,
    video: _EpisodeRef,
    action: _EpisodeRef,
    report: ImportReport,
    events: list[tuple[int, str]],
) -> None:
    import lmdb

    if video.chunk_size != action.chunk_size:
        report.skip(name, video.part, f"chunk sizes differ: video {video.chunk_size}, action {action.chunk_size}")
        return
    try:
        actions, lengths = _episode_actions(action)
        total = sum(lengths)
        writer.add_episode(
            _store_id(name),
            _episode_frames(video, lengths, writer.resolution),
            actions,
            source=f"minestudio:{name}",
            events=_episode_events(name, total, events, report),
        )
    except MineStudioFormatError as err:
        report.skip(name, err.file or video.part, str(err), frame=err.frame)
        return
    except EpisodeLengthError as err:  # the writer's own count check (kept as a safety net)
        report.skip(name, video.part, str(err), frame=min(err.frames, err.actions))
        return
    except lmdb.Error as err:  # a damaged LMDB file: lose this episode, try the others
        report.skip(name, video.part, f"LMDB read error: {type(err).__name__}: {err}")
        return
    except ValueError as err:  # invalid or duplicate episode id
        report.skip(name, video.part, str(err))
        return
    report.ingested.append(name)
    expected = max(video.num_frames, action.num_frames)
    if total != expected:
        report.notes.append(
            {
                "episode": name,
                "note": f"imported {total} frames; the MineStudio metadata says "
                f"{video.num_frames} (video) / {action.num_frames} (action)",
            }
        )


# --------------------------------------------------------------------------- entry point


def import_minestudio(
    src_dir: str | Path,
    dst_dir: str | Path,
    resolution: tuple[int, int] = (128, 128),
    fps: int = 20,
    print_summary: bool = True,
) -> ImportReport:
    """Import every episode of the MineStudio dataset folder ``src_dir`` into a new store at ``dst_dir``.

    Frames are resized to ``resolution = (h, w)`` (OpenCV-exact bilinear) when they differ. The report is
    returned, written to ``<dst>/import_report.json`` and (``print_summary``) printed.
    """
    import lmdb  # noqa: F401  (fail early, before creating the store, if it is not installed)

    src, dst = Path(src_dir), Path(dst_dir)
    if not src.is_dir():
        raise FileNotFoundError(f"source folder {src} does not exist")
    image_dirs = [src / m for m in IMAGE_MODALITIES if (src / m).is_dir()]
    if not image_dirs or not (src / ACTION_MODALITY).is_dir():
        found = sorted(p.name for p in src.iterdir() if p.is_dir())
        raise MineStudioFormatError(
            f"{src} is not a MineStudio dataset: expected an 'image' (or 'video') and an "
            f"'action' folder of LMDB parts, found {found}"
        )
    report = ImportReport(src=str(src), dst=str(dst))
    envs: list = []
    try:
        videos: dict[str, _EpisodeRef] = {}
        actions: dict[str, _EpisodeRef] = {}
        for folder in image_dirs:
            for part in _part_dirs(folder):
                _load_part(part, envs, "video", videos, report)
        for part in _part_dirs(src / ACTION_MODALITY):
            _load_part(part, envs, ACTION_MODALITY, actions, report)
        events = _read_events(src / EVENT_MODALITY, report) if (src / EVENT_MODALITY).is_dir() else {}
        for name in sorted(events.keys() - (videos.keys() & actions.keys())):
            report.notes.append({"episode": name, "note": f"{len(events[name])} event(s) of an episode not imported"})
        with StoreWriter(dst, resolution=resolution, fps=fps) as writer:
            for name in sorted(videos.keys() | actions.keys()):
                if name not in actions:
                    report.skip(name, videos[name].part, "no action data for this episode")
                elif name not in videos:
                    report.skip(name, actions[name].part, "no video data for this episode")
                else:
                    _import_one(writer, name, videos[name], actions[name], report, events.get(name, []))
    finally:
        for env in envs:
            env.close()
    (dst / REPORT).write_text(report.to_json())
    if print_summary:
        print_report(report)
    return report


def print_report(report: ImportReport) -> None:
    """Summary table of an import (rich)."""
    from rich.console import Console
    from rich.table import Table

    console = Console()
    summary = (
        f"imported {len(report.ingested)} episode(s) from {report.src} into {report.dst}; skipped {len(report.skipped)}"
    )
    if not console.is_terminal:
        # A log file: plain tab-separated lines, never wrapped, so names and paths stay whole for grep.
        print(summary)
        if report.skipped:
            print("skipped\nepisode\tfile\tframe\treason")
            for s in report.skipped:
                print(f"{s['episode']}\t{s['file']}\t{'' if s['frame'] is None else s['frame']}\t{s['reason']}")
        for note in report.notes:
            print(f"note: {note['episode']}: {note['note']}")
        return
    console.print(summary)
    if report.skipped:
        table = Table(title="skipped")
        for column in ("episode", "file", "frame", "reason"):
            table.add_column(column, overflow="fold")
        for s in report.skipped:
            table.add_row(s["episode"], s["file"], "" if s["frame"] is None else str(s["frame"]), s["reason"])
        console.print(table)
    for note in report.notes:
        console.print(f"note: {note['episode']}: {note['note']}")
