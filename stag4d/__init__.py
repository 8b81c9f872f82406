"""STAG4D reproduced: video -> 4D Gaussians (the library behind main.py, visualize.py and scripts/).

Packages, by what they hold (the README's layout section shows how they fit together):

* :mod:`stag4d.config`: the run config, composed of every component's own settings;
* :mod:`stag4d.data`: dataset folders, matting, video I/O, ``prepare_video`` and the demo;
* :mod:`stag4d.gaussians`: the parts of the 4D Gaussian model (HexPlane deformation, 3DGS PLY,
  initial-scale k-NN) that :mod:`gs_renderer` assembles;
* :mod:`stag4d.rasterizer`: differentiable Gaussian rasterization (torch and gsplat backends);
* :mod:`stag4d.training`: the trainer with its losses, optimizer, schedules, densification,
  saved runs and the ``main.py`` command;
* :mod:`stag4d.multiview`: the Zero123++ generator behind ``scripts/gen_mv.py``;
* :mod:`stag4d.evaluation`: metrics, ``scripts/evaluate.py`` and ``visualize.py``;
* :mod:`stag4d.viewer`: the interactive viewers (a browser page through viser, a dearpygui window).

The design card's top-level modules sit beside this package: :mod:`cam_utils` (cameras),
:mod:`gs_renderer` (the 4D Gaussian model) and :mod:`guidance` (Zero123 SDS).
"""
