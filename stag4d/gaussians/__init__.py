"""The parts of the 4D Gaussian model that gs_renderer.py assembles: the HexPlane deformation
field (:mod:`.deformation`), the 3DGS PLY format (:mod:`.ply`) and the nearest-neighbour distances
of the initial scales (:mod:`.knn`)."""
