/**
 * Loading CLIP weights from real checkpoints into a {@link ClipModel}.
 *
 * Files: safetensors (`model.safetensors`, `open_clip_model.safetensors`) and PyTorch
 * `torch.save` zip files holding a state dict (`open_clip_pytorch_model.bin`,
 * `pytorch_model.bin`, `*.pt`), optionally wrapped (`state_dict`, `model`) and with DDP's
 * `module.` prefix. Tensors are read one at a time and uploaded straight into the model's GPU
 * buffers, so at most one tensor (plus its float32 conversion) is in JS memory at once.
 *
 * Key layouts, all mapped onto the model's names (OpenCLIP's, text tower under `text.`):
 * - OpenCLIP / OpenAI: `visual.transformer.resblocks.0.attn.in_proj_weight`,
 *   `token_embedding.weight`, `text_projection`, ... (the text keys get the `text.` prefix);
 * - OpenCLIP CustomTextCLIP and this project's own files: `text.token_embedding.weight`, ...;
 * - Hugging Face `CLIPModel`: `vision_model.encoder.layers.0.self_attn.q_proj.weight`, ...:
 *   q/k/v are concatenated into the packed in-projection, `visual_projection.weight` and
 *   `text_projection.weight` are transposed into `proj` / `text_projection`.
 * Every name and shape is checked before anything is written; the first mismatch throws with
 * both names and both shapes.
 */
import { writeTensor } from "../nn/ops/inplace.ts";
import { assertFinite, SafetensorsFile, writeSafetensors } from "../nn/formats/safetensors.ts";
import type { Tensor } from "../nn/tensor.ts";
import {
  type ClipConfig,
  configToJson,
  findCheckpointConfig,
  parseConfig,
  resolveArch,
} from "./config.ts";
import { loraStateDict } from "../nn/lora.ts";
import { ClipModel, type ClipModelOptions } from "./model.ts";
import { TorchCheckpoint, type TorchTensorRef } from "../nn/formats/torch.ts";
import { checkInputFile } from "../nn/formats/input_file.ts";

// ---- reading tensors -------------------------------------------------------------------------

/** A checkpoint opened for lazy reading: names and shapes now, values one tensor at a time. */
export interface TensorSource {
  readonly path: string;
  readonly format: "safetensors" | "torch";
  /** Tensor names (as stored, after removing a DDP `module.` prefix) and shapes. */
  readonly shapes: ReadonlyMap<string, readonly number[]>;
  /** String metadata (safetensors `__metadata__`; empty for torch files). */
  readonly metadata: Readonly<Record<string, string>>;
  /**
   * The values of `name` as float32 (f16 / bf16 / f64 converted). Throws for integer tensors and
   * for values that are NaN or infinite (naming the tensor).
   */
  readFloat32(name: string): Promise<Float32Array>;
  close(): void;
}

/** Files tried, in order, when a checkpoint path is a directory. */
export const CHECKPOINT_FILE_NAMES = [
  "open_clip_model.safetensors",
  "model.safetensors",
  "open_clip_pytorch_model.bin",
  "pytorch_model.bin",
] as const;

async function resolveFile(path: string): Promise<string> {
  let info: Deno.FileInfo;
  try {
    info = await checkInputFile(path, { allowFolder: true });
  } catch (e) {
    throw new Error(`cannot open checkpoint ${(e as Error).message}`);
  }
  if (!info.isDirectory) return path;
  for (const name of CHECKPOINT_FILE_NAMES) {
    try {
      if ((await Deno.stat(`${path}/${name}`)).isFile) return `${path}/${name}`;
    } catch {
      // try the next name
    }
  }
  throw new Error(`${path}: a directory without any of ${CHECKPOINT_FILE_NAMES.join(", ")}`);
}

function stripModulePrefix<T>(names: Map<string, T>): Map<string, string> {
  const all = [...names.keys()];
  const ddp = all.length > 0 && all.every((n) => n.startsWith("module."));
  return new Map(all.map((n) => [ddp ? n.slice("module.".length) : n, n]));
}

/** Why a file that is not a torch zip does not open as safetensors, said as plainly as we can. */
function unreadableCheckpoint(file: string, head: Uint8Array, size: number, e: Error): Error {
  const reason = e.message.startsWith(`${file}: `) ? e.message.slice(file.length + 2) : e.message;
  if (size === 0) return new Error(`${file}: the checkpoint file is empty`);
  const hex = Array.from(head.subarray(0, 8), (b) => b.toString(16).padStart(2, "0")).join(" ");
  // A safetensors file starts with a little-endian header length, then `{`.
  if (size >= 9 && head[8] === 0x7b) {
    return new Error(`${file}: a corrupt or truncated safetensors file: ${reason}`);
  }
  const known: [number[], string][] = [
    [[0x1f, 0x8b], "a gzip file (decompress it first)"],
    [[0x89, 0x48, 0x44, 0x46], "an HDF5 file (Keras / TensorFlow weights?)"],
    [[0x47, 0x47, 0x55, 0x46], "a GGUF file"],
    [[0x93, 0x4e, 0x55, 0x4d, 0x50, 0x59], "a NumPy .npy file"],
  ];
  for (const [magic, what] of known) {
    if (magic.every((b, i) => head[i] === b)) {
      return new Error(
        `${file}: ${what}, not a checkpoint this tool reads (safetensors or torch.save zip)`,
      );
    }
  }
  return new Error(
    `${file}: not a checkpoint this tool reads: no torch.save zip signature, and not safetensors ` +
      `(${reason}; first bytes ${hex})`,
  );
}

/**
 * Open a checkpoint for lazy reading: a safetensors file, a `torch.save` zip, or a directory
 * holding one of {@link CHECKPOINT_FILE_NAMES}. The format is detected from the file's first
 * bytes (zip magic `PK` = torch, a pickle opcode = a legacy torch.save), not its name. Throws
 * naming the file and what is wrong with it (a corrupt safetensors header, the legacy torch
 * format, another known format, ...). `readFloat32` throws for a tensor holding NaN or Inf.
 */
export async function openTensorSource(path: string): Promise<TensorSource> {
  const file = await resolveFile(path);
  const head = new Uint8Array(16);
  const f = await Deno.open(file, { read: true });
  let size: number;
  try {
    size = (await f.stat()).size;
    let got = 0;
    while (got < head.length) {
      const n = await f.read(head.subarray(got));
      if (n === null) break;
      got += n;
    }
  } finally {
    f.close();
  }
  const pickle = head[0] === 0x80 && head[1] >= 2 && head[1] <= 5;
  if ((head[0] === 0x50 && head[1] === 0x4b) || pickle) {
    const ckpt = await TorchCheckpoint.open(file);
    try {
      const refs = ckpt.tensors();
      const names = stripModulePrefix(refs);
      const shapes = new Map<string, number[]>();
      const byName = new Map<string, TorchTensorRef>();
      for (const [name, stored] of names) {
        const ref = refs.get(stored)!;
        shapes.set(name, [...ref.shape]);
        byName.set(name, ref);
      }
      return {
        path: file,
        format: "torch",
        shapes,
        metadata: {},
        async readFloat32(name: string): Promise<Float32Array> {
          const ref = byName.get(name);
          if (!ref) throw new Error(`${file}: no tensor named "${name}"`);
          const t = await ckpt.read(ref, name);
          if (!(t.data instanceof Float32Array)) {
            throw new Error(`${file}: tensor "${name}" has dtype ${t.dtype}, not a float type`);
          }
          return assertFinite(file, name, t.data);
        },
        close: () => ckpt.close(),
      };
    } catch (e) {
      ckpt.close();
      throw e;
    }
  }
  let st: SafetensorsFile;
  try {
    st = await SafetensorsFile.open(file);
  } catch (e) {
    throw unreadableCheckpoint(file, head, size, e as Error);
  }
  const entries = st.entries();
  const names = stripModulePrefix(entries);
  return {
    path: file,
    format: "safetensors",
    shapes: new Map([...names].map(([n, stored]) => [n, entries.get(stored)!.shape])),
    metadata: st.metadata,
    readFloat32: async (name) => {
      const stored = names.get(name);
      if (stored === undefined) throw new Error(`${file}: no tensor named "${name}"`);
      return assertFinite(file, name, await st.readFloat32(stored));
    },
    close: () => st.close(),
  };
}

// ---- key layouts -----------------------------------------------------------------------------

/** How a checkpoint names its tensors. */
export type CheckpointLayout = "openclip" | "openclip-custom-text" | "huggingface";

/**
 * The layout of a checkpoint from its tensor names. Throws for checkpoints this model cannot
 * hold (timm image trunks as in CONCH / CoCa, ResNet towers) and for names of no known layout.
 */
export function detectLayout(names: Iterable<string>, where = "checkpoint"): CheckpointLayout {
  const list = [...names];
  const has = (re: RegExp) => list.some((n) => re.test(n));
  if (has(/^visual\.trunk\./) || has(/^visual\.attn_pool/)) {
    throw new Error(
      `${where}: a timm image trunk with attentional pooling (CoCa / CONCH layout); only ` +
        `OpenCLIP's own ViT (visual.transformer.*) and Hugging Face CLIPModel are supported`,
    );
  }
  if (has(/^visual\.layer\d/)) {
    throw new Error(`${where}: a ResNet image tower (ModifiedResNet); only ViTs are supported`);
  }
  if (has(/^(vision_model|text_model)\./)) return "huggingface";
  if (has(/^text\.(token_embedding|transformer)\./)) return "openclip-custom-text";
  if (has(/^text\.transformer\.embeddings\./)) {
    throw new Error(`${where}: a Hugging Face text tower inside OpenCLIP (not supported)`);
  }
  if (has(/^visual\.transformer\./) || has(/^token_embedding\./)) return "openclip";
  throw new Error(
    `${where}: not a CLIP checkpoint this loader knows (no visual.transformer.*, ` +
      `text.*, vision_model.* or text_model.* tensors; first names: ${
        list.slice(0, 3).join(", ")
      })`,
  );
}

/** Where one model tensor comes from: copied, the concatenation of several, or transposed. */
export interface SourceSpec {
  keys: string[];
  op: "copy" | "concat" | "transpose";
}

const IGNORED: Record<CheckpointLayout, RegExp> = {
  // OpenAI's JIT-era state dicts carry these scalars; OpenCLIP keeps attn_mask out of it.
  "openclip": /(^|\.)attn_mask$|^(input_resolution|context_length|vocab_size)$/,
  "openclip-custom-text": /(^|\.)attn_mask$/,
  "huggingface": /(^|\.)position_ids$/,
};

const HF_BLOCK: [RegExp, string][] = [
  [/^ln_1\.(weight|bias)$/, "layer_norm1.$1"],
  [/^ln_2\.(weight|bias)$/, "layer_norm2.$1"],
  [/^attn\.out_proj\.(weight|bias)$/, "self_attn.out_proj.$1"],
  [/^mlp\.c_fc\.(weight|bias)$/, "mlp.fc1.$1"],
  [/^mlp\.c_proj\.(weight|bias)$/, "mlp.fc2.$1"],
];

const HF_FIXED: Record<string, SourceSpec> = {
  "visual.conv1.weight": { keys: ["vision_model.embeddings.patch_embedding.weight"], op: "copy" },
  "visual.class_embedding": { keys: ["vision_model.embeddings.class_embedding"], op: "copy" },
  "visual.positional_embedding": {
    keys: ["vision_model.embeddings.position_embedding.weight"],
    op: "copy",
  },
  "visual.ln_pre.weight": { keys: ["vision_model.pre_layrnorm.weight"], op: "copy" },
  "visual.ln_pre.bias": { keys: ["vision_model.pre_layrnorm.bias"], op: "copy" },
  "visual.ln_post.weight": { keys: ["vision_model.post_layernorm.weight"], op: "copy" },
  "visual.ln_post.bias": { keys: ["vision_model.post_layernorm.bias"], op: "copy" },
  "visual.proj": { keys: ["visual_projection.weight"], op: "transpose" },
  "text.token_embedding.weight": {
    keys: ["text_model.embeddings.token_embedding.weight"],
    op: "copy",
  },
  "text.positional_embedding": {
    keys: ["text_model.embeddings.position_embedding.weight"],
    op: "copy",
  },
  "text.ln_final.weight": { keys: ["text_model.final_layer_norm.weight"], op: "copy" },
  "text.ln_final.bias": { keys: ["text_model.final_layer_norm.bias"], op: "copy" },
  "text.text_projection": { keys: ["text_projection.weight"], op: "transpose" },
  "logit_scale": { keys: ["logit_scale"], op: "copy" },
};

/**
 * Where the model tensor `name` (this project's names) is found in a checkpoint of `layout`.
 * Throws for a name the mapping does not know.
 */
export function sourceFor(name: string, layout: CheckpointLayout): SourceSpec {
  if (layout === "openclip-custom-text") return { keys: [name], op: "copy" };
  if (layout === "openclip") {
    return { keys: [name.startsWith("text.") ? name.slice(5) : name], op: "copy" };
  }
  const fixed = HF_FIXED[name];
  if (fixed) return fixed;
  const m = /^(visual|text)\.transformer\.resblocks\.(\d+)\.(.+)$/.exec(name);
  if (m) {
    const base = `${m[1] === "visual" ? "vision_model" : "text_model"}.encoder.layers.${m[2]}`;
    const rest = m[3];
    const packed = /^attn\.in_proj_(weight|bias)$/.exec(rest);
    if (packed) {
      return {
        keys: ["q", "k", "v"].map((p) => `${base}.self_attn.${p}_proj.${packed[1]}`),
        op: "concat",
      };
    }
    for (const [re, to] of HF_BLOCK) {
      if (re.test(rest)) return { keys: [`${base}.${rest.replace(re, to)}`], op: "copy" };
    }
  }
  throw new Error(`no Hugging Face name known for model tensor "${name}"`);
}

function shapeOf(
  spec: SourceSpec,
  shapes: ReadonlyMap<string, readonly number[]>,
  where: string,
): number[] {
  const parts = spec.keys.map((k) => shapes.get(k)!);
  if (spec.op === "transpose") {
    if (parts[0].length !== 2) {
      throw new Error(`${where}: tensor "${spec.keys[0]}" [${parts[0]}] is not a matrix`);
    }
    return [parts[0][1], parts[0][0]];
  }
  if (spec.op === "concat") {
    const rest = parts[0].slice(1);
    for (let i = 1; i < parts.length; i++) {
      if (parts[i].length !== parts[0].length || parts[i].slice(1).some((d, j) => d !== rest[j])) {
        throw new Error(
          `${where}: tensors "${spec.keys[0]}" [${parts[0]}] and "${spec.keys[i]}" ` +
            `[${parts[i]}] cannot be stacked`,
        );
      }
    }
    return [parts.reduce((s, p) => s + (p[0] ?? 1), 0), ...rest];
  }
  return [...parts[0]];
}

const same = (a: readonly number[], b: readonly number[]) =>
  a.length === b.length && a.every((d, i) => d === b[i]);

/** One planned copy: the model tensor and where its values come from. */
export interface LoadStep {
  name: string;
  target: Tensor;
  spec: SourceSpec;
}

/**
 * Match every base tensor of `model` (LoRA adapters excluded) with the checkpoint's tensors,
 * checking names and shapes before anything is read. Throws, naming the model tensor, the
 * checkpoint tensor(s) and both shapes, at the first tensor (in model order) that is missing or
 * differs; then, unless `strict` is false, at the first checkpoint tensor nothing uses (known
 * buffers such as `position_ids` and `attn_mask` are ignored).
 */
export function planLoad(
  model: ClipModel,
  source: Pick<TensorSource, "path" | "shapes">,
  strict = true,
): { layout: CheckpointLayout; steps: LoadStep[]; unused: string[] } {
  const where = source.path;
  const layout = detectLayout(source.shapes.keys(), where);
  const adapters = new Set(loraStateDict(model).values());
  const used = new Set<string>();
  const steps: LoadStep[] = [];
  const arch = model.config.name;
  for (const [name, target] of model.stateDict()) {
    if (adapters.has(target)) continue;
    const spec = sourceFor(name, layout);
    const missing = spec.keys.find((k) => !source.shapes.has(k));
    if (missing) {
      throw new Error(
        `${where}: the checkpoint has no tensor "${missing}" for "${name}" ` +
          `[${target.shape}] of the ${arch} model (${layout} layout)`,
      );
    }
    const shape = shapeOf(spec, source.shapes, where);
    if (!same(shape, target.shape)) {
      const from = spec.keys.length === 1 && spec.keys[0] === name
        ? ""
        : ` (from ${spec.keys.map((k) => `"${k}"`).join(" + ")}${
          spec.op === "transpose" ? ", transposed" : ""
        })`;
      throw new Error(
        `${where}: tensor "${name}"${from} has shape [${shape}] in the checkpoint but ` +
          `[${target.shape}] in the ${arch} model: the checkpoint does not match the architecture`,
      );
    }
    spec.keys.forEach((k) => used.add(k));
    steps.push({ name, target, spec });
  }
  const unused = [...source.shapes.keys()].filter((k) => !used.has(k) && !IGNORED[layout].test(k));
  if (strict && unused.length > 0) {
    throw new Error(
      `${where}: tensor "${unused[0]}" [${source.shapes.get(unused[0])}] of the checkpoint has ` +
        `no place in the ${arch} model (${unused.length} unused in all; ${layout} layout)`,
    );
  }
  return { layout, steps, unused };
}

function transpose2d(data: Float32Array, rows: number, cols: number): Float32Array {
  const out = new Float32Array(data.length);
  for (let r = 0; r < rows; r++) {
    for (let c = 0; c < cols; c++) out[c * rows + r] = data[r * cols + c];
  }
  return out;
}

/** What {@link loadClipCheckpoint} did. */
export interface LoadReport {
  path: string;
  format: "safetensors" | "torch";
  layout: CheckpointLayout;
  /** Model tensors written. */
  tensors: number;
  /** Checkpoint tensors not used (only non-empty with `strict: false`). */
  unused: string[];
}

/**
 * Load a checkpoint (see the module comment) into `model`'s base weights, in place. Everything
 * is checked with {@link planLoad} first; then tensors are read one at a time and uploaded into
 * the model's GPU buffers. LoRA adapters on the model are left alone.
 */
export async function loadClipCheckpoint(
  model: ClipModel,
  path: string,
  opts: { strict?: boolean } = {},
): Promise<LoadReport> {
  const src = await openTensorSource(path);
  try {
    const { layout, steps, unused } = planLoad(model, src, opts.strict ?? true);
    for (const { target, spec } of steps) {
      let offset = 0;
      for (const key of spec.keys) {
        let data = await src.readFloat32(key);
        if (spec.op === "transpose") {
          const [r, c] = src.shapes.get(key)!;
          data = transpose2d(data, r, c);
        }
        writeTensor(target, data, offset);
        offset += data.length;
      }
    }
    return { path: src.path, format: src.format, layout, tensors: steps.length, unused };
  } finally {
    src.close();
  }
}

// ---- whole models -----------------------------------------------------------------------------

/** Options for {@link loadClip}. */
export interface LoadClipOptions extends ClipModelOptions {
  /** A config, a built-in name or a JSON config path; default: the checkpoint's own config. */
  arch?: string | ClipConfig;
  /**
   * Throw on a checkpoint tensor that the model does not use (default true; known buffers such
   * as `position_ids` are always ignored). Missing or misshapen tensors always throw.
   */
  strict?: boolean;
}

/**
 * The config for a checkpoint: `arch` when given; otherwise the `clip_config` metadata of a
 * safetensors file written by {@link saveClip}, or `open_clip_config.json` / `config.json` next
 * to the weights. Throws asking for an architecture when there is none.
 */
export async function checkpointConfig(
  weights: string,
  arch?: string | ClipConfig,
): Promise<ClipConfig> {
  if (typeof arch === "object") return arch;
  if (arch) return await resolveArch(arch);
  const src = await openTensorSource(weights);
  try {
    const meta = src.metadata.clip_config;
    if (meta) return parseConfig(JSON.parse(meta), `${src.path} (clip_config metadata)`);
  } finally {
    src.close();
  }
  const found = await findCheckpointConfig(await resolveFile(weights));
  if (found) return found;
  throw new Error(
    `${weights}: no config beside the weights (open_clip_config.json / config.json); ` +
      `name the architecture (e.g. --arch ViT-B-16) or a JSON config file`,
  );
}

/**
 * Build the model for a checkpoint and load its weights (config as in
 * {@link checkpointConfig}). A checkpoint that does not fit the config throws naming the first
 * mismatching tensor and both shapes; the partly built model is disposed.
 */
export async function loadClip(weights: string, opts: LoadClipOptions = {}): Promise<ClipModel> {
  const config = await checkpointConfig(weights, opts.arch);
  const model = new ClipModel(config, opts);
  try {
    await loadClipCheckpoint(model, weights, { strict: opts.strict });
  } catch (e) {
    model.dispose();
    throw e;
  }
  return model;
}

/**
 * Save the model's base weights (not LoRA adapters) as safetensors F32 with this project's names
 * (OpenCLIP's, text under `text.`) and the config in the `clip_config` metadata, so
 * `loadClip(path)` needs no architecture.
 */
export async function saveClip(model: ClipModel, path: string): Promise<void> {
  const adapters = new Set(loraStateDict(model).values());
  const tensors: Record<string, { dtype: "F32"; shape: number[]; data: Float32Array }> = {};
  for (const [name, t] of model.stateDict()) {
    if (adapters.has(t)) continue;
    tensors[name] = { dtype: "F32", shape: [...t.shape], data: await t.toFloat32Array() };
  }
  await writeSafetensors(path, tensors, { clip_config: configToJson(model.config) });
}
