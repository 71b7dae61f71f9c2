/**
 * Does a CLIP config fit this machine? An estimate of the parameter and activation memory a
 * {@link ClipConfig} needs, checked against the adapter's buffer limits and the host's memory
 * before anything is allocated, so a config with 10^9 layers or a width of 10^6 is refused in
 * milliseconds with the field that makes it too big, instead of growing memory until the
 * process is killed or failing deep inside with "Array buffer allocation failed".
 *
 * Degenerate values (a context length below 3, an embedding of one dimension) are refused by
 * `validateConfig` (config.ts), which every config reader runs.
 */
import type { ClipConfig, TextConfig, VisionConfig } from "./config.ts";

/** The limits a config is checked against (bytes). */
export interface MemoryLimits {
  /** Largest single GPU buffer (the adapter's `maxBufferSize`). */
  maxBufferSize?: number;
  /** Largest buffer one kernel binding may see (`maxStorageBufferBindingSize`). */
  maxStorageBufferBindingSize?: number;
  /** Memory for everything (default: the host's total memory, when it can be read). */
  totalBytes?: number;
}

/** Which towers will run (both by default): a tower that never runs needs no kernel bindings. */
export interface Towers {
  /** The image tower runs (default true). */
  image?: boolean;
  /** The text tower runs (default true). */
  text?: boolean;
}

/** One contribution to the estimate, named by the config field that drives it. */
export interface MemoryTerm {
  /** The config field (e.g. `vision.layers`, `text.vocabSize`). */
  field: string;
  /** Bytes (float32). */
  bytes: number;
  /** What it is, for messages. */
  what: string;
}

/** The estimate of {@link estimateClipMemory}. */
export interface ClipMemoryEstimate {
  /** Number of parameters. */
  parameters: number;
  /** Bytes of the parameters (float32). */
  parameterBytes: number;
  /** The parameters by field, largest first. */
  parameterTerms: MemoryTerm[];
  /**
   * The largest single tensor (weight or activation of one batch), with its field. Attention is
   * fused (kernels/attention.ts): no T x T matrix exists, the q/k/v projections do.
   */
  largestTensor: MemoryTerm;
  /** Activation bytes alive at once for one batch (a rough upper estimate). */
  activationBytes: number;
}

const F32 = 4;

function blockParams(width: number, mlp: number): number {
  // ln_1, packed q/k/v in-projection, out-projection, ln_2, MLP in and out (with biases).
  return 4 * width * width + 2 * width * mlp + 9 * width + mlp;
}

function fmtBytes(b: number): string {
  if (!Number.isFinite(b)) return "an unbounded amount of memory";
  const units = ["bytes", "KB", "MB", "GB", "TB", "PB", "EB"];
  let i = 0;
  while (b >= 1000 && i < units.length - 1) (b /= 1000), i++;
  return `${b >= 100 || i === 0 ? b.toFixed(0) : b.toPrecision(3)} ${units[i]}`;
}

function tokens(v: VisionConfig): number {
  const g = Math.floor(v.imageSize / v.patchSize);
  return g * g + 1;
}

/**
 * Estimate the memory a model of `c` needs: its parameters (by field), the largest single tensor
 * and the activations of one batch of `batch` images or texts (float32 throughout), counting
 * for the largest tensor and the activations only the towers in `towers` (default both).
 */
export function estimateClipMemory(
  c: ClipConfig,
  batch = 1,
  towers: Towers = {},
): ClipMemoryEstimate {
  const v = c.vision, t: TextConfig = c.text, E = c.embedDim;
  const T = tokens(v), L = t.contextLength;
  const p = v.patchSize;
  const terms: MemoryTerm[] = [
    {
      field: v.layers > 48 ? "vision.layers" : "vision.width",
      bytes: F32 * v.layers * blockParams(v.width, v.mlpWidth),
      what: `vision.layers ${v.layers} blocks of vision.width ${v.width} and vision.mlpWidth ` +
        `${v.mlpWidth}, ${blockParams(v.width, v.mlpWidth)} parameters each`,
    },
    {
      field: t.layers > 48 ? "text.layers" : "text.width",
      bytes: F32 * t.layers * blockParams(t.width, t.mlpWidth),
      what: `text.layers ${t.layers} blocks of text.width ${t.width} and text.mlpWidth ` +
        `${t.mlpWidth}, ${blockParams(t.width, t.mlpWidth)} parameters each`,
    },
    {
      field: "text.vocabSize",
      bytes: F32 * t.vocabSize * t.width,
      what: `the token embedding [${t.vocabSize}, ${t.width}]`,
    },
    {
      field: "vision.patchSize",
      bytes: F32 * (3 * p * p * v.width + T * v.width),
      what: `the patch embedding [${v.width}, 3, ${p}, ${p}] and ${T} positions`,
    },
    {
      field: "text.contextLength",
      bytes: F32 * L * t.width,
      what: `the positional embedding [${L}, ${t.width}]`,
    },
    {
      field: "embedDim",
      bytes: F32 * E * (v.width + t.width),
      what: `the projections to ${E} dimensions`,
    },
  ];
  const parameterBytes = terms.reduce((a, x) => a + x.bytes, 0) +
    F32 * (5 * v.width + 2 * t.width + 1);
  terms.sort((a, b) => b.bytes - a.bytes);
  // The largest single tensors: weights, then one batch's activations.
  const candidates: MemoryTerm[] = [
    {
      field: "text.vocabSize",
      bytes: F32 * t.vocabSize * t.width,
      what: `the token embedding [${t.vocabSize}, ${t.width}]`,
    },
    {
      field: "vision.width",
      bytes: F32 * 3 * v.width * v.width,
      what: `the image in-projection [${3 * v.width}, ${v.width}]`,
    },
    {
      field: "vision.mlpWidth",
      bytes: F32 * v.width * v.mlpWidth,
      what: `the image MLP weight [${v.mlpWidth}, ${v.width}]`,
    },
    {
      field: "text.width",
      bytes: F32 * 3 * t.width * t.width,
      what: `the text in-projection [${3 * t.width}, ${t.width}]`,
    },
    {
      field: "text.mlpWidth",
      bytes: F32 * t.width * t.mlpWidth,
      what: `the text MLP weight [${t.mlpWidth}, ${t.width}]`,
    },
    {
      field: "vision.imageSize",
      bytes: F32 * batch * T * 3 * v.width,
      what: `the image q/k/v activations of a batch of ${batch} [${batch}, ${T}, ${3 * v.width}]`,
    },
    {
      field: "vision.imageSize",
      bytes: F32 * batch * T * v.mlpWidth,
      what: `the image MLP activations of a batch of ${batch} [${batch}, ${T}, ${v.mlpWidth}]`,
    },
    {
      field: "text.contextLength",
      bytes: F32 * batch * L * 3 * t.width,
      what: `the text q/k/v activations of a batch of ${batch} [${batch}, ${L}, ${3 * t.width}]`,
    },
    {
      field: "text.contextLength",
      bytes: F32 * batch * L * t.mlpWidth,
      what: `the text MLP activations of a batch of ${batch} [${batch}, ${L}, ${t.mlpWidth}]`,
    },
  ];
  const used = candidates.filter((x) =>
    x.what.includes("image") ? towers.image ?? true : towers.text ?? true
  );
  const largestTensor = used.reduce((a, b) => (b.bytes > a.bytes ? b : a), {
    field: "embedDim",
    bytes: 0,
    what: "nothing",
  });
  const activations = used.filter((x) => x.what.includes("of a batch"));
  const activationBytes = 8 * Math.max(0, ...activations.map((x) => x.bytes));
  return {
    parameters: parameterBytes / F32,
    parameterBytes,
    parameterTerms: terms,
    largestTensor,
    activationBytes,
  };
}

/** The host's total memory in bytes, or undefined when it cannot be read (no --allow-sys). */
export function hostMemoryBytes(): number | undefined {
  try {
    return Deno.systemMemoryInfo().total;
  } catch {
    return undefined;
  }
}

/**
 * Refuse a config whose model cannot fit (see the module comment): a single tensor of a tower
 * that runs (`towers`) larger than the adapter's buffer limits, or weights plus one batch's
 * activations larger than `limits.totalBytes` (default: the host's memory). Returns the estimate.
 * @throws Error naming the config and the field responsible.
 */
export function checkClipConfigFits(
  c: ClipConfig,
  limits: MemoryLimits = {},
  batch = 1,
  towers: Towers = {},
): ClipMemoryEstimate {
  const est = estimateClipMemory(c, batch, towers);
  const bufferLimit = Math.min(
    limits.maxBufferSize ?? Infinity,
    limits.maxStorageBufferBindingSize ?? Infinity,
  );
  if (est.largestTensor.bytes > bufferLimit) {
    const x = est.largestTensor;
    throw new Error(
      `${c.name}: ${x.field} makes ${x.what} ${fmtBytes(x.bytes)}, more than the ` +
        `${fmtBytes(bufferLimit)} one buffer of this WebGPU adapter may hold`,
    );
  }
  const total = limits.totalBytes ?? hostMemoryBytes();
  const need = est.parameterBytes + est.activationBytes;
  if (total !== undefined && !(need <= total)) {
    const top = est.parameterTerms[0];
    const why = top.bytes >= est.activationBytes
      ? `mostly ${top.field}: ${top.what}`
      : `mostly ${est.largestTensor.field}: ${est.largestTensor.what}`;
    throw new Error(
      `${c.name}: the model needs about ${fmtBytes(need)} (${why}), more than the ` +
        `${fmtBytes(total)} of memory here`,
    );
  }
  return est;
}
