#!/usr/bin/env bash
# The one command a lent GPU session runs, from the repo root, on a bare machine:
#
#     bash benchmarks/gpu_session.sh                                          # first call
#     GPU_SESSION_LIMIT_S=240 GPU_CHECK_ARGS="--only correctness,packing" \
#         bash benchmarks/gpu_session.sh                                      # a rerun
#
# A lent machine gives about 15 minutes of device time in all, its own start (minutes)
# included, starts bare and reaches no network: so the first call (install + the whole
# check) is held to 7 minutes and a rerun of the failed steps to 4. It installs the wheels
# carried in .whl/ (Ray, Optuna and what the image lacks) with pip, offline, into a
# folder on PYTHONPATH (no venv: one made from the image's python would not see its torch,
# and making one costs time), prints how long that took, and runs `python3 -m
# benchmarks.gpu_check --out "$OUT/gpu"` with what is left of the limit less the slack.
# Results: $OUT/gpu/ (gpu_check.json, summary.md, ...) and $OUT/gpu_session.log; without
# $OUT, /tmp/ucrn-gpu-out/. Exit code: the check's.
#
# Why pip and not uv: measured on the CPU machine (docs/benchmarks.md), pip installs the
# LZMA-recompressed wheelhouse in 8-10 s; uv cannot read LZMA wheels at all, and its own
# wheel (17 MiB) would not fit beside them in what one call may carry.
#
#     bash benchmarks/gpu_session.sh --wheels   # on a machine WITH network: fill .whl/ with
#                                               # what the lent machines' image lacks
#
# Environment: GPU_SESSION_LIMIT_S (default 420: the whole call), GPU_SESSION_SLACK_S
# (default 45: the check's overrun at its deadline, stopping searches and Ray),
# GPU_CHECK_ARGS (more gpu_check flags, e.g. "--quick" or "--only correctness,packing"),
# GPU_SESSION_PYTHON (default python3), GPU_SESSION_WHEELS (default .whl),
# GPU_SESSION_SITE (where the wheels go, default /tmp/ucrn-site), GPU_SESSION_DRY_RUN
# (`plan`: print the plan and exit, installing nothing; `install`: install and check the
# imports, then exit without running the check).
set -uo pipefail
cd "$(dirname "$0")/.."
start_ms=$(date +%s%3N)
elapsed() { echo $((($(date +%s%3N) - start_ms) / 1000)); }
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
# and what only Ray's pip/uv runtime environments (virtualenv and its own dependencies) and
# the dashboard's stack sampling (py-spy) use: 8 MiB that the check never needs
unused = {"virtualenv", "distlib", "python-discovery", "platformdirs", "py-spy"}
for whl in pathlib.Path(".whl").glob("*.whl"):
    name = re.sub(r"[-_.]+", "-", whl.name.split("-")[0]).lower()
    if name in have or name in unused or name.startswith("nvidia-"):
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
    # untracked and ignored (never committed), so it travels only when a call carries it
    exclude=$(git rev-parse --git-path info/exclude 2>/dev/null) && {
        mkdir -p "$(dirname "$exclude")"
        grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >>"$exclude"
    }
    echo "next: the device call names .whl in carry (under ~60 MiB with the tree)"
    exit 0
fi

OUTROOT="${OUT:-/tmp/ucrn-gpu-out}"
LIMIT="${GPU_SESSION_LIMIT_S:-420}"
SLACK="${GPU_SESSION_SLACK_S:-45}"
PY="${GPU_SESSION_PYTHON:-python3}"
WHEELS="${GPU_SESSION_WHEELS:-.whl}"
SITE="${GPU_SESSION_SITE:-${TMPDIR:-/tmp}/ucrn-site}"
DRY="${GPU_SESSION_DRY_RUN:-}"
# checked before any arithmetic: bash evaluates a non-number there as an expression, which
# runs the command substitutions in a subscript (GPU_SESSION_LIMIT_S='x[$(cmd)]') and
# prints the value of a variable it names in its error line
for var in GPU_SESSION_LIMIT_S GPU_SESSION_SLACK_S; do
    val="${!var:-}"
    if [[ -n "$val" && ! "$val" =~ ^[0-9]{1,6}$ ]]; then
        echo "gpu_session: $var=${val:0:40}: expected a whole number of seconds (0 to 999999)" >&2
        exit 2
    fi
done
case "$DRY" in
    "" | plan | install) ;;
    *)  echo "gpu_session: GPU_SESSION_DRY_RUN=${DRY:0:40}: expected plan, install or unset" >&2
        exit 2 ;;
esac
export PYTHONUNBUFFERED=1 PIP_DISABLE_PIP_VERSION_CHECK=1 PIP_NO_INPUT=1 \
    PIP_ROOT_USER_ACTION=ignore
shopt -s nullglob
wheels=("$WHEELS"/*.whl)
shopt -u nullglob
INSTALL=("$PY" -m pip install -q --no-index --no-deps --no-compile --target "$SITE")

plan() {
    local pyver tags mib
    pyver=$("$PY" -c 'import sys; print("cp%d%d" % sys.version_info[:2])' 2>/dev/null || echo "none")
    say "plan: python $PY ($pyver), limit ${LIMIT} s, slack ${SLACK} s, out $OUTROOT"
    if ((${#wheels[@]})); then
        mib=$(du -cm "${wheels[@]}" | tail -1 | cut -f1)
        # the ABI tags of the compiled wheels (abi3 ones run on any later CPython)
        tags=$(printf '%s\n' "${wheels[@]##*/}" | grep -oE -- '-cp3[0-9]+-cp3[0-9]+-' \
            | cut -d- -f3 | sort -u | paste -sd' ')
        say "plan: ${#wheels[@]} wheels in $WHEELS (${mib} MiB; compiled for: ${tags:-any})"
        if [[ -n "$tags" && "$tags" != "$pyver" ]]; then
            say "plan: WARNING: wheels compiled for $tags, this python is $pyver: pip will refuse them"
        fi
        say "plan: installer: ${INSTALL[*]} $WHEELS/*.whl (pip, offline, no deps, no bytecode)"
    else
        say "plan: no wheels in $WHEELS: nothing to install; without Ray the search tests and steps 4-5 skip"
    fi
    say "plan: then $PY -m benchmarks.gpu_check --out $OUTROOT/gpu --budget-s (limit - slack - install) ${GPU_CHECK_ARGS:-}"
}

if [[ "$DRY" == "plan" ]]; then
    plan
    exit 0
fi
if ! mkdir -p "$OUTROOT/gpu" 2>/dev/null || ! [[ -w "$OUTROOT/gpu" ]]; then
    echo "gpu_session: OUT=$OUTROOT: cannot write the results folder $OUTROOT/gpu" >&2
    exit 1
fi
exec > >(tee -a "$OUTROOT/gpu_session.log") 2>&1
say "start: $(uname -m), $(nproc) CPUs"
command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader
plan

if ((${#wheels[@]})); then
    stamp=$(ls -l "${wheels[@]}" | md5sum | cut -d' ' -f1)
    t0=$(date +%s%3N)
    if [[ -f "$SITE/.ucrn-wheels" && "$(cat "$SITE/.ucrn-wheels")" == "$stamp" ]]; then
        say "the same wheels are already installed in $SITE (a warm machine)"
    elif [[ -d "$SITE" && ! -f "$SITE/.ucrn-site" && -n "$(ls -A "$SITE" 2>/dev/null)" ]]; then
        # emptied before each install: never a folder this script did not make
        say "GPU_SESSION_SITE=$SITE holds files this script did not put there; refusing to" \
            "empty it: name a new folder"
        exit 1
    else
        rm -rf "$SITE"
        mkdir -p "$SITE" && : >"$SITE/.ucrn-site"
        if "${INSTALL[@]}" "${wheels[@]}"; then
            echo "$stamp" >"$SITE/.ucrn-wheels"
            say "installed ${#wheels[@]} wheels in $(awk -v t="$t0" -v n="$(date +%s%3N)" \
                'BEGIN { printf "%.1f", (n - t) / 1000 }') s"
        else
            say "installing the carried wheels failed: going on without them"
        fi
    fi
    export PYTHONPATH="$PWD:$SITE${PYTHONPATH:+:$PYTHONPATH}"
else
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
"$PY" - <<'PYEOF' || { say "no usable torch here"; exit 1; }
import importlib.util
import torch
print(f"torch {torch.__version__}, CUDA {torch.version.cuda}, available "
      f"{torch.cuda.is_available()}, {torch.cuda.device_count()} GPU(s)")
for mod in ("ray", "optuna", "pandas", "pyarrow", "pytest", "yaml"):
    spec = importlib.util.find_spec(mod)
    print(f"  {mod}: {spec.submodule_search_locations[0] if spec and spec.submodule_search_locations else 'ok' if spec else 'MISSING'}")
PYEOF
installed=$(elapsed)
budget=$((LIMIT - SLACK - installed))
say "install and import check took ${installed} s; the check gets ${budget} s"
if [[ "$DRY" == "install" ]]; then
    say "dry run (install): not running the check"
    exit 0
fi
if ((budget < 90)); then
    say "too little time left for the check (${budget} s < 90 s)"
    exit 1
fi
# shellcheck disable=SC2086
"$PY" -m benchmarks.gpu_check --out "$OUTROOT/gpu" --budget-s "$budget" ${GPU_CHECK_ARGS:-}
rc=$?
say "gpu_check exit code $rc; total $(elapsed) s; results in $OUTROOT/gpu"
exit $rc
