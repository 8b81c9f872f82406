"""Export a trained 4D object for other tools (``scripts/export.py``, ``stag4d-export``).

* :mod:`.occupancy`: the Gaussians' occupancy (and colour) on a grid from their opacities and
  covariances, in bounded chunks;
* :mod:`.mesh`: marching cubes, cleaning, decimation, vertex colours, vertices moved by the
  deformation field;
* :mod:`.gltf`: the animated GLB (one morph target per frame, a weights animation) and its reader;
* :mod:`.splat`: the 32-byte ``.splat`` layout, writer and reader;
* :mod:`.mesh_render`: a z-buffer triangle rasterizer to look at meshes with our cameras;
* :mod:`.checks`: silhouette IoU and motion of an exported mesh against the Gaussians, contact sheet;
* :mod:`.cli`: the command (:class:`~.cli.ExportOptions`).
"""
