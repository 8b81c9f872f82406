"""Build the simple_knn CUDA extension (module ``simple_knn._C``, function ``distCUDA2``).

    pip install --no-build-isolation ./simple-knn            # from the repository root
    cd simple-knn && python setup.py build_ext --inplace     # in place (knn.py finds it too)

Needs a CUDA build of torch and nvcc; set TORCH_CUDA_ARCH_LIST (e.g. "9.0") to build for a GPU
that is not visible at build time. ``--no-build-isolation`` lets the build see the installed torch.
"""
import os

from setuptools import setup
from torch.utils.cpp_extension import BuildExtension, CUDAExtension

HERE = os.path.dirname(os.path.abspath(__file__))
CSRC = "csrc"  # relative: setuptools wants relative source paths

setup(
    name="simple_knn",
    version="0.1.0",
    description="Exact mean squared distance to the 3 nearest neighbours of a point cloud (CUDA)",
    packages=["simple_knn"],
    ext_modules=[
        CUDAExtension(
            name="simple_knn._C",
            sources=[os.path.join(CSRC, "ext.cpp"), os.path.join(CSRC, "knn_grid.cu")],
            include_dirs=[os.path.join(HERE, CSRC)],
            # No fast-math: flushing denormals or approximate division would change results.
            extra_compile_args={"cxx": ["-O3"], "nvcc": ["-O3"]},  # torch adds its -std
        )
    ],
    cmdclass={"build_ext": BuildExtension},
    zip_safe=False,
)
