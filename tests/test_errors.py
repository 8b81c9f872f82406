"""The one-line error that a stage's output ends in, as the batch runner and video_to_4d quote it."""
from stag4d.errors import MAX_ERROR_CHARS, file_tail, last_error_message, quiet_hub_warnings


def test_the_last_error_line_wins_without_its_prefix():
    text = "loading\rdenoise 50%\rdenoise 100%\nerror: first\nerror: --batch-size 0: give at least 1\n  trailing\n"
    assert last_error_message(text) == "--batch-size 0: give at least 1"


def test_without_an_error_line_the_last_line_counts_progress_bars_included():
    assert last_error_message("Traceback ...\nRuntimeError: CUDA out of memory\n\n") == "RuntimeError: CUDA out of memory"
    assert last_error_message("zero123++: 1/4\rzero123++: 2/4\r") == "zero123++: 2/4"
    assert last_error_message("") == "no output"


def test_a_long_message_is_cut():
    message = last_error_message("error: " + "x" * (2 * MAX_ERROR_CHARS))
    assert len(message) == MAX_ERROR_CHARS and message.endswith("...")


def test_file_tail_reads_the_end_and_an_absent_file_is_empty(tmp_path):
    log = tmp_path / "gen_mv.log"
    log.write_text("a" * 100 + "\nerror: the end\n")
    assert file_tail(str(log), size=16) == "\nerror: the end\n"
    assert file_tail(str(tmp_path / "missing.log")) == ""


def test_library_progress_bars_are_off_during_a_load_into_a_log_and_back_after(capsys):
    """capsys: stderr is not a terminal, as in a log file."""
    from transformers.utils import logging as transformers_logging

    assert transformers_logging.is_progress_bar_enabled()
    with quiet_hub_warnings():
        assert not transformers_logging.is_progress_bar_enabled()
    assert transformers_logging.is_progress_bar_enabled()
