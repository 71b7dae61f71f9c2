/**
 * `cli.ts embed`: CLIP image and text embeddings of a folder of images and a file of texts,
 * written to one safetensors file:
 *
 *   deno run -A cli.ts embed --arch ViT-B-16 --weights open_clip_model.safetensors \
 *     --images tiles/ --texts reports.txt --out embeds.safetensors
 *
 * `image_embeds` [N, d]: one row per image file of `--images` (PNG / TIFF / JPEG, sorted by file
 * name, decoded by the worker-pool DataLoader); `text_embeds` [M, d]: one row per non-blank line
 * of `--texts` (read by nn/formats/text.ts: BOM removed, encoding checked, the original line
 * numbers in the `text_line_numbers` metadata). Both L2-normalised, float32 (the loops are
 * clip/embed.ts's). The metadata lists the image file names, the architecture and the weights.
 * `--random-init` (or `--weights random`) uses a randomly initialised model: a smoke test and a
 * benchmark without real weights. Progress goes to stderr with images/s and texts/s.
 *
 * Everything cheap is checked before anything expensive: the flags (contradictions refused), the
 * config (degenerate values, its memory against this machine), `--out` (safe_write.ts's checks,
 * including that it is none of the inputs), the texts, the tokenizer against the config, and
 * every image's header; only then is the GPU started and the model built. An image that still
 * fails to decode later is skipped (`--on-bad-image skip`, listed in the `skipped_images`
 * metadata) or stops the run; then the rows finished so far are written beside `--out` as
 * `<out>.partial.safetensors` with the missing images listed, and `--out` is left as it was.
 */
import { parseArgs } from "node:util";
import { relative } from "node:path";
import { init } from "../kernels/device.ts";
import { writeSafetensors } from "../nn/formats/safetensors.ts";
import { checkOutputPath, type InputRef } from "../nn/formats/safe_write.ts";
import { readTextLines, type TextLines } from "../nn/formats/text.ts";
import { ImageDecodeError, probeImage } from "../nn/formats/image.ts";
import { type ClipConfig, resolveArch } from "../clip/config.ts";
import { checkClipConfigFits, type MemoryLimits } from "../clip/config_check.ts";
import { embedImageBatches, embedTexts, type ImageBatch } from "../clip/embed.ts";
import { CHECKPOINT_FILE_NAMES, checkpointConfig, loadClipCheckpoint } from "../clip/load.ts";
import { ClipModel } from "../clip/model.ts";
import { ClipTokenizer } from "../clip/tokenizer.ts";
import { type ListDuplicate, listImages } from "../train/data/files.ts";
import { type BadImage, DataLoader, type OnBadImage } from "../train/data/loader.ts";
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
                       order; hidden files are skipped, symlinks followed (a file reachable under
                       two names is embedded once), and a file with an image extension that is
                       not PNG/TIFF/JPEG (.bmp, .webp, ...) is a bad image
  --on-bad-image P     error (default): an unreadable image stops the run (found before the
                       model is built when its header is bad; later, the finished rows go to
                       OUT.partial.safetensors); skip: leave it out and list it in the output
  --texts FILE         embed every non-blank line of FILE (UTF-8, or UTF-16 with a BOM)
  --out FILE           output safetensors: image_embeds [N, d], text_embeds [M, d] (float32);
                       must not exist as anything but a regular file of its own (no symlink, no
                       hard link, no input of this run)
  --tokenizer PATH     CLIP BPE merges (.txt.gz) or a folder with vocab.json + merges.txt
                       (default: beside the weights, else ../shared/data/clip-bpe)
  --batch N            images per GPU batch (default 8); texts use 4N
  --workers N          image decoding workers (default: cores - 1, at most 8; 0 = this thread)
  --seed N             seed of --random-init (default 0)
  --quiet              no progress bar

Exit status: 0 done, 1 an input or the run failed (the message names the file), 2 bad usage.`;

/** The image files of `dir` (see train/data/files.ts), as names relative to `dir`. */
async function imageFiles(dir: string): Promise<{ files: string[]; duplicates: string[] }> {
  const duplicates: ListDuplicate[] = [];
  try {
    const paths = await listImages(dir, { recursive: false, duplicates });
    return {
      files: paths.map((p) => relative(dir, p)),
      duplicates: duplicates.map((d) => `${relative(dir, d.path)} = ${relative(dir, d.first)}`),
    };
  } catch (e) {
    throw new Error(`--images ${dir}: ${(e as Error).message}`);
  }
}

/**
 * Every image's header, 32 at a time (a few kilobytes each): the bad ones with their reasons,
 * and the notes (16-bit grayscale) by note.
 */
async function probeAll(
  dir: string,
  files: string[],
): Promise<{ bad: BadImage[]; notes: Map<string, string[]> }> {
  const bad: BadImage[] = [];
  const notes = new Map<string, string[]>();
  let next = 0;
  const worker = async () => {
    while (next < files.length) {
      const f = files[next++];
      try {
        const h = await probeImage(`${dir}/${f}`);
        if (h.note) notes.set(h.note, [...(notes.get(h.note) ?? []), f]);
      } catch (e) {
        if (!(e instanceof ImageDecodeError)) throw e;
        bad.push({ path: f, reason: e.reason });
      }
    }
  };
  await Promise.all(Array.from({ length: Math.min(32, files.length) }, worker));
  const byPath = (a: BadImage, b: BadImage) => (a.path < b.path ? -1 : a.path > b.path ? 1 : 0);
  bad.sort(byPath);
  for (const list of notes.values()) list.sort();
  return { bad, notes };
}

/**
 * The images `dir/files[i]` as preprocessed batches, decoded by the worker-pool DataLoader in
 * file order; the index of every image embedded is pushed to `done`, and images skipped under
 * `onBadImage: "skip"` to `skipped`. The loader is closed when the iteration ends (or stops).
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
    onBadImage: OnBadImage;
    done: number[];
    skipped: BadImage[];
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
      onBadImage: opts.onBadImage,
    },
  );
  try {
    for await (const b of loader.cpuBatches()) {
      opts.done.push(...b.indices);
      yield { images: b.images, count: b.size };
    }
  } finally {
    for (const s of loader.skipped) {
      opts.skipped.push({ path: relative(dir, s.path), reason: s.reason });
    }
  }
}

/** The config against `limits`: image batches of `batch`, text batches of `4 * batch`. */
function fitsHere(
  config: ClipConfig,
  limits: MemoryLimits,
  batch: number,
  images: boolean,
  texts: boolean,
): void {
  if (images) checkClipConfigFits(config, limits, batch, { image: true, text: false });
  if (texts) checkClipConfigFits(config, limits, 4 * batch, { image: false, text: true });
}

/** `out` with `.partial` before its `.safetensors` extension (or at the end). */
export function partialPath(out: string): string {
  return out.endsWith(".safetensors")
    ? `${out.slice(0, -".safetensors".length)}.partial.safetensors`
    : `${out}.partial`;
}

function note(message: string): void {
  console.error(`embed: note: ${message}`);
}

function listed(items: string[], max = 10): string {
  return items.slice(0, max).join(", ") +
    (items.length > max ? `, ... (${items.length} in all)` : "");
}

/** The files a run reads, which `--out` may not be. */
async function runInputs(
  values: { weights?: string; texts?: string; arch?: string },
  tokenizer: string | null,
  imageDir: string | undefined,
  files: string[],
): Promise<InputRef[]> {
  const inputs: InputRef[] = [];
  const add = async (path: string | undefined, label: string, folderFiles: readonly string[]) => {
    if (!path) return;
    const st = await Deno.stat(path).catch(() => null);
    if (!st) return; // a built-in --arch name, not a file
    inputs.push({ path, label });
    if (st.isDirectory) {
      for (const f of folderFiles) {
        inputs.push({ path: `${path}/${f}`, label });
      }
    }
  };
  if (values.weights !== "random") await add(values.weights, "--weights", CHECKPOINT_FILE_NAMES);
  await add(values.texts, "--texts", []);
  await add(values.arch, "--arch", []);
  await add(tokenizer ?? undefined, "--tokenizer", ["vocab.json", "merges.txt"]);
  for (const f of files) inputs.push({ path: `${imageDir}/${f}`, label: "--images" });
  return inputs;
}

/** The contradictions and bad values among the flags, as messages (empty when all is well). */
function usageProblems(v: Record<string, string | boolean | undefined>): string[] {
  const problems: string[] = [];
  const random = v["random-init"] === true || v.weights === "random";
  if (!v.out) problems.push("--out is required");
  if (!v.images && !v.texts) problems.push("give --images DIR and/or --texts FILE");
  if (!random && !v.weights) problems.push("give --weights FILE or --random-init");
  if (v["random-init"] && v.weights !== undefined && v.weights !== "random") {
    problems.push(`--weights ${v.weights} and --random-init contradict each other: give one`);
  }
  if (random && !v.arch) problems.push("--random-init needs --arch");
  if (!random && v.seed !== undefined) {
    problems.push("--seed only seeds --random-init; the weights come from --weights");
  }
  if (v.tokenizer !== undefined && !v.texts) problems.push("--tokenizer is only used with --texts");
  if (v["on-bad-image"] !== undefined && !v.images) {
    problems.push("--on-bad-image is only used with --images");
  }
  const policy = v["on-bad-image"] ?? "error";
  if (policy !== "error" && policy !== "skip") {
    problems.push(`--on-bad-image must be error or skip, got ${policy}`);
  }
  const batch = Number(v.batch ?? "8"), seed = Number(v.seed ?? "0");
  if (!Number.isInteger(batch) || batch < 1 || batch > 4096) {
    problems.push(`--batch must be an integer in [1, 4096], got ${v.batch}`);
  }
  if (!Number.isSafeInteger(seed)) problems.push(`--seed must be an integer, got ${v.seed}`);
  if (v.workers !== undefined) {
    const w = Number(v.workers);
    if (!Number.isInteger(w) || w < 0 || w > 256) {
      problems.push(`--workers must be an integer in [0, 256], got ${v.workers}`);
    }
  }
  return problems;
}

/**
 * Run `embed` with the arguments after the command name. Returns the exit status: 0 on success,
 * 2 on bad usage (the usage text goes to stderr). Errors while checking, loading or embedding
 * (a missing or unsafe file, a config that cannot fit, a checkpoint that does not fit the
 * architecture, an undecodable image) are thrown with a message naming the file or option;
 * work finished before a late failure is written to {@link partialPath} first.
 */
export async function embedCommand(args: string[]): Promise<number> {
  let values;
  try {
    ({ values } = parseArgs({
      args,
      options: {
        arch: { type: "string" },
        weights: { type: "string" },
        "random-init": { type: "boolean" },
        images: { type: "string" },
        "on-bad-image": { type: "string" },
        texts: { type: "string" },
        out: { type: "string" },
        tokenizer: { type: "string" },
        batch: { type: "string" },
        seed: { type: "string" },
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
  const problems = usageProblems(values);
  if (problems.length) {
    console.error(`embed: ${problems.join("; ")}\n\n${USAGE}`);
    return 2;
  }
  const random = values["random-init"] === true || values.weights === "random";
  const batch = Number(values.batch ?? "8"), seed = Number(values.seed ?? "0");
  const workers = values.workers === undefined ? defaultWorkers() : Number(values.workers);
  const onBadImage = (values["on-bad-image"] ?? "error") as OnBadImage;
  const weights = random ? null : values.weights!;
  const out = values.out!;
  const quiet = values.quiet;

  // ---- cheap checks, before anything expensive --------------------------------------------
  const config: ClipConfig = random
    ? await resolveArch(values.arch!)
    : await checkpointConfig(weights!, values.arch);
  fitsHere(config, {}, batch, !!values.images, !!values.texts);
  let files: string[] = [];
  if (values.images) {
    const listing = await imageFiles(values.images);
    files = listing.files;
    if (files.length === 0) {
      throw new Error(`--images ${values.images}: no PNG / TIFF / JPEG files`);
    }
    if (listing.duplicates.length) {
      note(
        `--images: ${listing.duplicates.length} file(s) reachable under a second name ` +
          `embedded once: ${listed(listing.duplicates)}`,
      );
    }
  }
  const texts: TextLines | null = values.texts
    ? await readTextLines(values.texts, { label: "--texts" })
    : null;
  const tokenizerPath = values.texts ? await findTokenizer(values.tokenizer, weights) : null;
  const inputs = await runInputs(values, tokenizerPath, values.images, files);
  await checkOutputPath(out, { label: "--out", inputs });
  await checkOutputPath(partialPath(out), { label: "--out (its partial file)", inputs });
  if (texts && texts.skippedBlank > 0) {
    note(
      `--texts ${values.texts}: ${texts.skippedBlank} blank line(s) skipped; the line number ` +
        `of every text is in the text_line_numbers metadata`,
    );
  }
  const tokenizer = tokenizerPath ? await ClipTokenizer.load(tokenizerPath) : null;
  if (tokenizer && tokenizer.vocabSize > config.text.vocabSize) {
    throw new Error(
      `--tokenizer ${tokenizerPath}: the tokenizer has ${tokenizer.vocabSize} tokens but the ` +
        `${config.name} model only ${config.text.vocabSize}: wrong tokenizer for this model`,
    );
  }
  const skipped: BadImage[] = [];
  if (values.images) {
    const probe = await probeAll(values.images, files);
    for (const [text, names] of probe.notes) {
      note(`${names.length} image(s) are ${text}: ${listed(names)}`);
    }
    if (probe.bad.length && onBadImage === "error") {
      throw new Error(
        `--images ${values.images}: ${probe.bad.length} image(s) cannot be read: ${
          listed(probe.bad.map((b) => `${b.path} (${b.reason})`), 5)
        }; nothing was embedded (--on-bad-image skip leaves them out)`,
      );
    }
    const badSet = new Set(probe.bad.map((b) => b.path));
    skipped.push(...probe.bad);
    files = files.filter((f) => !badSet.has(f));
    if (files.length === 0) throw new Error(`--images ${values.images}: no readable image`);
  }

  // ---- the expensive part ---------------------------------------------------------------------
  const gpu = await init();
  fitsHere(config, gpu.adapter.limits, batch, !!values.images, !!values.texts);
  const t0 = performance.now();
  const model = new ClipModel(config, { seed });
  const tensors: Record<string, { dtype: "F32"; shape: number[]; data: Float32Array }> = {};
  const summary: string[] = [];
  const d = config.embedDim;
  const done: number[] = [];
  let failure: Error | null = null;
  try {
    if (weights) await loadClipCheckpoint(model, weights);
    if (!quiet) {
      console.error(
        `embed: ${config.name} (${(model.numParameters() / 1e6).toFixed(1)} M parameters, ` +
          `${weights ? `weights ${weights}` : `random init, seed ${seed}`}) ready in ` +
          `${((performance.now() - t0) / 1000).toFixed(1)} s on ${
            gpu.adapter.description || "WebGPU"
          }`,
      );
    }
    if (values.images) {
      const bar = new Progress("images", files.length, "images", quiet);
      bar.update(0);
      const { imageSize: size } = config.vision;
      const source = imageBatches(values.images, files, {
        size,
        mean: config.mean,
        std: config.std,
        batch,
        workers,
        onBadImage,
        done,
        skipped,
      });
      // A late failure ends the stream; the rows finished before it are kept.
      const guarded = async function* () {
        try {
          yield* source;
        } catch (e) {
          failure = e as Error;
        }
      };
      const data = await embedImageBatches(model, guarded(), (n) => bar.update(n));
      tensors.image_embeds = { dtype: "F32", shape: [done.length, d], data };
      const seconds = bar.elapsed;
      summary.push(
        `${done.length} images in ${seconds.toFixed(1)} s (${
          (done.length / seconds).toFixed(2)
        } images/s)`,
      );
    }
    if (tokenizer && texts && !failure) {
      const bar = new Progress("texts ", texts.lines.length, "texts", quiet);
      bar.update(0);
      const data = await embedTexts(model, tokenizer, texts.lines, {
        batch: 4 * batch,
        onProgress: (n) => bar.update(n),
      });
      tensors.text_embeds = { dtype: "F32", shape: [texts.lines.length, d], data };
      const seconds = bar.elapsed;
      summary.push(
        `${texts.lines.length} texts in ${seconds.toFixed(1)} s (${
          (texts.lines.length / seconds).toFixed(2)
        } texts/s)`,
      );
    }
  } catch (e) {
    failure = e as Error;
  } finally {
    model.dispose();
  }
  const embedded = done.map((i) => files[i]);
  const metadata: Record<string, string> = {
    arch: config.name,
    weights: weights ?? `random (seed ${seed})`,
    embed_dim: String(d),
    image_dir: values.images ?? "",
    image_files: JSON.stringify(embedded),
    skipped_images: JSON.stringify(skipped.map((b) => ({ file: b.path, reason: b.reason }))),
    text_file: values.texts ?? "",
    text_line_numbers: JSON.stringify(texts?.lineNumbers ?? []),
    text_blank_lines_skipped: String(texts?.skippedBlank ?? 0),
  };
  if (failure) {
    // Never discard finished work silently: write it beside --out, with what is missing.
    const doneSet = new Set(done);
    const missing = files.filter((_, i) => !doneSet.has(i));
    const partial = partialPath(out);
    const finished = Object.keys(tensors).length > 0;
    if (finished) {
      await writeSafetensors(partial, tensors, {
        ...metadata,
        complete: "false",
        error: (failure as Error).message,
        missing_images: JSON.stringify(missing),
        texts_embedded: String(!!tensors.text_embeds),
      }, { label: "--out (its partial file)", inputs });
    }
    throw new Error(
      `${(failure as Error).message}\n` + (finished
        ? `the ${embedded.length} image(s)${tensors.text_embeds ? " and the texts" : ""} ` +
          `embedded before the failure are in ${partial} (metadata missing_images lists the ` +
          `${missing.length} not embedded${
            texts && !tensors.text_embeds ? "; texts not embedded" : ""
          }); `
        : "") +
        `--out ${out} was not written` +
        (values.images && onBadImage === "error" && failure instanceof ImageDecodeError
          ? " (--on-bad-image skip leaves unreadable images out)"
          : ""),
      { cause: failure },
    );
  }
  if (skipped.length) {
    note(
      `${skipped.length} unreadable image(s) left out (listed in the skipped_images ` +
        `metadata): ${listed(skipped.map((b) => `${b.path} (${b.reason})`), 5)}`,
    );
  }
  await writeSafetensors(out, tensors, { ...metadata, complete: "true" }, {
    label: "--out",
    inputs,
  });
  console.log(`embed: ${summary.join("; ")}; wrote ${out}`);
  return 0;
}
