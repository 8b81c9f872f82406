"""benchmarks/timeline.py: the GPU idle report of a crafted chrome trace (known gaps, known launchers)."""
import gzip
import json
import os
import sys

sys.path.insert(0, os.path.join(os.path.dirname(__file__), "..", "benchmarks"))
from timeline import idle_report, load_trace, sync_report  # noqa: E402


def kernel(ts, dur, corr, name="k"):
    return {"ph": "X", "cat": "kernel", "name": name, "ts": ts, "dur": dur, "args": {"correlation": corr}}


def launch(ts, corr):
    return {"ph": "X", "cat": "cuda_runtime", "name": "cudaLaunchKernel", "ts": ts, "dur": 1,
            "args": {"correlation": corr}}


def span(ts, dur, name):
    return {"ph": "X", "cat": "user_annotation", "name": name, "ts": ts, "dur": dur}


def test_gaps_are_charged_to_the_phase_that_launched_the_next_kernel(tmp_path):
    # host: "losses" 0..100 us holding "UNet" 40..60; "backward" 100..200.
    # GPU: k1 10..30, k2 25..50 (overlaps: no gap), gap 50..80 -> k3 launched at 45 inside UNet,
    # gap 90..150 -> k4 launched at 120 in backward, k4 150..170; k5 launched at 300 (no phase) 200..210.
    events = [span(0, 100, "losses"), span(40, 20, "UNet"), span(100, 100, "backward"),
              launch(5, 1), launch(20, 2), launch(45, 3), launch(120, 4), launch(300, 5),
              kernel(10, 20, 1), kernel(25, 25, 2), kernel(80, 10, 3), kernel(150, 20, 4), kernel(200, 10, 5, "last")]
    path = tmp_path / "trace.json.gz"
    with gzip.open(path, "wt") as f:
        json.dump({"traceEvents": events}, f)
    report = idle_report(load_trace(str(path)), steps=1, phases=["losses", "UNet", "backward"])
    lines = report.splitlines()
    # window 10..210 = 200 us; busy 40 + 10 + 20 + 10 = 80 us; idle 120 us
    assert "first kernel to last 0.20 ms per step, kernels busy 0.08 ms, idle 0.12 ms (60.0%)" in lines[0]
    rows = {line.split(" | ")[0].lstrip("| "): line for line in lines if line.startswith("| ") and "---" not in line}
    assert rows["backward"].startswith("| backward | 0.06 | 1 | 0.10 |")
    assert rows["UNet"].startswith("| UNet | 0.03 | 1 | 0.02 |")  # innermost label wins over "losses"
    assert rows["(outside the phases)"].startswith("| (outside the phases) | 0.03 | 1 |")
    assert rows["losses"].startswith("| losses | 0.00 | 0 | 0.10 |")
    assert "0.060  backward  k" in report and "0.030  (outside the phases)  last" in report


def cpu_op(ts, dur, name, tid=1):
    return {"ph": "X", "cat": "cpu_op", "name": name, "ts": ts, "dur": dur, "pid": 1, "tid": tid}


def runtime(ts, dur, name, tid=1):
    return {"ph": "X", "cat": "cuda_runtime", "name": name, "ts": ts, "dur": dur, "pid": 1, "tid": tid,
            "args": {"correlation": ts}}


def test_syncs_are_listed_by_the_cpu_op_phase_and_thread_around_them():
    # main thread (tid 1): "deformation" 0..100 holds aten::copy_ 10..30 (a pageable copy: an async
    # memcpy then a stream sync of 15 us) and aten::item 40..60 holding aten::_local_scalar_dense 40..60
    # (a sync of 10 us); a kernel launch and an async copy elsewhere are not syncs. Over 2 steps.
    # The autograd thread (tid 2, named) syncs once inside aten::nonzero, outside the phases.
    events = [span(0, 100, "deformation"),
              cpu_op(10, 20, "aten::copy_"), runtime(11, 2, "cudaMemcpyAsync"),
              runtime(14, 15, "cudaStreamSynchronize"),
              cpu_op(40, 20, "aten::item"), cpu_op(40, 20, "aten::_local_scalar_dense"),
              runtime(45, 10, "cudaStreamSynchronize"), runtime(70, 3, "cudaLaunchKernel"),
              {"ph": "M", "name": "thread_name", "pid": 1, "tid": 2, "args": {"name": "autograd thread"}},
              cpu_op(200, 50, "aten::nonzero", tid=2), runtime(210, 30, "cudaStreamSynchronize", tid=2)]
    report = sync_report(events, steps=2, phases=["deformation"])
    lines = report.splitlines()
    assert lines[0] == "host syncs over 2 steps: 1.5 per step, the host waiting 0.03 ms per step in them"
    rows = [line for line in lines if line.startswith("| cuda")]
    assert rows == [  # by waiting time
        "| cudaStreamSynchronize in aten::nonzero | (outside the phases) | autograd thread | 0.5 | 0.01 |",
        "| cudaStreamSynchronize in aten::copy_ | deformation | thread 1 | 0.5 | 0.01 |",
        "| cudaStreamSynchronize in aten::_local_scalar_dense | deformation | thread 1 | 0.5 | 0.01 |",
    ]
