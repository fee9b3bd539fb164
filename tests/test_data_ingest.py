"""ingest(): synthetic recordings round-trip into a store; every kind of bad input is skipped and reported."""

import json
import os
import shutil
import subprocess
import sys
from fractions import Fraction

import av
import numpy as np
import pytest

from minesweep.actions.contractor import contractor_to_env, read_jsonl
from minesweep.data.cli import main as cli_main
from minesweep.data.ingest.contractor import ingest
from minesweep.data.ingest.resize import resize_bilinear, resize_masks
from minesweep.data.recordings.synth import generate_recordings, write_synthetic_episode
from minesweep.data.store import EpisodeStore
from tests.conftest import REPO

SRC_W, SRC_H, RES = 96, 64, (48, 64)
GOOD = {"good-a": 40, "good-b": 50, "sub/good-c": 70}


def copy_episode(src, name, new):
    shutil.copy(src / f"{name}.mp4", src / f"{new}.mp4")
    shutil.copy(src / f"{name}.jsonl", src / f"{new}.jsonl")


def edit_jsonl(path, edit):
    lines = path.read_text().splitlines()
    path.write_text("\n".join(edit(lines)) + "\n")


def write_faststart_copy(src_mp4, dst_mp4):
    """Re-encode with the moov atom first, so a truncated file still opens and decodes some frames."""
    with av.open(str(src_mp4)) as c:
        frames = [f.to_ndarray(format="rgb24") for f in c.decode(video=0)]
    with av.open(str(dst_mp4), "w", format="mp4", options={"movflags": "faststart"}) as out:
        stream = out.add_stream("libx264", rate=20)
        stream.width, stream.height, stream.pix_fmt = SRC_W, SRC_H, "yuv420p"
        for i, frame in enumerate(frames):
            vf = av.VideoFrame.from_ndarray(frame, format="rgb24")
            vf.pts, vf.time_base = i, Fraction(1, 20)
            out.mux(stream.encode(vf))
        out.mux(stream.encode(None))


@pytest.fixture(scope="module")
def src(tmp_path_factory):
    src = tmp_path_factory.mktemp("raw")
    for i, (name, n) in enumerate(GOOD.items()):
        (src / name).parent.mkdir(parents=True, exist_ok=True)
        write_synthetic_episode((src / name).parent, (src / name).name, n, seed=i, width=SRC_W, height=SRC_H)

    copy_episode(src, "good-a", "truncated")  # moov at the end: cannot even be opened
    data = (src / "truncated.mp4").read_bytes()
    (src / "truncated.mp4").write_bytes(data[: len(data) // 2])

    write_faststart_copy(src / "good-b.mp4", src / "cut-short.mp4")  # opens, decodes part, then stops
    shutil.copy(src / "good-b.jsonl", src / "cut-short.jsonl")
    data = (src / "cut-short.mp4").read_bytes()
    (src / "cut-short.mp4").write_bytes(data[: int(len(data) * 0.6)])

    copy_episode(src, "good-a", "bad-line")
    edit_jsonl(src / "bad-line.jsonl", lambda lines: lines[:4] + ["{not json"] + lines[5:])

    copy_episode(src, "good-a", "missing-key")

    def drop_dx(lines):
        step = json.loads(lines[3])
        del step["mouse"]["dx"]
        return lines[:3] + [json.dumps(step)] + lines[4:]

    edit_jsonl(src / "missing-key.jsonl", drop_dx)

    copy_episode(src, "good-a", "mismatch")
    edit_jsonl(src / "mismatch.jsonl", lambda lines: lines[:-5])

    with av.open(str(src / "no-frames.mp4"), "w", format="mp4") as empty:  # a header, no frames
        stream = empty.add_stream("libx264", rate=20)
        stream.width, stream.height, stream.pix_fmt = SRC_W, SRC_H, "yuv420p"
        empty.start_encoding()
    shutil.copy(src / "good-a.jsonl", src / "no-frames.jsonl")

    copy_episode(src, "good-a", "no-steps")
    (src / "no-steps.jsonl").write_text("")

    shutil.copy(src / "good-a.mp4", src / "orphan-video.mp4")
    shutil.copy(src / "good-a.jsonl", src / "orphan-actions.jsonl")
    return src


@pytest.fixture(scope="module")
def ingested(src, tmp_path_factory):
    dst = tmp_path_factory.mktemp("ingested") / "store"
    return dst, ingest(src, dst, resolution=RES)


def test_good_episodes_round_trip(src, ingested):
    dst, report = ingested
    assert sorted(report.ingested) == ["good-a", "good-b", "sub__good-c"]
    store = EpisodeStore(dst)
    assert store.resolution == RES and store.fps == 20
    for name, n in GOOD.items():
        episode_id = name.replace("/", "__")
        record = store.episode(episode_id)
        assert record.length == n and record.source == f"{name}.mp4"
        jsonl = src / f"{name}.jsonl"
        expected = contractor_to_env(read_jsonl(jsonl), source=str(jsonl))
        actions = store.read_actions(episode_id)
        for key in ("buttons", "camera", "is_null", "esc"):
            np.testing.assert_array_equal(actions[key], getattr(expected, key))
        frames = store.read_frames(episode_id, 0, n)
        with av.open(str(src / f"{name}.mp4")) as c:
            source = resize_bilinear(np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)]), RES)
        assert np.abs(frames.astype(int) - source).mean() < 4  # only the store's re-encoding differs


def test_every_problem_is_reported_with_its_file(src, ingested):
    dst, report = ingested
    skipped = {s["episode"]: s for s in report.skipped}
    assert sorted(skipped) == sorted(
        [
            "truncated",
            "cut-short",
            "bad-line",
            "missing-key",
            "mismatch",
            "no-frames",
            "no-steps",
            "orphan-video",
            "orphan-actions",
        ]
    )

    def check(episode, file, *words, frame="any"):
        entry = skipped[episode]
        assert entry["file"] == str(src / file), entry
        for word in words:
            assert word in entry["reason"], entry
        if frame != "any":
            assert entry["frame"] == frame, entry

    check("truncated", "truncated.mp4", "decoded", frame=0)
    check("bad-line", "bad-line.jsonl", "bad-line.jsonl", "line 5", frame=4)
    check("missing-key", "missing-key.jsonl", "step 3", "mouse.dx", frame=3)
    check("mismatch", "mismatch.mp4", "40 frames", "35 steps", frame=35)
    check("no-frames", "no-frames.mp4", "no video stream", frame=0)
    check("no-steps", "no-steps.jsonl", "no steps")
    check("orphan-video", "orphan-video.mp4", "no matching .jsonl")
    check("orphan-actions", "orphan-actions.jsonl", "no matching .mp4")
    cut = skipped["cut-short"]
    assert cut["file"] == str(src / "cut-short.mp4") and 0 < cut["frame"] < GOOD["good-b"], cut

    on_disk = json.loads((dst / "ingest_report.json").read_text())
    assert on_disk["ingested"] == report.ingested and on_disk["skipped"] == report.skipped
    # nothing of a skipped episode is left in the store
    store = EpisodeStore(dst)
    assert [e.id for e in store.episodes] == ["good-a", "good-b", "sub__good-c"]
    last = store.episodes[2]
    assert (
        dst / "shards/shard-00000.bin"
    ).stat().st_size == last.actions_offset + last.actions_size + last.segmentation_size


def test_summary_table_lists_skipped(src, tmp_path, capsys):
    ingest(src, tmp_path / "store", resolution=RES)
    out = capsys.readouterr().out
    assert "ingested 3 episode(s)" in out and "9 problem(s)" in out
    assert "missing-key" in out and "orphan-video" in out


def test_cli_exit_codes(src, tmp_path):
    assert cli_main(["ingest", str(src), str(tmp_path / "a"), "--resolution", "48x64"]) == 0
    assert len(EpisodeStore(tmp_path / "a").episodes) == 3
    only_bad = tmp_path / "only-bad"
    only_bad.mkdir()
    for suffix in (".mp4", ".jsonl"):
        shutil.copy(src / f"mismatch{suffix}", only_bad / f"mismatch{suffix}")
    assert cli_main(["ingest", str(only_bad), str(tmp_path / "b")]) == 1
    assert cli_main(["ingest", str(tmp_path / "does-not-exist"), str(tmp_path / "c")]) == 1


def test_cli_synth_then_ingest(tmp_path):
    raw = tmp_path / "raw"
    assert cli_main(["synth", str(raw), "--episodes", "2", "--frames", "12", "--width", "64", "--height", "64"]) == 0
    assert sorted(p.name for p in raw.iterdir()) == [
        "synth-0000.jsonl",
        "synth-0000.mp4",
        "synth-0000.segmentation.npz",
        "synth-0001.jsonl",
        "synth-0001.mp4",
        "synth-0001.segmentation.npz",
    ]
    assert cli_main(["ingest", str(raw), str(tmp_path / "store"), "--resolution", "32", "--legacy-vpt-camera"]) == 0
    store = EpisodeStore(tmp_path / "store")
    assert store.resolution == (32, 32)
    assert store.read_segmentation("synth-0000", 0, 12)["mask"].shape == (12, 32, 32)
    plain = tmp_path / "plain"
    assert (
        cli_main(
            [
                "synth",
                str(plain),
                "--episodes",
                "1",
                "--frames",
                "4",
                "--width",
                "32",
                "--height",
                "32",
                "--no-segmentation",
            ]
        )
        == 0
    )
    assert sorted(p.name for p in plain.iterdir()) == ["synth-0000.jsonl", "synth-0000.mp4"]
    camera = store.read_actions("synth-0000")["camera"]
    np.testing.assert_array_equal(camera, np.trunc(camera))  # legacy mode: whole degrees


def test_prefix_mode_keeps_the_valid_part_of_bad_episodes(src, tmp_path):
    report = ingest(src, tmp_path / "store", resolution=RES, on_error="prefix", print_summary=False, progress=False)
    problems = {s["episode"]: s for s in report.skipped}
    store = EpisodeStore(tmp_path / "store")
    lengths = {e.id: e.length for e in store.episodes}
    # kept = the frames and steps before the first problem
    assert problems["bad-line"]["kept"] == lengths["bad-line"] == 4
    assert problems["missing-key"]["kept"] == lengths["missing-key"] == 3
    assert problems["mismatch"]["kept"] == lengths["mismatch"] == 35
    cut = problems["cut-short"]
    assert cut["kept"] == lengths["cut-short"] == cut["frame"] > 0
    for nothing_valid in ("truncated", "no-frames", "no-steps"):
        assert problems[nothing_valid]["kept"] == 0 and nothing_valid not in lengths
    # a kept prefix equals the start of the full episode
    np.testing.assert_array_equal(store.read_actions("mismatch")["camera"], store.read_actions("good-a")["camera"][:35])


def test_parallel_ingest_writes_the_same_bytes_as_serial(src, tmp_path):
    for workers in (1, 2):
        ingest(src, tmp_path / f"w{workers}", resolution=RES, workers=workers, print_summary=False, progress=False)
    for name in ("manifest.json", "index.npy", "episodes.jsonl", "shards/shard-00000.bin"):
        assert (tmp_path / "w1" / name).read_bytes() == (tmp_path / "w2" / name).read_bytes(), name


def test_non_utf8_file_names_are_reported_not_fatal(src, tmp_path):
    raw = tmp_path / "raw"
    shutil.copytree(src, raw, ignore=shutil.ignore_patterns("sub"))
    for suffix in (b".mp4", b".jsonl"):
        shutil.copy(src / f"good-a{suffix.decode()}", os.fsdecode(os.fsencode(raw) + b"/caf\xe9" + suffix))
    report = ingest(raw, tmp_path / "store", resolution=RES, print_summary=False, progress=False)
    bad = [s for s in report.skipped if "UTF-8" in s["reason"]]
    assert sorted(s["file"] for s in bad) == [str(raw) + "/caf\\xe9.jsonl", str(raw) + "/caf\\xe9.mp4"]
    assert sorted(report.ingested) == ["good-a", "good-b"]


def test_gui_cursor_is_drawn_where_the_gui_is_open(src, tmp_path):
    from minesweep.data.ingest.cursor import draw_cursor

    raw = tmp_path / "raw"
    raw.mkdir()
    copy_episode(src, "good-a", str(raw / "gui"))

    def open_gui(lines):
        steps = [json.loads(line) for line in lines]
        for step in steps[5:8]:
            step["isGuiOpen"] = True
            step["mouse"]["x"], step["mouse"]["y"] = 300.0, 200.0
        return [json.dumps(step) for step in steps]

    edit_jsonl(raw / "gui.jsonl", open_gui)
    ingest(raw, tmp_path / "store", resolution=RES, codec="raw", print_summary=False, progress=False)
    ingest(raw, tmp_path / "plain", resolution=RES, codec="raw", gui_cursor=False, print_summary=False, progress=False)
    with_cursor = EpisodeStore(tmp_path / "store").read_frames("gui", 0, 40)
    without = EpisodeStore(tmp_path / "plain").read_frames("gui", 0, 40)
    changed = [t for t in range(40) if not np.array_equal(with_cursor[t], without[t])]
    assert changed == [5, 6, 7]
    with av.open(str(raw / "gui.mp4")) as c:
        original = np.stack([f.to_ndarray(format="rgb24") for f in c.decode(video=0)])
    expected = original[5:6].copy()
    draw_cursor(expected, np.array([300.0]), np.array([200.0]), np.array([True]))
    np.testing.assert_array_equal(with_cursor[5], resize_bilinear(expected, RES)[0])


@pytest.mark.slow
def test_killed_ingest_resumes_to_the_same_store(tmp_path):
    import signal
    import subprocess
    import sys
    import time

    raw = tmp_path / "raw"
    for i in range(10):
        write_synthetic_episode(raw, f"ep{i:02d}", 60, seed=i, width=SRC_W, height=SRC_H)
    args = ["ingest", str(raw), "--resolution", "48x64", "--workers", "1", "--no-progress"]
    assert cli_main([*args[:2], str(tmp_path / "whole"), *args[2:]]) == 0

    killed = tmp_path / "killed"
    command = [sys.executable, "-m", "minesweep.data.cli", *args[:2], str(killed), *args[2:]]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    journal = killed / "episodes.jsonl"
    deadline = time.monotonic() + 120
    while time.monotonic() < deadline and process.poll() is None:
        if journal.exists() and len(journal.read_text().splitlines()) >= 3:
            break
        time.sleep(0.01)
    process.send_signal(signal.SIGKILL)
    process.wait()
    done_before = len(journal.read_text().splitlines())
    assert 3 <= done_before < 10 and not (killed / "manifest.json").exists()

    assert cli_main([*args[:2], str(killed), *args[2:]]) == 0
    report = json.loads((killed / "ingest_report.json").read_text())
    assert report["already"] >= 3 and len(report["ingested"]) + report["already"] == 10
    for name in ("manifest.json", "index.npy", "episodes.jsonl", "shards/shard-00000.bin"):
        assert (killed / name).read_bytes() == (tmp_path / "whole" / name).read_bytes(), name


# --------------------------------------------------------------------------- numbers, logs, counts


def one_recording(raw, name="rec", n=30, segmentation=False):
    raw.mkdir(parents=True, exist_ok=True)
    write_synthetic_episode(raw, name, n, seed=7, width=SRC_W, height=SRC_H, segmentation=segmentation)
    return raw / f"{name}.jsonl"


@pytest.mark.parametrize(
    "field,text",
    [
        ("dx", "NaN"),
        ("dx", "Infinity"),
        ("dy", "-Infinity"),
        ("dx", "1e300"),
        ("dy", "1" + "0" * 40),
        ("dx", "12000"),
        ("x", "NaN"),
        ("y", "1e9"),
    ],
)
@pytest.mark.parametrize("on_error", ["skip", "prefix"])
def test_non_finite_or_absurd_numbers_are_bad_steps(tmp_path, field, text, on_error):
    jsonl = one_recording(tmp_path / "raw")

    def poison(lines):  # Python's json reads NaN/Infinity and huge numbers, so the text is written as is
        step = json.loads(lines[3])
        step["mouse"][field] = "@@"
        return lines[:3] + [json.dumps(step).replace('"@@"', text)] + lines[4:]

    edit_jsonl(jsonl, poison)
    report = ingest(
        tmp_path / "raw", tmp_path / "store", resolution=RES, on_error=on_error, print_summary=False, progress=False
    )
    # prefix: the video then has more frames than the kept steps, which is reported after (as for any bad line)
    problem = report.skipped[0]
    assert len(report.skipped) == (1 if on_error == "skip" else 2), report.skipped
    assert problem["file"] == str(jsonl) and problem["frame"] == 3, problem
    assert f"step 3: 'mouse.{field}'" in problem["reason"] and str(jsonl) in problem["reason"], problem
    if on_error == "skip":
        assert report.ingested == [] and problem["kept"] == 0
    else:  # the steps before the bad one are kept, and they are the recording's own
        assert report.ingested == ["rec"] and problem["kept"] == 3
        actions = EpisodeStore(tmp_path / "store").read_actions("rec")
        expected = contractor_to_env([json.loads(line) for line in jsonl.read_text().splitlines()[:3]])
        np.testing.assert_array_equal(actions["camera"], expected.camera)
        assert np.isfinite(actions["camera"]).all()


def test_report_lines_keep_long_names_whole_when_not_a_terminal(src, tmp_path, capsys):
    raw = tmp_path / "raw"
    raw.mkdir()
    name = "contractor-" + "x" * 28 + "-2024-01-02-03"  # a 53-character recording name
    assert len(name) == 53
    copy_episode(src, "mismatch", str(raw / name))
    ingest(raw, tmp_path / "store", resolution=RES, progress=False)
    out = capsys.readouterr().out
    lines = [line for line in out.splitlines() if name in line]
    assert lines, out  # grep NAME finds the problem line
    assert str(raw / f"{name}.mp4") in lines[0] and "40 frames" in lines[0] and "35 steps" in lines[0]


def test_jsonl_shorter_than_the_video_is_a_count_mismatch_not_a_bad_sidecar(tmp_path):
    from minesweep.data.segmentation import read_sidecar

    raw = tmp_path / "raw"
    jsonl = one_recording(raw, n=40, segmentation=True)
    edit_jsonl(jsonl, lambda lines: lines[:33])
    report = ingest(raw, tmp_path / "skip", resolution=RES, print_summary=False, progress=False)
    (problem,) = report.skipped
    assert problem["file"] == str(raw / "rec.mp4"), problem
    assert "40 frames" in problem["reason"] and "rec.jsonl has only 33 steps" in problem["reason"], problem
    assert "segmentation" not in problem["reason"]

    report = ingest(raw, tmp_path / "prefix", resolution=RES, on_error="prefix", print_summary=False, progress=False)
    (problem,) = report.skipped
    assert problem["file"] == str(raw / "rec.mp4") and problem["kept"] == 33, problem
    store = EpisodeStore(tmp_path / "prefix")
    masks = store.read_segmentation("rec", 0, 33)
    assert masks is not None, "the kept prefix lost its masks"
    source = read_sidecar(raw / "rec.segmentation.npz")
    np.testing.assert_array_equal(masks["mask"], resize_masks(source["mask"][:33], RES))
    np.testing.assert_array_equal(masks["object_id"], source["object_id"][:33])


def test_a_sidecar_longer_than_video_and_steps_is_still_blamed_on_the_sidecar(tmp_path):
    from minesweep.data.segmentation import read_sidecar

    raw = tmp_path / "raw"
    one_recording(raw, n=30, segmentation=True)
    sidecar = raw / "rec.segmentation.npz"
    seg = read_sidecar(sidecar)
    np.savez(sidecar, **{k: np.concatenate([v, v[:5]]) for k, v in seg.items()})  # 35 frames for 30
    report = ingest(raw, tmp_path / "store", resolution=RES, print_summary=False, progress=False)
    (problem,) = report.skipped
    assert report.ingested == [] and problem["file"] == str(sidecar) and "35 frames" in problem["reason"], problem


@pytest.mark.slow
def test_ingest_from_a_script_without_a_main_guard_fails_with_the_fix_instead_of_hanging(tmp_path):
    """Spawned workers import the script again; before, the pool respawned them forever and the ingest never ended."""
    raw = tmp_path / "raw"
    generate_recordings(raw, episodes=2, frames=8, seed=0, width=32, height=32)
    script = tmp_path / "unguarded.py"
    script.write_text(
        "from minesweep.data.ingest.contractor import ingest\n"
        f"ingest({str(raw)!r}, {str(tmp_path / 'store')!r}, resolution=(16, 16), workers=2, print_summary=False)\n"
    )
    result = subprocess.run([sys.executable, str(script)], cwd=REPO, capture_output=True, text=True, timeout=300)
    assert result.returncode != 0
    assert "if __name__ == '__main__':" in result.stderr, result.stderr[-3000:]
