/**
 * The cost of inference, unimodal against CLIP-IT (the paper: 17 vs 17.001 GFLOPs for
 * ViT-B/16): multiply-accumulates counted per layer from the model's configuration, parameters
 * counted from the model, latency measured.
 *
 * Counting convention: one MAC is one multiply-add of a matrix product (the patch embedding's
 * stride-p convolution is one); FLOPs = 2 x MACs. Counted: the patch embedding, per block the
 * packed q/k/v projection, the attention products Q K^T and A V (per head, summed over heads:
 * T x T x D each), the attention output projection and both MLP layers, CLIP's final projection,
 * and the heads fc, h_d, h_t, g. Not counted (elementwise, together well under 1% of a ViT):
 * biases, LayerNorms, softmax, GELU / LeakyReLU, residual adds, layer scale, position
 * embeddings, pooling, the concatenation before g. The paper's "17 GFLOPs" for ViT-B/16 is
 * fvcore's count, which calls one multiply-add one FLOP: that is the MAC column here (17.56 G
 * at 224 px without a classifier; timm lists 17.6 GMACs for vit_base_patch16_224 with its
 * 1000-class head). tests/profile_test.ts checks these counts against PyTorch's own counter
 * (tests/fixtures/flops_torch.json) for every backbone of the paper.
 */
import { noGrad } from "../nn/autograd.ts";
import { numel, Rng, type Tensor, tensor, tidy } from "../nn/tensor.ts";
import type { ClipItModel } from "./clipit.ts";
import type { BackboneSpec } from "./models.ts";

/** One kind of layer on an inference path. */
export interface LayerCost {
  /** What it is, e.g. "block: MLP fc1". */
  name: string;
  /** The matrix product, e.g. "[197, 768] x [768, 3072]". */
  shape: string;
  /** MACs of one such layer for one image. */
  macs: number;
  /** How many such layers (e.g. the depth for a per-block layer). */
  count: number;
}

/** The MACs of one image through the backbone's feature path, per layer kind. */
export interface BackboneCost {
  /** The backbone, for a reader. */
  name: string;
  /** Input side in pixels. */
  imageSize: number;
  /** Tokens through the blocks (patches + class token + registers). */
  tokens: number;
  /** Width of the features. */
  featureDim: number;
  /** The layers. */
  layers: LayerCost[];
}

/** Sum of `count x macs` of `layers`. */
export function totalMacs(layers: readonly LayerCost[]): number {
  return layers.reduce((s, l) => s + l.macs * l.count, 0);
}

/** The per-block layers of a ViT over `t` tokens of width `d` with MLP hidden size `h`. */
function blockLayers(t: number, d: number, h: number, depth: number): LayerCost[] {
  return [
    {
      name: "block: q/k/v projection",
      shape: `[${t}, ${d}] x [${d}, ${3 * d}]`,
      macs: t * d * 3 * d,
    },
    { name: "block: attention Q K^T", shape: `heads x [${t}, d_h] x [d_h, ${t}]`, macs: t * t * d },
    { name: "block: attention A V", shape: `heads x [${t}, ${t}] x [${t}, d_h]`, macs: t * t * d },
    { name: "block: attention output", shape: `[${t}, ${d}] x [${d}, ${d}]`, macs: t * d * d },
    { name: "block: MLP fc1", shape: `[${t}, ${d}] x [${d}, ${h}]`, macs: t * d * h },
    { name: "block: MLP fc2", shape: `[${t}, ${h}] x [${h}, ${d}]`, macs: t * h * d },
  ].map((l) => ({ ...l, count: depth }));
}

function patchLayer(size: number, p: number, d: number): { grid: number; layer: LayerCost } {
  if (size % p !== 0) throw new RangeError(`image size ${size} is not a multiple of patch ${p}`);
  const grid = (size / p) ** 2;
  return {
    grid,
    layer: {
      name: `patch embedding (${p}x${p} conv, stride ${p})`,
      shape: `[${grid}, ${3 * p * p}] x [${3 * p * p}, ${d}]`,
      macs: grid * 3 * p * p * d,
      count: 1,
    },
  };
}

/**
 * The MACs of one image through `spec`'s feature path (what CLIP-IT reads: timm's pre-logits,
 * without a classifier head; CLIP's image embedding, with its projection), per layer kind, at
 * the configured image size (or `imageSize`).
 */
export function backboneCost(spec: BackboneSpec, imageSize?: number): BackboneCost {
  if (spec.kind === "timm") {
    const c = spec.config;
    const size = imageSize ?? c.imageSize;
    const { grid, layer } = patchLayer(size, c.patchSize, c.embedDim);
    const t = grid + (c.classToken ? 1 : 0) + c.regTokens;
    const hidden = Math.floor(c.embedDim * c.mlpRatio);
    return {
      name: `${c.name} (timm ${c.architecture})`,
      imageSize: size,
      tokens: t,
      featureDim: c.embedDim,
      layers: [layer, ...blockLayers(t, c.embedDim, hidden, c.depth)],
    };
  }
  if (spec.kind === "clip") {
    const v = spec.config.vision;
    const size = imageSize ?? v.imageSize;
    const { grid, layer } = patchLayer(size, v.patchSize, v.width);
    const t = grid + 1;
    const e = spec.config.embedDim;
    return {
      name: `${spec.config.name} (CLIP image tower)`,
      imageSize: size,
      tokens: t,
      featureDim: e,
      layers: [
        layer,
        ...blockLayers(t, v.width, v.mlpWidth, v.layers),
        {
          name: "projection",
          shape: `[1, ${v.width}] x [${v.width}, ${e}]`,
          macs: v.width * e,
          count: 1,
        },
      ],
    };
  }
  throw new Error(`unknown backbone kind "${(spec as { kind: string }).kind}"`);
}

/** The heads' shapes: features D, classes C, text space d_t (0: none), text branch. */
export interface HeadShape {
  /** Feature width D. */
  featureDim: number;
  /** Classes C. */
  numClasses: number;
  /** Text space d_t (0 for a unimodal model: fc only). */
  textDim: number;
  /** h_t and g exist (default true). */
  textBranch?: boolean;
}

/**
 * The heads' layers: the unimodal path has `fc`; CLIP-IT's adds `h_d`, and with the text branch
 * `h_t` (two layers) and `g` (what ClipItModel.forward runs; without the branch h_d still runs).
 */
export function headCosts(h: HeadShape): { unimodal: LayerCost[]; clipit: LayerCost[] } {
  const { featureDim: d, numClasses: c, textDim: t } = h;
  const lin = (name: string, i: number, o: number): LayerCost => ({
    name,
    shape: `[1, ${i}] x [${i}, ${o}]`,
    macs: i * o,
    count: 1,
  });
  const fc = lin("fc (unimodal head)", d, c);
  if (t === 0) return { unimodal: [fc], clipit: [fc] };
  const clipit = [fc, lin("h_d (image -> text space)", d, t)];
  if (h.textBranch ?? true) {
    clipit.push(
      lin("h_t.0 (text-branch head)", t, t),
      lin("h_t.1", t, c),
      lin("g (late fusion)", 2 * c, c),
    );
  }
  return { unimodal: [fc], clipit };
}

/** One inference path's cost for one image. */
export interface PathCost {
  /** Multiply-adds. */
  macs: number;
  /** 2 x MACs. */
  flops: number;
  /** Parameters the path uses (null when no model was built). */
  params: number | null;
  /** The heads' layers of this path (the backbone's are in {@link InferenceCost.backbone}). */
  heads: LayerCost[];
}

/** The cost of both inference paths. */
export interface InferenceCost {
  /** The backbone's per-layer count. */
  backbone: BackboneCost;
  /** Backbone + fc. */
  unimodal: PathCost;
  /** Backbone + fc + h_d (+ h_t + g). */
  clipit: PathCost;
  /** The counting convention, in words. */
  convention: string;
}

/** The counting convention of {@link inferenceCost}, in words (printed with the numbers). */
export const COUNTING_CONVENTION = "MACs = multiply-adds of the matrix products (patch " +
  "embedding, q/k/v, Q K^T, A V, attention output, MLP, projection, heads), per image; " +
  "FLOPs = 2 x MACs. Not counted: biases, norms, softmax, activations, residual adds, layer " +
  "scale, position embeddings, pooling (elementwise: well under 1% of a ViT). The paper's " +
  '"17 GFLOPs" for ViT-B/16 counts 1 per multiply-add (fvcore): compare it with the MACs.';

/**
 * Both paths' MACs, FLOPs and (given the parameter counts of the backbone's feature path and of
 * each head) parameters, for one image.
 */
export function inferenceCost(
  spec: BackboneSpec,
  heads: Omit<HeadShape, "featureDim">,
  params?: { backbone: number; heads: Record<string, number> },
): InferenceCost {
  const backbone = backboneCost(spec);
  const h = headCosts({ ...heads, featureDim: backbone.featureDim });
  const base = totalMacs(backbone.layers);
  const path = (layers: LayerCost[], names: string[]): PathCost => {
    const macs = base + totalMacs(layers);
    return {
      macs,
      flops: 2 * macs,
      params: params
        ? params.backbone + names.reduce((s, n) => s + (params.heads[n] ?? 0), 0)
        : null,
      heads: layers,
    };
  };
  const branch = heads.textDim > 0 && (heads.textBranch ?? true);
  return {
    backbone,
    unimodal: path(h.unimodal, ["fc"]),
    clipit: path(
      h.clipit,
      heads.textDim === 0 ? ["fc"] : ["fc", "h_d", ...(branch ? ["h_t", "g"] : [])],
    ),
    convention: COUNTING_CONVENTION,
  };
}

/** Parameter counts of a model's inference paths: the backbone's feature path and each head. */
export function modelParams(
  model: ClipItModel,
): { backbone: number; heads: Record<string, number> } {
  // A timm backbone may carry a classifier (`head.*`) that the feature path never runs.
  const backbone = model.backbone.namedParameters()
    .filter(([n]) => !n.startsWith("head."))
    .reduce((s, [, t]) => s + t.size, 0);
  const heads: Record<string, number> = {};
  for (const [n, t] of model.headParameters()) {
    const head = n.split(".")[0];
    heads[head] = (heads[head] ?? 0) + t.size;
  }
  return { backbone, heads };
}

/** Latencies of one path at one batch size. */
export interface Latency {
  /** Images per forward pass. */
  batch: number;
  /** Median of the timed passes, milliseconds per pass (input upload, forward, readback). */
  median_ms: number;
  /** Every timed pass, ms. */
  runs_ms: number[];
}

/** Options of {@link measureLatency}. */
export interface LatencyOptions {
  /** Batch sizes (default [1, 8]). */
  batches?: number[];
  /** Timed passes per batch size (default 5). */
  runs?: number;
  /** Untimed passes first (pipeline compilation, buffer pool; default 1). */
  warmup?: number;
  /** Called before each timed pass (a progress display). */
  onPass?: (path: string, batch: number, run: number) => void;
}

function median(xs: number[]): number {
  const s = [...xs].sort((a, b) => a - b);
  const m = s.length >> 1;
  return s.length % 2 ? s[m] : (s[m - 1] + s[m]) / 2;
}

/**
 * Median latency of the unimodal path (backbone + fc) and of the CLIP-IT path
 * (`model.forward`: + h_d, h_t, g) on random normalised images, per batch size; each pass
 * uploads its input, runs without gradients and reads the logits back (the only wait).
 */
export async function measureLatency(
  model: ClipItModel,
  opts: LatencyOptions = {},
): Promise<{ unimodal: Latency[]; clipit: Latency[] }> {
  const S = model.backbone.imageSize;
  const runs = opts.runs ?? 5, warmup = opts.warmup ?? 1;
  model.eval();
  const paths: Record<"unimodal" | "clipit", (x: Tensor) => Tensor> = {
    unimodal: (x) => model.fc.forward(model.backbone.features(x)),
    clipit: (x) => model.forward(x).logits,
  };
  const out = { unimodal: [] as Latency[], clipit: [] as Latency[] };
  for (const batch of opts.batches ?? [1, 8]) {
    // The images are drawn before the clock starts; their upload is part of each pass.
    const shape = [batch, 3, S, S];
    const rng = new Rng(batch);
    const images = Float32Array.from({ length: numel(shape) }, () => rng.normal());
    for (const name of ["unimodal", "clipit"] as const) {
      const times: number[] = [];
      for (let i = 0; i < warmup + runs; i++) {
        if (i >= warmup) opts.onPass?.(name, batch, i - warmup);
        const t0 = performance.now();
        const logits = noGrad(() => tidy(() => paths[name](tensor(images, shape))));
        await logits.toFloat32Array();
        logits.dispose();
        if (i >= warmup) times.push(performance.now() - t0);
      }
      out[name].push({ batch, median_ms: median(times), runs_ms: times });
    }
  }
  return out;
}
