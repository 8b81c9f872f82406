#!/bin/bash
# Here, on the machine without a GPU: fill the ignored folders that a call to the GPU machine
# carries (it has no internet; its image has torch, transformers, nvcc but not these packages).
#   benchmarks/device/prepare.sh [RELEASED_MIRROR] [DIFF_GAUSS_MIRROR] [GLM_MIRROR]
# The mirrors are git directories (e.g. /work/.mirror/OWNER+NAME/repo) of
#   github.com/zeng-yifei/STAG4D (the released code, for the released-equivalence GPU test),
#   github.com/slothfulxtx/diff-gaussian-rasterization and github.com/g-truc/glm (its submodule);
# the folders they fill are skipped when a mirror is not given.
#   .whl/        wheels of the packages the GPU image lacks (Python 3.12, x86-64)
#   .data/       the minions sample (../shared/data/minions: never committed)
#   .released/   the released code at the pinned commit (tests/released_harness.py)
#   .diff_gauss/ the diff_gauss source with glm in third_party/glm
# Then each call carries what it needs and starts with `source benchmarks/device/setup.sh`.
set -euo pipefail
cd "$(git rev-parse --show-toplevel)"
rm -rf .whl && mkdir -p .whl
# the versions of this machine's venv (requirements.txt resolves them); importlib_metadata for diffusers
python3 -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
  --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
  -d .whl omegaconf==2.4.0 diffusers==0.42.1 gsplat==1.5.3 plyfile==1.1.5 importlib_metadata zipp
rm -rf .data && mkdir -p .data && cp -r ../shared/data/minions .data/minions
if [ -n "${1:-}" ]; then
  rm -rf .released && mkdir .released
  # assets/ and dataset/ hold large files that a mirror may lack (git archive still complains about
  # them, hence 2>/dev/null); the tests need neither. The check below says whether it worked.
  git --git-dir="$1" archive 9aa21c9 $(git --git-dir="$1" ls-tree --name-only 9aa21c9 | grep -v -x -E 'assets|dataset') \
    2>/dev/null | tar -x -C .released
  [ -f .released/main.py ] || { echo "error: the released code did not unpack from $1"; exit 1; }
fi
if [ -n "${2:-}" ] && [ -n "${3:-}" ]; then
  rm -rf .diff_gauss && mkdir .diff_gauss
  git --git-dir="$2" archive HEAD | tar -x -C .diff_gauss
  mkdir -p .diff_gauss/third_party/glm && git --git-dir="$3" archive HEAD glm | tar -x -C .diff_gauss/third_party/glm
fi
du -sh .whl .data .released .diff_gauss 2>/dev/null || true
