/**
 * LoRA (Hu et al. 2021): a frozen weight W gets a trainable low-rank update,
 * `W x + (alpha / r) B A x`, with A [r, in] Kaiming-uniform and B [out, r] zero (so training
 * starts from the pretrained model). A host that multiplies by its weight (a Linear, a packed
 * attention in-projection, a patch embedding, a projection) or looks up its rows (an Embedding)
 * can carry one.
 *
 * A model exposes the places that can be adapted as {@link LoraSite}s (`loraSites()`); this file
 * knows nothing about any model's structure beyond that. The model names its sites (CLIP's towers
 * name them like the OpenCLIP modules they adapt: `visual.transformer.resblocks.0.attn.in_proj`,
 * `visual.conv1`, `text.token_embedding`, `text.text_projection`, ...), and
 * {@link loraStateDict} names the adapter tensors `<site>.lora_A` / `<site>.lora_B`.
 */
import { type LayerAdapter } from "./layers.ts";
import { Module } from "./module.ts";
import { noGrad, record } from "./autograd.ts";
import { embedding } from "./ops/embedding.ts";
import { add, map, scale } from "./ops/elementwise.ts";
import { copyInto, writeTensor } from "./ops/inplace.ts";
import { matmul } from "./ops/matmul.ts";
import { dropout } from "./ops/nn.ts";
import { transpose } from "./ops/shape.ts";
import { rand, Rng, type Tensor, zeros } from "./tensor.ts";
import { SafetensorsFile, writeSafetensors } from "./formats/safetensors.ts";

/**
 * A weight that can carry a LoRA adapter.
 * - `kind: "linear"`: the host computes `y = x W'^T (+ b)` from inputs x [..., in];
 *   `kind: "embedding"`: the host looks up rows of W by int32 ids (in = the number of rows).
 * - `layout: "out-in"`: `weight` holds the [out, in] matrix row-major (Linear, the packed
 *   in-projection, and a conv weight [out, C, p, p] = [out, C*p*p]); `"in-out"`: `weight` is
 *   [in, out] (OpenCLIP's `x @ proj` projections, and an Embedding's [num, dim] table).
 */
export interface LoraSite {
  /** Dotted name of the adapted module, e.g. `visual.transformer.resblocks.0.mlp.c_fc`. */
  name: string;
  /** How the host uses its weight: a matrix product ("linear") or a row lookup ("embedding"). */
  kind: "linear" | "embedding";
  /** How `weight` stores the matrix: [out, in] ("out-in") or [in, out] ("in-out"). */
  layout: "out-in" | "in-out";
  /** Input features of the update (for an embedding: the number of rows). */
  inFeatures: number;
  /** Output features of the update (for an embedding: the row width). */
  outFeatures: number;
  /** The base weight (merged into by {@link mergeLora}). */
  weight: Tensor;
  /** The adapter the host applies now (null: none). */
  getAdapter(): LayerAdapter | null;
  /** Install an adapter on the host (null removes it). */
  setAdapter(a: LayerAdapter | null): void;
}

/** A model whose weights can carry LoRA adapters. */
export interface LoraHost extends Module {
  /** Every weight that can be adapted, in a fixed order (the order adapters are created in). */
  loraSites(): LoraSite[];
}

/** Options for {@link applyLora} and {@link LoraAdapter}. */
export interface LoraOptions {
  /** Rank r (default 16). */
  rank?: number;
  /** Scale numerator: the update is (alpha / r) B A (default 8). */
  alpha?: number;
  /** Seed of A's Kaiming-uniform initialisation (default 0); ignored when `rng` is given. */
  seed?: number;
  /** Generator for A's initialisation; {@link applyLora} shares one across all its adapters. */
  rng?: Rng;
  /** Which sites get an adapter (default: all). */
  filter?: (site: LoraSite) => boolean;
  /** Freeze every base parameter of the model (default true). */
  freezeBase?: boolean;
  /**
   * Dropout on the adapter's input in training mode (default 0), as PEFT's `lora_dropout`:
   * `y + s B A dropout(x)`; Linear hosts only (PEFT applies none to embeddings). The mask is
   * drawn from {@link LoraAdapter.dropoutSeed}, which a trainer sets per step so that a resumed
   * run draws the same masks.
   */
  dropout?: number;
}

/** `y + s * u` with gradients to both (one kernel instead of scale + add). */
function addScaled(y: Tensor, u: Tensor, s: number): Tensor {
  const out = map("lora_add", "a + p.s * b", [y, u], s);
  return record(out, "loraAdd", [y, u], (g) => [
    g.view(g.shape),
    map("lora_add_grad", "a * p.s", [g], s),
  ]);
}

/**
 * One LoRA adapter: `lora_A` [r, in] (Kaiming-uniform with a = sqrt(5), i.e.
 * Uniform(-1/sqrt(in), 1/sqrt(in)), as PEFT), `lora_B` [out, r] (zeros), scaling alpha / r.
 * As a layer adapter it turns the host's output y into `y + (alpha/r) (x A^T) B^T` (a Linear
 * host, x [..., in]) or `y + (alpha/r) A^T[ids] B^T` (an Embedding host, x = int32 ids).
 */
export class LoraAdapter extends Module implements LayerAdapter {
  /** Rank r of the update. */
  readonly rank: number;
  /** Scale numerator: the update is multiplied by alpha / r. */
  readonly alpha: number;
  /** The host's kind: x is features ("linear") or int32 ids ("embedding"). */
  readonly kind: "linear" | "embedding";
  /** Input features of the host (rows of the table for an embedding). */
  readonly inFeatures: number;
  /** Output features of the host. */
  readonly outFeatures: number;
  /** Parameter `lora_A` [r, in], the down-projection. */
  lora_A: Tensor;
  /** Parameter `lora_B` [out, r], the up-projection (starts at zero). */
  lora_B: Tensor;
  /** Dropout probability on the input in training mode (0: none). */
  readonly dropout: number;
  /** Seed of the next dropout mask (a trainer sets it per step). */
  dropoutSeed = 0;

  /**
   * An adapter for a host of `kind` mapping `inFeatures` to `outFeatures`. Throws RangeError
   * unless the rank is a positive integer and alpha is finite.
   */
  constructor(
    kind: "linear" | "embedding",
    inFeatures: number,
    outFeatures: number,
    opts: LoraOptions = {},
  ) {
    super();
    const rank = opts.rank ?? 16, alpha = opts.alpha ?? 8;
    if (!Number.isInteger(rank) || rank < 1) {
      throw new RangeError(`LoRA rank must be a positive integer, got ${rank}`);
    }
    if (!Number.isFinite(alpha)) throw new RangeError(`LoRA alpha must be finite, got ${alpha}`);
    const p = opts.dropout ?? 0;
    if (!(p >= 0 && p < 1)) throw new RangeError(`LoRA dropout must be in [0, 1), got ${p}`);
    this.dropout = p;
    this.rank = rank;
    this.alpha = alpha;
    this.kind = kind;
    this.inFeatures = inFeatures;
    this.outFeatures = outFeatures;
    const rng = opts.rng ?? new Rng(opts.seed ?? 0);
    const bound = 1 / Math.sqrt(inFeatures);
    this.lora_A = this.param("lora_A", rand([rank, inFeatures], { rng, low: -bound, high: bound }));
    this.lora_B = this.param("lora_B", zeros([outFeatures, rank]));
  }

  /** alpha / r. */
  get scaling(): number {
    return this.alpha / this.rank;
  }

  /** The host's output `y` plus the low-rank update of input `x` (see the class comment). */
  adapt(x: Tensor, y: Tensor): Tensor {
    let low: Tensor;
    if (this.kind === "embedding") {
      const table = transpose(this.lora_A); // [in, r]: row i is A's column i
      low = embedding(table, x);
    } else {
      if (x.shape[x.rank - 1] !== this.inFeatures) {
        throw new RangeError(`LoRA(${this.inFeatures} -> ${this.outFeatures}): input is ${x}`);
      }
      const xin = this.dropout > 0 && this.training
        ? dropout(x, this.dropout, { seed: this.dropoutSeed })
        : x;
      low = matmul(xin, this.lora_A, { transposeB: true });
    }
    const up = matmul(low, this.lora_B, { transposeB: true });
    if (up.rank !== y.rank || up.shape.some((d, i) => d !== y.shape[i])) {
      throw new RangeError(
        `LoRA(${this.inFeatures} -> ${this.outFeatures}): host output ${y} does not match ${up}`,
      );
    }
    return addScaled(y, up, this.scaling);
  }

  /** The update `(alpha/r) B A` as a new [out, in] tensor (no gradient). */
  delta(): Tensor {
    return noGrad(() => {
      const ba = matmul(this.lora_B, this.lora_A);
      const d = scale(ba, this.scaling);
      ba.dispose();
      return d;
    });
  }
}

/**
 * Give every site of `model` (or those `opts.filter` keeps) a fresh {@link LoraAdapter} and, by
 * default, freeze all base parameters, so `model.trainableParameters()` is exactly the adapters.
 * Adapters draw A from one seeded generator in site order (reproducible). Throws if a site
 * already has an adapter. Returns the adapters by site name.
 */
export function applyLora(model: LoraHost, opts: LoraOptions = {}): Map<string, LoraAdapter> {
  const sites = model.loraSites().filter((s) => opts.filter?.(s) ?? true);
  for (const s of sites) {
    if (s.getAdapter()) throw new Error(`applyLora: site "${s.name}" already has an adapter`);
  }
  if (opts.freezeBase ?? true) model.freeze();
  const rng = opts.rng ?? new Rng(opts.seed ?? 0);
  const out = new Map<string, LoraAdapter>();
  for (const s of sites) {
    const a = new LoraAdapter(s.kind, s.inFeatures, s.outFeatures, { ...opts, rng });
    s.setAdapter(a);
    out.set(s.name, a);
  }
  return out;
}

/** The adapters currently on `model`, by site name. */
export function loraAdapters(model: LoraHost): Map<string, LoraAdapter> {
  const out = new Map<string, LoraAdapter>();
  for (const s of model.loraSites()) {
    const a = s.getAdapter();
    if (a instanceof LoraAdapter) out.set(s.name, a);
  }
  return out;
}

/**
 * Fold every adapter into its base weight (`W += (alpha/r) B A`, transposed for "in-out"
 * weights) and remove it, so the model computes the same function with no adapter cost. The
 * weight tensors stay the same objects (an optimiser holding them stays valid). The adapters
 * are disposed. Returns how many were merged.
 */
export function mergeLora(model: LoraHost): number {
  let n = 0;
  noGrad(() => {
    for (const s of model.loraSites()) {
      const a = s.getAdapter();
      if (!(a instanceof LoraAdapter)) continue;
      const d = a.delta(); // [out, in]
      const dl = s.layout === "in-out" ? transpose(d) : d;
      const w = s.weight;
      const wv = w.view([w.size]), dv = dl.view([w.size]); // same element order
      const sum = add(wv, dv);
      copyInto(w, sum);
      for (const t of new Set([d, dl, wv, dv, sum])) t.dispose();
      s.setAdapter(null);
      a.dispose();
      n++;
    }
  });
  return n;
}

/** The adapter tensors by `<site>.lora_A` / `<site>.lora_B` (the model's own tensors). */
export function loraStateDict(model: LoraHost): Map<string, Tensor> {
  const out = new Map<string, Tensor>();
  for (const [name, a] of loraAdapters(model)) {
    out.set(`${name}.lora_A`, a.lora_A);
    out.set(`${name}.lora_B`, a.lora_B);
  }
  return out;
}

/**
 * Copy adapter values (CPU arrays, by `<site>.lora_A` / `.lora_B`) into the model's adapters.
 * Every name and shape is checked first: a missing, unexpected or mis-shaped tensor throws
 * naming it (and both shapes).
 */
export function loadLoraStateDict(
  model: LoraHost,
  values: Map<string, { shape: readonly number[]; data: Float32Array }>,
  where = "loadLoraStateDict",
): void {
  const own = loraStateDict(model);
  for (const [name, t] of own) {
    const v = values.get(name);
    if (!v) throw new Error(`${where}: adapter tensor "${name}" [${t.shape}] is missing`);
    if (v.shape.length !== t.shape.length || v.shape.some((d, i) => d !== t.shape[i])) {
      throw new Error(
        `${where}: adapter tensor "${name}" has shape [${v.shape}] in the source but ` +
          `[${t.shape}] in the model`,
      );
    }
  }
  for (const name of values.keys()) {
    if (!own.has(name)) throw new Error(`${where}: "${name}" is not an adapter of this model`);
  }
  for (const [name, t] of own) writeTensor(t, values.get(name)!.data);
}

/**
 * Write the adapters to a safetensors file (`<site>.lora_A` / `.lora_B`, F32) with metadata
 * `lora_rank`, `lora_alpha` (of the first adapter; all share them when made by applyLora).
 */
export async function saveLora(model: LoraHost, path: string): Promise<void> {
  const adapters = [...loraAdapters(model).values()];
  if (adapters.length === 0) throw new Error(`saveLora ${path}: the model has no adapters`);
  const tensors: Record<string, { dtype: "F32"; shape: number[]; data: Float32Array }> = {};
  for (const [name, t] of loraStateDict(model)) {
    tensors[name] = { dtype: "F32", shape: [...t.shape], data: await t.toFloat32Array() };
  }
  await writeSafetensors(path, tensors, {
    lora_rank: String(adapters[0].rank),
    lora_alpha: String(adapters[0].alpha),
  });
}

/**
 * Read adapters written by {@link saveLora} into `model`, applying fresh adapters first when it
 * has none (with the file's rank and alpha). Shapes and names are checked as in
 * {@link loadLoraStateDict}.
 */
export async function loadLora(model: LoraHost, path: string): Promise<void> {
  const f = await SafetensorsFile.open(path);
  try {
    const values = new Map<string, { shape: number[]; data: Float32Array }>();
    for (const [name, e] of f.entries()) {
      values.set(name, { shape: e.shape, data: await f.readFloat32(name) });
    }
    if (loraAdapters(model).size === 0) {
      const rank = Number(f.metadata.lora_rank ?? NaN);
      const alpha = Number(f.metadata.lora_alpha ?? NaN);
      if (!Number.isFinite(rank) || !Number.isFinite(alpha)) {
        throw new Error(`${path}: no lora_rank / lora_alpha metadata`);
      }
      const names = new Set([...values.keys()].map((k) => k.replace(/\.lora_[AB]$/, "")));
      applyLora(model, { rank, alpha, filter: (s) => names.has(s.name) });
    }
    loadLoraStateDict(model, values, path);
  } finally {
    f.close();
  }
}
