"""minesweep.ema: the EMA of the weights against its closed form, its precision, its validation switch, and a real
training run whose checkpoint, EMA weights file and evaluation use it."""

from __future__ import annotations

import lightning as L
import pytest
import torch
from hydra import compose, initialize_config_dir
from torch import nn

from minesweep.ema import EMA
from minesweep.eval import load_policy
from minesweep.policies.build import build_policy
from minesweep.policies.weights import CHECKPOINT_PREFIX, TRAINED_WEIGHTS_KEY
from tests.conftest import CONF_DIR
from tests.helpers import SMALL_RUN


class Toy(L.LightningModule):
    """A linear regression with an integer step counter (a buffer that must be copied, not averaged)."""

    def __init__(self) -> None:
        super().__init__()
        torch.manual_seed(0)
        self.layer = nn.Linear(3, 1)
        self.register_buffer("count", torch.zeros((), dtype=torch.int64))
        self.val_weight_sums: list[float] = []

    def training_step(self, batch, batch_idx):
        self.count += 1
        x, y = batch
        return ((self.layer(x.to(self.layer.weight.dtype)) - y.to(self.layer.weight.dtype)) ** 2).mean()

    def validation_step(self, batch, batch_idx):
        self.val_weight_sums.append(float(self.layer.weight.float().sum()))

    def configure_optimizers(self):
        return torch.optim.SGD(self.parameters(), lr=0.1)


class Recorder(L.Callback):
    """The weights after every optimizer step (listed before the EMA: it sees the trained weights)."""

    def __init__(self) -> None:
        self.weights: list[torch.Tensor] = []

    def on_train_batch_end(self, trainer, pl_module, outputs, batch, batch_idx):
        self.weights.append(torch.cat([p.detach().float().flatten().clone() for p in pl_module.parameters()]))


def loader(n: int = 40) -> torch.utils.data.DataLoader:
    g = torch.Generator().manual_seed(1)
    x = torch.randn(n, 3, generator=g)
    y = x @ torch.tensor([[1.0], [-2.0], [0.5]]) + 0.1 * torch.randn(n, 1, generator=g)
    return torch.utils.data.DataLoader(torch.utils.data.TensorDataset(x, y), batch_size=4)


def fit(ema: EMA, steps: int = 9, precision: str = "32-true", val_every: int | None = None) -> tuple[Toy, Recorder]:
    model, recorder = Toy(), Recorder()
    trainer = L.Trainer(
        max_steps=steps,
        accelerator="cpu",
        logger=False,
        enable_checkpointing=False,
        enable_progress_bar=False,
        enable_model_summary=False,
        callbacks=[recorder, ema],
        precision=precision,
        val_check_interval=val_every or steps,
        limit_val_batches=1,
        num_sanity_val_steps=0,
    )
    trainer.fit(model, loader(), loader(8))
    return model, recorder


def closed_form(weights: list[torch.Tensor], decay: float, start: int, every: int) -> torch.Tensor:
    updates = [w for step, w in enumerate(weights) if step >= start and (step - start) % every == 0]
    ema = updates[0]  # the first update copies
    for w in updates[1:]:
        ema = decay * ema + (1 - decay) * w
    return ema


@pytest.mark.parametrize("decay,start,every", [(0.8, 0, 1), (0.5, 2, 3), (0.0, 0, 1)])
def test_the_ema_is_the_closed_form_average_of_the_weights_it_was_given(decay, start, every):
    model, recorder = fit(EMA(decay=decay, start_step=start, every_n_steps=every))
    got = torch.cat([p.detach().flatten() for p in model.parameters()])  # training ends with the EMA weights
    expected = closed_form(recorder.weights, decay, start, every)
    torch.testing.assert_close(got, expected, rtol=1e-6, atol=1e-7)
    assert not torch.allclose(got, recorder.weights[-1]) or decay == 0.0  # an average, not the last weights
    assert int(model.count) == len(recorder.weights)  # the counter is copied (9), not averaged


def test_bf16_training_keeps_the_average_in_float32():
    ema = EMA(decay=0.9)
    model, recorder = fit(ema, precision="bf16-true")
    assert model.layer.weight.dtype == torch.bfloat16
    assert ema._average_model.module.layer.weight.dtype == torch.float32
    expected = closed_form(recorder.weights, 0.9, 0, 1)  # from the bf16 weights, summed in float32
    torch.testing.assert_close(
        torch.cat([p.flatten() for p in ema._average_model.module.parameters()]), expected, rtol=1e-6, atol=1e-7
    )


@pytest.mark.parametrize("validate_on_ema", [True, False])
def test_validation_runs_on_the_weights_it_is_told_to(validate_on_ema):
    ema = EMA(decay=0.9, validate_on_ema=validate_on_ema)
    model, recorder = fit(ema, steps=6, val_every=3)
    averages = [closed_form(recorder.weights[:n], 0.9, 0, 1)[:3].sum() for n in (3, 6)]
    trained = [recorder.weights[n - 1][:3].sum() for n in (3, 6)]
    expected = averages if validate_on_ema else trained
    assert model.val_weight_sums == pytest.approx([float(v) for v in expected], rel=1e-5)
    assert averages[0] != pytest.approx(float(trained[0]), rel=1e-5)  # the two choices differ here


def test_bad_settings_are_refused_by_name():
    with pytest.raises(ValueError, match="decay"):
        EMA(decay=1.0)
    with pytest.raises(ValueError, match="every_n_steps"):
        EMA(every_n_steps=0)


@pytest.mark.slow
def test_a_run_with_ema_saves_it_and_evaluates_it(store, tmp_path):
    from minesweep.train import train

    run = tmp_path / "run"
    with initialize_config_dir(config_dir=str(CONF_DIR)):
        cfg = compose(
            "train",
            overrides=[
                *SMALL_RUN,
                f"data.root={store}",
                f"paths.output_dir={run}",
                "logger=csv",
                "trainer.max_steps=6",
                "trainer.val_check_interval=3",
                "callbacks/ema=default",
                "callbacks.ema.decay=0.5",
                "optim.learning_rate=1e-2",
                "callbacks.final_eval=null",
            ],
        )
    train(cfg)
    checkpoint = torch.load(run / "checkpoints" / "last.ckpt", weights_only=True)
    ema = {
        k[len(CHECKPOINT_PREFIX) :]: v for k, v in checkpoint["state_dict"].items() if k.startswith(CHECKPOINT_PREFIX)
    }
    trained = {
        k[len(CHECKPOINT_PREFIX) :]: v
        for k, v in checkpoint[TRAINED_WEIGHTS_KEY].items()
        if k.startswith(CHECKPOINT_PREFIX)
    }
    assert ema.keys() == trained.keys()
    assert any(not torch.equal(ema[k], trained[k]) for k in ema if ema[k].is_floating_point())

    # the EMA alone, as a plain state dict for policy.weights=
    weights_file = torch.load(run / "checkpoints" / "ema.weights", weights_only=True)
    assert weights_file.keys() == ema.keys() and all(torch.equal(weights_file[k], ema[k]) for k in ema)
    from_file = build_policy(
        {**checkpoint["minesweep_policy_config"], "weights": str(run / "checkpoints" / "ema.weights")}
    )

    # minesweep-eval plays the EMA by default, the trained weights with eval.use_ema=false
    for use_ema, expected in ((True, ema), (False, trained)):
        policy = load_policy(None, run / "checkpoints" / "last.ckpt", use_ema=use_ema)
        assert all(torch.equal(policy.state_dict()[k], expected[k]) for k in expected), use_ema
    assert all(torch.equal(from_file.state_dict()[k], ema[k]) for k in ema)


def test_ema_weights_applies_the_average_for_a_block_and_restores_the_trained_weights():
    from types import SimpleNamespace

    from minesweep.ema import ema_weights

    ema = EMA(decay=0.8)
    model, _ = fit(ema)
    average = [p.detach().clone() for p in model.parameters()]  # fit ends with the EMA in the model
    with torch.no_grad():
        for p in model.parameters():
            p.add_(1.0)  # "trained" weights that differ from the average
    trained = [p.detach().clone() for p in model.parameters()]
    with ema_weights(SimpleNamespace(callbacks=[ema]), model):
        assert all(torch.equal(p, a) for p, a in zip(model.parameters(), average, strict=True))
    assert all(torch.equal(p, t) for p, t in zip(model.parameters(), trained, strict=True))
    with ema_weights(SimpleNamespace(callbacks=[]), model):  # no EMA: nothing changes
        assert all(torch.equal(p, t) for p, t in zip(model.parameters(), trained, strict=True))
