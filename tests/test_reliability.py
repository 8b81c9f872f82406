"""Reliability and security, by injecting each fault: crafted checkpoints, non-finite values,
interrupted saves, concurrent runs, escaping paths, signals, a full disk, bad inputs, logs."""
import errno
import json
import os
import signal
import subprocess
import sys
import time
import types

import numpy as np
import pytest
import torch
from PIL import Image
from test_trainer import REPO, TINY, make_disc_dataset, tiny_config

from gs_renderer import GaussianModel4D
from stag4d.config import config_from_dict, load_config, saved_run_config
from stag4d.data.frames import load_frames
from stag4d.errors import DataError, DiskFull, TrainingStopped, UserError
from stag4d.evaluation.evaluate import load_views_json
from stag4d.files import remove_temporary_files
from stag4d.settings import ConfigError
from stag4d.training import runs
from stag4d.training.trainer import Trainer, read_checkpoint

ANCHORED = os.path.join(REPO, "configs", "anchored.yaml")


def cli(tmp_path, data, *extra):
    return [sys.executable, "main.py", "--config", ANCHORED, *TINY, f"path={data}", "save_path=disc",
            f"outdir={tmp_path / 'logs'}", f"valid_dir={tmp_path / 'valid'}", *extra]


def run_cli(tmp_path, data, *extra, timeout=300):
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    return subprocess.run(cli(tmp_path, data, *extra), cwd=REPO, capture_output=True, text=True, timeout=timeout,
                          env=env)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


# ---------------------------------------------------------------------------------------------
# 1. checkpoints never run code


class Payload:
    """Unpickling this runs a shell command (the attack)."""

    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_a_crafted_checkpoint_is_refused_and_runs_nothing(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, extra=["export_frames=false"]))
    trainer.train_step()
    folder = trainer.save()
    trainer.close()
    marker = tmp_path / "pwned"
    torch.save({"format": 2, "step": 1, "evil": Payload(str(marker))}, os.path.join(folder, "checkpoint.pt"))
    with pytest.raises(DataError) as info:
        Trainer(tiny_config(tmp_path, extra=["export_frames=false", "load_path=disc"]))
    message = str(info.value)
    assert not marker.exists()  # the payload did not run
    assert "not a checkpoint of this project" in message and "system" in message and "\n" not in message


def test_checkpoints_hold_plain_values_and_older_ones_still_load(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, extra=["export_frames=false"]))
    trainer.train_step()
    state = trainer.checkpoint_state()
    path = tmp_path / "plain.pt"
    torch.save(state, path)
    assert read_checkpoint(str(path))["step"] == 1  # weights_only=True accepts it
    # format 1 kept numpy's RNG state as a numpy array: allowed (arrays only), still loads
    old = dict(state, format=1)
    old["rng"] = dict(state["rng"], numpy=np.random.get_state())
    torch.save(old, tmp_path / "old.pt")
    assert read_checkpoint(str(tmp_path / "old.pt"))["format"] == 1
    trainer.close()


# ---------------------------------------------------------------------------------------------
# 2. non-finite values stop the run; nothing non-finite is saved or loaded


def test_a_non_finite_loss_stops_without_saving(tmp_path, monkeypatch):
    trainer = Trainer(tiny_config(tmp_path, extra=["export_frames=false", "init_steps=0"]))
    trainer.train_step()
    trainer.save()
    original = trainer.compute_losses

    def poisoned(*args, **kwargs):
        losses = original(*args, **kwargs)
        losses["anchor_rgb"] = losses["anchor_rgb"] * float("nan")
        return losses

    monkeypatch.setattr(trainer, "compute_losses", poisoned)
    before = {k: v.clone() for k, v in trainer.model.state_dict().items()}
    with pytest.raises(TrainingStopped) as info:
        trainer.train_step()
    message = str(info.value)
    assert info.value.exit_code == 3 and "\n" not in message
    assert "step 2" in message and "'anchor_rgb'" in message and "logs/disc/1" in message
    with pytest.raises(TrainingStopped):
        trainer.save()  # the run cannot save the step that went wrong
    assert runs.saved_steps(trainer.run_folder) == [1]
    # the CPU path checks every step: the NaN stopped the run before the densification used it
    assert all(torch.isfinite(v).all() for k, v in trainer.model.state_dict().items() if k in before)
    trainer.close()


@pytest.mark.parametrize("group", ["grid", "scaling"])
def test_the_guard_names_the_group_whose_gradient_or_parameter_is_not_finite(tmp_path, monkeypatch, group):
    """NonFiniteGuard's per-group flags (one norm over every group, summed per group): a NaN in ONE
    tensor of one group's gradients, then in one group's parameters after the update, is reported
    under that group's name and no other's (the losses stay finite)."""
    trainer = Trainer(tiny_config(tmp_path, extra=["export_frames=false", "init_steps=0"]))
    trainer.train_step()
    target = next(g for g in trainer.optimizer.param_groups if g["name"] == group)["params"][-1]
    original_backward = trainer.backward

    def poisoned_gradient(total):
        original_backward(total)
        target.grad.view(-1)[0] = float("nan")

    monkeypatch.setattr(trainer, "backward", poisoned_gradient)
    with pytest.raises(TrainingStopped) as info:
        trainer.train_step()
    assert f"step 2: the gradients of the '{group}' parameters not finite" in str(info.value), str(info.value)
    assert "after the Adam step" not in str(info.value) and "loss" not in str(info.value).split(";")[0]
    monkeypatch.setattr(trainer, "backward", original_backward)
    trainer.optimizer.zero_grad(set_to_none=True)  # the stopped step left its gradients (no update ran)
    trainer.guard.reset()
    original_optimizer_step = trainer.optimizer_step

    def poisoned_parameter():
        original_optimizer_step()
        with torch.no_grad():
            target.view(-1)[0] = float("inf")

    monkeypatch.setattr(trainer, "optimizer_step", poisoned_parameter)
    with pytest.raises(TrainingStopped) as info:
        trainer.train_step()
    message = str(info.value)  # (the step number after a stopped step is not what this test is about)
    assert f": the '{group}' parameters after the Adam step not finite" in message and "gradients" not in message
    trainer.close()


@pytest.mark.parametrize("override", ["lambda_ref_rgb=1e38", "opacity_lr=1e30"])
def test_exploding_settings_exit_in_one_line(tmp_path, override):
    data = make_disc_dataset(tmp_path / "disc")
    done = run_cli(tmp_path, data, override, "total_steps=30", "init_steps=0", "log_interval=10")
    assert done.returncode == 3, (done.returncode, done.stderr[-2000:])  # not a segfault (-11)
    assert "Traceback" not in done.stderr
    errors = error_lines(done.stderr)
    assert len(errors) == 1 and "not finite" in errors[0] and "detect_anomaly=true" in errors[0], done.stderr
    assert runs.saved_steps(str(tmp_path / "logs" / "disc")) == []


def test_a_non_finite_model_is_refused_by_loading(tmp_path):
    model = GaussianModel4D(0)
    model.initialize_random(20, seed=0)
    with torch.no_grad():
        model.means[3, 1] = float("nan")
    model.save(str(tmp_path / "m"))
    with pytest.raises(DataError, match="non-finite values .*means.*earlier step"):
        GaussianModel4D.load(str(tmp_path / "m"))


def test_detect_anomaly_is_opt_in(tmp_path, monkeypatch):
    calls = []
    real = torch.autograd.detect_anomaly

    def spy(*args, **kwargs):
        calls.append(1)
        return real(*args, **kwargs)

    monkeypatch.setattr(torch.autograd, "detect_anomaly", spy)
    trainer = Trainer(tiny_config(tmp_path, extra=["detect_anomaly=true"]))
    trainer.train_step()
    assert calls == [1]
    trainer.close()


# ---------------------------------------------------------------------------------------------
# 3. half-saved steps are never used; their temporary files are cleaned


def test_a_save_killed_before_its_checkpoint_is_not_used_and_leaves_nothing(tmp_path, monkeypatch):
    trainer = Trainer(tiny_config(tmp_path, extra=["export_frames=false"]))
    trainer.train_step()
    trainer.save()
    trainer.train_step()

    real_replace = os.replace

    def killed(src, dst):  # the process dies while renaming the checkpoint into place
        if dst.endswith("checkpoint.pt"):
            raise KeyboardInterrupt
        return real_replace(src, dst)

    monkeypatch.setattr(os, "replace", killed)
    with pytest.raises(KeyboardInterrupt):
        trainer.save()
    monkeypatch.undo()
    run = trainer.run_folder
    assert os.path.isfile(os.path.join(run, "2", "model.ply")) and runs.saved_steps(run) == [1]
    trainer.close()
    # a temporary file as a SIGKILL would leave it, cleaned at the next start
    leftover = os.path.join(run, "2", ".checkpoint.abc123.tmp.pt")
    open(leftover, "wb").close()
    resumed = Trainer(tiny_config(tmp_path, extra=["export_frames=false", "load_path=disc"]))
    assert resumed.step == 1 and not os.path.exists(leftover)
    resumed.close()


def test_remove_temporary_files_only_touches_ours(tmp_path):
    (tmp_path / "a").mkdir()
    for name in (".model.x1.tmp.ply", "a/.checkpoint.y2.tmp.pt", "model.ply", ".lock"):
        (tmp_path / name).write_text("x")
    removed = remove_temporary_files(str(tmp_path))
    assert sorted(os.path.relpath(p, tmp_path) for p in removed) == [".model.x1.tmp.ply", "a/.checkpoint.y2.tmp.pt"]
    assert (tmp_path / "model.ply").exists() and (tmp_path / ".lock").exists()


# ---------------------------------------------------------------------------------------------
# 4. one run per save_path


def test_a_run_folder_in_use_by_another_process_is_refused(tmp_path):
    cfg = tiny_config(tmp_path)
    holder = subprocess.Popen([sys.executable, "-c", "import time; time.sleep(60)"])
    try:
        folder = tmp_path / "logs" / "disc"
        folder.mkdir(parents=True)
        (folder / runs.LOCK_FILE).write_text(json.dumps({"pid": holder.pid, "host": os.uname().nodename,
                                                         "since": "now"}))
        with pytest.raises(UserError) as info:
            Trainer(cfg)
        message = str(info.value)
        assert f"process {holder.pid}" in message and "save_path=" in message and "\n" not in message
    finally:
        holder.kill()
        holder.wait()
    trainer = Trainer(cfg)  # the holder is gone: its lock is taken over
    assert json.loads((tmp_path / "logs" / "disc" / runs.LOCK_FILE).read_text())["pid"] == os.getpid()
    trainer.close()
    assert not (tmp_path / "logs" / "disc" / runs.LOCK_FILE).exists()


def test_reusing_a_finished_run_asks_for_overwrite(tmp_path):
    first = Trainer(tiny_config(tmp_path, extra=["export_frames=false", "total_steps=2"]))
    first.train()
    first.close()
    with pytest.raises(UserError) as info:
        Trainer(tiny_config(tmp_path, extra=["export_frames=false"]))
    assert "overwrite=true" in str(info.value) and "load_path=disc" in str(info.value)
    again = Trainer(tiny_config(tmp_path, extra=["export_frames=false", "overwrite=true"]))
    assert runs.saved_steps(again.run_folder) == [] and not os.path.exists(os.path.join(again.run_folder, "losses.csv"))
    again.close()


def test_only_the_last_saves_are_kept(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, extra=["export_frames=false", "total_steps=6", "save_step=1",
                                                   "keep_last=2"]))
    trainer.train()
    assert runs.saved_steps(trainer.run_folder) == [5, 6]
    trainer.close()


# ---------------------------------------------------------------------------------------------
# 5. outputs stay under their roots


@pytest.mark.parametrize("name", ["../../x", "/tmp/x", "a/b", "..", ".hidden", "~"])
def test_run_names_cannot_leave_outdir(name):
    with pytest.raises(ConfigError, match="not a run name"):
        config_from_dict({"path": "x", "save_path": name})


def test_no_interpolation_in_names():
    with pytest.raises(ConfigError, match=r"save_path may not use \$\{...\}"):
        load_config(None, ["path=x", "save_path=${oc.env:HOME}"])
    with pytest.raises(ConfigError, match=r"load_path may not use"):
        load_config(None, ["path=x", "load_path=${oc.env:USER}"])


@pytest.mark.parametrize("views, word", [
    ([{"name": "..", "elevation": 0, "azimuth": 0}], "not a folder name"),
    ([{"name": "a/b", "elevation": 0, "azimuth": 0}], "not a folder name"),
    ([{"name": "a", "elevation": float("nan"), "azimuth": 0}], "finite"),
    ([{"name": "a", "elevation": 1e9, "azimuth": 0}], "finite"),
])
def test_views_json_names_and_angles_are_checked(tmp_path, views, word):
    path = tmp_path / "views.json"
    path.write_text(json.dumps({"views": views}))
    with pytest.raises(DataError, match=word):
        load_views_json(str(path))


def test_base_must_be_a_yaml_config_and_errors_do_not_quote_files(tmp_path):
    secret = tmp_path / "secret.txt"
    secret.write_text("password: hunter2\n")
    config = tmp_path / "c.yaml"
    config.write_text(f"base: {secret}\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(config), ["path=x"])
    assert "not a YAML config" in str(info.value) and "hunter2" not in str(info.value)
    broken = tmp_path / "broken.yaml"
    broken.write_text("ok: 1\nsecret_token: [unclosed\n")
    with pytest.raises(ConfigError) as info:
        load_config(str(broken), ["path=x"])
    assert "line" in str(info.value) and "secret_token" not in str(info.value) and "\n" not in str(info.value)


# ---------------------------------------------------------------------------------------------
# 6. signals save; a full disk says so


@pytest.mark.slow
@pytest.mark.parametrize("signum", [signal.SIGTERM, signal.SIGINT])
def test_a_signal_saves_the_current_step_and_exits_in_one_line(tmp_path, signum):
    data = make_disc_dataset(tmp_path / "disc")
    process = subprocess.Popen(cli(tmp_path, data, "total_steps=100000", "log_interval=1", "export_frames=false"),
                               cwd=REPO, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                               env={**os.environ, "OMP_NUM_THREADS": "1"})
    losses = tmp_path / "logs" / "disc" / "losses.csv"
    deadline = time.time() + 120
    while time.time() < deadline and not (losses.exists() and len(losses.read_text().splitlines()) > 3):
        time.sleep(0.2)
    process.send_signal(signum)
    _, stderr = process.communicate(timeout=120)
    assert process.returncode == 128 + signum, stderr[-2000:]
    assert "Traceback" not in stderr
    errors = error_lines(stderr)
    assert len(errors) == 1 and signal.Signals(signum).name in errors[0] and "load_path=disc" in errors[0]
    steps = runs.saved_steps(str(tmp_path / "logs" / "disc"))
    assert len(steps) == 1 and f"saved {tmp_path / 'logs' / 'disc' / str(steps[0])}" in errors[0]
    assert "\r" not in stderr  # progress to a pipe: lines, not carriage returns
    assert any(line.startswith("disc step ") and "ms/step" in line for line in stderr.splitlines())


def test_a_full_disk_is_one_line_and_keeps_the_previous_save(tmp_path, monkeypatch):
    trainer = Trainer(tiny_config(tmp_path, extra=["export_frames=false"]))
    trainer.train_step()
    first = trainer.save()
    trainer.train_step()

    def full(obj, f, *args, **kwargs):
        raise OSError(errno.ENOSPC, "No space left on device")

    monkeypatch.setattr(torch, "save", full)
    with pytest.raises(DiskFull) as info:
        trainer.save()
    message = str(info.value)
    assert "disk is full" in message and os.path.join(trainer.run_folder, "2") in message and "\n" not in message
    monkeypatch.undo()
    assert runs.saved_steps(trainer.run_folder) == [1] and runs.is_complete_step(first)
    assert [f for _, _, files in os.walk(trainer.run_folder) for f in files if ".tmp" in f] == []
    trainer.close()


def _no_ffmpeg_binary():
    raise RuntimeError("No ffmpeg exe could be found. Install ffmpeg on your system, or set the IMAGEIO_FFMPEG_EXE "
                       "environment variable.")  # imageio-ffmpeg's words, installed from its source package


@pytest.mark.parametrize("module, words", [
    (None, ["imageio-ffmpeg", "pip install -r requirements.txt"]),  # None: its import raises ImportError
    (types.SimpleNamespace(get_ffmpeg_exe=_no_ffmpeg_binary), ["ffmpeg binary", "IMAGEIO_FFMPEG_EXE"]),
], ids=["no imageio-ffmpeg", "no ffmpeg binary"])
def test_a_missing_video_writer_is_one_line_at_start_up_and_only_when_validations_need_it(tmp_path, monkeypatch,
                                                                                        capsys, module, words):
    """Without imageio-ffmpeg, or with it but no ffmpeg binary (an H200 environment had each), the
    first validation's video failed on the writer thread and the run died at its next save with a
    traceback. Now: a one-line error before any data or model is loaded, and no error at all when
    no validation is asked for."""
    from stag4d.training import cli

    monkeypatch.setitem(sys.modules, "imageio_ffmpeg", module)
    data = make_disc_dataset(tmp_path / "disc")
    args = ["--config", ANCHORED, *TINY, f"path={data}", "save_path=disc", f"outdir={tmp_path / 'logs'}",
            f"valid_dir={tmp_path / 'valid'}", "total_steps=2", "export_frames=false"]
    with pytest.raises(SystemExit) as info:
        cli.main(args + ["valid_interval=1"])
    assert info.value.code == 2
    errors = error_lines(capsys.readouterr().err)
    assert len(errors) == 1 and all(word in errors[0] for word in words), errors
    assert not (tmp_path / "logs" / "disc" / "losses.csv").exists()  # stopped before training
    cli.main(args + ["valid_interval=0", "overwrite=true"])
    assert runs.saved_steps(str(tmp_path / "logs" / "disc")) == [2]


def test_a_really_full_small_disk(tmp_path):
    """A 2 MiB tmpfs, where this machine allows mounting one (root in a container may not)."""
    mount = tmp_path / "small"
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(mount)], capture_output=True)
    if done.returncode != 0:
        pytest.skip("cannot mount a small tmpfs here")
    try:
        trainer = Trainer(tiny_config(tmp_path, extra=["export_frames=false", f"outdir={mount}", "num_pts=20000"]))
        trainer.train_step()
        with pytest.raises(DiskFull, match="disk is full"):
            for _ in range(20):
                trainer.save(trainer.step)
                trainer.train_step()
        trainer.close()
    finally:
        subprocess.run(["umount", "-l", str(mount)], capture_output=True)  # lazy: files may still be open


# ---------------------------------------------------------------------------------------------
# 7-8. bad inputs: one line each (or a warning where continuing is right)


def write_frames(root, frames):
    (root / "ref").mkdir(parents=True)
    for i, rgba in enumerate(frames):
        Image.fromarray(rgba).save(root / "ref" / f"{i}_rgba.png")
    return str(root)


def disc(size, alpha=255):
    rgba = np.zeros((size, size, 4), np.uint8)
    rgba[size // 4: 3 * size // 4, size // 4: 3 * size // 4] = [200, 100, 50, alpha]
    return rgba


@pytest.mark.parametrize("frames, word", [
    ([disc(32, alpha=0), disc(32, alpha=0)], "fully transparent"),
    ([disc(32), disc(24)], "differ in size"),
    ([np.full((1, 1, 4), 255, np.uint8)] * 2, "too small"),
])
def test_bad_frames_are_one_line(tmp_path, frames, word):
    with pytest.raises(DataError, match=word) as info:
        load_frames(write_frames(tmp_path / "data", frames), ref_size=32, require_anchors=False)
    assert "\n" not in str(info.value)


def test_upscaled_and_empty_frames_warn(tmp_path, capsys):
    data = load_frames(write_frames(tmp_path / "data", [disc(16), disc(16, alpha=0)]), ref_size=32,
                       require_anchors=False)
    err = capsys.readouterr().err
    assert data.num_frames == 2 and "upscaled to ref_size=32" in err and "1 frame(s) are fully transparent" in err


def test_an_unreadable_ref_folder_is_one_line(tmp_path, monkeypatch):
    path = write_frames(tmp_path / "data", [disc(16)])
    real = os.listdir

    def denied(folder):
        if str(folder).endswith("ref"):
            raise PermissionError(13, "Permission denied")
        return real(folder)

    monkeypatch.setattr(os, "listdir", denied)
    with pytest.raises(DataError, match="permission denied.*chmod"):
        load_frames(path, ref_size=16, require_anchors=False)


def test_an_invalid_saved_config_is_one_line(tmp_path):
    (tmp_path / "config.yaml").write_text("num_frames: 0\n")
    with pytest.raises(DataError) as info:
        saved_run_config(str(tmp_path))
    assert "num_frames=0 must be >= 1" in str(info.value) and "\n" not in str(info.value)


def test_a_saved_frame_count_that_contradicts_the_run_is_one_line(tmp_path):
    from stag4d.evaluation.saved_model import frame_count

    (tmp_path / "frames").mkdir()
    for i in range(3):
        (tmp_path / "frames" / f"{i}.ply").write_bytes(b"")
    trained = config_from_dict({"path": "x", "num_frames": 20000})
    with pytest.raises(DataError, match="num_frames=20000 but the run exported 3 frames"):
        frame_count(config_from_dict({"path": "x"}), trained, str(tmp_path))


def test_an_unparsable_override_is_one_line():
    with pytest.raises(ConfigError) as info:
        load_config(None, ["path=x", "holdout_views=[1,"])
    assert "\n" not in str(info.value)


def test_resuming_at_or_past_total_steps_says_there_is_nothing_to_train(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, extra=["export_frames=false", "total_steps=3"]))
    trainer.train()
    trainer.close()
    with pytest.raises(UserError, match="not below total_steps=2: nothing to train"):
        Trainer(tiny_config(tmp_path, extra=["export_frames=false", "total_steps=2", "load_path=disc"]))


# ---------------------------------------------------------------------------------------------
# 10. logs


def test_losses_csv_has_every_column_from_the_start(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, extra=["export_frames=false", "init_steps=2", "log_interval=2",
                                                   "total_steps=4"]))
    trainer.train()
    lines = (tmp_path / "logs" / "disc" / "losses.csv").read_text().splitlines()
    header = lines[0].split(",")
    assert header == ["step", "num_gaussians", "loss", "ref_rgb", "ref_alpha", "anchor_rgb", "anchor_alpha",
                      "regularizer", "anisotropy"]
    coarse, fine = (dict(zip(header, line.split(","))) for line in lines[1:])
    assert coarse["step"] == "2" and coarse["regularizer"] == "" and fine["regularizer"] != ""
    trainer.close()


@pytest.mark.cuda
def test_on_the_gpu_a_non_finite_step_is_skipped_on_the_device_then_reported(tmp_path, monkeypatch):
    """Fused Adam on CUDA: no per-step sync; the bad step's update is skipped on the device (its
    parameters stay finite) and the check at the next sync names the step."""
    trainer = Trainer(tiny_config(tmp_path, extra=["device=cuda", "backend=gsplat", "export_frames=false",
                                                   "init_steps=0", "fused_adam=true"]))
    assert trainer.optimizer.defaults["fused"]
    trainer.train_step()
    original = trainer.compute_losses
    monkeypatch.setattr(trainer, "compute_losses",
                        lambda *a, **k: {**original(*a, **k), "anisotropy": torch.tensor(float("inf"), device="cuda")})
    before = {k: v.detach().clone() for k, v in trainer.model.named_parameters()}
    trainer.train_step()  # no exception yet: nothing waited for the device
    for name, param in trainer.model.named_parameters():
        assert torch.equal(param.detach(), before[name]), name  # the update was skipped
    with pytest.raises(TrainingStopped, match="step 2: the loss 'anisotropy'"):
        trainer.check_finite()
    trainer.close()
