/**
 * Print the WGSL a kernel runs for a given shape on this device: `deno task wgsl matmul 1024 1024
 * 1024`. The real launch functions run with dispatching replaced by recording
 * (`captureDispatches` in kernels/runtime.ts), so what is printed is exactly what a call would
 * compile and dispatch here: the variant this adapter picks, every dispatch of the call, each
 * with its workgroup grid. Nothing runs on the GPU.
 *
 * `--gpu` / `--cpu` print the choices of the other kind of adapter (e.g. the GPU's
 * workgroup-memory matmul tile on llvmpipe); `--list` prints only the dispatch lines.
 */
import { parseArgs } from "node:util";
import {
  ACTIVATION_WGSL,
  MATMUL_ACTIVATIONS,
  type MatmulActivation,
} from "../kernels/activation.ts";
import {
  attentionBackwardKernel,
  attentionForwardKernel,
  type TileMode,
} from "../kernels/attention.ts";
import { normalizeRowsKernel, topkMergeKernel } from "../kernels/cosine_topk.ts";
import { crossEntropyBackward, crossEntropyForward } from "../kernels/cross_entropy.ts";
import { gpu, init } from "../kernels/device.ts";
import { dropoutKernel } from "../kernels/dropout.ts";
import { mapKernel } from "../kernels/elementwise.ts";
import { embeddingBackwardKernel, embeddingKernel } from "../kernels/embedding.ts";
import { l2NormBackward, l2NormForward } from "../kernels/l2norm.ts";
import {
  layerNormBackwardInput,
  layerNormBackwardParams,
  layerNormForward,
} from "../kernels/layernorm.ts";
import { defaultTile, matmulKernel, type MatmulTile } from "../kernels/matmul.ts";
import {
  adamKernel,
  clipScaleKernel,
  scaleByKernel,
  sgdKernel,
  sumSquaresKernel,
} from "../kernels/optim.ts";
import { patchifyKernel, unpatchifyKernel } from "../kernels/patch.ts";
import { reduceKernel, type ReduceOp } from "../kernels/reduce.ts";
import { type Buf, captureDispatches } from "../kernels/runtime.ts";
import { softmaxBackward, softmaxForward } from "../kernels/softmax.ts";
import { denseDims } from "../kernels/matmul_ref.ts";

const USAGE = `deno task wgsl <kernel> <sizes...> [options]: the WGSL a call runs on this device

  matmul M N K        [--batch B] [--ta] [--tb] [--bias] [--act gelu|...] [--pre] [--tile JSON]
  attention B H T D   [--tk Tk] [--causal] [--tiles tiled|shared|direct|blocked] (fwd + bwd)
  softmax ROWS N      [--log] [--threads T]                                 (forward + backward)
  layernorm ROWS N    [--threads T]                                         (forward + backward)
  l2norm ROWS N                                                             (forward + backward)
  cross_entropy ROWS CLASSES                                                (forward + backward)
  reduce sum|mean|max OUTER N INNER
  embedding N V D                                                           (gather + backward)
  cosine_topk N M D K                           (normalise, key-major score tile, top-k merge)
  map gelu|quick_gelu|EXPR N                    (an elementwise op; EXPR is WGSL over a, b, c)
  dropout N | patchify B C H W P | optim N

options: --gpu / --cpu (choose as that kind of adapter would), --list (dispatch lines only)`;

const { values: opt, positionals } = parseArgs({
  args: Deno.args,
  allowPositionals: true,
  options: {
    batch: { type: "string" },
    ta: { type: "boolean" },
    tb: { type: "boolean" },
    bias: { type: "boolean" },
    act: { type: "string" },
    pre: { type: "boolean" },
    tile: { type: "string" },
    tk: { type: "string" },
    causal: { type: "boolean" },
    tiles: { type: "string" },
    log: { type: "boolean" },
    threads: { type: "string" },
    gpu: { type: "boolean" },
    cpu: { type: "boolean" },
    list: { type: "boolean" },
    help: { type: "boolean", short: "h" },
  },
});

const [kernel, ...rest] = positionals;
const shown = positionals.join(" ");
if (opt.help || !kernel) {
  console.log(USAGE);
  Deno.exit(kernel || opt.help ? 0 : 1);
}

/** The `i`-th size argument: a positive integer, or a usage error naming it. */
function size(i: number, name: string): number {
  const v = Number(rest[i]);
  if (!Number.isInteger(v) || v < 0) {
    console.error(
      `${kernel}: ${name} (argument ${i + 1}) must be a whole number, got "${rest[i] ?? ""}"\n`,
    );
    console.error(USAGE);
    Deno.exit(1);
  }
  return v;
}

// The stored tuning (if any) applies; printing never runs the first-use sweep.
await init({
  tuning: opt.gpu ? { cpu: false } : opt.cpu ? { cpu: true } : {},
  tune: "cache",
});
const { generation } = gpu();
/** A stand-in buffer of `floats` floats: launches only read its size while capturing. */
const buf = (floats: number): Buf => ({
  buffer: null as unknown as GPUBuffer,
  bytes: Math.max(256, floats * 4),
  batch: 0,
  gen: generation,
});
const threads = opt.threads ? { threads: Number(opt.threads) } : {};
/** Lines printed after the header (what was chosen). */
const notes: string[] = [];

function launches(): void {
  switch (kernel) {
    case "matmul": {
      const [M, N, K] = [size(0, "M"), size(1, "N"), size(2, "K")];
      const batch = Number(opt.batch ?? 1);
      const d = denseDims(batch, M, N, K, { transposeA: opt.ta, transposeB: opt.tb });
      const act = (opt.act ?? "none") as MatmulActivation;
      if (!MATMUL_ACTIVATIONS.includes(act)) throw new Error(`--act: one of ${MATMUL_ACTIVATIONS}`);
      const tile: MatmulTile = opt.tile ? JSON.parse(opt.tile) : defaultTile(d);
      notes.push(
        `// tile ${JSON.stringify(tile)}${opt.tile ? " (forced)" : " (this adapter's choice)"}`,
      );
      matmulKernel(
        buf(batch * M * K),
        buf(batch * K * N),
        buf(batch * M * N),
        d,
        opt.bias ? buf(N) : null,
        tile,
        {
          activation: act,
          pre: opt.pre ? buf(batch * M * N) : null,
        },
      );
      break;
    }
    case "attention": {
      const [B, H, T, D] = [size(0, "B"), size(1, "H"), size(2, "T"), size(3, "D")];
      const tk = Number(opt.tk ?? T);
      const d = {
        bh: B * H,
        tq: T,
        tk,
        d: D,
        scale: 1 / Math.sqrt(D),
        causal: opt.causal ?? false,
      };
      const launch = { tiles: opt.tiles as TileMode | undefined };
      const q = buf(B * H * T * D), kv = buf(B * H * tk * D), lse = buf(B * H * T);
      attentionForwardKernel(q, kv, kv, q, lse, d, launch);
      attentionBackwardKernel(q, kv, kv, q, lse, q, lse, q, kv, kv, d, launch);
      break;
    }
    case "softmax": {
      const [rows, n] = [size(0, "ROWS"), size(1, "N")];
      softmaxForward(buf(rows * n), buf(rows * n), rows, n, opt.log ?? false, threads);
      softmaxBackward(
        buf(rows * n),
        buf(rows * n),
        buf(rows * n),
        rows,
        n,
        opt.log ?? false,
        threads,
      );
      break;
    }
    case "layernorm": {
      const [rows, n] = [size(0, "ROWS"), size(1, "N")];
      const x = buf(rows * n), w = buf(n), stats = buf(rows * 2);
      layerNormForward(x, w, w, x, stats, rows, n, 1e-5, threads);
      layerNormBackwardInput(x, w, x, stats, x, rows, n, threads);
      layerNormBackwardParams(x, x, stats, w, w, rows, n);
      break;
    }
    case "l2norm": {
      const [rows, n] = [size(0, "ROWS"), size(1, "N")];
      l2NormForward(buf(rows * n), buf(rows * n), buf(rows), rows, n, 1e-12, threads);
      l2NormBackward(
        buf(rows * n),
        buf(rows * n),
        buf(rows),
        buf(rows * n),
        rows,
        n,
        1e-12,
        threads,
      );
      break;
    }
    case "cross_entropy": {
      const [rows, c] = [size(0, "ROWS"), size(1, "CLASSES")];
      const x = buf(rows * c), lab = buf(rows), r = buf(rows);
      crossEntropyForward(x, lab, r, r, rows, c, 0, threads);
      crossEntropyBackward(x, lab, r, r, x, rows, c, 0, 1 / rows, 0, threads);
      break;
    }
    case "reduce": {
      const op = rest.shift() as ReduceOp;
      if (!["sum", "mean", "max"].includes(op)) throw new Error("reduce: sum, mean or max");
      const [outer, n, inner] = [size(0, "OUTER"), size(1, "N"), size(2, "INNER")];
      reduceKernel(op, buf(outer * n * inner), buf(outer * inner), outer, n, inner);
      break;
    }
    case "embedding": {
      const [n, v, d] = [size(0, "N"), size(1, "V"), size(2, "D")];
      embeddingKernel(buf(v * d), buf(n), buf(n * d), n, v, d);
      embeddingBackwardKernel(buf(n * d), buf(n), buf(n), buf(v * d), n, v, d);
      break;
    }
    case "cosine_topk": {
      const [n, m, d, k] = [size(0, "N"), size(1, "M"), size(2, "D"), size(3, "K")];
      normalizeRowsKernel(buf(n * d), buf(n * d), n, d);
      const md = { batch: 1, M: m, N: n, K: d, sab: 0, sam: d, sak: 1, sbb: 0, sbk: 1, sbn: d };
      matmulKernel(buf(m * d), buf(n * d), buf(m * n), md);
      topkMergeKernel(buf(m * n), buf(n * 2 * k), n, m, n, k, 0, true);
      break;
    }
    case "map": {
      const what = rest.shift() ?? "";
      const n = size(0, "N");
      const named: Record<string, string> = { gelu: "gelu(a)", quick_gelu: "quick_gelu(a)" };
      const expr = named[what] ?? what;
      const nIn = ["c", "b", "a"].find((v) => new RegExp(`\\b${v}\\b`).test(expr));
      const inputs = Array.from({ length: nIn ? "abc".indexOf(nIn) + 1 : 1 }, () => ({
        buf: buf(n),
        strides: [1],
        offset: 0,
      }));
      const out = { buf: buf(n), strides: [1], offset: 0 };
      mapKernel(what, expr, inputs, out, [n], "f32", 0, named[what] ? ACTIVATION_WGSL : "");
      break;
    }
    case "dropout": {
      const n = size(0, "N");
      dropoutKernel(buf(n), buf(n), n, 0.1, 1);
      break;
    }
    case "patchify": {
      const [b, c, h, w, p] = [
        size(0, "B"),
        size(1, "C"),
        size(2, "H"),
        size(3, "W"),
        size(4, "P"),
      ];
      patchifyKernel(buf(b * c * h * w), buf(b * c * h * w), { b, c, h, w, p });
      unpatchifyKernel(buf(b * c * h * w), buf(b * c * h * w), { b, c, h, w, p });
      break;
    }
    case "optim": {
      const n = size(0, "N");
      const x = buf(n);
      sgdKernel(x, x, x, n, { lr: 0.1, momentum: 0.9, weightDecay: 0, nesterov: false });
      const adam = { lr: 1e-3, beta1: 0.9, beta2: 0.999, eps: 1e-8, weightDecay: 0.01 };
      adamKernel(x, x, x, x, n, { ...adam, decoupled: true, step: 1 });
      sumSquaresKernel(x, n, buf(64), 0);
      clipScaleKernel(buf(64), 1, 1, buf(1), buf(1));
      scaleByKernel(x, n, buf(1), 0);
      break;
    }
    default:
      console.error(`unknown kernel "${kernel}"\n`);
      console.error(USAGE);
      Deno.exit(1);
  }
}

const captured = captureDispatches(launches);
const { adapter, tuning } = gpu();
console.log(
  `// ${shown} on ${adapter.description} (${tuning.cpu ? "CPU" : "GPU"} ` +
    `choices): ${captured.length} dispatch${captured.length === 1 ? "" : "es"}`,
);
for (const n of notes) console.log(n);
for (const c of captured) {
  console.log(`// ---- ${c.name}: workgroups [${c.workgroups}], ${c.buffers} storage buffers`);
  if (!opt.list) console.log(c.code.trim() + "\n");
}
