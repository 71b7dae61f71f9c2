/**
 * `cli.ts predict --profile`: FLOPs, parameters and latency of the unimodal inference path
 * (backbone + fc) and the CLIP-IT path (backbone + fc + h_d + h_t + g) side by side
 * (train/profile.ts counts and measures; this file builds the model and prints), for a run's
 * model.safetensors or a backbone named like `cli.ts train` names it:
 *
 *   deno run -A cli.ts predict --profile --model runs/clipit-s0/model.safetensors
 *   deno run -A cli.ts predict --profile --backbone timm --backbone-arch vit-b16-imagenet
 *   deno run -A cli.ts predict --profile --backbone clip --arch ViT-B-16 --no-latency
 */
import { init } from "../kernels/device.ts";
import { resolveArch } from "../clip/config.ts";
import { resolveTimmConfig } from "../clip/timm_models.ts";
import { ClipItModel } from "../train/clipit.ts";
import {
  type BackboneSpec,
  buildBackbone,
  loadInferenceModel,
  readInferenceMeta,
} from "../train/models.ts";
import {
  type InferenceCost,
  inferenceCost,
  type Latency,
  measureLatency,
  modelParams,
  totalMacs,
} from "../train/profile.ts";
import { choiceOption, intOption } from "./args.ts";

/** The options of the profile (a subset of predict's). */
export interface ProfileOptions {
  /** A run's model.safetensors. */
  model?: string;
  /** Or a backbone: "clip" (with `arch`) or "timm" (with `backboneArch`). */
  backbone?: string;
  /** CLIP architecture (built-in name or config file). */
  arch?: string;
  /** timm architecture (built-in name, timm name, or config.json). */
  backboneArch?: string;
  /** Classes C of the heads (a backbone spec only; default 9). */
  classes?: string;
  /** Text space d_t of the heads (default 512, CONCH's and CLIP ViT-B's). */
  textDim?: string;
  /** Batch sizes of the latency: 1 and this (default 8). */
  batch?: string;
  /** Timed passes per measurement (default 5). */
  runs?: string;
  /** Count only, no model on the GPU. */
  noLatency?: boolean;
  /** Print JSON instead of the table. */
  json?: boolean;
}

/** Usage lines of the profile options (inside predict's usage). */
export const PROFILE_USAGE =
  `Profile (--profile): FLOPs, parameters and latency of the unimodal path (backbone + fc)
and the CLIP-IT path (backbone + fc + h_d + h_t + g) side by side:
  --model FILE          a run's model.safetensors, or a backbone:
  --backbone clip|timm  with --arch NAME|FILE (clip) or --backbone-arch NAME|FILE (timm)
  --classes N           heads' classes for a backbone (default 9)
  --text-dim N          text space of h_d (default 512; also for a baseline checkpoint)
  --batch N             latency at batch 1 and N (default 8)
  --runs N              timed passes, median reported (default 5, after 1 warm-up)
  --no-latency          count only (nothing runs)
  --json                JSON instead of the table`;

const G = 1e9;

/** MACs with a unit that shows them: "4.183032 G", "393.216 K", "162". */
function fmtMacs(n: number): string {
  if (n >= 1e8) return `${(n / G).toFixed(6)} G`;
  if (n >= 1e5) return `${(n / 1e6).toFixed(3)} M`;
  if (n >= 1e3) return `${(n / 1e3).toFixed(3)} K`;
  return String(n);
}

function fmtRow(cells: string[], widths: number[]): string {
  return cells.map((c, j) => j === 0 ? c.padEnd(widths[j]) : c.padStart(widths[j])).join("  ")
    .trimEnd();
}

/** The side-by-side table, the per-layer counts and the convention. */
export function formatProfile(
  cost: InferenceCost,
  latency: { unimodal: Latency[]; clipit: Latency[] } | null,
  notes: string[],
): string {
  const u = cost.unimodal, c = cost.clipit;
  const rows: string[][] = [["", "unimodal", "CLIP-IT", "difference"]];
  rows.push([
    "MACs (G)",
    (u.macs / G).toFixed(4),
    (c.macs / G).toFixed(4),
    `+${((c.macs - u.macs) / G).toFixed(6)}`,
  ]);
  rows.push([
    "FLOPs (G, 2 x MACs)",
    (u.flops / G).toFixed(4),
    (c.flops / G).toFixed(4),
    `+${((c.flops - u.flops) / G).toFixed(6)}`,
  ]);
  if (u.params !== null && c.params !== null) {
    rows.push([
      "parameters (M)",
      (u.params / 1e6).toFixed(4),
      (c.params / 1e6).toFixed(4),
      `+${((c.params - u.params) / 1e6).toFixed(4)}`,
    ]);
  }
  if (latency) {
    latency.unimodal.forEach((l, i) => {
      const k = latency.clipit[i];
      rows.push([
        `latency, batch ${l.batch} (ms/pass)`,
        l.median_ms.toFixed(1),
        k.median_ms.toFixed(1),
        `${k.median_ms >= l.median_ms ? "+" : ""}${(k.median_ms - l.median_ms).toFixed(1)}`,
      ]);
    });
  }
  const widths = [0, 0, 0, 0];
  for (const r of rows) r.forEach((cell, j) => widths[j] = Math.max(widths[j], cell.length));
  const b = cost.backbone;
  const out = [
    `Inference cost per image: ${b.name}, ${b.imageSize} px, ${b.tokens} tokens, features ` +
    `${b.featureDim}`,
    ...notes,
    "",
    ...rows.map((r) => fmtRow(r, widths)),
    "",
    "MACs per image by layer (count x per layer):",
  ];
  const layers = [...b.layers, ...c.heads];
  const lw = [0, 0, 0, 0];
  const lrows = layers.map((l) => [
    `  ${l.name}`,
    l.shape,
    `x${l.count}`,
    fmtMacs(l.macs * l.count),
  ]);
  for (const r of lrows) r.forEach((cell, j) => lw[j] = Math.max(lw[j], cell.length));
  out.push(...lrows.map((r) => fmtRow(r, lw)));
  out.push(
    `  backbone ${(totalMacs(b.layers) / G).toFixed(4)} G; heads: unimodal ` +
      `${totalMacs(u.heads)} MACs, CLIP-IT ${totalMacs(c.heads)} MACs`,
    "",
    cost.convention,
  );
  return out.join("\n");
}

/**
 * Run the profile (see the module comment). Returns the exit status: 0, or 2 for bad options
 * or an unreadable model.
 */
export async function profileCommand(o: ProfileOptions): Promise<number> {
  const problems: string[] = [];
  if (!o.model && !o.backbone) {
    problems.push("--profile needs --model FILE or --backbone clip|timm");
  }
  if (o.model && o.backbone) problems.push("--profile: --model or --backbone, not both");
  const backbone = choiceOption("backbone", o.backbone, ["clip", "timm"] as const, problems);
  if (backbone === "clip" && !o.arch) problems.push("--backbone clip needs --arch NAME|FILE");
  if (backbone === "timm" && !o.backboneArch) {
    problems.push("--backbone timm needs --backbone-arch NAME|FILE");
  }
  const classes = intOption("classes", o.classes, 2, problems) ?? 9;
  const textDim = intOption("text-dim", o.textDim, 1, problems) ?? 512;
  const batch = intOption("batch", o.batch, 1, problems) ?? 8;
  const runs = intOption("runs", o.runs, 1, problems) ?? 5;
  if (problems.length) {
    console.error(`predict: ${problems.join("; ")}`);
    return 2;
  }
  const notes: string[] = [];
  let spec: BackboneSpec, heads: { numClasses: number; textDim: number; textBranch: boolean };
  try {
    if (o.model) {
      const meta = await readInferenceMeta(o.model);
      spec = meta.backbone;
      heads = {
        numClasses: meta.classes.length,
        textDim: meta.textDim || textDim,
        textBranch: meta.textDim ? meta.textBranch : true,
      };
      notes.push(`model ${o.model} (${meta.stage}; ${meta.classes.length} classes)`);
      if (!meta.textDim) {
        notes.push(
          `a unimodal checkpoint: the CLIP-IT column adds h_d, h_t, g for a ${textDim}-d text ` +
            `space (random weights, to count and time them)`,
        );
      }
    } else if (backbone === "clip") {
      spec = { kind: "clip", config: await resolveArch(o.arch!) };
      heads = { numClasses: classes, textDim, textBranch: true };
    } else {
      spec = { kind: "timm", config: await resolveTimmConfig(o.backboneArch!) };
      heads = { numClasses: classes, textDim, textBranch: true };
    }
  } catch (e) {
    console.error(`predict: ${(e as Error).message}`);
    return 2;
  }
  if (!o.model) {
    notes.push(
      `${heads.numClasses} classes, text space ${heads.textDim} (random weights: cost does not ` +
        `depend on them)`,
    );
  }
  let cost: InferenceCost, latency = null;
  if (o.noLatency) {
    cost = inferenceCost(spec, heads);
  } else {
    const gpu = await init();
    let model: ClipItModel, wrapper: ClipItModel | null = null;
    try {
      if (o.model) {
        model = (await loadInferenceModel(o.model)).model;
      } else {
        model = new ClipItModel(buildBackbone(spec), heads);
      }
    } catch (e) {
      console.error(`predict: --model ${(e as Error).message}`);
      return 2;
    }
    if (!model.h_d) wrapper = new ClipItModel(model.backbone, heads);
    const m = wrapper ?? model;
    try {
      cost = inferenceCost(spec, heads, modelParams(m));
      latency = await measureLatency(m, { batches: [1, batch], runs });
    } finally {
      // The wrapper's heads are its own; the backbone belongs to `model`.
      if (wrapper) {
        for (const h of [wrapper.fc, wrapper.h_d, wrapper.h_t, wrapper.g]) h?.dispose();
      }
      model.dispose();
    }
    notes.push(
      `latency on ${gpu.adapter.description || "WebGPU"}: median of ${runs} passes after 1 ` +
        `warm-up, each = input upload + forward + readback of the logits`,
    );
  }
  if (o.json) {
    console.log(JSON.stringify({ cost, latency, notes }, null, 2));
  } else console.log(formatProfile(cost, latency, notes));
  return 0;
}
