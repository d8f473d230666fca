#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in parts that each fit a 10-minute call (every step is time-limited):
#   bash scripts/gpu_check.sh [OUT_DIR] [PART ...]     (default OUT_DIR: runs/gpu_check; PARTs: digits_32 checks)
#
#   digits_32  (<= 6 min)   dpi-compare experiment=digits_32: vanilla vs KNN k=8 on digits upsampled to 32x32
#                           (1024 dims), 3 seeds, each at its own guidance chosen on validation: about 25
#                           core-hours on a CPU, expected to take minutes on a GPU
#   checks     (<= 4 min)   the CUDA-marked tests; assigner, policy and image benchmarks with --device cuda;
#                           AMP (bf16) and torch.compile smoke runs of the default policy
#   paper      (<= 9.5 min) short paper-size runs with Diffusion Policy's recipes: PushT low-dim (UNet
#                           256/512/1024, batch 256, lr 1e-4, DDPM 100) and pusht_image (ResNet-18-GN, 96x96)
#
# Set-up: where packages can be downloaded, scripts/setup.sh. On a GPU machine without network whose python3
# already holds CUDA PyTorch, first gather the other wheels where there is network
# (`bash scripts/device_wheels.sh`) and bring the .whl/ folder along: this script then makes .venv-gpu (it
# sees the image's torch) and installs from .whl/ with --no-index.
#
# Each step writes OUT_DIR/<step>.txt and a line in OUT_DIR/summary.txt; a failing step does not stop the
# others. With GPU_CHECK_PACK=DIR set, everything (the texts, digits_32's report and run folders without
# checkpoints, the paper runs' logs) is also packed into DIR/gpu_check.tar.gz beside a copy of summary.txt:
# two files to bring back.
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$(realpath -m "${1:-$ROOT/runs/gpu_check}")"
shift $(( $# > 0 ? 1 : 0 ))
PARTS=("$@")
[ ${#PARTS[@]} -eq 0 ] && PARTS=(digits_32 checks)
for part in "${PARTS[@]}"; do
  case "$part" in digits_32|checks|paper) ;; *) echo "gpu_check.sh: unknown part '$part' (digits_32, checks, paper)"; exit 2 ;; esac
done
mkdir -p "$OUT"
cd "$ROOT"

cuda_python() { "$1" -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" >/dev/null 2>&1; }
if [ -d "$ROOT/.whl" ] && cuda_python python3; then
  {
    [ -x .venv-gpu/bin/python ] || python3 -m venv --system-site-packages .venv-gpu
    .venv-gpu/bin/python -m pip install -q --disable-pip-version-check --no-index --no-deps .whl/*.whl &&
      .venv-gpu/bin/python -m pip install -q --disable-pip-version-check --no-index --no-deps \
        --no-build-isolation -e .
  } >"$OUT/setup.txt" 2>&1 || { echo "offline set-up from .whl/ failed: see $OUT/setup.txt"; exit 1; }
  export PATH="$ROOT/.venv-gpu/bin:$PATH" MUJOCO_GL="${MUJOCO_GL:-egl}"
else
  source "$ROOT/scripts/setup.sh" >"$OUT/setup.txt" 2>&1 || { echo "set-up failed: see $OUT/setup.txt"; exit 1; }
fi
cuda_python python || {
  echo "no CUDA device visible to torch $(python -c 'import torch; print(torch.__version__)'): nothing to check" | tee "$OUT/summary.txt"
  exit 1
}
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || true
python -c "import torch; print(torch.__version__, torch.cuda.get_device_name())" >"$OUT/torch.txt" 2>&1
: >"$OUT/summary.txt"

step() {  # step NAME TIMEOUT_S COMMAND...
  local name="$1" limit="$2"; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1
  local rc=$?
  printf '%-22s rc=%-3s %4ss\n' "$name" "$rc" "$((SECONDS - t0))" | tee -a "$OUT/summary.txt"
}

DATA="$OUT/data"
mkdir -p "$DATA"

part_digits_32() {
  # 6 runs at a time on the one GPU (2 CPU threads each); finished runs are kept if the step times out.
  step digits_32 360 dpi-compare experiment=digits_32 parallel=6 threads=2 out_root="$OUT/digits_32"
}

part_checks() {
  step cuda_tests 75 python -m pytest -q -m cuda tests
  step bench_assign 40 python scripts/bench_assign.py --device cuda --quick
  step bench_policy 40 python scripts/bench_policy.py --device cuda --quick
  step bench_image 30 python scripts/bench_image.py --device cuda --steps 5 --warmup 2
  step collect_reach_around 25 dpi-collect task=reach_around episodes=100 seed=0 out="$DATA/reach_around.zarr"
  local mode extra
  for mode in amp compile; do
    extra=(train.amp=bf16)
    [ "$mode" = compile ] && extra=(train.compile=true)
    step "smoke_$mode" 60 dpi-train task=reach_around task.dataset="$DATA/reach_around.zarr" \
      train.steps=200 train.eval_every=200 task.eval.episodes=10 train.device=cuda "${extra[@]}" \
      out_dir="$OUT/smoke_$mode"
  done
}

part_paper() {
  # Diffusion Policy's own recipe on PushT at paper size, for as long as the budget allows.
  step collect_pusht 90 dpi-collect task=pusht episodes=40 seed=0 workers=8 out="$DATA/pusht.zarr"
  step pusht_paper 150 dpi-train task=pusht task.dataset="$DATA/pusht.zarr" assign=none policy=unet_paper \
    objective=ddpm objective.num_inference_steps=100 objective.sampler=ddpm train.batch_size=256 train.lr=1.0e-4 \
    train.warmup_steps=500 train.steps=2000 train.eval_every=500 task.eval.episodes=20 train.device=cuda \
    out_dir="$OUT/pusht_paper"
  # Diffusion Policy's image recipe on pusht_image: ResNet-18 (GroupNorm) + spatial softmax, paper-size UNet.
  step collect_pusht_image 120 dpi-collect task=pusht_image episodes=20 seed=0 workers=8 out="$DATA/pusht_image.zarr"
  step pusht_image_paper 150 dpi-train task=pusht_image task.dataset="$DATA/pusht_image.zarr" policy=unet_image \
    policy.down_dims=[256,512,1024] policy.obs_encoder=resnet18_gn policy.vision.crop_size=76 objective=ddpm \
    objective.num_inference_steps=100 objective.sampler=ddpm train.batch_size=64 train.lr=1.0e-4 \
    train.warmup_steps=500 train.steps=1000 train.eval_every=500 task.eval.episodes=10 train.device=cuda \
    out_dir="$OUT/pusht_image_paper"
}

for part in "${PARTS[@]}"; do "part_$part"; done

if [ -n "${GPU_CHECK_PACK:-}" ]; then
  mkdir -p "$GPU_CHECK_PACK"
  tar -czf "$GPU_CHECK_PACK/gpu_check.tar.gz" -C "$OUT" --exclude=./data --exclude='*.pt' \
    --exclude='*.safetensors' --exclude='*.mp4' .
  cp "$OUT/summary.txt" "$GPU_CHECK_PACK/summary.txt"
fi
echo "outputs under $OUT; summary:"
cat "$OUT/summary.txt"
