"""Resuming from a checkpoint continues bit for bit (CPU), across densification and the SDS path;
checkpoints are found by step, and an interrupted save never hides the last complete one."""
import os

import pytest
import torch
from test_trainer import StubGuidance, tiny_config

from stag4d.errors import DataError
from stag4d.training.runs import find_saved_step, run_folder
from stag4d.training.trainer import Trainer

K = 4  # steps before the checkpoint; the straight run trains 2K

# Densification at steps 3, 5, 7 (step % 2 == 1) changes the Gaussian count on both sides of the
# checkpoint; the stub SDS draws torch noise, the trainer its own samples: every RNG matters.
RESUME = [
    "lambda_zero123=1", "init_steps=2", "density_start_iter=2", "density_end_iter=100",
    "densification_interval=2", "densify_grad_threshold_percent=20", f"save_step={K}", "valid_interval=0",
    "export_frames=false",
]


def state_of(trainer):
    params = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    moments = {}
    for group in trainer.optimizer.param_groups:
        for index, param in enumerate(group["params"]):
            for key, value in trainer.optimizer.state.get(param, {}).items():
                moments[f"{group['name']}.{index}.{key}"] = value.clone() if torch.is_tensor(value) else value
    lrs = [group["lr"] for group in trainer.optimizer.param_groups]
    return params, moments, lrs


def assert_same(a, b):
    params_a, moments_a, lrs_a = a
    params_b, moments_b, lrs_b = b
    assert params_a.keys() == params_b.keys()
    for name in params_a:
        assert torch.equal(params_a[name], params_b[name]), name
    assert moments_a.keys() == moments_b.keys()
    for name in moments_a:
        value_a, value_b = moments_a[name], moments_b[name]
        assert torch.equal(value_a, value_b) if torch.is_tensor(value_a) else value_a == value_b, name
    assert lrs_a == lrs_b


@pytest.mark.slow
def test_resume_continues_bit_for_bit(tmp_path):
    cfg = tiny_config(tmp_path, config="anchored.yaml", extra=RESUME + [f"total_steps={2 * K}"])
    straight = Trainer(cfg, guidance=StubGuidance())
    straight.train()
    assert straight.step == 2 * K
    assert straight.model.num != 256  # densification happened
    checkpoint = tmp_path / "logs" / "disc" / str(K) / "checkpoint.pt"
    assert checkpoint.is_file()
    saved = torch.load(checkpoint, weights_only=False)
    assert saved["step"] == K and {"model", "optimizer", "densify", "rng", "config"} <= set(saved)

    # load_path given as the first run's folder (the new run writes elsewhere)
    resumed_cfg = tiny_config(tmp_path, config="anchored.yaml", data=cfg.data.path,
                              extra=RESUME + [f"total_steps={2 * K}", f"load_path={tmp_path / 'logs' / 'disc'}",
                                              f"load_step={K}", f"outdir={tmp_path / 'logs2'}"])
    resumed = Trainer(resumed_cfg, guidance=StubGuidance())
    assert resumed.step == K
    assert resumed.model.num == saved["model"]["means"].shape[0]
    resumed.train()
    assert resumed.step == 2 * K
    assert_same(state_of(straight), state_of(resumed))
    # densification statistics too
    for key, value in straight.densify_state.items():
        other = resumed.densify_state[key]
        assert (value is None and other is None) or torch.equal(value, other), key


def test_latest_complete_checkpoint_is_loaded(tmp_path):
    cfg = tiny_config(tmp_path, extra=["export_frames=false"])
    trainer = Trainer(cfg)
    trainer.train_step()
    trainer.save()
    trainer.train_step()
    trainer.save()
    run = tmp_path / "logs" / "disc"
    # an interrupted save: the folder exists, model.ply maybe, but no checkpoint.pt yet
    (run / "7").mkdir()
    (run / "7" / "model.ply").write_bytes(b"partial")
    logs = str(tmp_path / "logs")
    assert find_saved_step(run_folder(logs, "disc")) == (str(run / "2"), 2)
    assert find_saved_step(run_folder(logs, "disc"), 1) == (str(run / "1"), 1)
    assert find_saved_step(run_folder("elsewhere", str(run))) == (str(run / "2"), 2)
    assert find_saved_step(run_folder("elsewhere", str(run / "1"))) == (str(run / "1"), 1)
    with pytest.raises(DataError, match="load_step"):
        find_saved_step(run_folder(logs, "disc"), 7)
    with pytest.raises(DataError, match="no complete saved step"):
        find_saved_step(run_folder(logs, "nope"))

    resumed = Trainer(tiny_config(tmp_path, extra=["export_frames=false", "load_path=disc"]))
    assert resumed.step == 2
    assert_same(state_of(trainer), state_of(resumed))


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    """A crash while writing checkpoint.pt leaves no checkpoint.pt (nor temporary files)."""
    trainer = Trainer(tiny_config(tmp_path, extra=["export_frames=false"]))
    trainer.train_step()
    trainer.save()

    def crash(obj, path):
        raise KeyboardInterrupt

    monkeypatch.setattr(torch, "save", lambda obj, f, *a, **k: crash(obj, f))
    trainer.train_step()
    with pytest.raises(KeyboardInterrupt):
        trainer.save()
    run = tmp_path / "logs" / "disc"
    assert not (run / "2" / "checkpoint.pt").exists()
    assert [f for f in os.listdir(run / "2") if ".tmp" in f] == []
    monkeypatch.undo()
    resumed = Trainer(tiny_config(tmp_path, extra=["export_frames=false", "load_path=disc"]))
    assert resumed.step == 1
