#!/bin/bash
# There, at the start of each call on the GPU machine (source it: it exports the environment):
#   source benchmarks/device/setup.sh
# Unpacks a carried .carry/built.tgz.* (what PACK=1 packed last time) when .built/ is missing,
# installs the carried wheels (.whl, see prepare.sh) into .built/site unless they already import,
# points torch's JIT builds (gsplat's CUDA kernels, about 100 s the first time) at .built/ so a
# carried .built/ skips them, builds simple-knn and diff_gauss (when .diff_gauss is carried) into
# .built/ when they are missing, and makes the random-weight model folders of the real
# architectures in /tmp/models (kept while the machine stays warm; MODELS="z123xl" makes only
# main.py's). inductor's cache is .built/inductor (torch.compile's kernels: a carried one makes a
# fresh machine warm; 200 MB and more, 7 to 16 MB as xz): a carried .carry/inductor.txz is unpacked when
# .built/inductor is missing. With PACK=1 it packs the builds (without inductor's cache) into
# $OUT/built.tgz.NN (15 MB pieces, the limit of a file coming back); after the benchmarks have
# filled inductor's cache, `pack_inductor` writes $OUT/inductor.txz. Here, in the repository root:
# mkdir -p .carry && cp .../built.tgz.* .../inductor.txz .carry/ (then carry .carry, and .whl is no
# longer needed: .built/site holds the wheels).
# Do not redirect the calling shell through a process substitution (exec > >(tee ...)) before
# sourcing this: the `wait` below would wait for the tee forever; pipe the script into tee instead.
# (no set -e: sourced, it would end the calling command at its first failing line)
export PYTHONUNBUFFERED=1 PYTHONPATH=$PWD:$PWD/.built/site TORCH_CUDA_ARCH_LIST=9.0 MAX_JOBS=16
export TORCH_EXTENSIONS_DIR=$PWD/.built/torch_extensions TORCHINDUCTOR_CACHE_DIR=$PWD/.built/inductor
export NVCC_APPEND_FLAGS="-include cstdint -include cfloat"  # CUDA 13: diff_gauss's headers need them
if [ ! -d .built/site ] && ls .carry/built.tgz.* >/dev/null 2>&1; then cat .carry/built.tgz.* | tar -xz; fi
if [ ! -d .built/inductor ] && [ -f .carry/inductor.txz ]; then tar -xJf .carry/inductor.txz; fi
mkdir -p .built/site
if ! python3 -c "import omegaconf, diffusers, gsplat, plyfile" 2>/dev/null; then
  # compiled to bytecode as a user's pip install does (a first import would otherwise compile them)
  python3 -m pip install -q --no-index --no-deps --no-cache-dir --upgrade --target .built/site .whl/*.whl
fi
# the builds and the model folders side by side (16 cores); each says when it fails
t0=$(date +%s)
python3 -c "import gsplat.cuda._backend as b; assert b._C is not None" >/tmp/gsplat_build.log 2>&1 \
  || { echo "setup: gsplat's CUDA build failed:"; tail -5 /tmp/gsplat_build.log; } &
if ! python3 -c "import simple_knn._C" 2>/dev/null; then
  { (cd simple-knn && python3 setup.py -q build_ext --inplace >/tmp/simple_knn_build.log 2>&1) \
    && mkdir -p .built/site/simple_knn && cp simple-knn/simple_knn/*.py simple-knn/simple_knn/_C*.so .built/site/simple_knn/ \
    || echo "setup: simple-knn did not build"; } &
fi
if [ -d .diff_gauss ] && ! python3 -c "import diff_gauss" 2>/dev/null; then
  python3 -m pip install -q --no-build-isolation --no-deps --target .built/site ./.diff_gauss >/tmp/diff_gauss_build.log 2>&1 \
    || { echo "setup: diff_gauss did not build:"; tail -5 /tmp/diff_gauss_build.log; } &
fi
MODELS=${MODELS:-z123pp z123xl}
case " $MODELS " in *" z123pp "*)
  [ -f /tmp/models/z123pp/model_index.json ] || python3 -m stag4d.multiview.random_model /tmp/models/z123pp --fp16 >/tmp/models_pp.log 2>&1 & ;;
esac
case " $MODELS " in *" z123xl "*)
  [ -f /tmp/models/z123xl/model_index.json ] || python3 -m guidance.random_model /tmp/models/z123xl --fp16 >/tmp/models_xl.log 2>&1 & ;;
esac
wait
echo "setup: builds and model folders ready in $(( $(date +%s) - t0 )) s"
pack() {  # pack NAME PATHS...: $OUT/NAME.tgz.NN in 15 MB pieces. The object files, ninja's
  # files and the sources' times stay: torch's JIT load runs ninja, which rebuilds what looks stale
  local name=$1; shift
  tar -cz "$@" | split -d -b 15M - "$OUT/$name.tgz."
}
pack_inductor() {  # after the benchmarks: inductor's cache as one file, $OUT/inductor.txz
  tar -c .built/inductor | xz -9 -T0 > "$OUT/inductor.txz" && ls -la "$OUT/inductor.txz"  # -9: 7 MB (-6: 11)
}
if [ "${PACK:-0}" = 1 ] && [ -n "${OUT:-}" ]; then
  # without inductor's cache (pack_inductor), gsplat's copy of glm's docs and tests (20 MB that no
  # build reads) and simple-knn (built again beside the model folders): 27 MiB, so that the builds,
  # inductor's cache (15 MiB) and the data (19 MiB) fit one 64 MiB carry with the repository
  pack built --exclude=.built/inductor --exclude='*/third_party/glm/doc' --exclude='*/third_party/glm/test' \
    --exclude=.built/site/simple_knn .built
  du -sh .built/* 2>/dev/null; ls -la "$OUT"
fi
python3 -c "import torch, gsplat, diffusers; print('setup: torch', torch.__version__, 'gsplat', gsplat.__version__, 'diffusers', diffusers.__version__, torch.cuda.get_device_name())"
