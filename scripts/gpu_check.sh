#!/usr/bin/env bash
# Everything that needs a CUDA GPU, in one command (every step time-limited: at most 21 minutes in all):
#   bash scripts/gpu_check.sh [OUT_DIR]        (default OUT_DIR: runs/gpu_check)
#
#  1. the CUDA-marked tests
#  2. assigner, policy and image benchmarks with --device cuda
#  3. AMP (bf16) and torch.compile training smoke runs of the default policy
#  4. a short paper-size PushT run (UNet 256/512/1024, batch 256, lr 1e-4, DDPM 100, Diffusion Policy's recipe)
#  5. a short paper-size PushT image run (the same UNet with ResNet-18-GN on 96x96 images, 76x76 crops, batch 64)
#
# Each step writes its output to OUT_DIR/<step>.txt and its status to OUT_DIR/summary.txt; a failing
# step does not stop the others. Set-up is scripts/setup.sh (it installs what the tests need).
set -uo pipefail
ROOT="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
OUT="$(realpath -m "${1:-$ROOT/runs/gpu_check}")"
mkdir -p "$OUT"
cd "$ROOT"
source "$ROOT/scripts/setup.sh" >"$OUT/setup.txt" 2>&1 || { echo "set-up failed: see $OUT/setup.txt"; exit 1; }
export MUJOCO_GL="${MUJOCO_GL:-egl}"
python -c "import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)" || {
  echo "no CUDA device visible to torch $(python -c 'import torch; print(torch.__version__)'): nothing to check" | tee "$OUT/summary.txt"
  exit 1
}
nvidia-smi >"$OUT/nvidia-smi.txt" 2>&1 || true
: >"$OUT/summary.txt"

step() {  # step NAME TIMEOUT_S COMMAND...
  local name="$1" limit="$2"; shift 2
  local t0=$SECONDS
  timeout "$limit" "$@" >"$OUT/$name.txt" 2>&1
  local rc=$?
  printf '%-22s rc=%-3s %4ss\n' "$name" "$rc" "$((SECONDS - t0))" | tee -a "$OUT/summary.txt"
}

step cuda_tests 120 python -m pytest -q -m cuda tests
step bench_assign 90 python scripts/bench_assign.py --device cuda --quick
step bench_policy 90 python scripts/bench_policy.py --device cuda --quick
step bench_image 60 python scripts/bench_image.py --device cuda --steps 5 --warmup 2

DATA="$OUT/data"
mkdir -p "$DATA"
step collect_reach_around 60 dpi-collect task=reach_around episodes=100 seed=0 out="$DATA/reach_around.zarr"
for mode in amp compile; do
  extra=(train.amp=bf16)
  [ "$mode" = compile ] && extra=(train.compile=true)
  step "smoke_$mode" 120 dpi-train task=reach_around task.dataset="$DATA/reach_around.zarr" \
    train.steps=200 train.eval_every=200 task.eval.episodes=10 train.device=cuda "${extra[@]}" \
    out_dir="$OUT/smoke_$mode"
done

# Diffusion Policy's own recipe on PushT at paper size, for as long as the budget allows (time-limited).
step collect_pusht 120 dpi-collect task=pusht episodes=40 seed=0 out="$DATA/pusht.zarr"
step pusht_paper 150 dpi-train task=pusht task.dataset="$DATA/pusht.zarr" assign=none policy=unet_paper objective=ddpm \
  objective.num_inference_steps=100 objective.sampler=ddpm train.batch_size=256 train.lr=1.0e-4 \
  train.warmup_steps=500 train.steps=2000 train.eval_every=500 task.eval.episodes=20 train.device=cuda \
  out_dir="$OUT/pusht_paper"

# Diffusion Policy's image recipe on pusht_image: ResNet-18 (GroupNorm) + spatial softmax, paper-size UNet.
step collect_pusht_image 180 dpi-collect task=pusht_image episodes=20 seed=0 workers=4 out="$DATA/pusht_image.zarr"
step pusht_image_paper 150 dpi-train task=pusht_image task.dataset="$DATA/pusht_image.zarr" policy=unet_image \
  policy.down_dims=[256,512,1024] policy.obs_encoder=resnet18_gn policy.vision.crop_size=76 objective=ddpm \
  objective.num_inference_steps=100 objective.sampler=ddpm train.batch_size=64 train.lr=1.0e-4 \
  train.warmup_steps=500 train.steps=1000 train.eval_every=500 task.eval.episodes=10 train.device=cuda \
  out_dir="$OUT/pusht_image_paper"

echo "outputs under $OUT; summary:"
cat "$OUT/summary.txt"
