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
  $D bundle --quiet --platform deno -o .gpu/gpu_bench.js bench/gpu_bench.ts && echo "bundled bench/gpu_bench.ts"
  du -sh .gpu
  exit 0
fi

out=${1:-bench/gpu-run}
mkdir -p "$out"
exec > >(tee "$out/gpu_check.log") 2>&1
echo "== date: $(date -u +%FT%TZ)  host: $(uname -srm)"
# The probe exports nothing to us (it runs in a child shell), so repeat its ICD logic here by
# sourcing it with its deno step: it writes /tmp/icd/*.json and /tmp/deno.
bash .gpu/probe.sh | tee "$out/probe.txt"
export LD_LIBRARY_PATH="$root/.gpu:/usr/local/nvidia/lib64:/usr/local/nvidia/lib:${LD_LIBRARY_PATH:-}"
export XDG_RUNTIME_DIR=/tmp
if ! ls /usr/share/vulkan/icd.d/nvidia_icd.json /etc/vulkan/icd.d/nvidia_icd.json >/dev/null 2>&1; then
  for f in /usr/local/nvidia/share/vulkan/icd.d/nvidia_icd.json /tmp/icd/libEGL_nvidia.so.0.json /tmp/icd/libGLX_nvidia.so.0.json; do
    [ -f "$f" ] && export VK_ICD_FILENAMES="${VK_ICD_FILENAMES:+$VK_ICD_FILENAMES:}$f"
  done
fi
echo "== VK_ICD_FILENAMES=${VK_ICD_FILENAMES:-}"
for be in vulkan gl; do
  if grep -q "^\[$be\] {" "$out/probe.txt" && ! grep "^\[$be\] {" "$out/probe.txt" | grep -q llvmpipe; then
    echo "== adapter through $be: running benchmarks"
    export DENO_WEBGPU_BACKEND=$be
    [ -f .gpu/gpu_bench.js ] && timeout 240 /tmp/deno run -A .gpu/gpu_bench.js --out "$out/gpu_bench.json" | tee "$out/gpu_bench.txt"
    [ -f .gpu/compare.js ] && timeout 240 /tmp/deno run -A .gpu/compare.js --quick --out "$out/RESULTS-gpu.md" | tee "$out/compare.txt"
    exit 0
  fi
done
echo "== no NVIDIA adapter through Vulkan or GL: see the probe's listing above for what is missing"
