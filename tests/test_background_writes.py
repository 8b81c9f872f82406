"""Saves and validation renders written on a worker thread (``background_writes``): the same files
as written in line, a snapshot that later steps cannot change, failures raised in the training
thread, and nothing lost at the end of a run."""
import errno
import filecmp
import os
import threading

import pytest
import torch
from test_trainer import make_disc_dataset, tiny_config

from stag4d.errors import DiskFull
from stag4d.files import BackgroundWriter, host_copy
from stag4d.gaussians.ply import read_gaussian_ply
from stag4d.training import runs
from stag4d.training.trainer import Trainer, read_checkpoint

# ---------------------------------------------------------------------------------------------
# the writer


def hold_writer(writer: BackgroundWriter) -> threading.Event:
    """Occupy the writer's thread with a job that waits for the returned gate (a slow disk); returns
    once the thread has taken it, so the queue is empty again (else a next submit could block)."""
    taken, gate = threading.Event(), threading.Event()

    def held() -> None:
        taken.set()
        gate.wait()

    writer.submit(held)
    assert taken.wait(timeout=10)
    return gate


def test_jobs_run_in_order_and_wait_returns_when_all_are_done():
    writer = BackgroundWriter(max_pending=2)
    done = []
    for i in range(5):
        writer.submit(lambda i=i: done.append(i))
    writer.wait()
    assert done == [0, 1, 2, 3, 4]


def test_submit_blocks_while_max_pending_jobs_wait():
    writer = BackgroundWriter(max_pending=1)
    gate = hold_writer(writer)  # taken by the worker, which now blocks
    writer.submit(lambda: None)  # waits in the queue: the queue is full
    third = threading.Thread(target=writer.submit, args=(lambda: None,))
    third.start()
    third.join(timeout=0.5)
    assert third.is_alive()  # blocked until a job finishes
    gate.set()
    third.join(timeout=10)
    assert not third.is_alive()
    writer.wait()


def test_a_failure_reaches_the_caller_once_and_drops_the_jobs_queued_behind_it():
    writer = BackgroundWriter(max_pending=3)
    gate = threading.Event()
    done = []

    def fail():
        gate.wait()
        raise OSError(errno.EIO, "write failed")

    writer.submit(fail)
    writer.submit(lambda: done.append("after"))  # queued behind the failure: must not run
    gate.set()
    with pytest.raises(OSError, match="write failed"):
        writer.wait()
    assert done == []
    writer.wait()  # raised once; the writer works again
    writer.submit(lambda: done.append("later"))
    writer.wait()
    assert done == ["later"]


def test_an_earlier_failure_is_raised_by_the_next_submit():
    writer = BackgroundWriter()
    writer.submit(lambda: 1 / 0)
    writer._jobs.join()  # the failure has happened, nobody has waited yet
    ran = []
    with pytest.raises(ZeroDivisionError):
        writer.submit(lambda: ran.append(1))
    writer.wait()
    assert ran == []


def test_host_copy_owns_its_memory_and_keeps_the_structure():
    weight = torch.ones(3)
    state = {"w": weight, "groups": [{"lr": 0.1, "params": [0, 1]}], "pair": (weight, 2), "name": "x"}
    copied = host_copy(state)
    weight.add_(1.0)  # the training step changes the original in place
    assert torch.equal(copied["w"], torch.ones(3)) and torch.equal(copied["pair"][0], torch.ones(3))
    assert copied["groups"] == [{"lr": 0.1, "params": [0, 1]}] and copied["pair"][1] == 2 and copied["name"] == "x"
    assert isinstance(copied["pair"], tuple)


# ---------------------------------------------------------------------------------------------
# the trainer


def files_under(folder):
    return sorted(os.path.relpath(os.path.join(root, f), folder) for root, _, files in os.walk(folder) for f in files)


def equal(x, y) -> bool:
    if torch.is_tensor(x):
        return torch.is_tensor(y) and torch.equal(x, y)
    if isinstance(x, dict):
        return isinstance(y, dict) and x.keys() == y.keys() and all(equal(x[k], y[k]) for k in x)
    if isinstance(x, (list, tuple)):
        return len(x) == len(y) and all(equal(u, v) for u, v in zip(x, y))
    return x == y


def same_torch_files(a, b) -> bool:
    """Equal contents (torch's zip names its records after the file, so the bytes always differ);
    a checkpoint's config may differ only in where the run writes and in background_writes."""
    sa, sb = (torch.load(path, weights_only=False) for path in (a, b))
    for state in (sa, sb):
        for key in ("outdir", "valid_dir", "background_writes"):
            state.get("config", {}).get("output", {}).pop(key, None)
    return equal(sa, sb)


@pytest.mark.slow
def test_a_run_writes_the_same_files_in_the_background_as_in_line(tmp_path):
    folders = {}
    data = make_disc_dataset(tmp_path / "disc")
    for background in (True, False):
        root = tmp_path / str(background)
        cfg = tiny_config(root, data=data, extra=["total_steps=6", "save_step=3", "valid_interval=3", "keep_last=0",
                                       f"background_writes={str(background).lower()}"])
        trainer = Trainer(cfg)
        trainer.train()
        trainer.close()
        folders[background] = (root / "logs" / "disc", root / "valid" / "disc")
    (logs_a, valid_a), (logs_b, valid_b) = folders[True], folders[False]
    assert runs.saved_steps(str(logs_a)) == runs.saved_steps(str(logs_b)) == [3, 6]
    assert files_under(valid_a) == files_under(valid_b) and len(files_under(valid_a)) == 2 * 2 * (4 + 1)
    for name in files_under(valid_a):
        assert filecmp.cmp(valid_a / name, valid_b / name, shallow=False), name
    for step in ("3", "6"):
        names = files_under(logs_a / step)
        assert names == files_under(logs_b / step) and "frames/3.ply" in names
        for name in names:
            if name.endswith(".pt"):
                assert same_torch_files(logs_a / step / name, logs_b / step / name), f"{step}/{name}"
            elif name != runs.CONFIG_FILE:  # the config names its own folders
                assert filecmp.cmp(logs_a / step / name, logs_b / step / name, shallow=False), f"{step}/{name}"


def test_a_background_save_holds_the_state_of_its_step(tmp_path):
    """The save copies everything when it is asked for; the steps trained while its files are
    written do not reach them (the worker is held back until after the next step)."""
    trainer = Trainer(tiny_config(tmp_path, extra=["export_frames=true"]))
    trainer.train_step()
    expected = {name: p.detach().clone() for name, p in trainer.model.named_parameters()}
    exp_avg = {id(p): trainer.optimizer.state[p]["exp_avg"].clone() for p in trainer.model.parameters()
               if p in trainer.optimizer.state}
    frame0 = trainer.model.frame_arrays(trainer.frame_time(0))
    gate = hold_writer(trainer.writer)
    folder = trainer.save(wait=False)
    trainer.train_step()
    trainer.train_step()  # the parameters and Adam moments change in place
    assert not torch.equal(trainer.model.means, expected["means"])
    gate.set()
    trainer.writer.wait()
    saved = read_checkpoint(os.path.join(folder, runs.CHECKPOINT_FILE))
    assert saved["step"] == 1
    for name, value in expected.items():
        assert torch.equal(saved["model"][name], value), name
    moments = [s["exp_avg"] for s in saved["optimizer"]["state"].values()]
    assert sorted(m.sum().item() for m in moments) == sorted(m.sum().item() for m in exp_avg.values())
    assert (read_gaussian_ply(os.path.join(folder, "frames", "0.ply")).means == frame0.means).all()
    trainer.close()


def test_a_failed_background_save_stops_the_run_in_one_line_and_keeps_the_last_complete_save(tmp_path, monkeypatch):
    trainer = Trainer(tiny_config(tmp_path, extra=["total_steps=6", "save_step=2", "keep_last=0",
                                                   "export_frames=false"]))
    real_save = torch.save

    def full_after_step_2(obj, f, *args, **kwargs):
        if isinstance(obj, dict) and obj.get("step") == 4:
            raise OSError(errno.ENOSPC, "No space left on device")
        return real_save(obj, f, *args, **kwargs)

    monkeypatch.setattr(torch, "save", full_after_step_2)
    with pytest.raises(DiskFull) as info:
        trainer.train()
    assert "\n" not in str(info.value) and os.path.join(trainer.run_folder, "4") in str(info.value)
    assert runs.saved_steps(trainer.run_folder) == [2]  # the save after the failure was not completed
    assert trainer.step <= 6
    trainer.close()


def test_close_waits_for_the_writes_in_flight(tmp_path):
    trainer = Trainer(tiny_config(tmp_path, extra=["export_frames=false"]))
    trainer.train_step()
    gate = hold_writer(trainer.writer)
    folder = trainer.save(wait=False)
    threading.Timer(0.3, gate.set).start()
    trainer.close()
    assert runs.is_complete_step(folder)
