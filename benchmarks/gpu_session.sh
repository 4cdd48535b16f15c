#!/usr/bin/env bash
# The one command a lent GPU session runs, from the repo root, on a bare machine:
#
#     bash benchmarks/gpu_session.sh
#
# It installs torch and the project and runs `python -m benchmarks.gpu_check --out
# "$OUT/gpu"` within a 600 s command limit, keeping a minute of slack: the install's time is
# measured and the check gets what is left, at most 7 minutes. Results: $OUT/gpu/
# (gpu_check.json, summary.md, ...) and $OUT/gpu_session.log; without $OUT, /tmp/ucrn-gpu-out/.
#
# Where a package index answers: a new venv, `pip install torch==2.13.0` (on Linux x86-64
# that wheel is the CUDA build) and `pip install -e '.[test]'`. Where none does (this
# workplace's lent machines reach no network): the image's python with its own CUDA torch,
# the wheels carried in .whl/ installed into it (see `--wheels`), the project run from the
# checkout; what is still missing (Ray, Optuna) makes the steps that need it skip, saying so.
#
#     bash benchmarks/gpu_session.sh --wheels   # on a machine WITH network: fill .whl/ with
#                                               # what the lent machines' image lacks
#
# Environment: GPU_SESSION_LIMIT_S (default 600), GPU_SESSION_SLACK_S (default 60),
# GPU_CHECK_ARGS (more gpu_check flags, e.g. "--quick" or "--only speed,packing").
set -uo pipefail
cd "$(dirname "$0")/.."
start=$(date +%s)
elapsed() { echo $(($(date +%s) - start)); }
say() { echo "[gpu_session $(elapsed) s] $*"; }

if [[ "${1:-}" == "--wheels" ]]; then
    # Python 3.12, manylinux x86-64 (the image's); Ray without its Java jar (32 MB, unused):
    # one call may carry 64 MiB in all.
    set -e
    mkdir -p .whl
    python3 -m pip download -q -d .whl --only-binary=:all: --python-version 3.12 \
        --implementation cp --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 \
        --platform manylinux2014_x86_64 --platform manylinux1_x86_64 \
        'ray[default,tune,train]==2.60.0' 'optuna>=3.6'
    python3 - <<'PYEOF'
# drop what the image already has: its package list as the workplace's notes on the lent
# machines gave it (read 2026-11-17)
import base64, csv, hashlib, io, os, pathlib, re, zipfile
have = set("""
absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs
botorch build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy
coverage cuda-bindings cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython
diffrax e3nn einops equinox etils execnet filelock flatbuffers flax fonttools formulaic
frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx huggingface-hub humanize
hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt jax-cuda13-plugin jaxlib
jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities linear-operator
lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes mpi4py
mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja
numba numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc
nvidia-cuda-runtime nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver
nvidia-cusparse nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink
nvidia-nvshmem-cu13 nvidia-nvtx onnx onnx-ir onnxruntime onnxscript opencv-python-headless
optax opt-einsum opt-einsum-fx optimistix orbax-checkpoint packaging pandas pathspec patsy peft
pillow pip pluggy portalocker prometheus-client propcache protobuf psutil pyarrow pybind11
py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions pytest pytest-benchmark
pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil pytorch-lightning pyyaml
regex requests rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy
seaborn sentencepiece sentence-transformers setuptools shellingham simplejson six
sortedcontainers statsmodels sympy tabulate tensorboard tensorboard-data-server tensorstore
threadpoolctl tifffile tiktoken timm tokenizers toolz torch torchaudio torchdiffeq
torch-geometric torchmetrics torchvision tqdm transformers treescope triton typer
typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt xarray
xxhash yarl zipp
""".split())
for whl in pathlib.Path(".whl").glob("*.whl"):
    name = re.sub(r"[-_.]+", "-", whl.name.split("-")[0]).lower()
    if name in have or name.startswith("nvidia-"):
        whl.unlink()
# LZMA instead of deflate: a third smaller for Ray's binaries (pip unpacks any zip the
# zipfile module reads); Ray's Java jar goes, and with it its line in RECORD
for src in pathlib.Path(".whl").glob("*.whl"):
    tmp = src.with_suffix(".tmp")
    with zipfile.ZipFile(src) as zin, zipfile.ZipFile(tmp, "w", zipfile.ZIP_LZMA) as zout:
        record = next(n for n in zin.namelist() if n.endswith(".dist-info/RECORD"))
        rows = []
        for info in zin.infolist():
            if info.filename == record or info.filename.startswith("ray/jars/"):
                continue
            data = zin.read(info)
            zout.writestr(info, data, compress_type=zipfile.ZIP_LZMA)
            digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=")
            rows.append([info.filename, "sha256=" + digest.decode(), str(len(data))])
        buf = io.StringIO()
        csv.writer(buf, lineterminator="\n").writerows(rows + [[record, "", ""]])
        zout.writestr(record, buf.getvalue(), compress_type=zipfile.ZIP_LZMA)
    os.replace(tmp, src)
for whl in sorted(pathlib.Path(".whl").glob("*.whl")):
    print(f"{whl.stat().st_size / 2**20:7.1f} MiB  {whl.name}")
PYEOF
    du -sh .whl
    echo "next: echo /.whl/ >> .git/info/exclude, then carry .whl (under ~60 MiB with the tree)"
    exit 0
fi

OUTROOT="${OUT:-/tmp/ucrn-gpu-out}"
mkdir -p "$OUTROOT/gpu"
exec > >(tee -a "$OUTROOT/gpu_session.log") 2>&1
LIMIT="${GPU_SESSION_LIMIT_S:-600}"
SLACK="${GPU_SESSION_SLACK_S:-60}"
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1
say "start: $(uname -m), $(nproc) CPUs, limit ${LIMIT} s with ${SLACK} s slack"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader

PY=""
# does the configured index have torch 2.13.0? (asks the index only, downloads nothing)
if PIP_DEFAULT_TIMEOUT=5 PIP_RETRIES=0 timeout 30 python3 -m pip index versions torch \
        2>/dev/null | grep -Eq '[ ,]2\.13\.0(,|$)'; then
    say "package index has torch 2.13.0: a venv with it and the project"
    venv="${TMPDIR:-/tmp}/ucrn-gpu-venv"  # outside the checkout: nothing untracked left there
    if python3 -m venv "$venv" && "$venv/bin/python" -m pip install -q torch==2.13.0 \
            && "$venv/bin/python" -m pip install -q -e '.[test]'; then
        PY="$venv/bin/python"
    else
        say "install failed; going on with this machine's python"
    fi
fi
if [[ -z "$PY" ]]; then
    # A venv made from the image's python (itself a venv) would not see the image's
    # packages: its python is used as it is, the carried wheels go into it (the machine is
    # thrown away afterwards), and the project runs from the checkout.
    say "no install from an index: this machine's python3 and torch, wheels from .whl/ if any"
    PY=python3
    if compgen -G ".whl/*.whl" >/dev/null; then
        $PY -m pip install -q --no-index --find-links .whl 'ray[default,tune,train]==2.60.0' \
            optuna || $PY -m pip install -q --no-index --no-deps .whl/*.whl \
            || say "installing the carried wheels failed"
    fi
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
$PY - <<'PYEOF' || { say "no usable torch here"; exit 1; }
import importlib.util
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, available "
      f"{torch.cuda.is_available()}, {torch.cuda.device_count()} GPU(s)")
for mod in ("ray", "optuna", "pandas", "pyarrow", "pytest", "yaml"):
    print(f"  {mod}: {'ok' if importlib.util.find_spec(mod) else 'MISSING'}")
PYEOF
installed=$(elapsed)
budget=$((LIMIT - SLACK - installed - 15))
((budget > 420)) && budget=420
say "install took ${installed} s; the check gets ${budget} s"
if ((budget < 90)); then
    say "too little time left for the check"
    exit 1
fi
# shellcheck disable=SC2086
$PY -m benchmarks.gpu_check --out "$OUTROOT/gpu" --budget-s "$budget" ${GPU_CHECK_ARGS:-}
rc=$?
say "gpu_check exit code $rc; total $(elapsed) s; results in $OUTROOT/gpu"
exit $rc
