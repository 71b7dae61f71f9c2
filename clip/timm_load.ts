/**
 * Loading timm ViT weights (clip/timm_vit.ts) from the files their publishers ship:
 * `model.safetensors` (timm hub), `pytorch_model.bin` (UNI), `*.pth` (kaiko.ai), or a directory
 * holding one of them next to a timm `config.json`.
 *
 * Names are timm's. Also understood, as timm's `checkpoint_filter_fn` does:
 * - an OpenCLIP / CONCH image trunk (`visual.trunk.*`, any other tensors ignored);
 * - DINOv2's original layout (`mask_token`, `register_tokens`, class position folded into the
 *   class token), as kaiko.ai's ViT-L/14 ships;
 * - a `pos_embed` made for another input size, resampled once at load (bicubic, antialias).
 * Every name and shape is checked before any value is read; the first missing, misshapen or
 * (with `strict`) unused tensor throws naming the file and the tensor. A checkpoint's classifier
 * (`head.*`) is ignored when the model has no head, as timm does for `num_classes=0`.
 */
import type { Module } from "../nn/module.ts";
import { type GridInterpolation, resampleGrid } from "./interpolate.ts";
import { openTensorSource, type TensorSource } from "./load.ts";
import { loraStateDict } from "../nn/lora.ts";
import { loadTimmConfigFile, type TimmVitConfig } from "./timm_config.ts";
import { resolveTimmConfig } from "./timm_models.ts";
import { TimmVisionTransformer, type TimmVitOptions } from "./timm_vit.ts";

/** One model tensor to fill: its name, its shape, and how to read its values. */
export interface PlannedTensor {
  /** The model's name for it. */
  name: string;
  /** The model's shape (already checked against the source). */
  shape: readonly number[];
  /** Read (and convert) the values from the source. */
  read(): Promise<Float32Array>;
}

const same = (a: readonly number[], b: readonly number[]) =>
  a.length === b.length && a.every((d, i) => d === b[i]);

/** Options of {@link planTimmTensors}. */
export interface TimmPlanOptions {
  /** Prefix of the trunk's tensors in the source (e.g. "visual.trunk."); default: detected. */
  prefix?: string;
  /** How a position embedding of another grid is resampled (timm: bicubic with antialias). */
  posEmbedResample?: { mode: GridInterpolation; antialias: boolean };
}

/** What {@link planTimmTensors} found. */
export interface TimmPlan {
  /** One entry per model tensor (LoRA adapters excluded), in model order. */
  tensors: PlannedTensor[];
  /** Source tensors the plan reads. */
  used: Set<string>;
  /** Source tensors under the prefix that nothing uses (the classifier excluded when unused). */
  unused: string[];
  /** The detected prefix ("" for a plain timm file). */
  prefix: string;
  /** "dinov2" when DINOv2's original layout was converted. */
  converted: "dinov2" | null;
  /** The position embedding's grid in the source, when it was resampled. */
  resampledFrom: number | null;
}

/**
 * Match every weight of `model` (a timm ViT, LoRA adapters excluded) with `src`'s tensors and
 * check the shapes, reading nothing. Throws naming the file and the first tensor that is missing
 * or has another shape.
 */
export function planTimmTensors(
  model: TimmVisionTransformer,
  src: Pick<TensorSource, "path" | "shapes" | "readFloat32">,
  opts: TimmPlanOptions = {},
): TimmPlan {
  const where = src.path;
  const names = [...src.shapes.keys()];
  let prefix = opts.prefix;
  if (prefix === undefined) {
    prefix = names.some((n) => n.startsWith("visual.trunk.")) ? "visual.trunk." : "";
  }
  const has = (k: string) => src.shapes.has(prefix + k);
  const shape = (k: string) => src.shapes.get(prefix + k)!;
  const read = (k: string) => src.readFloat32(prefix + k);
  const dinov2 = has("mask_token");
  const c = model.config;
  const used = new Set<string>();
  const adapters = new Set(loraStateDict(model).values());
  const tensors: PlannedTensor[] = [];
  let resampledFrom: number | null = null;
  const arch = `${c.name} model`;
  const missing = (key: string, name: string, want: readonly number[]) =>
    new Error(
      `${where}: the checkpoint has no tensor "${
        prefix + key
      }" for "${name}" [${want}] of the ${arch}`,
    );
  const misshapen = (key: string, got: readonly number[], name: string, want: readonly number[]) =>
    new Error(
      `${where}: tensor "${prefix + key}" has shape [${got}] in the checkpoint but "${name}" is ` +
        `[${want}] in the ${arch}: the checkpoint does not match the architecture`,
    );
  for (const [name, target] of model.stateDict()) {
    if (adapters.has(target)) continue;
    const want = target.shape;
    // DINOv2 with registers: timm's _convert_dinov2 moves the class position into cls_token.
    if (
      dinov2 && has("register_tokens") &&
      (name === "cls_token" || name === "pos_embed" || name === "reg_token")
    ) {
      const dpos = shape("pos_embed");
      if (name === "reg_token") {
        if (!same(shape("register_tokens"), want)) {
          throw misshapen("register_tokens", shape("register_tokens"), name, want);
        }
        used.add(prefix + "register_tokens");
        tensors.push({ name, shape: want, read: () => read("register_tokens") });
        continue;
      }
      if (!has("cls_token")) throw missing("cls_token", name, want);
      used.add(prefix + "cls_token").add(prefix + "pos_embed");
      if (name === "cls_token") {
        if (!same(shape("cls_token"), want)) {
          throw misshapen("cls_token", shape("cls_token"), name, want);
        }
        tensors.push({
          name,
          shape: want,
          read: async () => {
            const cls = await read("cls_token"), pos = await read("pos_embed");
            return cls.map((v, i) => v + pos[i]);
          },
        });
        continue;
      }
      // pos_embed without its class row: [1, 1 + g*g, D] -> [1, g*g, D] (then maybe resampled).
      tensors.push(posEmbedPlan(
        model,
        name,
        want,
        [1, dpos[1] - 1, dpos[2]],
        async () => {
          const pos = await read("pos_embed");
          return pos.subarray(dpos[2]);
        },
        opts,
        (g) => resampledFrom = g,
        () => misshapen("pos_embed", dpos, name, want),
      ));
      continue;
    }
    let key = name;
    if (dinov2) {
      // SwiGLU DINOv2 models name their MLP w12 / w3 (fails on shape for a plain MLP).
      const m = /^blocks\.(\d+)\.mlp\.fc([12])\.(weight|bias)$/.exec(name);
      const alt = m && `blocks.${m[1]}.mlp.${m[2] === "1" ? "w12" : "w3"}.${m[3]}`;
      if (alt && !has(key) && has(alt)) key = alt;
    }
    if (!has(key)) throw missing(key, name, want);
    const got = shape(key);
    used.add(prefix + key);
    if (name === "pos_embed" && !same(got, want)) {
      tensors.push(
        posEmbedPlan(
          model,
          name,
          want,
          got,
          () => read(key),
          opts,
          (g) => resampledFrom = g,
          () => misshapen(key, got, name, want),
        ),
      );
      continue;
    }
    if (!same(got, want)) throw misshapen(key, got, name, want);
    tensors.push({ name, shape: want, read: () => read(key) });
  }
  const ignored = (n: string) =>
    (dinov2 && n === prefix + "mask_token") ||
    (!model.head && /^head\.(weight|bias)$/.test(n.slice(prefix.length)));
  const unused = names.filter((n) => n.startsWith(prefix) && !used.has(n) && !ignored(n));
  return { tensors, used, unused, prefix, converted: dinov2 ? "dinov2" : null, resampledFrom };
}

/** A plan for `pos_embed` whose source shape `got` may need resampling to the model's grid. */
function posEmbedPlan(
  model: TimmVisionTransformer,
  name: string,
  want: readonly number[],
  got: readonly number[],
  readSource: () => Promise<Float32Array>,
  opts: TimmPlanOptions,
  onResample: (grid: number) => void,
  mismatch: () => Error,
): PlannedTensor {
  if (same(got, want)) return { name, shape: want, read: readSource };
  const c = model.config;
  const prefixRows = c.noEmbedClass ? 0 : model.numPrefixTokens;
  const D = c.embedDim;
  const rows = (got[1] ?? 0) - prefixRows;
  const g0 = Math.round(Math.sqrt(rows));
  if (got.length !== 3 || got[0] !== 1 || got[2] !== D || rows < 1 || g0 * g0 !== rows) {
    throw mismatch();
  }
  const g = model.gridSize;
  onResample(g0);
  const { mode, antialias } = opts.posEmbedResample ?? { mode: "bicubic", antialias: true };
  return {
    name,
    shape: want,
    read: async () => {
      const src = await readSource();
      const grid = resampleGrid(src.subarray(prefixRows * D), D, g0, g0, g, g, mode, antialias);
      const out = new Float32Array(want[1] * D);
      out.set(src.subarray(0, prefixRows * D));
      out.set(grid, prefixRows * D);
      return out;
    },
  };
}

/**
 * Read every planned tensor and write it into `module`, one tensor at a time (a large checkpoint
 * never sits whole in memory). Shapes were checked by the plan.
 */
export async function writePlanned(module: Module, tensors: PlannedTensor[]): Promise<void> {
  for (const t of tensors) {
    const data = await t.read();
    module.loadStateDict(new Map([[t.name, { shape: t.shape, data }]]), { strict: false });
  }
}

/** What {@link loadTimmWeights} did. */
export interface TimmLoadReport {
  /** The file read. */
  path: string;
  /** Its format. */
  format: "safetensors" | "torch";
  /** Model tensors written. */
  tensors: number;
  /** Checkpoint tensors not used (only with `strict: false`; the classifier aside). */
  unused: string[];
  /** The prefix the trunk's tensors had in the file. */
  prefix: string;
  /** "dinov2" when DINOv2's original layout was converted. */
  converted: "dinov2" | null;
  /** The source grid of a position embedding resampled at load, else null. */
  resampledFrom: number | null;
}

/**
 * Load a timm checkpoint (see the module comment) into `model`'s weights, in place; LoRA adapters
 * are left alone. With `strict` (default) a checkpoint tensor nothing uses throws.
 */
export async function loadTimmWeights(
  model: TimmVisionTransformer,
  path: string,
  opts: { strict?: boolean } & TimmPlanOptions = {},
): Promise<TimmLoadReport> {
  const src = await openTensorSource(path);
  try {
    const plan = planTimmTensors(model, src, opts);
    // Other towers of a multimodal file (CONCH's text tower, ...) are not ours to complain about.
    if ((opts.strict ?? true) && plan.unused.length > 0) {
      const u = plan.unused[0];
      throw new Error(
        `${src.path}: tensor "${u}" [${src.shapes.get(u)}] of the checkpoint has no place in the ` +
          `${model.config.name} model (${plan.unused.length} unused in all)`,
      );
    }
    await writePlanned(model, plan.tensors);
    return {
      path: src.path,
      format: src.format,
      tensors: plan.tensors.length,
      unused: plan.unused,
      prefix: plan.prefix,
      converted: plan.converted,
      resampledFrom: plan.resampledFrom,
    };
  } finally {
    src.close();
  }
}

/** Options of {@link loadTimm}. */
export interface LoadTimmOptions extends TimmVitOptions {
  /**
   * A config, a built-in name (`uni`, `dinov2-vitl14-reg4`, `kaiko-vits16`, ...), a timm
   * architecture name or a `config.json` path; default: `config.json` beside the weights.
   */
  arch?: string | TimmVitConfig;
  /** Throw on checkpoint tensors the model does not use (default true). */
  strict?: boolean;
}

async function configBeside(weights: string): Promise<TimmVitConfig | null> {
  let dir = weights;
  try {
    if (!(await Deno.stat(weights)).isDirectory) dir = weights.replace(/[/\\][^/\\]*$/, "") || ".";
  } catch (e) {
    throw new Error(`cannot open checkpoint ${weights}: ${(e as Error).message}`);
  }
  const path = `${dir}/config.json`;
  try {
    await Deno.stat(path);
  } catch {
    return null;
  }
  return await loadTimmConfigFile(path);
}

/**
 * Build a timm ViT for a checkpoint and load its weights. The config is `opts.arch` or the timm
 * `config.json` beside the weights; without either this throws asking for one. A partly built
 * model is disposed when loading fails.
 */
export async function loadTimm(
  weights: string,
  opts: LoadTimmOptions = {},
): Promise<TimmVisionTransformer> {
  let config: TimmVitConfig | null;
  if (typeof opts.arch === "object") config = opts.arch;
  else if (opts.arch) config = await resolveTimmConfig(opts.arch);
  else config = await configBeside(weights);
  if (!config) {
    throw new Error(
      `${weights}: no timm config.json beside the weights; name the model (e.g. --arch uni, ` +
        `--arch kaiko-vits16, a timm architecture name or a config.json path)`,
    );
  }
  const model = new TimmVisionTransformer(config, opts);
  try {
    await loadTimmWeights(model, weights, { strict: opts.strict });
  } catch (e) {
    model.dispose();
    throw e;
  }
  return model;
}
