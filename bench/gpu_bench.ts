/**
 * One self-contained benchmark run for a machine where only this script can run (an offline GPU
 * server: see bench/gpu_check.sh). It needs no npm package, so it can be bundled into one file.
 *
 *   deno run -A bench/gpu_bench.ts [--out FILE.json] [--quick] [--no-vit] [--checks-only]
 *
 * 1. The adapter: description, backend, features, limits.
 * 2. Correctness on this adapter: every kernel family on odd sizes against float64 CPU results
 *    (kernels tuned for a real GPU never run on the CPU machines that run the tests).
 * 3. Throughput: fp32 matmul, fused vs unfused attention, softmax, layerNorm, cosine top-k, and
 *    ViT-B/16 image embedding (inference) and training steps (forward + backward), in images/s.
 * Timing: mean wall time of `iters` runs recorded back to back, after warm-up, each ended by
 * waiting for the GPU (`sync()`): what a user of the library gets, submit overhead included.
 */
import { parseArgs } from "node:util";
import { adapterInfo, init } from "../kernels/device.ts";
import { counters, pool, poolStats, readback, sync, upload } from "../kernels/runtime.ts";
import { matmulKernel, type MatmulTile } from "../kernels/matmul.ts";
import { attentionRef } from "../kernels/attention_ref.ts";
import { denseDims } from "../kernels/matmul_ref.ts";
import { AdamW } from "../nn/optim.ts";
import { backward, noGrad } from "../nn/autograd.ts";
import { attention, attentionUnfused } from "../nn/ops/attention.ts";
import { matmul, mean, mul, sum } from "../nn/ops/index.ts";
import { layerNorm, softmax } from "../nn/ops/nn.ts";
import { cosineTopK } from "../nn/retrieval.ts";
import { randn, Rng, tensor, tidy } from "../nn/tensor.ts";
import { builtinConfig } from "../clip/config.ts";
import { cosineRef } from "../kernels/cosine_topk_ref.ts";
import { denseMatmulRef } from "../kernels/matmul_ref.ts";
import { softmaxRef } from "../kernels/softmax_ref.ts";
import { ClipModel } from "../clip/model.ts";

const { values: args } = parseArgs({
  args: Deno.args,
  options: {
    out: { type: "string", default: "" },
    quick: { type: "boolean", default: false },
    "no-vit": { type: "boolean", default: false },
    "checks-only": { type: "boolean", default: false },
  },
});

interface Row {
  what: string;
  size: string;
  ms?: number;
  gflops?: number;
  gbs?: number;
  imagesPerS?: number;
  maxErr?: number;
  ok?: boolean;
  error?: string;
}
const rows: Row[] = [];
const log = (r: Row) => {
  rows.push(r);
  const parts = [r.what.padEnd(34), r.size.padEnd(22)];
  if (r.ms !== undefined) parts.push(`${r.ms.toFixed(3)} ms`);
  if (r.gflops !== undefined) parts.push(`${r.gflops.toFixed(1)} GFLOP/s`);
  if (r.gbs !== undefined) parts.push(`${r.gbs.toFixed(1)} GB/s`);
  if (r.imagesPerS !== undefined) parts.push(`${r.imagesPerS.toFixed(1)} images/s`);
  if (r.ok !== undefined) {
    parts.push(`${r.ok ? "PASS" : "FAIL"} (max err ${r.maxErr?.toExponential(2)})`);
  }
  if (r.error) parts.push(`ERROR ${r.error}`);
  console.log(parts.join("  "));
};

function rand(n: number, seed: number): Float32Array {
  const r = new Rng(seed);
  return Float32Array.from({ length: n }, () => 2 * r.next() - 1);
}

async function guarded(what: string, size: string, fn: () => Promise<void>): Promise<void> {
  try {
    await fn();
  } catch (e) {
    log({ what, size, error: e instanceof Error ? e.message.slice(0, 300) : String(e) });
  }
}

/** Mean ms per call of `fn` (outputs disposed by tidy), after `warm` untimed calls. */
async function timeIt(fn: () => unknown, iters: number, warm = 2): Promise<number> {
  for (let i = 0; i < warm; i++) tidy(fn);
  await sync();
  const t0 = performance.now();
  for (let i = 0; i < iters; i++) tidy(fn);
  await sync();
  return (performance.now() - t0) / iters;
}

// ---- 1. adapter --------------------------------------------------------------------------------
await init();
const info = adapterInfo();
console.log(JSON.stringify(info, null, 1));

// ---- 2. correctness -----------------------------------------------------------------------------
const maxAbs = (x: ArrayLike<number>, y: ArrayLike<number>) => {
  let e = 0;
  for (let i = 0; i < x.length; i++) {
    e = Math.max(e, Math.abs(x[i] - y[i]) || (x[i] === y[i] ? 0 : Infinity));
  }
  return e;
};

for (
  const [M, N, K, tB] of [[1, 1, 1, false], [7, 33, 129, false], [129, 257, 65, true], [
    300,
    200,
    517,
    false,
  ], [1024, 1024, 1024, true]] as const
) {
  await guarded("check matmul", `${M}x${N}x${K}${tB ? " B^T" : ""}`, async () => {
    const a = rand(M * K, M + N), b = rand(K * N, K);
    const y = tidy(() =>
      matmul(tensor(a, [M, K]), tensor(b, tB ? [N, K] : [K, N]), { transposeB: tB })
    );
    const got = await y.toArray();
    y.dispose();
    const err = maxAbs(got, denseMatmulRef(a, b, 1, M, N, K, { transposeB: tB }));
    log({
      what: "check matmul",
      size: `${M}x${N}x${K}${tB ? " B^T" : ""}`,
      maxErr: err,
      ok: err < 1e-3 * Math.sqrt(K),
    });
  });
}

await guarded("check attention fused vs unfused", "B2 H3 T197 D64", async () => {
  for (const causal of [false, true]) {
    const sh = [2, 3, 197, 64];
    const q = randn(sh, { seed: 1 }), k = randn(sh, { seed: 2 }), v = randn(sh, { seed: 3 });
    const a = attention(q, k, v, { causal }), b = attentionUnfused(q, k, v, { causal });
    const err = maxAbs(await a.toArray(), await b.toArray());
    [q, k, v, a, b].forEach((t) => t.dispose());
    log({
      what: `check attention${causal ? " causal" : ""}`,
      size: "B2 H3 T197 D64 vs unfused",
      maxErr: err,
      ok: err < 1e-4,
    });
  }
});

// The tiled (flash) attention kernels a GPU runs by default, forward and backward, against the
// float64 reference; the subgroup forward where the adapter offers subgroups.
for (
  const [B, H, Tq, Tk, D, causal] of [[1, 2, 77, 77, 64, true], [1, 2, 70, 131, 128, false], [
    2,
    1,
    50,
    50,
    36,
    false,
  ]] as const
) {
  const size = `B${B} H${H} Tq${Tq} Tk${Tk} D${D}${causal ? " causal" : ""}`;
  await guarded("check attention tiled fwd+bwd", size, async () => {
    const qs = [B, H, Tq, D], ks = [B, H, Tk, D];
    const qd = rand(B * H * Tq * D, 21), kd = rand(B * H * Tk * D, 22);
    const vd = rand(B * H * Tk * D, 23), gd = rand(B * H * Tq * D, 24);
    const ref = attentionRef(qd, kd, vd, gd, { B, H, Tq, Tk, D, causal });
    for (const subgroups of info.features.includes("subgroups") ? [false, true] : [false]) {
      const outs = tidy(() => {
        const q = tensor(qd, qs, { requiresGrad: true });
        const k = tensor(kd, ks, { requiresGrad: true });
        const v = tensor(vd, ks, { requiresGrad: true });
        const o = attention(q, k, v, { causal, tiles: "tiled", subgroups });
        backward(sum(mul(o, tensor(gd, qs))));
        const r = [o, q.grad!, k.grad!, v.grad!];
        q.grad = k.grad = v.grad = null;
        return r;
      });
      const got = await Promise.all(outs.map((t) => t.toArray()));
      outs.forEach((t) => t.dispose());
      const err = Math.max(
        maxAbs(got[0], ref.o),
        maxAbs(got[1], ref.dq),
        maxAbs(got[2], ref.dk),
        maxAbs(got[3], ref.dv),
      );
      log({
        what: `check attention tiled${subgroups ? " subgroups" : ""}`,
        size: `${size} O,dQ,dK,dV vs f64`,
        maxErr: err,
        ok: err < 2e-4,
      });
    }
  });
}

// Matmul variants a GPU may pick or the tile sweep measures: double-buffered tiles, split-k,
// f16 operands (f32 accumulation), against float64.
{
  const M = 129, N = 257, K = 517;
  const a = rand(M * K, 31), b = rand(K * N, 32);
  const variants: [string, MatmulTile, boolean][] = [
    [
      "double-buffered 8x8",
      { kind: "shared", TM: 8, TN: 8, WX: 16, WY: 16, BK: 16, double: true },
      false,
    ],
    ["split-k 4", { kind: "shared", TM: 4, TN: 4, WX: 16, WY: 16, BK: 16, splitK: 4 }, false],
    ["f16 operands", { kind: "shared", TM: 4, TN: 4, WX: 16, WY: 16, BK: 16, double: true }, true],
  ];
  for (const [label, tile, f16] of variants) {
    await guarded(`check matmul ${label}`, `${M}x${N}x${K}`, async () => {
      if (f16 && !info.features.includes("shader-f16")) throw new Error("no shader-f16");
      const [ah, bh] = [a, b].map((x) => new Float16Array(x));
      const [A, B2] = f16 ? [Float32Array.from(ah), Float32Array.from(bh)] : [a, b];
      const put = (x: ArrayBufferView) => {
        const bytes = new Uint8Array(Math.ceil(x.byteLength / 4) * 4); // writes are 4-byte units
        bytes.set(new Uint8Array(x.buffer, x.byteOffset, x.byteLength));
        const buf = pool.acquire(bytes.length);
        upload(buf, bytes);
        return buf;
      };
      const ab = f16 ? put(ah) : put(a), bb = f16 ? put(bh) : put(b);
      const c = pool.acquire(M * N * 4);
      matmulKernel(ab, bb, c, denseDims(1, M, N, K), null, tile, {}, { f16A: f16, f16B: f16 });
      const got = new Float32Array(await readback(c, M * N * 4));
      [ab, bb, c].forEach((x) => pool.release(x));
      const err = maxAbs(got, denseMatmulRef(A, B2, 1, M, N, K));
      log({ what: `check matmul ${label}`, size: `${M}x${N}x${K}`, maxErr: err, ok: err < 1e-3 });
    });
  }
}

await guarded("check softmax", "129x1000", async () => {
  const x = rand(129 * 1000, 5).map((v) => 40 * v);
  const y = tidy(() => softmax(tensor(x, [129, 1000])));
  const got = await y.toArray();
  y.dispose();
  const ref = softmaxRef(x, 129, 1000);
  const err = maxAbs(got, ref);
  log({ what: "check softmax", size: "129x1000 (values +-40)", maxErr: err, ok: err < 1e-5 });
});

await guarded("check cosineTopK", "500 x 3001 x 64, k=10", async () => {
  const N = 500, M = 3001, d = 64, k = 10;
  const q = rand(N * d, 8), kk = rand(M * d, 9);
  const got = await cosineTopK(q, kk, k, { dim: d });
  const ref = cosineRef(q, kk, d);
  let err = 0, wrong = 0;
  for (let i = 0; i < N; i++) {
    const sc: [number, number][] = Array.from(ref[i], (s, j) => [s, j]);
    sc.sort((a, b) => b[0] - a[0] || a[1] - b[1]);
    for (let t = 0; t < k; t++) {
      err = Math.max(err, Math.abs(sc[t][0] - got.scores[i * k + t]));
      if (
        sc[t][1] !== got.indices[i * k + t] && Math.abs(sc[t][0] - got.scores[i * k + t]) > 1e-5
      ) wrong++;
    }
  }
  log({
    what: "check cosineTopK",
    size: "500x3001x64 k=10",
    maxErr: err,
    ok: err < 1e-4 && wrong === 0,
  });
});

// ---- 3. throughput ------------------------------------------------------------------------------
const quick = args.quick;
if (args["checks-only"]) {
  const failed = rows.filter((r) => r.ok === false || r.error).length;
  console.log(`${failed} check(s) failed`);
  await writeOut();
  Deno.exit(failed ? 1 : 0);
}
for (const n of quick ? [1024, 2048] : [1024, 2048, 4096]) {
  await guarded("matmul fp32", `${n}^3`, async () => {
    const a = randn([n, n], { seed: 1 }), b = randn([n, n], { seed: 2 });
    const ms = await timeIt(() => matmul(a, b), n >= 4096 ? 10 : 20);
    log({ what: "matmul fp32", size: `${n}^3`, ms, gflops: 2 * n ** 3 / ms / 1e6 });
    a.dispose();
    b.dispose();
  });
}

// f16 operands with f32 accumulation (where shader-f16 exists): the same product, half the bytes.
if (info.features.includes("shader-f16")) {
  await guarded("matmul f16 operands", "4096^3", async () => {
    const n = quick ? 2048 : 4096;
    const h = new Float16Array(rand(n * n, 3));
    const a = pool.acquire(n * n * 2), b = pool.acquire(n * n * 2), c = pool.acquire(n * n * 4);
    upload(a, h);
    upload(b, h);
    const d = denseDims(1, n, n, n);
    const ms = await timeIt(
      () => matmulKernel(a, b, c, d, null, undefined, {}, { f16A: true, f16B: true }),
      10,
    );
    log({
      what: "matmul f16 operands, f32 acc",
      size: `${n}^3`,
      ms,
      gflops: 2 * n ** 3 / ms / 1e6,
    });
    [a, b, c].forEach((x) => pool.release(x));
  });
}

for (
  const [B, H, T, D, causal] of [[8, 12, 197, 64, false], [64, 12, 197, 64, false], [
    8,
    8,
    77,
    64,
    true,
  ]] as const
) {
  const size = `B${B} H${H} T${T} D${D}${causal ? " causal" : ""}`;
  await guarded("attention", size, async () => {
    const sh = [B, H, T, D];
    const q = randn(sh, { seed: 1 }), k = randn(sh, { seed: 2 }), v = randn(sh, { seed: 3 });
    const flops = 4 * B * H * T * T * D * (causal ? 0.5 : 1);
    const f = await timeIt(() => attention(q, k, v, { causal }), 10);
    log({ what: "attention fused fwd", size, ms: f, gflops: flops / f / 1e6 });
    const u = await timeIt(() => attentionUnfused(q, k, v, { causal }), 10);
    log({ what: "attention unfused fwd", size, ms: u, gflops: flops / u / 1e6 });
    // The row kernel the GPUs ran before the tiled one (bench/GPU.md: 17.5 ms at B=64).
    const r = await timeIt(() => attention(q, k, v, { causal, tiles: "shared" }), 5);
    log({ what: "attention row kernel fwd", size, ms: r, gflops: flops / r / 1e6 });
    if (B === 64) {
      // Forward + backward (dQ, dK, dV), fused vs unfused.
      for (const t of [q, k, v]) t.requiresGrad = true;
      const fb = (f: typeof attention) => () => {
        backward(sum(f(q, k, v, { causal })));
        for (const t of [q, k, v]) {
          t.grad?.dispose();
          t.grad = null;
        }
      };
      const ff = await timeIt(fb(attention), 5);
      log({ what: "attention fused fwd+bwd", size, ms: ff, gflops: 3.5 * flops / ff / 1e6 });
      const uu = await timeIt(fb(attentionUnfused), 5);
      log({ what: "attention unfused fwd+bwd", size, ms: uu, gflops: 3.5 * flops / uu / 1e6 });
    }
    [q, k, v].forEach((t) => t.dispose());
  });
}

await guarded("softmax", "4096x1024", async () => {
  const x = randn([4096, 1024], { seed: 4 });
  const ms = await timeIt(() => softmax(x), 20);
  log({ what: "softmax", size: "4096x1024", ms, gbs: 2 * 4096 * 1024 * 4 / ms / 1e6 });
  x.dispose();
});

await guarded("layerNorm", "1576x768", async () => {
  const x = randn([1576, 768], { seed: 5 }),
    w = randn([768], { seed: 6 }),
    b = randn([768], { seed: 7 });
  const ms = await timeIt(() => layerNorm(x, w, b, 1e-5), 20);
  log({ what: "layerNorm", size: "1576x768", ms, gbs: 2 * 1576 * 768 * 4 / ms / 1e6 });
  [x, w, b].forEach((t) => t.dispose());
});

await guarded("cosineTopK k=10", "8192x20000x512", async () => {
  const q = randn([8192, 512], { seed: 8 }), k = randn([20000, 512], { seed: 9 });
  await cosineTopK(q, k, 10);
  const t0 = performance.now();
  const reps = 3;
  for (let i = 0; i < reps; i++) await cosineTopK(q, k, 10);
  const ms = (performance.now() - t0) / reps;
  log({
    what: "cosineTopK k=10",
    size: "8192x20000x512",
    ms,
    gflops: 2 * 8192 * 20000 * 512 / ms / 1e6,
  });
  q.dispose();
  k.dispose();
});

if (!args["no-vit"]) {
  await guarded("ViT-B/16", "random init", async () => {
    const model = new ClipModel(builtinConfig("ViT-B-16"), { seed: 0 });
    for (const B of quick ? [64] : [16, 64]) {
      const x = randn([B, 3, 224, 224], { seed: 10 });
      const ms = await timeIt(() => noGrad(() => model.encodeImage(x)), 5, 1);
      log({ what: "ViT-B/16 image embedding", size: `batch ${B}`, ms, imagesPerS: B / ms * 1e3 });
      x.dispose();
    }
    // Training step of the image tower: forward + backward into every weight + AdamW (what
    // bench/torch_peer.py times for torchvision's ViT-B/16).
    const B = 32;
    const x = randn([B, 3, 224, 224], { seed: 11 });
    const params = model.visual.parameters();
    for (const p of params) p.requiresGrad = true;
    const opt = new AdamW(params, { lr: 1e-5 });
    const step = () => {
      const loss = mean(model.encodeImage(x));
      backward(loss);
      opt.step();
      opt.zeroGrad();
    };
    const ms = await timeIt(step, 3, 1);
    log({
      what: "ViT-B/16 train step (fwd+bwd+AdamW)",
      size: `batch ${B}`,
      ms,
      imagesPerS: B / ms * 1e3,
    });
    x.dispose();
    model.dispose();
  });
}

const stats = poolStats();
console.log(
  `pool: ${
    (stats.allocatedBytes / 2 ** 20).toFixed(1)
  } MiB allocated; ${counters.submits} submits, ${counters.dispatches} dispatches`,
);
await writeOut();

/** The rows so far, as JSON, to `--out`. */
async function writeOut(): Promise<void> {
  if (!args.out) return;
  await Deno.writeTextFile(
    args.out,
    JSON.stringify({ adapter: info, date: new Date().toISOString(), rows }, null, 1),
  );
}
