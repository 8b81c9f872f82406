"""main.py beside gen_mv (``wait_for=``) and the one-command pipeline (scripts/video_to_4d.py).

The trainer waits for a file before it reads the data, and the data it reads is the data that was
there when the file appeared; gen_mv likewise waits for prepare_video's frames (``--wait-for``);
the pipeline runs the three stages side by side, and stops the waiting ones when a stage fails. CPU, tiny random Zero123++ (tests/test_gen_mv.py's model).
"""
import os
import shutil
import subprocess
import sys
import threading
import time

import pytest
import torch
from PIL import Image
from test_gen_mv import HEIGHT, STEPS, WIDTH, disk_frame, tiny_model  # noqa: F401  (fixture)
from test_trainer import TINY, make_disc_dataset, tiny_config

from stag4d.errors import DataError
from stag4d.files import wait_for_file
from stag4d.multiview import gen_mv
from stag4d.training.trainer import Trainer

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def later(seconds: float, action) -> threading.Thread:
    thread = threading.Thread(target=lambda: (time.sleep(seconds), action()), daemon=True)
    thread.start()
    return thread


def test_wait_for_file_returns_once_the_file_is_there(tmp_path):
    target = tmp_path / "record.json"
    later(0.6, lambda: target.write_text("{}"))
    lines = []
    waited = wait_for_file(str(target), timeout=20, setting_name="wait_for", timeout_name="wait_timeout",
                           poll_seconds=0.05, report_seconds=0.2, report=lines.append)
    assert 0.5 <= waited < 10
    assert lines and all(line.startswith(f"waiting for {target}") for line in lines)
    assert wait_for_file(str(target), 1, "wait_for", "wait_timeout") < 0.1  # already there: no wait


def test_wait_for_file_times_out_in_one_line_naming_both_settings(tmp_path):
    with pytest.raises(DataError) as err:
        wait_for_file(str(tmp_path / "never.json"), timeout=0.3, setting_name="wait_for", timeout_name="wait_timeout",
                      poll_seconds=0.05, report=lambda line: None)
    message = str(err.value)
    assert "\n" not in message and "wait_for=" in message and "wait_timeout" in message and "gen_mv" in message


def test_trainer_waits_for_the_file_before_it_reads_the_data(tmp_path):
    """The anchors are not there when the trainer starts; they and the record appear later (as gen_mv
    writes them): the trainer waits, then reads them, and trains."""
    full = make_disc_dataset(tmp_path / "full")
    data = tmp_path / "disc"
    os.makedirs(data)
    shutil.copytree(os.path.join(full, "ref"), data / "ref")
    record = tmp_path / "gen_mv.json"

    def gen_mv_finishes():
        shutil.copytree(os.path.join(full, "zero123"), data / "zero123")
        record.write_text("{}")

    later(1.0, gen_mv_finishes)
    cfg = tiny_config(tmp_path, data=str(data), extra=[f"wait_for={record}", "wait_timeout=60", "total_steps=2"])
    start = time.monotonic()
    trainer = Trainer(cfg)
    assert time.monotonic() - start >= 1.0
    assert trainer.data.anchor_rgb is not None and trainer.data.anchor_rgb.shape[:2] == (4, 6)
    trainer.train()
    trainer.close()


def waiting_main_command(tmp_path, *extra) -> list[str]:
    """main.py (anchored, tiny) on a complete dataset, waiting for a file that nobody writes."""
    data = make_disc_dataset(tmp_path / "disc")
    return [sys.executable, os.path.join(REPO, "main.py"), "--config", os.path.join(REPO, "configs", "anchored.yaml"),
            *TINY, f"path={data}", "save_path=disc", f"outdir={tmp_path / 'logs'}",
            f"wait_for={tmp_path / 'never.json'}", *extra]


def test_trainer_gives_up_waiting_in_one_line(tmp_path, capsys):
    """main.py with wait_for= and no gen_mv: after wait_timeout, one line and exit status 2, no run left."""
    result = subprocess.run(waiting_main_command(tmp_path, "wait_timeout=0.5"), capture_output=True, text=True,
                            timeout=300)
    assert result.returncode == 2
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: wait_for=") and "Traceback" not in result.stderr
    assert not os.path.exists(tmp_path / "logs" / "disc")


def test_gen_mv_writes_its_record_when_every_view_exists_already(tmp_path, tiny_model, capsys):  # noqa: F811
    """A waiting main.py goes on when gen_mv has nothing to do."""
    folder = tmp_path / "toy" / "ref"
    folder.mkdir(parents=True)
    for i in range(2):
        Image.fromarray(disk_frame(i)).save(folder / f"{i}_rgba.png")
    path = str(tmp_path / "toy")
    argv = ["--path", path, "--model", tiny_model, "--device", "cpu", "--steps", str(STEPS), "--matting", "color",
            "--width", str(WIDTH), "--height", str(HEIGHT)]
    assert gen_mv.main(argv + ["--json", str(tmp_path / "first.json")]) == 0
    assert gen_mv.main(argv + ["--json", str(tmp_path / "again.json")]) == 0
    assert '"frames_generated": 0' in (tmp_path / "again.json").read_text()


def pipeline_command(tmp_path, tiny_model, *extra, gen_mv_args=""):  # noqa: F811
    frames = tmp_path / "video"
    frames.mkdir(exist_ok=True)
    for i in range(3):
        Image.fromarray(disk_frame(i)).save(frames / f"{i:03d}.png")
    return [sys.executable, os.path.join(REPO, "scripts", "video_to_4d.py"), str(frames), "--name", "toy",
            "--out-root", str(tmp_path / "datasets"), "--config", os.path.join(REPO, "configs", "anchored.yaml"),
            "--prepare-args", "--matting none --size 48 --frames 3",
            "--gen-mv-args", (f"--model {tiny_model} --device cpu --steps {STEPS} --matting color --width {WIDTH} "
                              f"--height {HEIGHT} {gen_mv_args}"),
            *TINY, "total_steps=2", f"outdir={tmp_path / 'logs'}", f"valid_dir={tmp_path / 'valid'}", *extra]


@pytest.mark.slow
def test_pipeline_runs_gen_mv_beside_main_and_trains_on_its_views(tmp_path, tiny_model):  # noqa: F811
    dataset = tmp_path / "datasets" / "toy"
    dataset.mkdir(parents=True)
    (dataset / "gen_mv.json.earlier").write_text("{}")  # left by an interrupted run: gone after a success
    result = subprocess.run(pipeline_command(tmp_path, tiny_model), capture_output=True, text=True, timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert not list(dataset.glob("*.earlier"))
    assert sorted(os.listdir(dataset / "zero123")) == ["0_rgba", "1_rgba", "2_rgba"]
    gen_mv_log = (dataset / "gen_mv.log").read_text()
    assert (dataset / "gen_mv.json").exists() and "wrote the views of 3 frames" in gen_mv_log
    # gen_mv loaded its model, then waited for prepare_video's record (written by the command)
    assert gen_mv_log.index("loaded Zero123++") < gen_mv_log.index("prepare_video.json is there")
    assert '"wall_s"' in (dataset / "prepare_video.json").read_text()
    assert "reading the data" in result.stderr  # main.py waited for gen_mv's record
    assert (tmp_path / "logs" / "toy" / "2" / "checkpoint.pt").exists()
    assert "| prepare_video s | gen_mv (from its start) s | main.py (from its start) s |" in result.stdout


@pytest.mark.slow
def test_sequential_pipeline_starts_main_after_gen_mv(tmp_path, tiny_model):  # noqa: F811
    result = subprocess.run(pipeline_command(tmp_path, tiny_model, "--sequential"), capture_output=True, text=True,
                            timeout=600)
    assert result.returncode == 0, result.stderr[-2000:]
    assert "waited 0.0 s" in result.stderr  # the record was there when main.py looked
    assert "| prepare_video s | gen_mv s | main.py s |" in result.stdout
    assert (tmp_path / "logs" / "toy" / "2" / "checkpoint.pt").exists()


@pytest.mark.slow
def test_pipeline_stops_main_when_gen_mv_fails(tmp_path, tiny_model):  # noqa: F811
    """gen_mv fails (a batch size it refuses): main.py, waiting for the record, is stopped and the
    command ends in gen_mv's one-line error, not after wait_timeout."""
    start = time.monotonic()
    result = subprocess.run(pipeline_command(tmp_path, tiny_model, gen_mv_args="--batch-size 0"),
                            capture_output=True, text=True, timeout=600)
    assert result.returncode == 2 and time.monotonic() - start < 300
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: gen_mv failed (exit status 2): --batch-size 0: give at least 1")
    assert "Traceback" not in result.stderr
    # main.py was stopped while importing (nothing made yet) or while starting (it released and removed
    # its run folder), depending on which came first: no run folder either way
    assert not (tmp_path / "logs" / "toy").exists()


@pytest.mark.slow
def test_pipeline_stops_gen_mv_and_main_when_prepare_video_fails(tmp_path, tiny_model):  # noqa: F811
    """prepare_video fails (a frame count it refuses) while gen_mv and main.py load: both are stopped,
    the command ends in prepare_video's failure, and the dataset folder it made for gen_mv's log is gone."""
    command = pipeline_command(tmp_path, tiny_model)
    command[command.index("--prepare-args") + 1] = "--matting none --frames 0"
    start = time.monotonic()
    result = subprocess.run(command, capture_output=True, text=True, timeout=600)
    assert result.returncode == 2 and time.monotonic() - start < 300
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert lines[-1] == "error: prepare_video failed (exit status 2), see above" and "Traceback" not in result.stderr
    assert not (tmp_path / "datasets" / "toy").exists() and not (tmp_path / "logs" / "toy").exists()


@pytest.mark.slow
def test_a_refused_rerun_leaves_the_earlier_runs_records_as_they_were(tmp_path, tiny_model):  # noqa: F811
    """The dataset holds an earlier run (frames, records, gen_mv's log) and the rerun has no --overwrite:
    prepare_video refuses after gen_mv and main.py started, and the earlier files are back unchanged
    (they were set aside so that the waiting stages could not take them for this run's)."""
    dataset = tmp_path / "datasets" / "toy"
    (dataset / "ref").mkdir(parents=True)
    Image.fromarray(disk_frame(0)).save(dataset / "ref" / "0_rgba.png")
    earlier = {name: f"the earlier run's {name}\n" for name in ("gen_mv.json", "prepare_video.json", "gen_mv.log")}
    for name, text in earlier.items():
        (dataset / name).write_text(text)
    result = subprocess.run(pipeline_command(tmp_path, tiny_model), capture_output=True, text=True, timeout=600)
    assert result.returncode == 2 and "already holds 1 frames: pass --overwrite" in result.stderr
    assert {name: (dataset / name).read_text() for name in earlier} == earlier
    assert sorted(os.listdir(dataset)) == sorted(["ref", *earlier])  # no set-aside copies left


def test_gen_mv_gives_up_waiting_for_the_frames_in_one_line(tmp_path, tiny_model, capsys):  # noqa: F811
    """gen_mv --wait-for: the model loads, then after --wait-timeout one line naming both options."""
    argv = ["--path", str(tmp_path / "toy"), "--model", tiny_model, "--device", "cpu", "--matting", "color",
            "--wait-for", str(tmp_path / "never.json"), "--wait-timeout", "0.5"]
    with pytest.raises(SystemExit) as exit_info:
        gen_mv.main(argv)
    assert exit_info.value.code == 2
    out, err = capsys.readouterr()
    assert "loaded Zero123++" in out
    last = err.strip().splitlines()[-1]  # (before it: the model libraries' loading progress)
    assert last.startswith(f"error: --wait-for={tmp_path / 'never.json'}: it did not appear within 0 s")
    assert "--wait-timeout" in last and "prepare_video" in last and "Traceback" not in err


def test_a_signal_while_waiting_stops_main_in_one_line(tmp_path):
    """SIGTERM while main.py waits for gen_mv: one line, exit status 128 + 15, the run folder gone."""
    process = subprocess.Popen(waiting_main_command(tmp_path, "wait_timeout=600"), stderr=subprocess.PIPE, text=True)
    lock = tmp_path / "logs" / "disc" / ".lock"
    deadline = time.monotonic() + 120
    while not lock.exists() and time.monotonic() < deadline:  # it holds its run folder: it is starting
        time.sleep(0.1)
    time.sleep(0.5)
    process.terminate()
    stderr = process.communicate(timeout=60)[1]
    assert process.returncode == 128 + 15
    lines = [line for line in stderr.splitlines() if line.strip()]
    assert lines[-1].startswith("error: stopped by SIGTERM while starting (wait_for=") and "Traceback" not in stderr
    assert not (tmp_path / "logs" / "disc").exists()


def test_warm_up_does_not_run_without_cuda(tmp_path):
    """On the CPU there is nothing to compile or capture: no warm-up pass (it would only cost time)."""
    calls = []

    class Guide:
        def prepare(self, ref_rgb, anchor_rgb=None):
            pass

        def sds_loss(self, images, *args):
            return images.sum() * 0

        def warm_up(self, batch):
            calls.append(batch)

    trainer = Trainer(tiny_config(tmp_path, "stag4d.yaml"), guidance=Guide())
    trainer.close()
    assert calls == [] and torch.device(trainer.device).type == "cpu"


@pytest.mark.parametrize("option", ["--json other.json", "--wait-for other.json"])
def test_pipeline_refuses_gen_mv_arguments_it_sets_before_any_stage(tmp_path, capsys, option):
    from stag4d import video_to_4d

    with pytest.raises(SystemExit) as exit_info:
        video_to_4d.main([str(tmp_path / "clip.mp4"), "--name", "toy", "--out-root", str(tmp_path),
                          "--gen-mv-args", option])
    assert exit_info.value.code == 2
    name = option.split()[0]
    assert capsys.readouterr().err.strip().startswith(f"error: --gen-mv-args: leave out {name}")
    assert not (tmp_path / "toy").exists()  # prepare_video never ran


def test_console_entry():
    import tomllib

    with open(os.path.join(REPO, "pyproject.toml"), "rb") as f:
        assert tomllib.load(f)["project"]["scripts"]["stag4d-video-to-4d"] == "stag4d.video_to_4d:main"
