"""Training: the trainer (:mod:`.trainer`), its losses, optimizer and learning-rate schedules,
densification strategy, saved runs on disk (:mod:`.runs`) and the ``main.py`` command (:mod:`.cli`)."""
