/**
 * `cli.ts predict`: class probabilities of images through the image path only, from one
 * inference checkpoint (a run's `model.safetensors`: the backbone with its LoRA merged and the
 * heads; no text encoder), as CSV:
 *
 *   deno run -A cli.ts predict --model runs/clipit-s0/model.safetensors --images tiles/ \
 *     --out predictions.csv
 *
 * One row per image: `path,prediction,p_<class1>,p_<class2>,...` (probabilities to 6 decimals),
 * images in sorted file order (a folder is read recursively; PNG, TIFF, JPEG).
 *
 * `--profile` reports instead the cost of inference (cli/profile.ts): FLOPs, parameters and
 * latency of the unimodal path and the CLIP-IT path side by side.
 */
import { relative } from "node:path";
import { parseArgs } from "node:util";
import { init } from "../kernels/device.ts";
import { checkOutputPath, writeFileAtomic } from "../nn/formats/safe_write.ts";
import { backboneInput } from "../clip/backbone.ts";
import { listImages } from "../train/data/files.ts";
import { DataLoader } from "../train/data/loader.ts";
import { predictBatches } from "../train/evaluate.ts";
import { loadInferenceModel } from "../train/models.ts";
import { intOption } from "./args.ts";
import { PROFILE_USAGE, profileCommand } from "./profile.ts";
import { Progress } from "./progress.ts";

const USAGE = `usage: deno run -A cli.ts predict --model MODEL.safetensors --images DIR|FILE
                           --out OUT.csv [options]

Class probabilities from a run's model.safetensors (image path only; LoRA merged).

  --model FILE          a run's model.safetensors
  --images DIR|FILE     a folder (recursively: PNG, TIFF, JPEG) or one image
  --out FILE            CSV: path,prediction,p_<class>...
  --batch N             images per batch (default 32)
  --workers N           decoding workers
  --quiet               no progress bar
  -h, --help            this text

       deno run -A cli.ts predict --profile (--model FILE | --backbone clip|timm ...) [options]

${PROFILE_USAGE}`;

/** What `predict` reads, for the output check. */
function predictInputs(model: string, files: string[]): { path: string; label: string }[] {
  return [{ path: model, label: "--model" }, ...files.map((f) => ({ path: f, label: "--images" }))];
}

/** CSV field: quoted when it holds a comma, a quote or a line break. */
function csvField(s: string): string {
  return /[",\n\r]/.test(s) ? `"${s.replaceAll('"', '""')}"` : s;
}

/** Run `predict` with the arguments after the command name. */
export async function predictCommand(args: string[]): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args,
      options: {
        model: { type: "string" },
        images: { type: "string" },
        out: { type: "string" },
        batch: { type: "string" },
        workers: { type: "string" },
        quiet: { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
        profile: { type: "boolean", default: false },
        backbone: { type: "string" },
        arch: { type: "string" },
        "backbone-arch": { type: "string" },
        classes: { type: "string" },
        "text-dim": { type: "string" },
        runs: { type: "string" },
        "no-latency": { type: "boolean", default: false },
        json: { type: "boolean", default: false },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (e) {
    console.error(`predict: ${(e as Error).message}\n\n${USAGE}`);
    return 2;
  }
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const profileOnly = [
    "backbone",
    "arch",
    "backbone-arch",
    "classes",
    "text-dim",
    "runs",
    "no-latency",
    "json",
  ] as const;
  if (values.profile) {
    if (values.images || values.out) {
      console.error("predict: --profile predicts nothing: drop --images / --out");
      return 2;
    }
    return await profileCommand({
      model: values.model,
      backbone: values.backbone,
      arch: values.arch,
      backboneArch: values["backbone-arch"],
      classes: values.classes,
      textDim: values["text-dim"],
      batch: values.batch,
      runs: values.runs,
      noLatency: values["no-latency"],
      json: values.json,
    });
  }
  const problems: string[] = [];
  const misplaced = profileOnly.filter((k) => values[k] !== undefined && values[k] !== false);
  if (misplaced.length) {
    problems.push(`${misplaced.map((k) => `--${k}`).join(", ")} need --profile`);
  }
  for (const f of ["model", "images", "out"] as const) {
    if (!values[f]) problems.push(`--${f} is required`);
  }
  const batch = intOption("batch", values.batch ?? "32", 1, problems)!;
  const workers = intOption("workers", values.workers, 0, problems);
  if (problems.length) {
    console.error(`predict: ${problems.join("; ")}\n\n${USAGE}`);
    return 2;
  }
  let files: string[];
  try {
    const st = await Deno.stat(values.images!);
    files = st.isDirectory ? await listImages(values.images!) : [values.images!];
    if (files.length === 0) {
      throw new Error(`--images ${values.images}: no PNG / TIFF / JPEG files`);
    }
    // The CSV must not land on the model or an image it reads.
    await checkOutputPath(values.out!, {
      label: "--out",
      inputs: predictInputs(values.model!, files),
    });
  } catch (e) {
    console.error(`predict: ${(e as Error).message}`);
    return 2;
  }
  await init();
  let loaded;
  try {
    loaded = await loadInferenceModel(values.model!);
  } catch (e) {
    console.error(`predict: --model ${(e as Error).message}`);
    return 2;
  }
  const { model, meta } = loaded;
  model.eval();
  const loader = new DataLoader(
    { name: "test", source: { kind: "files", paths: files }, labels: new Int32Array(files.length) },
    { batchSize: batch, ...backboneInput(model.backbone), shuffle: false, workers },
  );
  const bar = new Progress("predict", files.length, "images", values.quiet);
  try {
    const p = await predictBatches(
      loader.batches(0),
      (images) => ({ logits: model.forward(images).logits }),
      meta.classes.length,
      (done) => bar.update(done),
    );
    const C = meta.classes.length;
    const lines = [
      ["path", "prediction", ...meta.classes.map((c) => `p_${c}`)].map(csvField)
        .join(","),
    ];
    const base = (await Deno.stat(values.images!)).isDirectory ? values.images! : ".";
    p.indices.forEach((sample, row) => {
      let best = 0;
      for (let c = 1; c < C; c++) if (p.probs[row * C + c] > p.probs[row * C + best]) best = c;
      const probs = Array.from({ length: C }, (_, c) => p.probs[row * C + c].toFixed(6));
      lines.push(
        [csvField(relative(base, files[sample])), csvField(meta.classes[best]), ...probs].join(","),
      );
    });
    await writeFileAtomic(values.out!, lines.join("\n") + "\n", {
      label: "--out",
      inputs: predictInputs(values.model!, files),
    });
    console.log(`predict: ${files.length} images, ${meta.stage} model, wrote ${values.out}`);
    return 0;
  } finally {
    await loader.close();
    model.dispose();
  }
}
