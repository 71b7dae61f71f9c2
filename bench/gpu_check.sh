#!/usr/bin/env bash
# GPU check for an offline NVIDIA server (see ../shared/gpu/README.md and bench/GPU.md): ONE call
# runs every measurement of issue 9's GPU acceptance and writes them to OUT_DIR.
#
# Prepare on a machine with the registries (once):   bash bench/gpu_check.sh --prepare
#   -> .gpu/deno.gz (Deno), .gpu/libvulkan.so.1 (Vulkan loader), .gpu/probe.sh, and the bench
#      scripts bundled so nothing is downloaded on the server: compare.js (with its npm peers
#      tfjs-webgpu, onnxruntime-web, jax-js), gpu_bench.js, matmul_tune.js, profile.js,
#      gpu_summary.js. .gpu/ is ignored by git: carry it (and nothing else) to the server.
# On the server, from the repository root:           bash bench/gpu_check.sh [OUT_DIR]
#   1. the probe (lists the driver's pieces, registers the NVIDIA Vulkan ICD if needed, asks
#      Deno for an adapter through Vulkan and GL), then, when an adapter appears:
#   2. gpu_bench.json: correctness of every kernel family here (tiled attention forward and
#      backward against float64, with subgroups where offered; matmul variants incl. f16), then
#      matmul 1024-4096^3 (+ f16 operands), attention fused (tiled) vs unfused vs the old row
#      kernel at B=8 and B=64 (+ fwd+bwd at B=64), ViT-B/16 inference (batch 16, 64) and a
#      training step (fwd + bwd + AdamW, batch 32);
#   3. matmul_tune.json: the tile sweep (incl. double-buffered and split-k tiles);
#   4. profile.json / profile.txt: GPU time per kernel (timestamp queries) for ViT-B/16 inference
#      (batch 64) and a CLIP-IT LoRA training step (batch 32);
#   5. RESULTS-gpu.md: bench:compare --quick (FMA ceiling, tfjs-webgpu, onnxruntime-web, jax-js);
#   6. torch_peer.json: PyTorch CUDA on the same GPU, TF32 off (when python3 has torch);
#   7. ACCEPTANCE.md: the issue's GPU checks computed from the files above.
#   At most ~9 minutes (the step limits add up to 500 s plus the probe; give the device call a
#   590 s limit): each step has its own time limit, so one slow step costs only
#   itself). Everything it prints goes to OUT_DIR/gpu_check.log (default OUT_DIR: bench/gpu-run/).
set -u
root=$(cd "$(dirname "$0")/.." && pwd)
cd "$root"

if [ "${1:-}" = "--prepare" ]; then
  D="npx -y deno@2.9.6"
  mkdir -p .gpu
  gzip -9 -c "$($D eval 'console.log(Deno.execPath())')" > .gpu/deno.gz
  cp -L /usr/lib/x86_64-linux-gnu/libvulkan.so.1 .gpu/ 2>/dev/null || echo "no libvulkan.so.1 here: apt-get install libvulkan1"
  cp ../shared/gpu/probe.sh .gpu/
  $D bundle --quiet --platform deno -o .gpu/compare.js bench/compare.ts && echo "bundled bench/compare.ts"
  # onnxruntime-web loads its WebAssembly at run time: ship it gzipped (the tree travels <= 64 MiB).
  mkdir -p .gpu/ort
  ortdist=$(dirname "$(ls node_modules/.deno/onnxruntime-web*/node_modules/onnxruntime-web/dist/ort-wasm-simd-threaded.asyncify.mjs | head -1)")
  cp "$ortdist/ort-wasm-simd-threaded.asyncify.mjs" .gpu/ort/
  gzip -9 -c "$ortdist/ort-wasm-simd-threaded.asyncify.wasm" > .gpu/ort/ort-wasm-simd-threaded.asyncify.wasm.gz
  for f in gpu_bench matmul_tune profile gpu_summary; do
    $D bundle --quiet --platform deno -o .gpu/$f.js bench/$f.ts && echo "bundled bench/$f.ts"
  done
  du -sh .gpu
  exit 0
fi

out=${1:-bench/gpu-run}
mkdir -p "$out"
exec > >(tee "$out/gpu_check.log") 2>&1
echo "== date: $(date -u +%FT%TZ)  host: $(uname -srm)"
bash .gpu/probe.sh | tee "$out/probe.txt"   # also unpacks Deno to /tmp/deno
export LD_LIBRARY_PATH="$root/.gpu:/usr/local/nvidia/lib64:/usr/local/nvidia/lib:${LD_LIBRARY_PATH:-}"
export XDG_RUNTIME_DIR=/tmp
# The probe runs in a child shell: repeat its ICD registration here. The driver's own ICD file
# (if the container mounts one under /usr/local/nvidia) wins; else the ones the probe wrote.
if ! ls /usr/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json >/dev/null 2>&1; then
  for f in /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json /tmp/icd/libEGL_nvidia.so.0.json /tmp/icd/libGLX_nvidia.so.0.json; do
    [ -f "$f" ] && export VK_ICD_FILENAMES="${VK_ICD_FILENAMES:+$VK_ICD_FILENAMES:}$f"
  done
fi
[ -f /usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json ] &&
  export __EGL_VENDOR_LIBRARY_FILENAMES=/usr/local/nvidia/share/glvnd/egl_vendor.d/10_nvidia.json
echo "== VK_ICD_FILENAMES=${VK_ICD_FILENAMES:-} __EGL_VENDOR_LIBRARY_FILENAMES=${__EGL_VENDOR_LIBRARY_FILENAMES:-}"
for be in vulkan gl; do
  desc=$(DENO_WEBGPU_BACKEND=$be timeout 60 /tmp/deno eval '
    const a = await navigator.gpu.requestAdapter({ powerPreference: "high-performance" });
    console.log(a ? a.info.description || a.info.vendor || "unnamed adapter" : "none");' 2>&1 | tail -1)
  echo "== adapter through $be: $desc"
  case "$desc" in none|*llvmpipe*|*rror*|"") continue ;; esac
  export DENO_WEBGPU_BACKEND=$be
  if [ -f .gpu/ort/ort-wasm-simd-threaded.asyncify.wasm.gz ]; then
    mkdir -p /tmp/ort && cp .gpu/ort/*.mjs /tmp/ort/ &&
      gunzip -c .gpu/ort/ort-wasm-simd-threaded.asyncify.wasm.gz > /tmp/ort/ort-wasm-simd-threaded.asyncify.wasm &&
      export ORT_WASM_DIR=/tmp/ort
  fi
  step() { # step NAME SECONDS CMD...: run with a time limit, say how it ended
    local name=$1 limit=$2; shift 2
    echo "== $name (limit ${limit}s): $*"
    local t0=$SECONDS
    timeout --kill-after=10s "$limit" "$@"
    echo "== $name: exit $? after $((SECONDS - t0))s"
  }
  /tmp/deno eval 'const a = await navigator.gpu.requestAdapter(); console.log(JSON.stringify({
    description: a.info.description, features: [...a.features].sort(),
    maxComputeWorkgroupStorageSize: a.limits.maxComputeWorkgroupStorageSize,
    subgroupMinSize: a.info.subgroupMinSize, subgroupMaxSize: a.info.subgroupMaxSize }))' \
    > "$out/adapter.json" 2>&1
  export CLIPIT_TUNE=off # GPU adapters use the fixed table; no CPU sweep, no cache file
  step gpu_bench "${GPU_BENCH_TIMEOUT:-170}" /tmp/deno run -A .gpu/gpu_bench.js --out "$out/gpu_bench.json"
  step matmul_tune "${GPU_TUNE_TIMEOUT:-75}" /tmp/deno run -A .gpu/matmul_tune.js --budget 55 --out "$out/matmul_tune.json"
  step profile "${GPU_PROFILE_TIMEOUT:-60}" sh -c "/tmp/deno run -A .gpu/profile.js --out '$out/profile.json' > '$out/profile.txt' 2>&1; s=\$?; cat '$out/profile.txt'; exit \$s"
  step compare "${GPU_COMPARE_TIMEOUT:-90}" /tmp/deno run -A .gpu/compare.js --quick --only matmul-256,matmul-1024,attention,softmax,cosine-small --out "$out/RESULTS-gpu.md"
  if python3 -c "import torch, torchvision; assert torch.cuda.is_available()" 2>/dev/null; then
    step torch_peer "${GPU_TORCH_TIMEOUT:-90}" python3 bench/torch_peer.py --out "$out/torch_peer.json"
  else
    echo "== torch_peer: skipped (python3 with CUDA torch and torchvision not found)"
  fi
  step summary 15 /tmp/deno run -A .gpu/gpu_summary.js "$out"
  exit 0
done
echo "== no NVIDIA adapter through Vulkan or GL: see the probe's listing above for what is missing"
