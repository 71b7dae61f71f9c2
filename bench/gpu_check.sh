#!/usr/bin/env bash
# GPU check for an offline NVIDIA server (see ../shared/gpu/README.md and bench/GPU.md).
#
# Prepare on a machine with the registries (once):   bash bench/gpu_check.sh --prepare
#   -> .gpu/deno.gz (Deno), .gpu/libvulkan.so.1 (Vulkan loader), .gpu/probe.sh,
#      .gpu/compare.js (bench/compare.ts bundled with its npm peers, so nothing is downloaded).
# On the server, from the repository root:           bash bench/gpu_check.sh [OUT_DIR]
#   runs the probe (lists the driver's pieces, registers the NVIDIA Vulkan ICD if needed, asks
#   Deno for an adapter through Vulkan and GL) and, when an adapter appears, the benchmarks.
#   Everything it sees goes to OUT_DIR (default bench/gpu-run/).
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
  $D bundle --quiet --platform deno -o .gpu/gpu_bench.js bench/gpu_bench.ts && echo "bundled bench/gpu_bench.ts"
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
  [ -f .gpu/gpu_bench.js ] && timeout "${GPU_BENCH_TIMEOUT:-300}" /tmp/deno run -A .gpu/gpu_bench.js --out "$out/gpu_bench.json"
  [ -f .gpu/compare.js ] && timeout "${GPU_COMPARE_TIMEOUT:-150}" /tmp/deno run -A .gpu/compare.js --quick --out "$out/RESULTS-gpu.md"
  exit 0
done
echo "== no NVIDIA adapter through Vulkan or GL: see the probe's listing above for what is missing"
