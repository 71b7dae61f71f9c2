/**
 * `deno task bench:compare [--quick] [--out FILE] [--no-peers] [--only a,b] [--reps N]`
 *
 * Runs this engine's kernels and the same work in tfjs-webgpu, onnxruntime-web (WebGPU EP) and
 * jax-js (WebGPU, jit), in one process on the same adapter; checks that every engine computes the
 * same values; measures the adapter's own FMA ceiling (a pure-FMA WGSL kernel, `fma_ceiling.ts`)
 * at the start and the end of the run and reports every kernel as a fraction of it; writes a
 * Markdown report (default `bench/RESULTS.md`): adapter, sizes, ms, GFLOP/s, fraction of the
 * ceiling, our speed-up over each peer, and the issue's acceptance checks. Exit code 1 when an
 * engine disagrees.
 *
 * Method: inputs are uploaded before timing; each timed repetition queues `inner` executions and
 * waits once for the GPU (so the fixed ~10 ms cost of a wait in Deno is spread over >= 1 s of
 * work), and the median over repetitions is reported. The first execution (shader compilation)
 * is not timed.
 */
import { parseArgs } from "node:util";
import { init } from "../kernels/device.ts";
import { sync } from "../kernels/runtime.ts";
import { defaultTile } from "../kernels/matmul.ts";
import { denseDims, matmulEntryRef } from "../kernels/matmul_ref.ts";
import { cosineRowRef } from "../kernels/cosine_topk_ref.ts";
import { attention, attentionUnfused } from "../nn/ops/attention.ts";
import { matmul } from "../nn/ops/matmul.ts";
import { softmax } from "../nn/ops/nn.ts";
import { cosineTopK, type TopK } from "../nn/retrieval.ts";
import { type Tensor, tensor, tidy } from "../nn/tensor.ts";
import { fmaCeiling } from "./fma_ceiling.ts";
import { loadJax, loadOrt, loadTfjs, type Peer, type Runner } from "./peers.ts";

const args = parseArgs({
  args: Deno.args,
  options: {
    quick: { type: "boolean", default: false },
    out: { type: "string", default: "bench/RESULTS.md" },
    "no-peers": { type: "boolean", default: false },
    only: { type: "string" },
    reps: { type: "string" },
    peers: { type: "string" },
  },
});
const QUICK = args.values.quick!;
const REPS = Number(args.values.reps ?? (QUICK ? 2 : 5));
const ONLY = args.values.only?.split(",");

// ---- inputs ---------------------------------------------------------------------------------

/** Uniform values in [-1, 1) from a small LCG (fast for tens of millions of values). */
function rand(n: number, seed: number): Float32Array {
  const a = new Float32Array(n);
  let s = (seed * 2654435761) >>> 0;
  for (let i = 0; i < n; i++) {
    s = (Math.imul(s, 1664525) + 1013904223) >>> 0;
    a[i] = s / 2 ** 31 - 1;
  }
  return a;
}

// ---- our runners ----------------------------------------------------------------------------

/** A Runner around an op of this engine: run() records, wait() submits and waits. */
function ours(inputs: Tensor[], f: () => Tensor): Runner {
  let last: Tensor | null = null;
  return {
    run() {
      last?.dispose();
      last = tidy(f);
    },
    wait: sync,
    async result() {
      return { out: (await last!.toArray()) as Float32Array };
    },
    dispose() {
      last?.dispose();
      inputs.forEach((t) => t.dispose());
    },
  };
}

function oursTopK(q: Tensor, k: Tensor, topk: number): Runner {
  let pending: Promise<TopK> | null = null;
  return {
    run() {
      pending = cosineTopK(q, k, topk);
    },
    async wait() {
      await pending;
    },
    async result() {
      const r = await pending!;
      return { out: r.scores, indices: r.indices };
    },
    dispose() {
      q.dispose();
      k.dispose();
    },
  };
}

// ---- workloads ------------------------------------------------------------------------------

interface Workload {
  id: string;
  label: string;
  /** Floating-point operations of one execution (0: report bandwidth instead). */
  flops: number;
  /** Bytes read + written by one execution (for bandwidth-bound kernels). */
  bytes: number;
  /** This engine's implementations; the first is the one compared with the peers. */
  ours: [string, () => Runner][];
  peer: ((p: Peer) => Promise<Runner>) | null;
  /** Compare a result with ours: null when they agree, else what differs. */
  agree: (
    ref: Awaited<ReturnType<Runner["result"]>>,
    got: Awaited<ReturnType<Runner["result"]>>,
  ) => string | null;
  /** Optional check of our result against a float64 CPU computation on a sample. */
  verify?: (r: Awaited<ReturnType<Runner["result"]>>) => string | null;
}

function maxAbsDiff(a: Float32Array, b: Float32Array): number {
  if (a.length !== b.length) return Infinity;
  let m = 0;
  for (let i = 0; i < a.length; i++) {
    const d = Math.abs(a[i] - b[i]);
    if (!(d <= m)) m = Number.isNaN(d) ? Infinity : d;
  }
  return m;
}

function maxAbs(a: Float32Array): number {
  let m = 0;
  for (const x of a) m = Math.max(m, Math.abs(x));
  return m;
}

/** Values agree within `tol` (relative to the largest |reference| when `relative`). */
function close(tol: number, relative: boolean) {
  return (ref: { out: Float32Array }, got: { out: Float32Array }): string | null => {
    const d = maxAbsDiff(ref.out, got.out);
    const lim = relative ? tol * Math.max(1, maxAbs(ref.out)) : tol;
    return d <= lim ? null : `max |diff| ${d.toExponential(2)} > ${lim.toExponential(2)}`;
  };
}

/** Top-k results agree: scores within 1e-4; indices equal except between near-equal scores. */
function sameTopK(
  ref: { out: Float32Array; indices?: Int32Array },
  got: { out: Float32Array; indices?: Int32Array },
): string | null {
  const d = maxAbsDiff(ref.out, got.out);
  if (d > 1e-4) return `scores differ by ${d.toExponential(2)}`;
  let differ = 0;
  for (let i = 0; i < ref.indices!.length; i++) if (ref.indices![i] !== got.indices![i]) differ++;
  // fp32 sums in a different order may swap keys whose scores differ by ~1e-7.
  return differ <= ref.indices!.length * 0.01 ? null : `${differ} indices differ`;
}

function matmulWorkload(id: string, M: number, N: number, K: number, label: string): Workload {
  const A = rand(M * K, 1), B = rand(K * N, 2);
  return {
    id,
    label,
    flops: 2 * M * N * K,
    bytes: 4 * (M * K + K * N + M * N),
    ours: [["matmul", () => {
      const a = tensor(A, [M, K]), b = tensor(B, [K, N]);
      return ours([a, b], () => matmul(a, b));
    }]],
    peer: (p) => p.matmul(M, N, K, A, B),
    agree: close(1e-5, true),
    verify: (r) => {
      let worst = 0;
      for (let t = 0; t < 64; t++) {
        const m = (t * 7919) % M, n = (t * 104729) % N;
        const s = matmulEntryRef(A, B, denseDims(1, M, N, K), 0, m, n);
        worst = Math.max(worst, Math.abs(s - r.out[m * N + n]));
      }
      return worst <= 1e-5 * K ? null : `|ours - float64| = ${worst.toExponential(2)} on a sample`;
    },
  };
}

function attentionWorkload(): Workload {
  const shape: [number, number, number, number] = [8, 12, 197, 64];
  const n = shape.reduce((a, b) => a * b);
  const [Q, K, V] = [rand(n, 3), rand(n, 4), rand(n, 5)];
  const scale = 1 / Math.sqrt(64);
  const qkv = () => [tensor(Q, shape), tensor(K, shape), tensor(V, shape)];
  const T = 197, BH = 96;
  return {
    id: "attention",
    label: "ViT-B/16 attention forward, B=8 H=12 T=197 D=64",
    flops: 4 * BH * T * T * 64,
    bytes: 4 * 4 * n,
    ours: [
      ["fused attention", () => {
        const [q, k, v] = qkv();
        return ours([q, k, v], () => attention(q, k, v));
      }],
      ["unfused (matmul, softmax, matmul)", () => {
        const [q, k, v] = qkv();
        return ours([q, k, v], () => attentionUnfused(q, k, v));
      }],
    ],
    peer: (p) => p.attention(shape, Q, K, V, scale),
    agree: close(1e-4, false),
  };
}

function softmaxWorkload(): Workload {
  const rows = 4096, n = 1024;
  const X = rand(rows * n, 6).map((x) => 4 * x);
  return {
    id: "softmax",
    label: "softmax over rows, 4096 x 1024",
    flops: 0,
    bytes: 2 * 4 * rows * n,
    ours: [["softmax", () => {
      const x = tensor(X, [rows, n]);
      return ours([x], () => softmax(x));
    }]],
    peer: (p) => p.softmax(rows, n, X),
    agree: close(1e-6, false),
  };
}

function cosineWorkload(id: string, N: number, M: number, withPeers: boolean): Workload {
  const d = 512, k = 10;
  const Q = rand(N * d, 7), K = rand(M * d, 8);
  return {
    id,
    label: `cosineTopK k=10, ${N} queries x ${M} keys, d=512`,
    flops: 2 * N * M * d,
    bytes: 4 * (N + M) * d,
    ours: [["cosineTopK", () => oursTopK(tensor(Q, [N, d]), tensor(K, [M, d]), k)]],
    peer: withPeers ? (p) => p.cosineTopK(N, M, d, Q, K, k) : null,
    agree: sameTopK,
    verify: (r) => {
      // Float64 top-1 of a few queries must match ours (score within 1e-5).
      for (const i of [0, 1, N >> 1, N - 1]) {
        const best = Math.max(...cosineRowRef(Q, i, K, d));
        if (Math.abs(best - r.out[i * k]) > 1e-5) {
          return `query ${i}: best cosine ${best} (float64) vs ${r.out[i * k]}`;
        }
      }
      return null;
    },
  };
}

// ---- timing ---------------------------------------------------------------------------------

interface Timing {
  ms: number;
  inner: number;
  /** Process CPU time per execution (Linux), all threads: llvmpipe's work shows up here. */
  cpuMs?: number;
}

/** utime + stime of this process in ms, from /proc (null where unavailable). */
function cpuTime(): number | null {
  try {
    const f = Deno.readTextFileSync("/proc/self/stat").split(") ")[1].split(" ");
    return (Number(f[11]) + Number(f[12])) * 10; // clock ticks of 10 ms
  } catch {
    return null;
  }
}

/**
 * Median ms per execution. Each repetition queues `inner` executions and waits once; `inner` is
 * chosen so a repetition takes >= 1 s, which makes the fixed cost of one wait (~10 ms in Deno)
 * at most ~1% of the result. The first execution (compilation) is not timed.
 */
async function time(r: Runner): Promise<Timing> {
  const batch = async (n: number) => {
    const t0 = performance.now();
    for (let j = 0; j < n; j++) await r.run();
    await r.wait();
    return performance.now() - t0;
  };
  await batch(1);
  let inner = 1;
  for (let t = await batch(1); t < 1000 && inner < 256; inner *= 2) t = await batch(inner * 2);
  const samples: number[] = [], cpu: number[] = [];
  for (let i = 0; i < REPS; i++) {
    const c0 = cpuTime();
    samples.push((await batch(inner)) / inner);
    const c1 = cpuTime();
    if (c0 !== null && c1 !== null) cpu.push((c1 - c0) / inner);
  }
  const median = (x: number[]) => x.sort((a, b) => a - b)[x.length >> 1];
  return { ms: median(samples), inner, cpuMs: cpu.length ? median(cpu) : undefined };
}

// ---- main -----------------------------------------------------------------------------------

const g = await init();
const loadStart = Deno.loadavg();
const ceilingStart = await fmaCeiling();
console.log(`FMA ceiling at the start: ${ceilingStart.gflops.toFixed(1)} GFLOP/s`);
const started = new Date();
console.log(`adapter: ${g.adapter.description} (backend ${g.adapter.backend})`);

const peers: Peer[] = [];
const peerErrors: string[] = [];
if (!args.values["no-peers"]) {
  const loaders = [["tfjs-webgpu", loadTfjs], ["onnxruntime-web", loadOrt], ["jax-js", loadJax]];
  const wanted = args.values.peers?.split(",");
  for (const [name, load] of loaders as [string, () => Promise<Peer>][]) {
    if (wanted && !wanted.includes(name)) continue;
    try {
      const p = await load();
      peers.push(p);
      console.log(`peer: ${p.name} on ${p.adapter}`);
    } catch (e) {
      const why = `${name} could not run here: ${(e as Error).message ?? e}`;
      peerErrors.push(why);
      console.log(why);
    }
  }
}

const workloads: Workload[] = [
  matmulWorkload("matmul-256", 256, 256, 256, "matmul fp32 256 x 256 x 256"),
  matmulWorkload("matmul-1024", 1024, 1024, 1024, "matmul fp32 1024 x 1024 x 1024"),
  ...(QUICK ? [] : [
    matmulWorkload(
      "matmul-vit-mlp",
      1576,
      3072,
      768,
      "matmul fp32 1576 x 3072 x 768 (ViT-B/16 MLP fc1, batch 8)",
    ),
  ]),
  attentionWorkload(),
  softmaxWorkload(),
  cosineWorkload("cosine-small", 1024, 4096, true),
  cosineWorkload("cosine-large", 8192, 20000, false),
].filter((w) => !ONLY || ONLY.includes(w.id));

interface Row {
  engine: string;
  ms?: number;
  inner?: number;
  cpuMs?: number;
  error?: string;
  agrees?: string;
}
const results = new Map<string, Row[]>();
let disagreements = 0;

for (const w of workloads) {
  console.log(`\n== ${w.label}`);
  const rows: Row[] = [];
  results.set(w.id, rows);
  let ref: Awaited<ReturnType<Runner["result"]>> | null = null;
  const measure = async (engine: string, make: () => Runner | Promise<Runner>) => {
    const row: Row = { engine };
    rows.push(row);
    let r: Runner | null = null;
    try {
      r = await make();
      const t = await time(r);
      row.ms = t.ms;
      row.inner = t.inner;
      row.cpuMs = t.cpuMs;
      const res = await r.result();
      if (!ref) {
        ref = res;
        const bad = w.verify?.(res) ?? null;
        row.agrees = bad ? `NO: ${bad}` : w.verify ? "reference (checked vs float64)" : "reference";
      } else {
        const bad = w.agree(ref, res);
        row.agrees = bad ? `NO: ${bad}` : "yes";
      }
      if (bad(row)) disagreements++;
    } catch (e) {
      row.error = String((e as Error).message ?? e).split("\n")[0].slice(0, 200);
    } finally {
      r?.dispose();
    }
    console.log(
      `${engine.padEnd(44)} ${
        row.ms !== undefined ? `${row.ms.toFixed(2).padStart(9)} ms  ${rate(w, row.ms)}` : ""
      } ${row.error ? "failed: " + row.error : row.agrees}`,
    );
  };
  for (const [name, make] of w.ours) await measure(`this engine: ${name}`, make);
  if (w.peer) { for (const p of peers) await measure(p.name, () => w.peer!(p)); }
}

function bad(row: Row): boolean {
  return row.agrees?.startsWith("NO") ?? false;
}

function rate(w: Workload, ms: number): string {
  return w.flops
    ? `${(w.flops / ms / 1e6).toFixed(2)} GFLOP/s`
    : `${(w.bytes / ms / 1e6).toFixed(2)} GB/s`;
}

const ceilingEnd = await fmaCeiling();
console.log(`FMA ceiling at the end: ${ceilingEnd.gflops.toFixed(1)} GFLOP/s`);
/** The ceiling the fractions are of: the higher of the two measurements (the conservative one). */
const ceiling = Math.max(ceilingStart.gflops, ceilingEnd.gflops);
const ofCeiling = (w: Workload, ms?: number) =>
  ms !== undefined && w.flops ? `${(100 * w.flops / ms / 1e6 / ceiling).toFixed(0)}%` : "—";

// ---- acceptance -----------------------------------------------------------------------------

const msOf = (id: string, engine: string) =>
  results.get(id)?.find((r) => r.engine.startsWith(engine))?.ms;
const checks: string[] = [];
const ratioCheck = (id: string, peer: string, min: number, what: string, ourEngine?: string) => {
  const mine = msOf(id, ourEngine ?? "this engine");
  const theirs = msOf(id, peer);
  if (mine === undefined || theirs === undefined) {
    checks.push(`- [ ] ${what}: not measured (${peer} ${theirs === undefined ? "missing" : "ok"})`);
    return;
  }
  const r = theirs / mine;
  const cpu = (e: string) => results.get(id)?.find((x) => x.engine.startsWith(e))?.cpuMs;
  const cm = cpu(ourEngine ?? "this engine"), ct = cpu(peer);
  const cpuNote = cm && ct
    ? `; in CPU time per execution ${(ct / cm).toFixed(2)}x (${ct.toFixed(0)} vs ${
      cm.toFixed(0)
    } ms)`
    : "";
  checks.push(
    `- [${r >= min ? "x" : " "}] ${what}: ${r.toFixed(2)}x (need >= ${min}x)${cpuNote}`,
  );
};
for (const p of ["tfjs-webgpu", "onnxruntime-web"]) {
  ratioCheck("matmul-1024", p, 6, `1024^3 fp32 matmul vs ${p}`);
}
{
  const w = workloads.find((x) => x.id === "matmul-1024");
  const ms = msOf("matmul-1024", "this engine");
  if (w && ms !== undefined) {
    const f = w.flops / ms / 1e6 / ceiling;
    checks.push(
      `- [${f >= 0.6 ? "x" : " "}] 1024^3 fp32 matmul at ${(100 * f).toFixed(0)}% of this ` +
        `adapter's FMA ceiling (${ceiling.toFixed(1)} GFLOP/s, measured in this run; need >= 60%)`,
    );
  }
  for (const id of ["matmul-1024", "attention", "softmax"]) {
    const mine = msOf(id, "this engine"), jax = msOf(id, "jax-js");
    if (mine !== undefined && jax !== undefined) {
      checks.push(`- (no threshold) ${id} vs jax-js: ${(jax / mine).toFixed(2)}x`);
    }
  }
}
ratioCheck(
  "attention",
  "tfjs-webgpu",
  4,
  "ViT-B/16 attention forward vs tfjs-webgpu matMul-softmax-matMul",
);
{
  const f = msOf("attention", "this engine: fused"), u = msOf("attention", "this engine: unfused");
  if (f !== undefined && u !== undefined) {
    checks.push(
      `- [${f <= u ? "x" : " "}] fused attention no slower than this engine's unfused path: ` +
        `${f.toFixed(1)} ms vs ${u.toFixed(1)} ms`,
    );
  }
}
ratioCheck("softmax", "tfjs-webgpu", 5, "softmax 4096 x 1024 vs tfjs-webgpu");
{
  const c = msOf("cosine-large", "this engine"), m = msOf("matmul-1024", "this engine");
  if (c !== undefined && m !== undefined) {
    const cg = (2 * 8192 * 20000 * 512) / c / 1e6, mg = (2 * 1024 ** 3) / m / 1e6;
    const cpu = (id: string) => results.get(id)?.find((r) => r.engine.startsWith("this"))?.cpuMs;
    const cc = cpu("cosine-large"), mc = cpu("matmul-1024");
    // GFLOP per CPU second of each, as a percentage: robust to other jobs on the machine.
    const cpuNote = cc && mc
      ? `; per CPU second ${(100 * ((8192 * 20000 * 512) / cc) / (1024 ** 3 / mc)).toFixed(0)}%`
      : "";
    checks.push(
      `- [${cg >= 0.6 * mg ? "x" : " "}] cosineTopK 8192 x 20000 x 512 (k=10) at ` +
        `${cg.toFixed(2)} GFLOP/s = ${(100 * cg / mg).toFixed(0)}% of the 1024^3 matmul's ` +
        `${mg.toFixed(2)} GFLOP/s (need >= 60%)${cpuNote}`,
    );
  }
}

// ---- report ---------------------------------------------------------------------------------

/**
 * How many cores each engine kept busy (CPU ms / wall ms) on the 1024^3 matmul: on a CPU adapter
 * an engine near 1 does not use the second core, so its wall-clock ratio to an engine near 2
 * halves when another job takes a core.
 */
function parallelismNote(): string[] {
  const rows = results.get("matmul-1024")?.filter((r) => r.ms && r.cpuMs) ?? [];
  if (!g.adapter.isFallbackAdapter || rows.length === 0) return [];
  const par = rows.map((r) => `${r.engine}: ${(r.cpuMs! / r.ms!).toFixed(2)}`);
  return [
    "## Cores used",
    "",
    `CPU time / wall time on the 1024^3 matmul, i.e. cores kept busy (of ` +
    `${navigator.hardwareConcurrency}): ${par.join("; ")}.`,
    "",
  ];
}

/** A summary of the stored H200 tile sweep (bench/matmul_tune_h200.json), when it is present. */
function gpuTuneSection(): string[] {
  let data: {
    adapter: { description: string };
    results: { shape: string; tile: string; ms: number; gflops: number; chosen: boolean }[];
  };
  try {
    data = JSON.parse(Deno.readTextFileSync(new URL("./matmul_tune_h200.json", import.meta.url)));
  } catch {
    return [];
  }
  const out = [
    `## Matmul on a real GPU: ${data.adapter.description} (stored sweep)`,
    "",
    "From `bench/matmul_tune.ts` run on the device machine (`bench/matmul_tune_h200.json`; " +
    "the other numbers on this page are from the adapter above). That sweep timed batches of " +
    "products with one wait each, so products under ~5 ms carry part of Deno's ~10 ms wait: " +
    "compare tiles within a row, not small shapes with large ones.",
    "",
    "| shape | tile kernels/tune.ts chose when the sweep ran | GFLOP/s | best tile in the sweep | GFLOP/s |",
    "| --- | --- | ---: | --- | ---: |",
  ];
  for (const shape of [...new Set(data.results.map((r) => r.shape))]) {
    const rs = data.results.filter((r) => r.shape === shape && r.gflops > 0);
    const best = rs.reduce((a, b) => (b.gflops > a.gflops ? b : a));
    const mine = rs.find((r) => r.chosen);
    out.push(
      `| ${shape} | \`${mine?.tile ?? "?"}\` | ${mine?.gflops.toFixed(0) ?? "?"} | ` +
        `\`${best.tile}\` | ${best.gflops.toFixed(0)} |`,
    );
  }
  out.push("");
  return out;
}

const loadEnd = Deno.loadavg();
const tile = defaultTile({
  batch: 1,
  M: 1024,
  N: 1024,
  K: 1024,
  sab: 0,
  sam: 1024,
  sak: 1,
  sbb: 0,
  sbk: 1024,
  sbn: 1,
});
const lines: string[] = [];
lines.push("# Benchmark results: this engine vs tfjs-webgpu, onnxruntime-web and jax-js");
lines.push("");
lines.push(
  `Written by \`deno task bench:compare${Deno.args.length ? " " + Deno.args.join(" ") : ""}\` ` +
    `on ${started.toISOString()}. Numbers of the last run; regenerate rather than edit.`,
);
lines.push("");
lines.push("## Setup");
lines.push("");
lines.push(
  `- Adapter: **${g.adapter.description}** (vendor ${g.adapter.vendor || "?"}, ` +
    `WebGPU backend \`${g.adapter.backend}\`, fallback adapter: ${g.adapter.isFallbackAdapter})`,
);
lines.push(
  `- Deno ${Deno.version.deno} (V8 ${Deno.version.v8}), ${navigator.hardwareConcurrency} CPU threads, ` +
    `load average ${loadStart.map((x) => x.toFixed(2)).join(" ")} at the start and ` +
    `${loadEnd.map((x) => x.toFixed(2)).join(" ")} at the end`,
);
lines.push(
  `- Matmul tile chosen for this adapter (1024^3): \`${JSON.stringify(tile)}\` (tuning: ` +
    `${g.tuning.matmulSource}${g.tuning.matmul ? ` ${JSON.stringify(g.tuning.matmul)}` : ""})`,
);
lines.push(
  `- FMA ceiling (a pure-FMA WGSL kernel, \`bench/fma_ceiling.ts\`): ` +
    `${ceilingStart.gflops.toFixed(1)} GFLOP/s at the start, ${ceilingEnd.gflops.toFixed(1)} at ` +
    `the end; fractions below are of the higher, ${ceiling.toFixed(1)}`,
);
for (const p of peers) lines.push(`- Peer: ${p.name}, adapter: ${p.adapter}`);
for (const e of peerErrors) lines.push(`- Peer unavailable: ${e}`);
lines.push(
  `- Timing: median of ${REPS} repetitions; each repetition queues \`inner\` executions ` +
    "(as many as make it last >= 1 s, at most 256) and waits once for the GPU (this engine: " +
    "`sync()`; tfjs: reading one element of the last output, which makes tfjs submit its " +
    "batched commands; onnxruntime-web: `run()` with GPU-resident inputs and outputs, then " +
    "`onSubmittedWorkDone()`). Inputs are on the GPU before timing; the first execution " +
    "(compilation) is not timed. cosineTopK's time includes normalising both inputs and reading " +
    "back the N x k results.",
);
lines.push("");
lines.push("## Acceptance (issue: performance)");
lines.push("");
lines.push(...checks);
lines.push("");
lines.push("## All measurements");
lines.push("");
lines.push(
  "| workload | engine | ms | GFLOP/s | of FMA ceiling | GB/s | speed-up of this engine | CPU ms " +
    "| runs per wait | agrees |",
);
lines.push("| --- | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | --- |");
for (const w of workloads) {
  const rows = results.get(w.id)!;
  const mine = rows[0]?.ms;
  for (const r of rows) {
    const sp = r.ms !== undefined && mine !== undefined && r !== rows[0]
      ? `${(r.ms / mine).toFixed(2)}x`
      : "";
    lines.push(
      `| ${w.label} | ${r.engine} | ${r.ms?.toFixed(2) ?? "—"} | ` +
        `${r.ms !== undefined && w.flops ? (w.flops / r.ms / 1e6).toFixed(2) : "—"} | ` +
        `${ofCeiling(w, r.ms)} | ` +
        `${r.ms !== undefined ? (w.bytes / r.ms / 1e6).toFixed(2) : "—"} | ${sp} | ` +
        `${r.cpuMs?.toFixed(1) ?? "—"} | ${r.inner ?? ""} | ` +
        `${r.error ? "failed: " + r.error.replaceAll("|", "/") : r.agrees} |`,
    );
  }
}
lines.push("");
lines.push(
  "GFLOP/s counts 2 flops per multiply-add of the products only (attention: the two " +
    "matmuls; softmax: bandwidth instead, one read and one write of the matrix). The speed-up " +
    "column is the row's time divided by this engine's first implementation of the workload. " +
    "CPU ms is this process's CPU time per execution (all threads); on a CPU adapter it is the " +
    "work itself, so its ratios hold whatever else the machine runs, while wall-clock ratios " +
    "depend on how many cores each engine gets.",
);
lines.push("");
lines.push(...parallelismNote());
lines.push(...gpuTuneSection());
lines.push("## Reproduce");
lines.push("");
lines.push("```sh");
lines.push("export XDG_RUNTIME_DIR=/tmp/xdg; mkdir -p $XDG_RUNTIME_DIR");
lines.push(
  "DENO_WEBGPU_BACKEND=vulkan npx -y deno@2.9.6 task bench:compare   # full run, writes bench/RESULTS.md",
);
lines.push(
  "npx -y deno@2.9.6 task bench:compare --quick --out /tmp/r.md           # a few minutes",
);
lines.push("```");
lines.push("");
lines.push(
  "Options: `--quick` (2 repetitions, skips the ViT MLP matmul), `--out FILE`, `--no-peers`, " +
    "`--peers tfjs-webgpu,onnxruntime-web,jax-js`, " +
    "`--only matmul-1024,attention,...`, `--reps N`. The machine should be otherwise idle: on " +
    "llvmpipe every engine shares the same CPU cores with whatever else runs.",
);
lines.push(
  "Real-GPU numbers: `bench/matmul_tune.ts` sweeps tiles on any adapter (`--out FILE.json`); " +
    "`bench/gpu_check.sh` runs this comparison on an offline NVIDIA server (see bench/GPU.md).",
);
await Deno.writeTextFile(args.values.out!, lines.join("\n") + "\n");
console.log(`\n${checks.join("\n")}\nwrote ${args.values.out}`);
if (disagreements) {
  console.log(`${disagreements} result(s) disagree`);
  Deno.exit(1);
}
Deno.exit(0); // the peers keep timers alive
