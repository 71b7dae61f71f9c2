/**
 * `cli.ts embed`: CLIP image and text embeddings of a folder of images and a file of texts,
 * written to one safetensors file:
 *
 *   deno run -A cli.ts embed --arch ViT-B-16 --weights open_clip_model.safetensors \
 *     --images tiles/ --texts reports.txt --out embeds.safetensors
 *
 * `image_embeds` [N, d]: one row per image file of `--images` (PNG / TIFF / JPEG, sorted by file
 * name, decoded by the worker-pool DataLoader); `text_embeds` [M, d]: one row per line of
 * `--texts`. Both L2-normalised, float32 (the loops are clip/embed.ts's). The metadata lists the
 * image file names, the architecture and the weights. `--random-init` (or `--weights random`)
 * uses a randomly initialised model: a smoke test and a benchmark without real weights.
 * Progress goes to stderr with images/s and texts/s.
 */
import { parseArgs } from "node:util";
import { relative } from "node:path";
import { init } from "../kernels/device.ts";
import { writeSafetensors } from "../nn/formats/safetensors.ts";
import { resolveArch } from "../clip/config.ts";
import { embedImageBatches, embedTexts, type ImageBatch } from "../clip/embed.ts";
import { checkpointConfig, loadClipCheckpoint } from "../clip/load.ts";
import { ClipModel } from "../clip/model.ts";
import { ClipTokenizer } from "../clip/tokenizer.ts";
import { listImages } from "../train/data/files.ts";
import { DataLoader } from "../train/data/loader.ts";
import { defaultWorkers } from "../train/data/pool.ts";
import { findTokenizer } from "./models.ts";
import { Progress } from "./progress.ts";

const USAGE = `Usage: deno run -A cli.ts embed --arch ARCH --weights FILE --out OUT.safetensors
                         [--images DIR] [--texts FILE] [options]

  --arch NAME|FILE     built-in config (ViT-B-32, ViT-B-16, ViT-L-14, *-quickgelu, tiny) or a
                       JSON config (OpenCLIP, open_clip_config.json, Hugging Face config.json);
                       optional when the weights carry or sit next to a config
  --weights FILE|DIR   safetensors or torch .bin/.pt checkpoint (OpenCLIP or Hugging Face names);
                       "random" = --random-init
  --random-init        random weights (seeded by --seed), no checkpoint
  --images DIR         embed every image file in DIR (not its subfolders), in sorted file-name
                       order; hidden files are skipped, symlinks followed, and a file with an
                       image extension that is not PNG/TIFF/JPEG (.bmp, .webp, ...) is an error
  --texts FILE         embed every line of FILE
  --out FILE           output safetensors: image_embeds [N, d], text_embeds [M, d] (float32)
  --tokenizer PATH     CLIP BPE merges (.txt.gz) or a folder with vocab.json + merges.txt
                       (default: beside the weights, else ../shared/data/clip-bpe)
  --batch N            images per GPU batch (default 8); texts use 4N
  --workers N          image decoding workers (default: cores - 1, at most 8; 0 = this thread)
  --seed N             seed of --random-init (default 0)
  --quiet              no progress bar`;

/** The image files of `dir` (see train/data/files.ts), as names relative to `dir`. */
async function imageFiles(dir: string): Promise<string[]> {
  try {
    return (await listImages(dir, { recursive: false })).map((p) => relative(dir, p));
  } catch (e) {
    throw new Error(`--images ${dir}: ${(e as Error).message}`);
  }
}

/** Lines of a text file (a final newline does not add an empty line). */
async function readLines(path: string): Promise<string[]> {
  let text: string;
  try {
    text = await Deno.readTextFile(path);
  } catch (e) {
    throw new Error(`--texts ${path}: ${(e as Error).message}`);
  }
  const lines = text.split(/\r?\n/);
  if (lines.length > 0 && lines[lines.length - 1] === "") lines.pop();
  return lines;
}

/**
 * The images `dir/files[i]` as preprocessed batches, decoded by the worker-pool DataLoader in
 * file order. The loader is closed when the iteration ends (or stops early).
 */
async function* imageBatches(
  dir: string,
  files: string[],
  opts: {
    size: number;
    mean: readonly number[];
    std: readonly number[];
    batch: number;
    workers: number;
  },
): AsyncGenerator<ImageBatch> {
  await using loader = new DataLoader(
    {
      name: "test",
      source: { kind: "files", paths: files.map((f) => `${dir}/${f}`) },
      labels: new Int32Array(files.length),
    },
    {
      batchSize: opts.batch,
      size: opts.size,
      mean: opts.mean,
      std: opts.std,
      shuffle: false,
      workers: opts.workers,
    },
  );
  for await (const b of loader.cpuBatches()) yield { images: b.images, count: b.size };
}

/**
 * Run `embed` with the arguments after the command name. Returns the exit status: 0 on success,
 * 2 on bad usage (the usage text goes to stderr). Errors while loading or embedding (a missing
 * file, a checkpoint that does not fit the architecture, an undecodable image) are thrown with a
 * message naming the file.
 */
export async function embedCommand(args: string[]): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args,
      options: {
        arch: { type: "string" },
        weights: { type: "string" },
        "random-init": { type: "boolean", default: false },
        images: { type: "string" },
        texts: { type: "string" },
        out: { type: "string" },
        tokenizer: { type: "string" },
        batch: { type: "string", default: "8" },
        seed: { type: "string", default: "0" },
        workers: { type: "string" },
        quiet: { type: "boolean", default: false },
        help: { type: "boolean", short: "h", default: false },
      },
      strict: true,
      allowPositionals: false,
    }));
  } catch (e) {
    console.error(`embed: ${(e as Error).message}\n\n${USAGE}`);
    return 2;
  }
  if (values.help) {
    console.log(USAGE);
    return 0;
  }
  const random = values["random-init"] || values.weights === "random";
  const problems: string[] = [];
  if (!values.out) problems.push("--out is required");
  if (!values.images && !values.texts) problems.push("give --images DIR and/or --texts FILE");
  if (!random && !values.weights) problems.push("give --weights FILE or --random-init");
  if (random && !values.arch) problems.push("--random-init needs --arch");
  const batch = Number(values.batch), seed = Number(values.seed);
  if (!Number.isInteger(batch) || batch < 1) {
    problems.push(`--batch must be >= 1, got ${values.batch}`);
  }
  if (!Number.isInteger(seed)) problems.push(`--seed must be an integer, got ${values.seed}`);
  const workers = values.workers === undefined ? defaultWorkers() : Number(values.workers);
  if (!Number.isInteger(workers) || workers < 0) {
    problems.push(`--workers must be a non-negative integer, got ${values.workers}`);
  }
  if (problems.length) {
    console.error(`embed: ${problems.join("; ")}\n\n${USAGE}`);
    return 2;
  }
  const weights = random ? null : values.weights!;
  const quiet = values.quiet;

  const config = random
    ? await resolveArch(values.arch!)
    : await checkpointConfig(weights!, values.arch);
  // Read the inputs before the slow parts, so a typo fails fast.
  const files = values.images ? await imageFiles(values.images) : [];
  if (values.images && files.length === 0) {
    throw new Error(`--images ${values.images}: no PNG / TIFF / JPEG files`);
  }
  const lines = values.texts ? await readLines(values.texts) : [];
  const tokenizer = values.texts
    ? await ClipTokenizer.load(await findTokenizer(values.tokenizer, weights))
    : null;
  if (tokenizer && tokenizer.vocabSize > config.text.vocabSize) {
    throw new Error(
      `the tokenizer has ${tokenizer.vocabSize} tokens but the ${config.name} model only ` +
        `${config.text.vocabSize}: wrong --tokenizer for this model`,
    );
  }

  const gpu = await init();
  const t0 = performance.now();
  const model = new ClipModel(config, { seed });
  if (weights) await loadClipCheckpoint(model, weights);
  const loadSeconds = (performance.now() - t0) / 1000;
  if (!quiet) {
    console.error(
      `embed: ${config.name} (${(model.numParameters() / 1e6).toFixed(1)} M parameters, ` +
        `${weights ? `weights ${weights}` : `random init, seed ${seed}`}) ready in ` +
        `${loadSeconds.toFixed(1)} s on ${gpu.adapter.description || "WebGPU"}`,
    );
  }

  const tensors: Record<string, { dtype: "F32"; shape: number[]; data: Float32Array }> = {};
  const summary: string[] = [];
  const d = config.embedDim;
  try {
    if (values.images) {
      const bar = new Progress("images", files.length, "images", quiet);
      bar.update(0);
      const { imageSize: size } = config.vision;
      const data = await embedImageBatches(
        model,
        imageBatches(values.images, files, {
          size,
          mean: config.mean,
          std: config.std,
          batch,
          workers,
        }),
        (done) => bar.update(done),
      );
      tensors.image_embeds = { dtype: "F32", shape: [files.length, d], data };
      const seconds = bar.elapsed;
      summary.push(
        `${files.length} images in ${seconds.toFixed(1)} s (${
          (files.length / seconds).toFixed(2)
        } images/s)`,
      );
    }
    if (tokenizer) {
      const bar = new Progress("texts ", lines.length, "texts", quiet);
      bar.update(0);
      const data = await embedTexts(model, tokenizer, lines, {
        batch: 4 * batch,
        onProgress: (done) => bar.update(done),
      });
      tensors.text_embeds = { dtype: "F32", shape: [lines.length, d], data };
      const seconds = bar.elapsed;
      summary.push(
        `${lines.length} texts in ${seconds.toFixed(1)} s (${
          (lines.length / seconds).toFixed(2)
        } texts/s)`,
      );
    }
  } finally {
    model.dispose();
  }
  await writeSafetensors(values.out!, tensors, {
    arch: config.name,
    weights: weights ?? `random (seed ${seed})`,
    embed_dim: String(d),
    image_dir: values.images ?? "",
    image_files: JSON.stringify(files),
    text_file: values.texts ?? "",
  });
  console.log(`embed: ${summary.join("; ")}; wrote ${values.out}`);
  return 0;
}
