/**
 * `deno run -A bench/gpu_summary.ts DIR`: issue 9's GPU acceptance from the files one run of
 * `bench/gpu_check.sh` wrote to DIR (gpu_bench.json, torch_peer.json, matmul_tune.json,
 * profile.json), as DIR/ACCEPTANCE.md (also printed). Needs no GPU and no npm package.
 *
 * Checks (all measured in the same run, on the same GPU):
 * - fused (tiled) attention forward faster than the unfused path at B=8 and B=64, and at least 3x
 *   the H200's former fused time at B=64 (17.5 ms, bench/GPU.md) i.e. <= 5.83 ms;
 * - matmul 4096^3 >= 50% of cuBLAS fp32 (TF32 off), from gpu_bench and from the tile sweep's best;
 * - ViT-B/16 image embedding >= 0.6x and a training step >= 0.5x torchvision fp32 CUDA images/s.
 */

interface Row {
  what?: string;
  op?: string;
  size?: string;
  ms?: number;
  gflops?: number;
  imagesPerS?: number;
  images_per_s?: number;
  ok?: boolean;
  error?: string;
}

const dir = Deno.args[0];
if (!dir) {
  console.error("usage: deno run -A bench/gpu_summary.ts DIR");
  Deno.exit(2);
}

function load<T>(name: string): T | null {
  try {
    return JSON.parse(Deno.readTextFileSync(`${dir}/${name}`)) as T;
  } catch {
    return null;
  }
}

const bench = load<{ adapter: { description: string }; rows: Row[] }>("gpu_bench.json");
const torch = load<{ peer: string; device: string; rows: Row[] }>("torch_peer.json");
const tune = load<{ results: { shape: string; tile: string; gflops: number; error?: string }[] }>(
  "matmul_tune.json",
);
const profile = load<{
  results: {
    workload: string;
    wallMs: number;
    gpuMs: number;
    byFamily: Record<string, { ns: number }>;
  }[];
}>("profile.json");

const ours = (what: string, size: string) =>
  bench?.rows.find((r) => r.what === what && r.size === size);
const theirs = (op: string, size: string) =>
  torch?.rows.find((r) => r.op === op && r.size === size);

const lines: string[] = [
  `# Issue 9 GPU acceptance: ${bench?.adapter.description ?? "no gpu_bench.json"}`,
  "",
  `From \`${dir}\`, written by bench/gpu_summary.ts on ${new Date().toISOString()}. ` +
  `Peer: ${torch ? `${torch.peer} on ${torch.device}` : "torch_peer.json missing"}.`,
  "",
];
const check = (ok: boolean | null, text: string) =>
  lines.push(`- [${ok === null ? "?" : ok ? "x" : " "}] ${text}`);
const fmt = (x: number | undefined, d = 2) => (x === undefined ? "—" : x.toFixed(d));

const failedChecks =
  bench?.rows.filter((r) => r.ok === false || (r.what?.startsWith("check") && r.error)) ?? [];
check(
  bench ? failedChecks.length === 0 : null,
  `correctness on this GPU: ${
    failedChecks.length
      ? failedChecks.map((r) => `${r.what} ${r.size}`).join("; ") + " failed"
      : "every check passed"
  }`,
);

for (const B of [8, 64]) {
  const size = `B${B} H12 T197 D64`;
  const f = ours("attention fused fwd", size)?.ms, u = ours("attention unfused fwd", size)?.ms;
  check(
    f !== undefined && u !== undefined ? f < u : null,
    `attention forward ${size}: fused ${fmt(f, 3)} ms vs unfused ${
      fmt(u, 3)
    } ms (fused must be faster)`,
  );
}
{
  const f = ours("attention fused fwd", "B64 H12 T197 D64")?.ms;
  check(
    f !== undefined ? f <= 17.5 / 3 : null,
    `fused attention B=64 at ${fmt(f, 3)} ms: ${f ? (17.5 / f).toFixed(2) : "—"}x the former ` +
      `17.5 ms (need >= 3x)`,
  );
}
{
  const mine = ours("matmul fp32", "4096^3")?.gflops;
  const best = tune?.results.filter((r) => r.shape === "4096^3" && !r.error)
    .reduce<{ gflops: number; tile: string } | null>(
      (a, r) => (!a || r.gflops > a.gflops ? r : a),
      null,
    );
  const cublas = theirs("matmul fp32", "4096^3")?.gflops;
  check(
    mine !== undefined && cublas !== undefined ? mine >= 0.5 * cublas : null,
    `matmul 4096^3: ${fmt(mine, 0)} GFLOP/s (default tile) vs cuBLAS fp32 ${fmt(cublas, 0)}: ` +
      `${mine && cublas ? (100 * mine / cublas).toFixed(0) : "—"}% (need >= 50%); best tile of ` +
      `the sweep ${best ? `${best.gflops.toFixed(0)} GFLOP/s \`${best.tile}\`` : "—"}`,
  );
}
{
  const mine = ours("ViT-B/16 image embedding", "batch 64")?.imagesPerS;
  const tv = theirs("ViT-B/16 forward (torchvision)", "batch 64")?.images_per_s;
  check(
    mine !== undefined && tv !== undefined ? mine >= 0.6 * tv : null,
    `ViT-B/16 inference batch 64: ${fmt(mine, 1)} vs torchvision ${fmt(tv, 1)} images/s: ` +
      `${mine && tv ? (mine / tv).toFixed(2) : "—"}x (need >= 0.6x)`,
  );
}
{
  const mine = ours("ViT-B/16 train step (fwd+bwd+AdamW)", "batch 32")?.imagesPerS;
  const tv = theirs("ViT-B/16 train step fwd+bwd+AdamW (torchvision)", "batch 32")?.images_per_s;
  check(
    mine !== undefined && tv !== undefined ? mine >= 0.5 * tv : null,
    `ViT-B/16 training step batch 32: ${fmt(mine, 1)} vs torchvision ${fmt(tv, 1)} images/s: ` +
      `${mine && tv ? (mine / tv).toFixed(2) : "—"}x (need >= 0.5x)`,
  );
}
lines.push("");
if (profile) {
  lines.push("## Where the GPU time goes (deno task profile)", "");
  for (const r of profile.results) {
    const total = Object.values(r.byFamily).reduce((a, k) => a + k.ns, 0);
    const top = Object.entries(r.byFamily).sort((a, b) => b[1].ns - a[1].ns).slice(0, 8)
      .map(([f, k]) => `${f} ${(100 * k.ns / total).toFixed(0)}%`).join(", ");
    lines.push(
      `- ${r.workload}: wall ${r.wallMs.toFixed(1)} ms, GPU ${r.gpuMs.toFixed(1)} ms; ${top}`,
    );
  }
  lines.push("");
}
lines.push("Raw: gpu_bench.json, torch_peer.json, matmul_tune.json, profile.json, RESULTS-gpu.md.");
const text = lines.join("\n") + "\n";
Deno.writeTextFileSync(`${dir}/ACCEPTANCE.md`, text);
console.log(text);
