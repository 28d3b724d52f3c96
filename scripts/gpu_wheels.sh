#!/usr/bin/env bash
# Fetch into .whl/ (git-ignored) every wheel kvopt needs that the GPU machine's image lacks,
# for CPython 3.12 on manylinux x86-64, plus kvopt itself as a wheel. The GPU machine has no
# network: these travel with the working tree and are installed there with
#   python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
#       --target /tmp/site .whl/*.whl && export PYTHONPATH=/tmp/site
# (docs/gpu.md, "How to run"). Run it from anywhere: ./scripts/gpu_wheels.sh
#
# What the image has (torch 2.11, transformers 5.17, accelerate, nvidia-ml-py, psutil, rich,
# scipy, numpy, PyYAML, packaging, tqdm, MarkupSafe, joblib, cloudpickle, typing-extensions …)
# is not carried. The closure check at the end reads every wheel's Requires-Dist and fails
# if a requirement is neither carried nor in the image, so a new dependency cannot be missed.
set -euo pipefail
cd "$(dirname "$0")/.."

PY=${PYTHON:-python3}
DEST=.whl
# The versions kvopt's tests pass with here. One version of each: two would stop the install.
PINS=(
    optuna==5.0.0
    optuna-dashboard==0.21.0
    hydra-core==1.3.8
    omegaconf==2.3.1
    SQLAlchemy==2.1.9          # greenlet is only its "asyncio" extra since 2.1: not needed
    alembic==1.20.1
    colorlog==6.12.0
    Mako==1.4.3
    bottle==0.13.4
    hydra-joblib-launcher==1.2.0
    hydra-submitit-launcher==1.2.0
    submitit==1.5.4
    psycopg2-binary==2.9.13
)
# hydra-core and omegaconf need antlr4-python3-runtime 4.9.*, which PyPI has as a source
# archive only: it is pure Python, so a wheel built here (py3-none-any) runs there.
SOURCE_ONLY=(antlr4-python3-runtime==4.9.3)
PLATFORMS=(manylinux_2_28_x86_64 manylinux_2_27_x86_64 manylinux_2_17_x86_64 manylinux2014_x86_64 manylinux1_x86_64)

rm -rf "$DEST"
mkdir -p "$DEST"
platform_args=()
for p in "${PLATFORMS[@]}"; do platform_args+=(--platform "$p"); done

"$PY" -m pip download -q --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    "${platform_args[@]}" -d "$DEST" "${PINS[@]}"
# Builds print pages of setuptools warnings: keep them in a log, shown only if a build fails.
build_log=$(mktemp)
src=$(mktemp -d)
trap 'rm -rf "$build_log" "$src"' EXIT
"$PY" -m pip wheel -q --no-deps -w "$DEST" "${SOURCE_ONLY[@]}" >"$build_log" 2>&1 || { cat "$build_log" >&2; exit 1; }
# kvopt itself (conf/ ships inside it as kvopt/conf), built from a copy of exactly the files
# the device tool sends: tracked and untracked-not-ignored ones, so no stale build/ leaks in.
git ls-files -z --cached --others --exclude-standard | while IFS= read -r -d '' f; do
    [ -e "$f" ] && printf '%s\0' "$f"  # a tracked file deleted in the working tree does not travel
done | xargs -0 cp --parents -t "$src"
"$PY" -m pip wheel -q --no-deps -w "$DEST" "$src" >"$build_log" 2>&1 || { cat "$build_log" >&2; exit 1; }

# Check: every wheel installs on CPython 3.12 / manylinux x86-64, and the closure is complete.
"$PY" - "$DEST" <<'EOF'
import email.parser
import re
import sys
import zipfile
from pathlib import Path

from packaging.markers import default_environment
from packaging.requirements import Requirement
from packaging.tags import parse_tag
from packaging.utils import canonicalize_name, parse_wheel_filename

# The GPU image's Python packages (the device notes' list, read on a machine running the
# image on 2026-11-17): what is here need not travel.
IMAGE = """absl-py accelerate aiofiles aiohappyeyeballs aiohttp aiosignal annotated-doc anyio attrs botorch
build certifi charset-normalizer chex click cloudpickle cmake colorama contourpy coverage cuda-bindings
cuda-core cuda-pathfinder cuda-toolkit cupy-cuda13x cycler cython diffrax e3nn einops equinox etils execnet
filelock flatbuffers flax fonttools formulaic frozenlist fsspec gpytorch grpcio h11 h5py hf-xet httpcore httpx
huggingface-hub humanize hypothesis idna imageio iniconfig interface-meta jax jax-cuda13-pjrt
jax-cuda13-plugin jaxlib jaxtyping jinja2 joblib kiwisolver lazy-loader lightning lightning-utilities
linear-operator lineax llvmlite lxml markdown markdown-it-py markupsafe matplotlib mdurl meson ml-dtypes
mpi4py mpmath msgpack multidict multipledispatch mypy-extensions nanobind narwhals networkx ninja numba
numba-cuda numpy numpyro nvidia-cublas nvidia-cuda-cupti nvidia-cuda-nvrtc nvidia-cuda-runtime
nvidia-cudnn-cu13 nvidia-cufft nvidia-cufile nvidia-curand nvidia-cusolver nvidia-cusparse
nvidia-cusparselt-cu13 nvidia-ml-py nvidia-nccl-cu13 nvidia-nvjitlink nvidia-nvshmem-cu13 nvidia-nvtx onnx
onnx-ir onnxruntime onnxscript opencv-python-headless optax opt-einsum opt-einsum-fx optimistix
orbax-checkpoint packaging pandas pathspec patsy peft pillow pip pluggy portalocker prometheus-client
propcache protobuf psutil pyarrow pybind11 py-cpuinfo pygments pyparsing pyproject-hooks pyre-extensions
pytest pytest-benchmark pytest-cov pytest-mock pytest-timeout pytest-xdist python-dateutil pytorch-lightning
pyyaml regex requests rich sacrebleu safetensors scikit-build-core scikit-image scikit-learn scipy seaborn
sentencepiece sentence-transformers setuptools shellingham simplejson six sortedcontainers statsmodels
sympy tabulate tensorboard tensorboard-data-server tensorstore threadpoolctl tifffile tiktoken timm
tokenizers toolz torch torchaudio torchdiffeq torch-geometric torchmetrics torchvision tqdm transformers
treescope triton typer typing-extensions typing-inspect urllib3 uvloop wadler-lindig werkzeug wheel wrapt
xarray xxhash yarl zipp"""
image = {canonicalize_name(n) for n in IMAGE.split()}

dest = Path(sys.argv[1])
# Markers evaluated as on the GPU machine, whatever this machine is.
env = {**default_environment(), "python_version": "3.12", "python_full_version": "3.12.3",
       "implementation_name": "cpython", "platform_python_implementation": "CPython",
       "sys_platform": "linux", "platform_system": "Linux", "platform_machine": "x86_64",
       "os_name": "posix", "extra": ""}
ok_python = {"py3", "py2.py3", "cp312"}
ok_abi = {"none", "abi3", "cp312"}
ok_platform = re.compile(r"^(any|manylinux(1|2010|2014|_2_\d+)_x86_64)$")

carried: dict[str, str] = {}
problems: list[str] = []
for wheel in sorted(dest.glob("*.whl")):
    name, version, _, tags = parse_wheel_filename(wheel.name)
    if name in carried:
        problems.append(f"two versions of {name}: {carried[name]} and {version}")
    carried[name] = str(version)
    if not any(t.interpreter in ok_python and t.abi in ok_abi and ok_platform.match(t.platform) for t in tags):
        problems.append(f"{wheel.name}: not installable on CPython 3.12, manylinux x86-64")
requires: dict[str, set[str]] = {}
for wheel in sorted(dest.glob("*.whl")):
    with zipfile.ZipFile(wheel) as zf:
        meta = next(n for n in zf.namelist() if n.endswith(".dist-info/METADATA"))
        message = email.parser.Parser().parsestr(zf.read(meta).decode("utf-8"))
    for line in message.get_all("Requires-Dist") or []:
        req = Requirement(line)
        if req.marker is not None and not req.marker.evaluate(env):
            continue  # an extra, or another Python or platform
        requires.setdefault(canonicalize_name(req.name), set()).add(parse_wheel_filename(wheel.name)[0])
for name, wanted_by in sorted(requires.items()):
    if name not in carried and name not in image:
        problems.append(f"{name} (needed by {', '.join(sorted(wanted_by))}) is neither carried nor in the image")
if problems:
    print("gpu_wheels: " + "\n  ".join(["the wheel set is incomplete or wrong:", *problems]), file=sys.stderr)
    sys.exit(1)
from_image = sorted(n for n in requires if n not in carried)
print(f"{len(carried)} wheels; closure complete; from the image: {', '.join(from_image)}")
EOF

ls -l "$DEST"
total=$(du -cb "$DEST"/*.whl | tail -1 | cut -f1)
echo "total: $((total / 1024 / 1024)) MiB ($total bytes) in $DEST/"
if [ "$total" -gt $((50 * 1024 * 1024)) ]; then
    echo "gpu_wheels: $DEST is over 50 MiB; the working tree sent to the GPU machine must stay under 64 MiB" >&2
    exit 1
fi
