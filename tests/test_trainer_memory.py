"""Carried memory: windows fed one batch after another equal the whole episode fed at once."""

from pathlib import Path

import pytest
import torch

from minesweep.data.ingest.contractor import ingest
from minesweep.data.loading.datamodule import MineDataModule
from minesweep.data.recordings.synth import write_synthetic_episode
from minesweep.data.store import EpisodeStore
from minesweep.objectives import BehaviorCloneCallback
from minesweep.policies.tiny import TinyPolicy
from minesweep.policies.vpt import VPTPolicy
from minesweep.trainer import MineLightning

LENGTHS = [37, 22, 51]  # with 2 slots, one slot plays two episodes back to back


@pytest.fixture(scope="module")
def store(tmp_path_factory) -> Path:
    raw = tmp_path_factory.mktemp("raw")
    for i, frames in enumerate(LENGTHS):
        write_synthetic_episode(raw, f"ep{i}", frames=frames, seed=i, width=96, height=64)
    root = tmp_path_factory.mktemp("store") / "store"
    report = ingest(raw, root, resolution=(64, 64), print_summary=False)
    assert len(report.ingested) == len(LENGTHS)
    return root


def tiny_policy():
    torch.manual_seed(0)
    return TinyPolicy(hidsize=32).eval()


def vpt_policy():
    torch.manual_seed(0)
    return VPTPolicy(
        hidsize=32,
        attention_heads=2,
        n_recurrence_layers=2,
        attention_memory_size=24,
        timesteps=8,
        impala_chans=[8, 16, 16],
        img_shape=[64, 64, 3],
        temperature=2.0,
    ).eval()


def continuous_module(policy, store, win_len, frame_skip, batch_size=2):
    dm = MineDataModule(
        str(store),
        win_len=win_len,
        batch_size=batch_size,
        num_workers=0,
        val_fraction=0.0,
        episode_continuous_batch=True,
        frame_skip=frame_skip,
    )
    dm.setup()
    module = MineLightning(policy, {"bc": BehaviorCloneCallback()}, episode_continuous_batch=True)
    return dm, module


@torch.no_grad()
def logits_through_the_trainer(module, loader):
    """Per (episode, timestep): the buttons/camera log-probs the trainer's carried path produces."""
    seen, slots = {}, {}
    for batch in loader:
        latents, state_out = module.mine_policy(batch, state_in=module.state_in(batch, "train"))
        module.remember(batch, state_out, "train")
        for b in range(batch["image"].shape[0]):
            slots.setdefault(b, []).append(int(batch["episode"][b]))
            for t in range(batch["image"].shape[1]):
                if batch["mask"][b, t]:
                    key = (int(batch["episode"][b]), int(batch["timestep"][b, t]))
                    seen[key] = (latents["pi_logits"]["buttons"][b, t], latents["pi_logits"]["camera"][b, t])
    return seen, slots


@pytest.mark.parametrize("make_policy", [tiny_policy, vpt_policy], ids=["tiny", "vpt"])
@pytest.mark.parametrize("frame_skip", [1, 3])
def test_consecutive_windows_equal_the_whole_episode(store, make_policy, frame_skip):
    policy = make_policy()
    dm, module = continuous_module(policy, store, win_len=5, frame_skip=frame_skip)
    seen, slots = logits_through_the_trainer(module, dm.train_dataloader())
    assert any(len({e for e in episodes if e >= 0}) > 1 for episodes in slots.values()), "no boundary in a slot"

    episodes = EpisodeStore(store).episodes
    for index, record in enumerate(episodes):
        frames = torch.from_numpy(EpisodeStore(store).read_frames(record.id, 0, record.length))[::frame_skip]
        first = torch.zeros(1, len(frames), dtype=torch.bool)
        first[0, 0] = True
        with torch.no_grad():
            whole, _ = policy({"image": frames[None], "first": first}, None)
        timesteps = list(range(0, record.length, frame_skip))
        assert {t for (e, t) in seen if e == index} == set(timesteps)
        for position, t in enumerate(timesteps):
            buttons, camera = seen[(index, t)]
            torch.testing.assert_close(buttons, whole["pi_logits"]["buttons"][0, position], atol=1e-4, rtol=1e-4)
            torch.testing.assert_close(camera, whole["pi_logits"]["camera"][0, position], atol=1e-4, rtol=1e-4)


def test_non_continuous_windows_start_from_the_initial_state(store):
    policy = tiny_policy()
    module = MineLightning(policy, {"bc": BehaviorCloneCallback()}, episode_continuous_batch=False)
    dm = MineDataModule(str(store), win_len=5, batch_size=2, num_workers=0, val_fraction=0.0)
    dm.setup()
    batch = next(iter(dm.train_dataloader()))
    assert module.state_in(batch, "train") is None
    module.remember(batch, policy.initial_state(2), "train")
    assert "train" not in module._memory


def test_validation_between_training_batches_changes_nothing(store):
    dm, module = continuous_module(tiny_policy(), store, win_len=4, frame_skip=1)
    dm_val = MineDataModule(
        str(store), win_len=4, batch_size=2, num_workers=0, val_fraction=0.5, episode_continuous_batch=True
    )
    dm_val.setup()
    train_batches = list(dm.train_dataloader())[:2]
    val_batches = list(dm_val.val_dataloader())

    def second_batch_state(with_validation):
        module._memory.clear()
        with torch.no_grad():
            module._objective_step(train_batches[0], 0, "train")
            if with_validation:
                module.on_validation_epoch_start()
                for i, batch in enumerate(val_batches):
                    module.validation_step(batch, i)
            return module.state_in(train_batches[1], "train")

    plain, interrupted = second_batch_state(False), second_batch_state(True)
    assert "val/0" in module._memory
    for a, b in zip(plain, interrupted, strict=False):
        torch.testing.assert_close(a, b, rtol=0, atol=0)
    # and the carried state is really carried (not the initial state)
    assert any(not torch.equal(a, b) for a, b in zip(plain, module.mine_policy.initial_state(2), strict=False))


def test_smaller_batch_keeps_the_slots_that_fit(store):
    dm, module = continuous_module(tiny_policy(), store, win_len=4, frame_skip=1, batch_size=3)
    batches = list(dm.train_dataloader())
    with torch.no_grad():
        module._objective_step(batches[0], 0, "train")
        smaller = {
            k: (v[:2] if torch.is_tensor(v) else {kk: vv[:2] for kk, vv in v.items()}) for k, v in batches[1].items()
        }
        state = module.state_in(smaller, "train")
    assert state[0].shape[0] == 2
    torch.testing.assert_close(state[0], module._memory["train"].state[0][:2])
