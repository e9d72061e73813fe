#!/usr/bin/env bash
# One command for a machine with an NVIDIA GPU and CuPy: the CuPy test subset (every fused kernel of
# minivae/kernels/cuda.py against the plain code it replaces, every backend-parametrized test body),
# the CUDA source CuPy compiled for each kernel against the one the NVRTC checks of CI compile, those
# checks themselves (cuda_check/), a CuPy-vs-NumPy training comparison on the same weights, data and
# noise, and the GPU benchmark tables (minivae on CuPy alone, then against PyTorch on the same GPU
# when PyTorch sees it).
# It installs nothing: it uses the Python it finds and says what is missing.
#
#   bash benchmarks/gpu_check.sh
set -uo pipefail
cd "$(dirname "$0")/.."
python=${PYTHON:-python3}

missing=""
for module in numpy scipy matplotlib tqdm pytest hypothesis cupy; do
    "$python" -c "import $module" 2>/dev/null || missing="$missing $module"
done
if [ -n "$missing" ]; then
    echo "gpu_check: missing Python modules:$missing (pip install -e '.[test,cuda13]' or '.[test,cuda12]')" >&2
    exit 2
fi
"$python" -c "import minivae" 2>/dev/null || export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"  # uninstalled checkout
reason=$("$python" -c "from minivae.backend import cupy_unavailable_reason as r; print(r() or '')")
if [ -n "$reason" ]; then
    echo "gpu_check: $reason" >&2
    exit 2
fi
"$python" -c "import cupy; p = cupy.cuda.runtime.getDeviceProperties(0); print('GPU:', p['name'].decode())"

status=0
echo "== CuPy tests (every backend-parametrized test body, on cupy) =="
"$python" -m pytest -q -p no:cacheprovider tests -k "cupy" || status=1
echo "== The CUDA source CuPy compiled for each kernel is the one CI compiles with NVRTC =="
"$python" cuda_check/kernel_source.py || status=1
echo "== CI's checks of the GPU path without a GPU (NVRTC compiles, CuPy calls exist) =="
"$python" -m pytest -q -p no:cacheprovider cuda_check || status=1
echo "== CuPy vs NumPy training on the same weights, data and noise =="
"$python" benchmarks/compare_backends.py --backend cupy --steps 300 || status=1
echo "== GPU benchmark =="
"$python" benchmarks/bench_epoch.py --backends cupy-float32 --batch-size 128 --batch-size 4096 || status=1
echo "== GPU benchmark against PyTorch on the same GPU (MLP and conv) =="
"$python" benchmarks/bench_gpu.py || status=1
exit $status
