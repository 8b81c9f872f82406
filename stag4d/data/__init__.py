"""Data: dataset folders (:mod:`.frames`), matting, video files (:mod:`.video`), the
``prepare_video`` command and the procedural demo (:mod:`.make_demo`)."""
