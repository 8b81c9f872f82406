"""scripts/prepare_video.py on synthetic inputs: MP4, GIF and image folders, and its errors."""
import os
import time

import numpy as np
import pytest
from stag4d.data import prepare_video as pv

from stag4d.errors import DataError


BACKGROUND = (200, 200, 200)
DISC = (220, 30, 30)


def _disc_frames(count: int, height: int = 96, width: int = 128, radius: int = 10, alpha: bool = False):
    """A red disc moving left to right over a plain grey background (or transparent, with alpha)."""
    yy, xx = np.mgrid[0:height, 0:width]
    frames = []
    for i in range(count):
        cx = 25 + (width - 50) * i / max(count - 1, 1)
        disc = (yy - height / 2) ** 2 + (xx - cx) ** 2 <= radius**2
        if alpha:
            frame = np.zeros((height, width, 4), np.uint8)
            frame[disc] = (*DISC, 255)
        else:
            frame = np.empty((height, width, 3), np.uint8)
            frame[:] = BACKGROUND
            frame[disc] = DISC
        frames.append(frame)
    return frames


def _read_outputs(dataset: str):
    import imageio.v3 as iio

    ref = os.path.join(dataset, "ref")
    names = sorted(os.listdir(ref), key=lambda n: int(n.split("_")[0]))
    assert names == [f"{i}_rgba.png" for i in range(len(names))]
    return [iio.imread(os.path.join(ref, n)) for n in names]


def _disc_stats(image: np.ndarray):
    """(centre y, centre x, box height, box width) of the alpha > 127 region."""
    ys, xs = np.nonzero(image[..., 3] > 127)
    assert ys.size > 0, "no object in the frame"
    return ys.mean(), xs.mean(), ys.max() - ys.min() + 1, xs.max() - xs.min() + 1


def _check_one_crop_box(outputs, size):
    stats = np.array([_disc_stats(o) for o in outputs])
    for o in outputs:
        assert o.shape == (size, size, 4)
        # The disc lies inside every frame, away from the border.
        ys, xs = np.nonzero(o[..., 3] > 127)
        assert ys.min() > 0 and xs.min() > 0 and ys.max() < size - 1 and xs.max() < size - 1
    # One box for all frames: the disc keeps its row and size and moves across the frame
    # (a box per frame would keep it centred).
    assert np.ptp(stats[:, 0]) < 1.5
    assert np.ptp(stats[:, 2]) <= 2 and np.ptp(stats[:, 3]) <= 2
    assert stats[-1, 1] - stats[0, 1] > 0.4 * size
    # The union of the masks fills OBJECT_FRACTION of the frame and is centred.
    union = np.zeros((size, size), bool)
    for o in outputs:
        union |= o[..., 3] > 127
    top, left, bottom, right = pv.mask_box(union)
    assert max(bottom - top, right - left) == pytest.approx(pv.OBJECT_FRACTION * size, abs=2.5)
    assert (left + right) / 2 == pytest.approx(size / 2, abs=1.5)
    assert (top + bottom) / 2 == pytest.approx(size / 2, abs=1.5)
    return stats


def test_mp4_with_colour_matting(tmp_path):
    import imageio.v3 as iio

    video = str(tmp_path / "disc.mp4")
    iio.imwrite(video, np.stack(_disc_frames(40)), fps=10, codec="libx264", macro_block_size=16)
    dataset = pv.prepare_video(video, "disc", frames=8, size=64, matting="color", out_root=str(tmp_path / "ds"))
    assert dataset == str(tmp_path / "ds" / "disc")
    outputs = _read_outputs(dataset)
    assert len(outputs) == 8
    stats = _check_one_crop_box(outputs, 64)
    assert np.all(np.diff(stats[:, 1]) > 0)  # frames in time order
    centre = outputs[0][int(stats[0, 0]), int(stats[0, 1])]
    assert centre[3] == 255 and centre[0] > 180 and centre[1] < 80  # the disc stays red


def test_gif_input(tmp_path):
    import imageio.v3 as iio

    gif = str(tmp_path / "disc.gif")
    iio.imwrite(gif, np.stack(_disc_frames(12)), extension=".gif", loop=0)
    dataset = pv.prepare_video(gif, "gif", frames=5, size=48, matting="color", out_root=str(tmp_path))
    outputs = _read_outputs(dataset)
    assert len(outputs) == 5
    _check_one_crop_box(outputs, 48)


def test_image_folder_natural_order_and_own_alpha(tmp_path):
    from PIL import Image

    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(_disc_frames(12, alpha=True)):
        Image.fromarray(frame).save(folder / f"frame{i + 1}.png")  # frame10 must come after frame9
    (folder / "notes.txt").write_text("not an image")
    dataset = pv.prepare_video(str(folder), "folder", frames=4, size=40, matting="none", out_root=str(tmp_path))
    outputs = _read_outputs(dataset)
    assert len(outputs) == 4
    stats = _check_one_crop_box(outputs, 40)
    assert np.all(np.diff(stats[:, 1]) > 0)
    # Transparent background stays transparent; the RGB under the disc is the disc's colour.
    assert outputs[0][0, 0, 3] == 0


def test_sample_indices_even_and_too_few():
    assert pv.sample_indices(12, 4, "x") == [0, 4, 7, 11]
    assert pv.sample_indices(5, 5, "x") == [0, 1, 2, 3, 4]
    with pytest.raises(DataError, match="fewer than --frames 9"):
        pv.sample_indices(8, 9, "clip.mp4")


def test_errors_are_one_line_data_errors(tmp_path):
    with pytest.raises(DataError, match="does not exist"):
        pv.prepare_video(str(tmp_path / "missing.mp4"), "x", out_root=str(tmp_path))
    bad = tmp_path / "bad.mp4"
    bad.write_bytes(b"this is not a video" * 20)
    with pytest.raises(DataError, match="cannot be read as a video") as err:
        pv.prepare_video(str(bad), "x", out_root=str(tmp_path), matting="color")
    assert "\n" not in str(err.value)
    (tmp_path / "notes.txt").write_text("x")
    with pytest.raises(DataError, match="unknown file type"):
        pv.prepare_video(str(tmp_path / "notes.txt"), "x", out_root=str(tmp_path))

    from PIL import Image

    folder = tmp_path / "few"
    folder.mkdir()
    for i, frame in enumerate(_disc_frames(3, alpha=True)):
        Image.fromarray(frame).save(folder / f"{i}.png")
    with pytest.raises(DataError, match="3 frame"):
        pv.prepare_video(str(folder), "few", frames=32, out_root=str(tmp_path), matting="none")

    empty = tmp_path / "empty"
    empty.mkdir()
    for i in range(3):
        Image.fromarray(np.zeros((32, 32, 4), np.uint8)).save(empty / f"{i}.png")
    with pytest.raises(DataError, match="empty mask"):
        pv.prepare_video(str(empty), "empty", frames=3, out_root=str(tmp_path), matting="none")


def test_cli_prints_next_commands_and_overwrite(tmp_path, capsys):
    from PIL import Image

    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(_disc_frames(6, alpha=True)):
        Image.fromarray(frame).save(folder / f"{i}.png")
    out_root = str(tmp_path / "dataset")
    pv.main([str(folder), "--name", "disc", "--frames", "6", "--size", "32", "--matting", "none", "--out-root", out_root])
    printed = capsys.readouterr().out
    dataset = os.path.join(out_root, "disc")
    assert f"python scripts/gen_mv.py --path {dataset}" in printed
    assert f"python main.py --config configs/stag4d.yaml path={dataset} save_path=disc" in printed

    assert pv.next_commands("dataset/x", "x", "color")[0] == "python scripts/gen_mv.py --path dataset/x --matting color"

    # A second run refuses to mix with existing frames, with a one-line error and status 2 ...
    with pytest.raises(SystemExit) as exit_info:
        pv.main([str(folder), "--name", "disc", "--frames", "3", "--out-root", out_root, "--matting", "none"])
    assert exit_info.value.code == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith("error:") and "--overwrite" in err and "\n" not in err
    # ... and --overwrite leaves exactly the new frames.
    pv.main([str(folder), "--name", "disc", "--frames", "3", "--size", "32", "--matting", "none",
             "--out-root", out_root, "--overwrite"])
    assert sorted(os.listdir(os.path.join(dataset, "ref"))) == ["0_rgba.png", "1_rgba.png", "2_rgba.png"]


def test_frames_written_on_threads_equal_frames_written_one_by_one(tmp_path, monkeypatch):
    from PIL import Image

    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(_disc_frames(10, alpha=True)):
        Image.fromarray(frame).save(folder / f"{i}.png")
    written = {}
    for threads in (1, pv.WRITE_THREADS):
        monkeypatch.setattr(pv, "WRITE_THREADS", threads)
        dataset = pv.prepare_video(str(folder), f"t{threads}", frames=10, size=48, matting="none",
                                   out_root=str(tmp_path))
        written[threads] = [open(os.path.join(dataset, "ref", f"{i}_rgba.png"), "rb").read() for i in range(10)]
    assert written[1] == written[pv.WRITE_THREADS]  # byte for byte, in the right files
    assert len(set(written[1])) == 10  # the frames differ, so a mix-up would show


def test_a_failed_write_cancels_the_frames_queued_behind_it(tmp_path, monkeypatch):
    """A write that fails (a full disk, say) ends prepare_video with its error; the frames still
    queued are not written (one already running may finish)."""
    from PIL import Image

    folder = tmp_path / "frames"
    folder.mkdir()
    for i, frame in enumerate(_disc_frames(8, alpha=True)):
        Image.fromarray(frame).save(folder / f"{i}.png")
    real_save = pv.save_image
    attempted = []

    def save_image(path, image):
        index = int(os.path.basename(path).split("_")[0])
        attempted.append(index)
        if index == 1:
            raise OSError(28, "No space left on device")
        if index > 1:
            time.sleep(0.3)  # the caller sees frame 1's failure while this one runs
        real_save(path, image)

    monkeypatch.setattr(pv, "save_image", save_image)
    monkeypatch.setattr(pv, "WRITE_THREADS", 1)
    with pytest.raises(OSError, match="No space"):
        pv.prepare_video(str(folder), "full", frames=8, size=48, matting="none", out_root=str(tmp_path))
    # 3..7 cancelled (a pool that waits for its queue attempts all 8); frame 2 runs only if the
    # worker took it before the failure was seen
    assert attempted in ([0, 1], [0, 1, 2]), attempted
    written = sorted(os.listdir(tmp_path / "full" / "ref"))
    assert written == [f"{i}_rgba.png" for i in attempted if i != 1]
