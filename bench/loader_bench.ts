/**
 * `deno bench -A bench/loader_bench.ts`: data loading speed.
 *
 * - decode + preprocess throughput on one thread (one image per iteration, so iter/s =
 *   images/s): the 224x224 PackBits TIFF tiles of ../shared/data/crc-tiles, and 96x96 PCAM
 *   patches read from a gzip-chunked HDF5 file, both through CLIP preprocessing to [3,224,224];
 * - the loader with its decoding workers at the training batch size (64; one batch per
 *   iteration), with and without the upload to the GPU;
 * - "feeds the GPU?": the loader under a consumer that spends CLIPIT_STEP_MS (default 100) per
 *   batch, as a training step on the GPU would, reporting the time the consumer waited.
 *
 * The PCAM file is built at start-up with Debian's python3-h5py when present (1,024 patches cut
 * from the real CRC tiles, or noise without ../shared/data, chunked one patch per chunk and
 * gzip-compressed like the real files); otherwise the 8-patch fixture is used. Workers default
 * to cores - 1 (at most 8); set CLIPIT_WORKERS to change.
 */
import { join } from "node:path";
import { init } from "../kernels/device.ts";
import { tensor } from "../nn/tensor.ts";
import { hasSharedData, SHARED_DATA } from "../tests/data_util.ts";
import type { Split } from "../train/data/datasets.ts";
import { DataLoader } from "../train/data/loader.ts";
import { defaultWorkers } from "../train/data/pool.ts";
import { type PipelineConfig, prepareImage, SampleReader } from "../train/data/sample.ts";
import { H5File } from "../nn/formats/hdf5.ts";
import { OPENAI_CLIP_MEAN, OPENAI_CLIP_STD } from "../clip/preprocess.ts";

const BATCH = 64;
const SIZE = 224;
const WORKERS = Number(Deno.env.get("CLIPIT_WORKERS") ?? defaultWorkers());
const STEP_MS = Number(Deno.env.get("CLIPIT_STEP_MS") ?? 100);
const TILES = join(SHARED_DATA, "crc-tiles");
const NEED = hasSharedData ? "" : " [needs ../shared/data]";
const cfg: PipelineConfig = {
  size: SIZE,
  mean: [...OPENAI_CLIP_MEAN],
  std: [...OPENAI_CLIP_STD],
  augment: null,
  seed: 0,
};

// ---- inputs -------------------------------------------------------------------------------

const tiffs = hasSharedData
  ? [...Deno.readDirSync(TILES)].map((e) => join(TILES, e.name)).filter((p) => p.endsWith(".tif"))
    .sort()
  : [];
/** A files split of `n` entries cycling through the TIFF tiles. */
const tiffSplit: Split = {
  name: "train",
  source: {
    kind: "files",
    paths: Array.from({ length: 20 * BATCH }, (_, i) => tiffs[i % Math.max(1, tiffs.length)]),
  },
  labels: new Int32Array(20 * BATCH),
};

async function makePcam(): Promise<{ path: string; note: string; dir: string }> {
  const fixture =
    new URL("../tests/fixtures/pcam/camelyonpatch_level_2_split_train_x.h5", import.meta.url)
      .pathname;
  const dir = await Deno.makeTempDir({ prefix: "clipit-loader-bench-" });
  const out = join(dir, "camelyonpatch_level_2_split_train_x.h5");
  const script = `
import glob, os, sys, numpy as np, h5py
tiles = sorted(glob.glob(os.path.join(sys.argv[2], "*")))
rng = np.random.default_rng(0)
patches = []
try:
    from PIL import Image
    for t in tiles:
        a = np.asarray(Image.open(t).convert("RGB"))
        for y in (0, 96):
            for x in (0, 96):
                patches.append(a[y:y + 96, x:x + 96])
except Exception:
    pass
if not patches:
    patches = [rng.integers(0, 256, (96, 96, 3), dtype=np.uint8) for _ in range(64)]
x = np.stack([patches[i % len(patches)] for i in range(1024)])
with h5py.File(sys.argv[1], "w") as f:
    f.create_dataset("x", data=x, chunks=(1, 96, 96, 3), compression="gzip")
`;
  try {
    const p = await new Deno.Command("/usr/bin/python3", {
      args: ["-c", script, out, TILES],
      stdout: "null",
      stderr: "piped",
    }).output();
    if (p.success) {
      return {
        path: out,
        dir,
        note: hasSharedData ? "1024 real-tile patches" : "1024 noise patches",
      };
    }
  } catch {
    // no python: fall back to the fixture
  }
  return { path: fixture, dir, note: "8-patch fixture (no python3-h5py)" };
}

const pcam = await makePcam();
const pcamCount = (() => {
  const f = H5File.open(pcam.path);
  try {
    return f.dataset("x").shape[0];
  } finally {
    f.close();
  }
})();
const pcamSplit: Split = {
  name: "train",
  source: { kind: "h5", path: pcam.path, dataset: "x", count: pcamCount, height: 96, width: 96 },
  labels: new Int32Array(pcamCount),
};
const pcamBatch = Math.min(BATCH, pcamCount);

// ---- one thread ---------------------------------------------------------------------------

const tiffReader = new SampleReader(tiffSplit.source);
const pcamReader = new SampleReader(pcamSplit.source);
let ti = 0, pi = 0;

Deno.bench({
  name: `decode + preprocess, 1 thread: 224x224 PackBits TIFF tile -> [3,224,224] (1 image)${NEED}`,
  group: "one image",
  ignore: !hasSharedData,
  async fn() {
    prepareImage(await tiffReader.image(ti++ % tiffs.length), cfg, 0, 0);
  },
});

Deno.bench({
  name: `decode only, 1 thread: 224x224 PackBits TIFF tile (1 image)${NEED}`,
  group: "one image",
  ignore: !hasSharedData,
  async fn() {
    await tiffReader.image(ti++ % tiffs.length);
  },
});

Deno.bench({
  name:
    `read + preprocess, 1 thread: 96x96 PCAM patch (gzip HDF5) -> [3,224,224] (1 image; ${pcam.note})`,
  group: "one image",
  async fn() {
    prepareImage(await pcamReader.image(pi++ % pcamCount), cfg, 0, 0);
  },
});

Deno.bench({
  name: `read only, 1 thread: 96x96 PCAM patch (gzip HDF5) (1 image)`,
  group: "one image",
  async fn() {
    await pcamReader.image(pi++ % pcamCount);
  },
});

// ---- the loader -----------------------------------------------------------------------------

/** Endless batches of a loader, epoch after epoch. */
function endless(loader: DataLoader, gpu: boolean): () => Promise<number> {
  let epoch = 0;
  let it: AsyncGenerator<{ size: number }> | null = null;
  return async () => {
    for (;;) {
      it ??= gpu ? loader.batches(epoch) : loader.cpuBatches(epoch);
      const r = await it.next();
      if (!r.done) {
        if (gpu) {
          const b = r.value as unknown as {
            images: { dispose(): void };
            labels: { dispose(): void };
          };
          b.images.dispose();
          b.labels.dispose();
        }
        return r.value.size;
      }
      it = null;
      epoch++;
    }
  };
}

const tiffLoader = hasSharedData
  ? new DataLoader(tiffSplit, { batchSize: BATCH, workers: WORKERS, size: SIZE })
  : null;
const pcamLoader = new DataLoader(pcamSplit, {
  batchSize: pcamBatch,
  workers: WORKERS,
  size: SIZE,
});
const nextTiff = tiffLoader ? endless(tiffLoader, false) : null;
const nextPcam = endless(pcamLoader, false);
// Let the workers start (module loading) before timing.
await nextPcam();
if (nextTiff) await nextTiff();

Deno.bench({
  name:
    `loader, ${WORKERS} workers: batch of ${BATCH} TIFF tiles -> [${BATCH},3,224,224] (CPU)${NEED}`,
  group: "loader batch",
  ignore: !hasSharedData,
  async fn() {
    await nextTiff!();
  },
});

Deno.bench({
  name:
    `loader, ${WORKERS} workers: batch of ${pcamBatch} PCAM patches -> [${pcamBatch},3,224,224] (CPU)`,
  group: "loader batch",
  async fn() {
    await nextPcam();
  },
});

let gpuReady = false;
try {
  await init();
  gpuReady = true;
} catch (err) {
  console.log(`no WebGPU device (${(err as Error).message}): GPU benches skipped`);
}
const tiffGpu = gpuReady && tiffLoader
  ? endless(new DataLoader(tiffSplit, { batchSize: BATCH, workers: WORKERS }), true)
  : null;
if (tiffGpu) await tiffGpu();
const upload = new Float32Array(BATCH * 3 * SIZE * SIZE);

Deno.bench({
  name: `GPU upload only: one [${BATCH},3,224,224] float32 batch (38.5 MB) + int32 labels`,
  group: "gpu",
  ignore: !gpuReady,
  fn() {
    const t = tensor(upload, [BATCH, 3, SIZE, SIZE]);
    const l = tensor(new Int32Array(BATCH), [BATCH], { dtype: "int32" });
    t.dispose();
    l.dispose();
  },
});

Deno.bench({
  name:
    `loader + GPU upload, ${WORKERS} workers: batch of ${BATCH} TIFF tiles as GPU tensors${NEED}`,
  group: "gpu",
  ignore: !tiffGpu,
  async fn() {
    await tiffGpu!();
  },
});

// ---- does the loader keep the GPU fed? ------------------------------------------------------

/** Runs `batches` batches under a consumer spending `stepMs` per batch; returns throughput and stall. */
async function feed(next: () => Promise<number>, batches: number, stepMs: number) {
  let waited = 0, images = 0;
  const start = performance.now();
  for (let i = 0; i < batches; i++) {
    const t = performance.now();
    images += await next();
    waited += performance.now() - t;
    if (stepMs > 0) await new Promise((r) => setTimeout(r, stepMs));
  }
  const total = performance.now() - start;
  return {
    imagesPerSec: (images / total) * 1000,
    stall: waited / total,
    waitPerBatch: waited / batches,
  };
}

let fedReported = false;

Deno.bench({
  name:
    `feeds the GPU? loader at batch ${BATCH} under a ${STEP_MS} ms training step (answer in the log line; its timing is not meaningful)`,
  group: "feed",
  n: 1,
  warmup: 0,
  async fn() {
    // Deno may call a bench more than once: measure and report once.
    if (fedReported) return;
    fedReported = true;
    for (
      const [what, next, bs] of [["TIFF tiles", nextTiff, BATCH], [
        "PCAM patches",
        nextPcam,
        pcamBatch,
      ]] as const
    ) {
      if (!next) continue;
      const free = await feed(next, 6, 0);
      const fed = await feed(next, 6, STEP_MS);
      const breakEven = (bs / free.imagesPerSec) * 1000;
      console.log(
        `${what}: loader alone ${free.imagesPerSec.toFixed(0)} images/s with ${WORKERS} workers ` +
          `= one batch of ${bs} every ${
            breakEven.toFixed(0)
          } ms; under a ${STEP_MS} ms step the consumer ` +
          `waited ${fed.waitPerBatch.toFixed(1)} ms per batch (${
            (fed.stall * 100).toFixed(1)
          }% of the time): ` +
          (breakEven <= STEP_MS
            ? "keeps the GPU fed"
            : `starves a GPU faster than ${breakEven.toFixed(0)} ms/step`),
      );
    }
  },
});

globalThis.addEventListener("unload", () => {
  tiffReader.close();
  pcamReader.close();
  Deno.removeSync(pcam.dir, { recursive: true });
});
