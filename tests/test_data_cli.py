"""``minesweep-data verify STORE``: exit 0 on an intact store; exit 1 and exactly the damaged episodes otherwise."""

import json
import shutil

import pytest

from minesweep.data.cli import main as cli_main
from minesweep.data.ingest.contractor import ingest
from minesweep.data.recordings.synth import write_synthetic_episode
from minesweep.data.store import EpisodeStore


@pytest.fixture(scope="module")
def clean(tmp_path_factory):
    raw = tmp_path_factory.mktemp("raw")
    for i in range(4):
        write_synthetic_episode(raw, f"ep{i}", 70, seed=i, width=64, height=64)  # with segmentation sidecars
    store = tmp_path_factory.mktemp("data") / "store"
    assert len(ingest(raw, store, resolution=(32, 32), print_summary=False, progress=False).ingested) == 4
    return store


def damaged_copy(clean, tmp_path, where):
    copy = tmp_path / "store"
    shutil.copytree(clean, copy)
    store = EpisodeStore(copy)
    record = store.episodes[2]
    offset = {
        "video": record.video_offset + int(store._video_bounds(2, record)[2]) + 10,  # GOP 2: frames [64, 70)
        "actions": record.actions_offset + record.actions_size // 3,
        "segmentation": record.segmentation_offset + 5 * (record.segmentation_size // record.length),
    }[where]
    with open(copy / "shards/shard-00000.bin", "r+b") as f:
        f.seek(offset)
        byte = f.read(1)
        f.seek(offset)
        f.write(bytes([byte[0] ^ 0x01]))
    return copy


def test_verify_a_clean_store_exits_0(clean, capsys):
    assert cli_main(["verify", str(clean)]) == 0
    assert "intact (4 episodes, 280 frames checked)" in capsys.readouterr().out
    assert cli_main(["verify", str(clean), "--json"]) == 0
    report = json.loads(capsys.readouterr().out)
    assert report["ok"] and report["problems"] == [] and report["episodes"] == 4


@pytest.mark.parametrize("where,frames", [("video", "[64, 70)"), ("actions", "-"), ("segmentation", "[5, 6)")])
def test_verify_lists_exactly_the_damaged_episode(clean, tmp_path, capsys, where, frames):
    copy = damaged_copy(clean, tmp_path, where)
    assert cli_main(["verify", str(copy)]) == 1
    lines = capsys.readouterr().out.splitlines()
    assert lines[1].split("\t") == ["episode", "position", "shard", "what", "frames"], lines
    rows = [line.split("\t") for line in lines[2:] if line.count("\t") == 4 and not line.startswith("-")]
    assert rows == [["ep2", "2", "shards/shard-00000.bin", where, frames]], lines
    assert any(line.startswith("-\t-\tshards/shard-00000.bin\tshard") for line in lines), lines
    assert cli_main(["verify", str(copy), "--json"]) == 1
    report = json.loads(capsys.readouterr().out)
    assert not report["ok"]
    episodes = [p for p in report["problems"] if p["episode"] is not None]
    assert [(p["episode"], p["position"], p["what"]) for p in episodes] == [("ep2", 2, where)]
    # the whole-file sum of the shard disagrees too: reported as the shard, not as another episode
    assert [p["what"] for p in report["problems"] if p["episode"] is None] == ["shard"]


def test_verify_a_store_that_cannot_be_opened_exits_1(clean, tmp_path, capsys):
    copy = tmp_path / "store"
    shutil.copytree(clean, copy)
    (copy / "index.npy").write_bytes((copy / "index.npy").read_bytes()[:-64])
    assert cli_main(["verify", str(copy)]) == 1
    assert "index.npy" in capsys.readouterr().out
