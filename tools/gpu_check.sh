#!/usr/bin/env bash
# One run on a lent NVIDIA machine (no cargo, no network there): Vulkan loaders from .gl/,
# `xlsr devices`, the kernel benchmarks, then tools/compare_torch.py. Logs and tables go to
# $OUT (or ./gpu-out). Build here first: `bash tools/gpu_pack.sh` makes gpu-pack.tgz (xlsr
# and the GPU test binaries, stripped), which this script unpacks; carry it and .gl.
#   XLSR=path/to/xlsr  ROWS=gemm,ctc,attention,step  STEPS=3  VARIANTS=f32,f32-ckpt,fp16-ckpt
#   TESTS=folder of test binaries to run first  EXTRA='shell commands' to run before the bench
#   BASELINES=0 skips the training steps with the previous kernels (XLSR_ATTN=lanes, ...)
#   STEP='--batch 8 --seconds 5' the shape of those steps
#   TUNE=0 skips the tuned steps (`xlsr bench --tune`, the file kept in $OUT/tuning)
#   ALTS='VAR=VALUE [flags];...' only these of those steps
#   DRY=1 tries the whole script here first (about 10 minutes on lavapipe): a 2-layer step of
#   one 1 s clip, `--quick` benchmarks and compare_torch, test binaries listed, not run
#   (PYTHON=../refenv/bin/python for a torch outside the system's python3)
# The questions open after 2026-12-06 (tensor-core attention; the tensor-core GEMMs through
# vector pointers, staged or wide, split in K or not; the attention kept across the
# recomputation or not; the f32 frozen convs unfolded into GEMMs or not; the tiled GEMM
# walking K 16 at a time or 8; the driver's bounds checks on or off, XLSR_ROBUSTNESS=0; the coop
# tests at 16x16), first:
#   TUNE=0 ROWS=gemm,attention,step VARIANTS=f32,fp16-ckpt \
#   ALTS='XLSR_ATTN_COOP=0 --fp16 --checkpointing;XLSR_COOP=staged --fp16 --checkpointing;XLSR_COOP=wide --fp16 --checkpointing;XLSR_SPLIT_K=0 --fp16 --checkpointing;XLSR_KEEP_ATTENTION=0 --checkpointing;XLSR_KEEP_ATTENTION=0 --fp16 --checkpointing;XLSR_UNFOLD=1;XLSR_GEMM_BK=16;XLSR_ROBUSTNESS=0;XLSR_ROBUSTNESS=0 --fp16 --checkpointing' \
#   bash tools/gpu_check.sh
set -u
cd "$(dirname "$0")/.."
OUT=${OUT:-gpu-out}
mkdir -p "$OUT"
# A pack from tools/gpu_pack.sh supplies the binaries XLSR and TESTS do not name.
if [ -f gpu-pack.tgz ]; then
  mkdir -p /tmp/gpu-pack && tar xzf gpu-pack.tgz -C /tmp/gpu-pack
  XLSR=${XLSR:-/tmp/gpu-pack/xlsr}
  TESTS=${TESTS:-/tmp/gpu-pack/tests}
fi
X=${XLSR:-target/release/xlsr}
if [ "${DRY:-0}" = 1 ]; then
  QUICK=--quick
  STEP=${STEP:---batch 1 --seconds 1 --layers 2}
  STEPS=${STEPS:-1}
fi
QUICK=${QUICK:-}
exec > >(tee "$OUT/log.txt") 2>&1
# Default kernels everywhere but the tuned steps below, whatever tuning file the machine has.
export XLSR_TUNE=0

if ! ldconfig -p | grep -q libvulkan.so.1; then
  for f in .gl/*.deb; do dpkg -x "$f" /; done
  ldconfig
fi
icd=/usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json
if [ -f "$icd" ]; then
  export VK_DRIVER_FILES=$icd
  export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
fi
command -v nvidia-smi >/dev/null &&
  nvidia-smi --query-gpu=name,driver_version,clocks.sm,clocks.max.sm,memory.total --format=csv
date -u
"$X" devices || { echo "xlsr sees no adapter"; exit 1; }

# Test binaries find their fixtures through the checkout path compiled into them.
[ -e /work/main ] || { mkdir -p /work && ln -s "$PWD" /work/main; }
# Test binaries built here (`cargo test --release --no-run`) and copied to $TESTS run on the GPU
# (with TESTS unset, none: `$TESTS/*` would be every folder of /).
if [ -n "${TESTS:-}" ]; then
  for t in "$TESTS"/*; do
    [ -f "$t" ] && [ -x "$t" ] || continue
    echo "== test $(basename "$t")"
    if [ "${DRY:-0}" = 1 ]; then "$t" --list 2>&1 | tail -n 3; continue; fi
    timeout 300 "$t" --test-threads 1 2>&1 | tail -n 25
  done
fi

if [ -n "${EXTRA:-}" ]; then
  echo "== extra: $EXTRA"
  eval "$EXTRA"
fi

# The XLSR-53 step with a kernel's other build, to compare with compare_torch's rows (the
# previous GEMMs, XLSR_GEMM=tiled64 and XLSR_COOP=staged, were measured on 2026-11-27; the
# staged tensor-core GEMM has changed since), and with attention as separate matmul, softmax
# and dropout kernels instead of the fused ones (its f16 matmuls may take the tensor cores).
if [ "${BASELINES:-1}" = 1 ]; then
  alts=("XLSR_ATTN=tiled" "XLSR_ATTN=tiled --fp16 --checkpointing"
        "XLSR_ATTN=lanes" "XLSR_ATTN=lanes --fp16 --checkpointing"
        "XLSR_ATTN=rows" "XLSR_ATTN=rows --fp16 --checkpointing" "XLSR_CONV_TILE=64"
        "XLSR_GEMM_V4=0" "XLSR_SPLIT_K=0" "XLSR_SPLIT_K=0 --fp16 --checkpointing"
        "XLSR_COOP=staged --fp16 --checkpointing" "XLSR_KEEP_ATTENTION=0 --checkpointing"
        "XLSR_KEEP_ATTENTION=0 --fp16 --checkpointing"
        "XLSR_COOP=wide --fp16 --checkpointing" "XLSR_ATTN_COOP=0 --fp16 --checkpointing"
        "XLSR_TUNE=0 --unfused-attention" "XLSR_TUNE=0 --unfused-attention --fp16 --checkpointing"
        "XLSR_UNFOLD=1" "XLSR_UNFOLD=1 --checkpointing"
        "XLSR_GEMM_BK=16" "XLSR_GEMM_BK=16 --checkpointing"
        "XLSR_ROBUSTNESS=0" "XLSR_ROBUSTNESS=0 --fp16 --checkpointing")
  # ALTS='A;B;...' runs only those (each: one VAR=VALUE, then bench flags).
  if [ -n "${ALTS:-}" ]; then IFS=';' read -r -a alts <<<"$ALTS"; fi
  for alt in "${alts[@]}"; do
    set -- $alt
    echo "== step $alt"
    env "$1" timeout 240 "$X" bench ${STEP:---batch 8 --seconds 5} --steps "${STEPS:-3}" "${@:2}" 2>&1 | tail -n 12
  done
fi

# The kernel tuner: the step's shape classes timed build against build on their first launch
# (GEMM tiles, split-K, coop staged or not, conv tiles, attention lanes), the picks listed,
# then steps with those picks. Its own folder, so every other run here keeps the defaults.
if [ "${TUNE:-1}" = 1 ]; then
  for v in "" "--fp16 --checkpointing"; do
    echo "== tuned step $v"
    XLSR_TUNE=1 XLSR_TUNING_DIR="$OUT/tuning" timeout 300 "$X" bench ${STEP:---batch 8 --seconds 5} \
      --steps "${STEPS:-3}" --tune $v 2>&1 | tail -n 40
  done
fi

echo "== the tiled GEMM walking K 8 (the default) or 16 at a time"
for bk in 8 16; do
  XLSR_GEMM_BK=$bk timeout 120 "$X" bench $QUICK --filter "gemm f32" 2>&1 | grep "gemm f32" | sed "s/^/BK $bk: /"
  XLSR_GEMM_BK=$bk timeout 120 "$X" bench $QUICK --filter "matmul tiled" 2>&1 | grep "matmul tiled" | sed "s/^/BK $bk: /"
done

# The f16 GEMM (10% of torch fp16 on 2026-11-27) on each tensor-core build: direct from
# global memory (the default), staged through workgroup memory by 4 subgroups, or by 8.
echo "== f16 GEMMs on each tensor-core build"
for c in coop coop-staged coop-wide; do
  XLSR_COOP=$c timeout 120 "$X" bench $QUICK --filter "gemm f16" 2>&1 | grep "gemm f16" | sed "s/^/$c: /"
done

# The driver's bounds checks on every buffer access (robustBufferAccess, wgpu's default) or
# off (XLSR_ROBUSTNESS=0): the GEMMs, every tensor-core build among them, and the attention.
echo "== the driver's bounds checks on (1, the default) or off (0)"
for r in 1 0; do
  XLSR_ROBUSTNESS=$r timeout 180 "$X" bench $QUICK --filter gemm 2>&1 | grep gemm | sed "s/^/robust $r: /"
  XLSR_ROBUSTNESS=$r timeout 120 "$X" bench $QUICK --filter "attention fused fwd+bwd" 2>&1 |
    grep attention | sed "s/^/robust $r: /"
done

echo "== conv1d kernels with each tile"
for t in 64 128; do XLSR_CONV_TILE=$t timeout 120 "$X" bench $QUICK --filter conv1d 2>&1 | grep conv1d; done

echo "== kernel benchmarks"
timeout 300 "$X" bench $QUICK --json >"$OUT/bench.json"
echo "== compare_torch"
PYTHONUNBUFFERED=1 timeout "${COMPARE_TIMEOUT:-420}" ${PYTHON:-python3} tools/compare_torch.py $QUICK --xlsr "$X" \
  --out "$OUT/compare.md" --rows "${ROWS:-gemm,ctc,attention,step}" --steps "${STEPS:-3}" \
  --step-variants "${VARIANTS:-f32,f32-ckpt,fp16-ckpt}"
echo "== done $(date -u)"
