"""scripts/batch.py: clips, stage targets, the results table, and whole batches on a local Ray.

The Ray tests share one local instance with 2 CPUs (module fixture). One batch of three clips
(two tiny copies of the demo, one with a broken frame) through train -> visualize -> evaluate is
started as its own driver process that joins that instance, killed with SIGKILL once the first
clip's training is saved, and rerun here: the tests read that story's outputs.
"""
import csv
import functools
import json
import logging
import os
import shutil
import signal
import subprocess
import sys
import time
from typing import Optional

import pytest
from test_trainer import TINY

from gs_renderer import MODEL_FILES
from stag4d.batch import cli, execute, results
from stag4d.batch.clips import Clip, find_clips
from stag4d.batch.records import StageRecord, read_record
from stag4d.batch.runner import batch_lock, run_batch, task_record
from stag4d.batch.stages import STAGES as ALL_STAGES
from stag4d.batch.stages import (
    AnchorViews,
    BatchSettings,
    PreparedFrames,
    StageJob,
    TrainedRun,
    Videos,
    parse_stages,
    plan_clip,
)
from stag4d.errors import DataError, UserError
from stag4d.training.runs import CHECKPOINT_FILE

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMO = os.path.join(REPO, "dataset", "demo")
CONFIG = os.path.join(REPO, "configs", "anchored.yaml")
TOTAL_STEPS = 4
# tiny runs (tests/test_trainer.py) on 32 px copies of the demo's first frames
OVERRIDES = TINY + [f"total_steps={TOTAL_STEPS}", "init_steps=2", "iters=2", "position_lr_max_steps=4"]
STAGES = "train,visualize,evaluate"
FRAMES = 2
EVAL_VIEWS = 1


def copy_demo(folder: str) -> str:
    """The demo's first frames with their anchors and one held-out view, as a dataset folder."""
    with open(os.path.join(DEMO, "eval", "views.json")) as f:
        views = json.load(f)["views"][:EVAL_VIEWS]
    for i in range(FRAMES):
        os.makedirs(os.path.join(folder, "ref"), exist_ok=True)
        shutil.copy(os.path.join(DEMO, "ref", f"{i}_rgba.png"), os.path.join(folder, "ref", f"{i}_rgba.png"))
        shutil.copytree(os.path.join(DEMO, "zero123", f"{i}_rgba"), os.path.join(folder, "zero123", f"{i}_rgba"))
        for view in views:
            os.makedirs(os.path.join(folder, "eval", view["name"]), exist_ok=True)
            shutil.copy(os.path.join(DEMO, "eval", view["name"], f"{i}_rgba.png"),
                        os.path.join(folder, "eval", view["name"], f"{i}_rgba.png"))
    with open(os.path.join(folder, "eval", "views.json"), "w") as f:
        json.dump({"views": views}, f)
    return folder


def settings_for(out, stages=STAGES, **stage_args) -> BatchSettings:
    return BatchSettings(out=str(out), stages=parse_stages(stages), config=CONFIG, overrides=list(OVERRIDES),
                         stage_args={k: v.split() for k, v in stage_args.items()})


def touch_step(run: str, step: int, checkpoint: bool = True) -> str:
    folder = os.path.join(run, str(step))
    os.makedirs(folder, exist_ok=True)
    for name in MODEL_FILES + ((CHECKPOINT_FILE,) if checkpoint else ()):
        open(os.path.join(folder, name), "w").close()
    return folder


# ------------------------------------------------------------------------------------------------
# clips, plans and targets (no Ray)


def test_clips_of_a_folder_and_of_a_list_file(tmp_path):
    root = tmp_path / "clips"
    (root / "walk.mp4").parent.mkdir()
    (root / "walk.mp4").write_bytes(b"")
    (root / "frames").mkdir()
    (root / "frames" / "0001.jpg").write_bytes(b"")
    (root / "ready" / "ref").mkdir(parents=True)
    (root / "notes.txt").write_text("")
    (root / ".hidden").mkdir()
    clips, ignored = find_clips(str(root))
    assert [(c.name, c.kind) for c in clips] == [("frames", "images"), ("ready", "dataset"), ("walk", "video")]
    assert ignored == ["notes.txt"]
    assert clips[2].source == str(root / "walk.mp4")

    listing = tmp_path / "list.txt"
    listing.write_text("# benchmark\nclips/ready\n\nclips/walk.mp4  # the video\n")
    assert [c.name for c in find_clips(str(listing))[0]] == ["ready", "walk"]

    listing.write_text("clips/ready\nclips/missing\n")
    with pytest.raises(DataError, match="line 2: .*missing does not exist"):
        find_clips(str(listing))
    (tmp_path / "other" / "ready" / "ref").mkdir(parents=True)
    listing.write_text("clips/ready\nother/ready\n")
    with pytest.raises(DataError, match="two clips are named 'ready'"):
        find_clips(str(listing))
    with pytest.raises(DataError, match="one dataset folder"):
        find_clips(str(root / "ready"))


def test_plan_builds_each_entry_points_arguments(tmp_path):
    dataset = Clip("ready", str(tmp_path / "ready"), "dataset")
    settings = settings_for(tmp_path / "out", stages="prepare_video,gen_mv,train,visualize,evaluate",
                            gen_mv="--matting color --steps 2", evaluate="views=eval --config " + CONFIG)
    plan = plan_clip(dataset, settings)
    assert plan.not_applicable == ("prepare_video",) and list(plan.jobs) == ["gen_mv", "train", "visualize",
                                                                             "evaluate"]
    assert plan.jobs["gen_mv"].command()[2:] == ["stag4d.multiview.gen_mv", "--path", dataset.source,
                                                 "--matting", "color", "--steps", "2"]
    train = plan.jobs["train"].argv
    assert train[:2] == ["--config", CONFIG] and train[-2:] == [f"path={dataset.source}", "save_path=ready"]
    assert f"outdir={tmp_path / 'out' / 'logs'}" in train and "views=eval" in plan.jobs["evaluate"].argv
    assert plan.run == str(tmp_path / "out" / "logs" / "ready")
    assert plan.jobs["train"].target == TrainedRun(plan.run, TOTAL_STEPS)
    assert all(job.num_gpus == 0 and job.num_cpus == 1 for job in plan.jobs.values())

    video = Clip("walk", str(tmp_path / "walk.mp4"), "video")
    prepared = plan_clip(video, settings_for(tmp_path / "out", stages="prepare_video,gen_mv",
                                             prepare_video="--frames 8 --matting color"))
    assert prepared.dataset == str(tmp_path / "out" / "datasets" / "walk")
    assert prepared.jobs["prepare_video"].target == PreparedFrames(os.path.join(prepared.dataset, "ref"), 8)
    assert prepared.jobs["gen_mv"].argv[:2] == ["--path", prepared.dataset]
    everything = plan_clip(video, settings_for(tmp_path / "out", stages=",".join(ALL_STAGES)))
    assert list(everything.jobs) == list(ALL_STAGES)  # the dataset it will make is planned for
    assert f"path={prepared.dataset}" in everything.jobs["evaluate"].argv
    assert "prepare_video" in plan_clip(video, settings_for(tmp_path / "out", stages="train")).error

    with pytest.raises(UserError, match="num_ptz"):
        plan_clip(dataset, settings_for(tmp_path / "out", train="num_ptz=5"))
    with pytest.raises(UserError, match="^gen_mv: unrecognized arguments: --no-such-flag: fix --gen-mv-args$"):
        plan_clip(dataset, settings_for(tmp_path / "out", stages="gen_mv", gen_mv="--no-such-flag"))
    with pytest.raises(UserError, match="--stages"):
        parse_stages("train,paint")


def test_targets_say_what_is_complete_and_how_to_resume(tmp_path):
    run = str(tmp_path / "logs" / "clip")
    target = TrainedRun(run, total_steps=6)
    assert not target.complete() and target.resume_args() == []
    touch_step(run, 3)
    touch_step(run, 6, checkpoint=False)  # a save killed before its checkpoint: not a step
    assert not target.complete()
    assert target.resume_args() == [f"load_path={run}", "load_step=3"]
    step = touch_step(run, 6)
    assert target.complete()

    video = tmp_path / "valid" / "video_front.mp4"
    video.parent.mkdir()
    video.write_bytes(b"")
    videos = Videos(run, None, (str(video),))
    past = os.path.getmtime(os.path.join(step, CHECKPOINT_FILE)) - 10
    os.utime(video, (past, past))  # made before the latest step: stale
    assert not videos.complete()
    os.utime(video)
    assert videos.complete()
    assert not Videos(run, 5, (str(video),)).complete()  # no step 5

    ref = tmp_path / "data" / "ref"
    ref.mkdir(parents=True)
    frames = PreparedFrames(str(ref), frames=2)
    assert frames.resume_args() == []
    (ref / "0_rgba.png").write_bytes(b"")
    assert not frames.complete() and frames.resume_args() == ["--overwrite"]
    (ref / "1_rgba.png").write_bytes(b"")
    assert frames.complete()

    anchors = AnchorViews(str(tmp_path / "data"))
    for i in range(2):
        (tmp_path / "data" / "zero123" / f"{i}_rgba").mkdir(parents=True)
        for k in range(6 - i):  # frame 1 lacks its last view
            (tmp_path / "data" / "zero123" / f"{i}_rgba" / f"{k}.png").write_bytes(b"")
    assert not anchors.complete()
    (tmp_path / "data" / "zero123" / "1_rgba" / "5.png").write_bytes(b"")
    assert anchors.complete()


def test_stage_process_errors_become_one_line_and_signals_are_retried(tmp_path):
    log = str(tmp_path / "clip" / "train.log")
    env = execute.stage_environment(1, 0)
    assert env["CUDA_VISIBLE_DEVICES"] == "" and env["OMP_NUM_THREADS"] == "1"
    script = "import sys; print('working'); print('error: ref/0_rgba.png is missing: fix it', file=sys.stderr); " \
             "print('  File x'); sys.exit(2)"
    assert execute.run_process([sys.executable, "-c", script], log, str(tmp_path), env) == \
        (2, "ref/0_rgba.png is missing: fix it")
    crash = "raise RuntimeError('CUDA out of memory.\\nTried to allocate')"
    code, message = execute.run_process([sys.executable, "-c", crash], log, str(tmp_path), env)
    assert code == 1 and message == "Tried to allocate"  # no error: line: the last line printed
    assert "working" not in open(log).read()  # each run starts a fresh log

    job = StageJob("clip", "train", [], TrainedRun(str(tmp_path / "logs" / "clip"), 4), log, str(tmp_path))
    job.command = lambda: [sys.executable, "-c", "import os, signal; os.kill(os.getpid(), signal.SIGKILL)"]
    with pytest.raises(execute.StageKilled, match="killed by SIGKILL"):
        execute.execute_stage(job)
    job.command = lambda: [sys.executable, "-c", "print('nothing saved')"]
    record = execute.execute_stage(job)
    assert record.status == "failed" and "outputs are incomplete" in record.error
    assert read_record(str(tmp_path / "clip"), "train").status == "failed"


def test_table_rows_mean_and_files(tmp_path):
    settings = settings_for(tmp_path / "out")
    plans = [plan_clip(Clip(name, str(tmp_path / name), "dataset"), settings) for name in ("a", "b", "c")]
    for name, psnr in (("a", 20.0), ("b", 30.0)):
        touch_step(os.path.join(settings.out, "logs", name), TOTAL_STEPS)
        metrics = os.path.join(settings.out, "valid", name, f"metrics_{TOTAL_STEPS}.json")
        os.makedirs(os.path.dirname(metrics))
        with open(metrics, "w") as f:
            json.dump({"metrics": ["psnr"], "groups": {"eval": {"mean": {"psnr": psnr}}}}, f)
    records = {
        "a": {"train": StageRecord("ok", 10.0, 10.0), "visualize": StageRecord("ok", 2.0, 0.0),
              "evaluate": StageRecord("done")},
        "b": {"train": StageRecord("done", 20.0, 20.0), "visualize": StageRecord("ok", 4.0, 0.0),
              "evaluate": StageRecord("ok", 1.0, 0.0)},
        "c": {"train": StageRecord("failed", 1.0, 1.0, "ref/0_rgba.png cannot be read"),
              "visualize": StageRecord("blocked"), "evaluate": StageRecord("blocked")},
    }
    rows = results.write_table(settings.out, plans, records, settings.stages)
    assert [r["clip"] for r in rows] == ["a", "b", "c", "mean"]
    assert rows[0]["wall_s"] == 12.0 and rows[0]["gpu_s"] == 10.0 and rows[0]["eval_psnr"] == 20.0
    assert rows[2]["status"] == "failed" and rows[2]["error"] == "train: ref/0_rgba.png cannot be read"
    mean = rows[3]
    assert mean["status"] == "2 of 3 clips" and mean["eval_psnr"] == 25.0 and mean["evaluate_s"] == 1.0  # a: no time
    assert mean["wall_s"] == (12.0 + 25.0) / 2 and "gaussians" not in mean  # empty PLYs: no count

    with open(os.path.join(settings.out, results.TABLE_CSV)) as f:
        table = list(csv.DictReader(f))
    assert [r["clip"] for r in table] == ["a", "b", "c", "mean"] and table[3]["eval_psnr"] == "25"
    markdown = open(os.path.join(settings.out, results.TABLE_MARKDOWN)).read().splitlines()
    assert markdown[0].startswith("| clip | status | train | visualize | evaluate | wall s | GPU s |")
    assert "eval psnr↑" in markdown[0]
    assert markdown[2].startswith("| a | ok | ok 10.0 s | ok 2.0 s | done |")
    assert markdown[5].startswith("| **mean** | 2 of 3 clips |")


def test_bad_arguments_stop_before_ray_starts(tmp_path, capsys):
    (tmp_path / "clips" / "a" / "ref").mkdir(parents=True)
    with pytest.raises(SystemExit) as stop:
        cli.main([str(tmp_path / "clips"), "--out", str(tmp_path / "out"), "--config", CONFIG, "num_ptz=3"])
    assert stop.value.code == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("error: ") and "num_ptz" in err[0]
    assert not (tmp_path / "out" / results.TABLE_CSV).exists()


def test_one_batch_at_a_time_per_output_folder(tmp_path):
    with batch_lock(str(tmp_path)):
        with pytest.raises(UserError, match=f"another batch is writing to {tmp_path} \\(pid {os.getpid()}\\)"):
            with batch_lock(str(tmp_path)):
                pass
    with batch_lock(str(tmp_path)):  # released
        pass


# ------------------------------------------------------------------------------------------------
# batches on a local Ray


@pytest.fixture(scope="module")
def ray_address():
    """One local Ray instance (2 CPUs) for the module; its address for drivers in other processes."""
    ray = pytest.importorskip("ray")
    auth_mode = os.environ.get("RAY_AUTH_MODE")
    # Ray (>= 2.59) turns on token authentication for a local instance by setting RAY_AUTH_MODE in
    # this process, so driver processes started from here (with its token in ~/.ray) may join it
    ray.init(num_cpus=2, include_dashboard=False, logging_level=logging.WARNING, log_to_driver=False)
    try:
        yield ray.get_runtime_context().gcs_address
    finally:
        started = descendants(os.getpid())  # Ray's processes and workers (and anything they started)
        ray.shutdown()
        if auth_mode is None:
            os.environ.pop("RAY_AUTH_MODE", None)
        deadline = time.monotonic() + 30
        while (alive := [pid for pid in started if running(pid)]) and time.monotonic() < deadline:
            time.sleep(0.2)
        assert started and not alive, f"processes left after ray.shutdown(): {alive}"


def _stat(pid: int) -> Optional[tuple[str, int]]:
    """(state, parent pid) of a process, None when it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return fields[0], int(fields[1])
    except (OSError, IndexError, ValueError):
        return None


def running(pid: int) -> bool:
    stat = _stat(pid)
    return stat is not None and stat[0] not in ("Z", "X")


def descendants(root: int) -> list[int]:
    """Processes below ``root`` in the process tree."""
    parents = {int(p): s[1] for p in os.listdir("/proc") if p.isdigit() and (s := _stat(int(p))) is not None}
    found, frontier = [], [root]
    while frontier:
        children = [pid for pid, parent in parents.items() if parent in frontier]
        found += children
        frontier = children
    return found


def test_ray_retries_a_stage_killed_by_a_signal(ray_address, tmp_path):
    ray = pytest.importorskip("ray")
    ref, attempts = tmp_path / "data" / "ref", tmp_path / "attempts"
    # the first attempt is killed (as by the out-of-memory killer), the next one writes the frame
    script = (f"import os, signal\nwith open({str(attempts)!r}, 'a') as f: f.write('x')\n"
              f"if open({str(attempts)!r}).read() == 'x': os.kill(os.getpid(), signal.SIGKILL)\n"
              f"os.makedirs({str(ref)!r}); open(os.path.join({str(ref)!r}, '0_rgba.png'), 'w').close()\n")
    job = StageJob("clip", "prepare_video", [], PreparedFrames(str(ref), 1), str(tmp_path / "clip" / "prepare.log"),
                   str(tmp_path))
    job.command = functools.partial(list, [sys.executable, "-c", script])  # pickled by reference to `list`
    record = ray.get(execute.submit(job, retries=1))
    assert (record.status, attempts.read_text()) == ("ok", "xx")

    attempts.write_text("")
    shutil.rmtree(ref)
    record = task_record(execute.submit(job, retries=0), retries=0)  # not retried: the kill is the result
    assert record.status == "failed" and attempts.read_text() == "x"
    assert record.error.startswith("killed by SIGKILL (log: ") and record.error.endswith("(after 0 retries)")


def stage_processes(out: str) -> list[str]:
    """Command lines of live processes that work on ``out`` (the stages of a batch there)."""
    found = []
    for pid in filter(str.isdigit, os.listdir("/proc")):
        try:
            with open(f"/proc/{pid}/cmdline", "rb") as f:
                command = f.read().replace(b"\0", b" ").decode(errors="replace")
        except OSError:
            continue
        if out in command and int(pid) != os.getpid():
            found.append(command)
    return found


def mtimes(out) -> dict[str, float]:
    """Modification time of every output of the clips a and b."""
    files = {}
    for sub in ("logs", "valid"):
        for root, _, names in os.walk(os.path.join(out, sub)):
            files.update({os.path.join(root, n): os.path.getmtime(os.path.join(root, n)) for n in names})
    return files


@pytest.fixture(scope="module")
def killed_and_rerun(ray_address, tmp_path_factory):
    """A batch killed (SIGKILL) once clip a's training is saved, then rerun to the end."""
    root = tmp_path_factory.mktemp("batch")
    clips, out = root / "clips", str(root / "out")
    for name in ("a", "b"):
        copy_demo(str(clips / name))
    copy_demo(str(clips / "broken"))
    (clips / "broken" / "ref" / "1_rgba.png").write_bytes(b"not a png")

    a_checkpoint = os.path.join(out, "logs", "a", str(TOTAL_STEPS), CHECKPOINT_FILE)
    env = {**os.environ, "PYTHONPATH": os.pathsep.join([REPO, os.environ.get("PYTHONPATH", "")])}
    command = [sys.executable, "-m", "stag4d.batch", str(clips), "--out", out, "--address", ray_address,
               "--config", CONFIG, "--stages", STAGES, "--no-progress", *OVERRIDES]
    with open(root / "driver.log", "w") as log:
        driver = subprocess.Popen(command, stdout=log, stderr=subprocess.STDOUT, env=env)
        deadline = time.monotonic() + 120
        while not os.path.isfile(a_checkpoint) and driver.poll() is None and time.monotonic() < deadline:
            time.sleep(0.1)
        running = driver.poll() is None
        driver.send_signal(signal.SIGKILL)
        driver.wait()
    assert running and os.path.isfile(a_checkpoint), open(root / "driver.log").read()[-3000:]
    killed_table = list(csv.DictReader(open(os.path.join(out, results.TABLE_CSV))))
    deadline = time.monotonic() + 30  # Ray ends the dead driver's tasks; their stage processes die with them
    while stage_processes(out) and time.monotonic() < deadline:
        time.sleep(0.2)
    left = stage_processes(out)
    trained = {path: t for path, t in mtimes(out).items() if os.path.join("logs", "a") in path}

    settings = settings_for(out)
    rows = run_batch(find_clips(str(clips))[0], settings, progress=False)
    return dict(out=out, clips=clips, killed_table=killed_table, left=left, trained=trained, rows=rows)


@pytest.mark.slow
def test_batch_table_has_a_row_per_clip(killed_and_rerun):
    rows = {r["clip"]: r for r in killed_and_rerun["rows"]}
    assert list(rows) == ["a", "b", "broken", "mean"]
    for name in ("a", "b"):
        row = rows[name]
        assert row["status"] == "ok", row
        assert row["visualize"] == row["evaluate"] == "ok"
        assert row["step"] == TOTAL_STEPS and row["gaussians"] > 0
        for key in ("reference_psnr", "anchors_ssim", "eval_psnr", "eval_iou"):  # evaluate.py's means
            assert 0 < row[key] < 100, (key, row[key])
        assert row["gpu_s"] == 0.0  # no GPU here
    assert rows["mean"]["status"] == "2 of 3 clips"
    assert rows["mean"]["eval_psnr"] == pytest.approx((rows["a"]["eval_psnr"] + rows["b"]["eval_psnr"]) / 2)
    out = killed_and_rerun["out"]
    table = list(csv.DictReader(open(os.path.join(out, results.TABLE_CSV))))
    assert [r["clip"] for r in table] == ["a", "b", "broken", "mean"]
    markdown = open(os.path.join(out, results.TABLE_MARKDOWN)).read()
    assert markdown.count("\n| a | ok |") == 1 and "| **mean** | 2 of 3 clips |" in markdown
    logs = os.listdir(os.path.join(out, "clips", "b"))
    assert {"train.log", "visualize.log", "evaluate.log", "visualize.json", "evaluate.json"} <= set(logs)


@pytest.mark.slow
def test_broken_clip_gets_its_error_row_and_the_others_finish(killed_and_rerun):
    rows = {r["clip"]: r for r in killed_and_rerun["rows"]}
    broken = rows["broken"]
    assert broken["status"] == "failed" and broken["train"] == "failed"
    assert broken["visualize"] == broken["evaluate"] == "blocked"
    assert broken["error"].startswith("train: ") and "1_rgba.png cannot be read as an image" in broken["error"]
    assert "\n" not in broken["error"] and "Traceback" not in broken["error"]
    assert rows["a"]["status"] == rows["b"]["status"] == "ok"


@pytest.mark.slow
def test_killed_batch_reruns_without_redoing_completed_stages(killed_and_rerun):
    killed = {r["clip"]: r for r in killed_and_rerun["killed_table"]}
    assert killed["a"]["evaluate"] != "ok"  # the kill came mid-batch
    assert killed_and_rerun["left"] == []  # and took the running stages down with the driver
    rows = {r["clip"]: r for r in killed_and_rerun["rows"]}
    assert rows["a"]["train"] == "done"  # found complete on disk, not rerun
    now = mtimes(killed_and_rerun["out"])
    assert killed_and_rerun["trained"] and all(now[p] == t for p, t in killed_and_rerun["trained"].items())


@pytest.mark.slow
def test_finished_batch_reruns_as_all_done(killed_and_rerun, tmp_path):
    out, clips = killed_and_rerun["out"], killed_and_rerun["clips"]
    listing = tmp_path / "two.txt"
    listing.write_text(f"{clips / 'a'}\n{clips / 'b'}\n")
    before = mtimes(out)
    start = time.perf_counter()
    rows = run_batch(find_clips(str(listing))[0], settings_for(out), progress=False)
    assert time.perf_counter() - start < 10  # nothing ran
    assert [(r["clip"], r["train"], r["visualize"], r["evaluate"]) for r in rows[:2]] == \
        [("a", "done", "done", "done"), ("b", "done", "done", "done")]
    assert rows[1]["visualize_s"] is not None  # times of the run that made them
    assert mtimes(out) == before
