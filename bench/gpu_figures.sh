#!/usr/bin/env bash
# Issue 5's figures on a GPU host, in one run (run by hand, from the repo root):
#
#   bash bench/gpu_figures.sh OUT_DIR [MNIST_DIR]
#
# For a host with JAX (CUDA) but not the TensorFlow stack: installs this
# package without its dependencies (only `ntga_tfds.transforms`, `sources`
# and `generation` are used; neural-tangents, TensorFlow and TFDS are not
# needed), then runs the step benchmark for both surrogates on MNIST- and
# CIFAR-10-shaped data and whole generations: FNN on all 50,000 CIFAR-10-
# shaped images (random pixels: the cost depends on shapes only) and CNN on
# the real MNIST training set from MNIST_DIR (its four official idx files),
# extrapolated from the first blocks if it would not fit the time box.
# Writes OUT_DIR/gpu.log and OUT_DIR/gpu_results.json (one JSON per run).
# SMOKE=1 runs every step at toy sizes (checks the script on any machine).
set -uo pipefail
out=${1:?usage: bash bench/gpu_figures.sh OUT_DIR [MNIST_DIR]}
mnist=${2:-../shared/data/mnist}
mkdir -p "$out"
tmp=$(mktemp -d)
export PYTHONUNBUFFERED=1 NTGA_TFDS_PROGRESS=0 TF_CPP_MIN_LOG_LEVEL=2
log="$out/gpu.log"
{
  nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
  python3 -m pip install -q --no-deps --no-build-isolation -e . 2>&1 | tail -2
  python3 -c "import jax; print('jax', jax.__version__, jax.devices())"
} 2>&1 | tee "$log"

run() {  # run NAME SECONDS SCRIPT ARGS...
  local name=$1 limit=$2; shift 2
  echo "== $name: $*" | tee -a "$log"
  local t0=$SECONDS
  timeout "$limit" python3 "$@" --json="$tmp/$name.json" 2>&1 \
    | grep -v -e '^I0000' -e '^W0000' -e 'xla_bridge' | tee -a "$log"
  echo "== $name: exit ${PIPESTATUS[0]}, $((SECONDS - t0)) s wall" | tee -a "$log"
}

small_step=() small_gen=()
if [ "${SMOKE:-0}" = 1 ]; then
  small_step=(--block=32 --val=64 --steps=2)
  small_gen=(--block_size=32 --nb_iter=1 --max_blocks=2)
fi

run fnn_cifar10_step 120 bench/bench_ntga_step.py --surrogate=fnn --shape=cifar10 --steps=8 "${small_step[@]}"
run fnn_mnist_step 120 bench/bench_ntga_step.py --surrogate=fnn --shape=mnist --steps=8 "${small_step[@]}"
run cnn_mnist_step 150 bench/bench_ntga_step.py --surrogate=cnn --shape=mnist --steps=4 "${small_step[@]}"
run cnn_cifar10_step 150 bench/bench_ntga_step.py --surrogate=cnn --shape=cifar10 --steps=4 "${small_step[@]}"
run fnn_cifar10_generate 150 bench/bench_generate.py --source=synthetic_cifar10 --surrogate=fnn "${small_gen[@]}"
run cnn_mnist_generate 150 bench/bench_generate.py --source=mnist --manual_dir="$mnist" --surrogate=cnn --max_blocks=${CNN_BLOCKS:-8} "${small_gen[@]}"

python3 - "$tmp" "$out/gpu_results.json" <<'EOF'
import json, pathlib, sys
runs = {p.stem: json.loads(p.read_text())
        for p in sorted(pathlib.Path(sys.argv[1]).glob("*.json"))}
pathlib.Path(sys.argv[2]).write_text(json.dumps(runs, indent=1))
print("wrote", sys.argv[2], "with", sorted(runs))
EOF
