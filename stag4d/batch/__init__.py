"""Many clips through the whole pipeline as a resumable batch on Ray (``scripts/batch.py``).

clips.py    the clips of a folder or a list file
stages.py   the five stages: each entry point's command, and what a complete output is
execute.py  one stage of one clip in its own process, inside a Ray task
runner.py   the driver: tasks in order per clip, clips in parallel, resume, progress
results.py  the per-clip stage records and the results table (CSV + Markdown)
cli.py      the command (``stag4d-batch``)
"""
