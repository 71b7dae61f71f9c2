// Scratch: compare demo variants on the demo world (not committed).
import { join } from "node:path";
import { init } from "../kernels/device.ts";
import { loadClip } from "../clip/load.ts";
import { ClipImageBackbone, ClipTextEncoder } from "../clip/backbone.ts";
import { WordTokenizer } from "../clip/word_tokenizer.ts";
import { readCorpus } from "../clip/pairing_corpus.ts";
import { pairingFileName } from "../clip/pairing.ts";
import { openDataset } from "../train/data/datasets.ts";
import { WORLD_CLASSES } from "../train/data/world_factors.ts";
import { runStage, type StageInputs } from "../train/pipeline.ts";
import { RunDir, RUN_FILES } from "../train/run.ts";
import type { ClipItSettings } from "../train/clipit_train.ts";
import { builtinConfig } from "../clip/config.ts";

const out = "/tmp/demo1";
await init();
const ds = await openDataset("csv", join(out, "world/labels.csv"), { classes: [...WORLD_CLASSES] });
const tok = WordTokenizer.fromJSON(JSON.parse(await Deno.readTextFile(join(out, "world/tokenizer.json"))));
const corpus = await readCorpus(join(out, "world/corpus.txt"));
const pairing: StageInputs["pairing"] = {};
for (const s of ds.splits) {
  const lines = (await Deno.readTextFile(join(out, "pairing", pairingFileName(s.name)))).trim().split("\n").slice(1).map((l) => JSON.parse(l));
  pairing[s.name] = { reports: Int32Array.from(lines, (r) => r.reports[0]), scores: Float32Array.from(lines, (r) => r.scores[0]) };
}
const backboneKind = Deno.args[0] ?? "clip";
const load = async () => {
  const clip = await loadClip(join(out, "clip/model.safetensors"));
  const backbone = backboneKind === "clip" ? ClipImageBackbone.fromClip(clip) : ClipImageBackbone.create(builtinConfig("demo-tiny"), 99);
  return { backbone, textEncoder: new ClipTextEncoder(clip), logitScale: await clip.logit_scale.item() };
};
const inputs: StageInputs = { dataset: ds, corpus, pairing, tokenizer: tok, load, backboneKey: `x-${backboneKind}`, featureCache: `/tmp/exp-${backboneKind}-feat` };
await Deno.mkdir(`/tmp/exp-${backboneKind}-feat`, { recursive: true });
const variants: Record<string, ClipItSettings> = JSON.parse(Deno.args[1]);
for (const seed of [0, 1]) {
  const bdir = `/tmp/exp-${backboneKind}/baseline-s${seed}`;
  if (!(await Deno.stat(join(bdir, RUN_FILES.model)).catch(() => null))) {
    await Deno.remove(bdir, { recursive: true }).catch(() => {});
    const r = await runStage(await RunDir.create(bdir, {}), "baseline", inputs, { epochs: 100, batchSize: 32, lr: 1e-3, seed, workers: 1 });
    console.log(`baseline s${seed}: ${(100 * r.test!.balanced_accuracy).toFixed(1)} (${r.seconds.train.toFixed(1)}+${r.seconds.validate.toFixed(1)}+${r.seconds.checkpoint.toFixed(1)} s)`);
  } else console.log(`baseline s${seed}: ${(100 * JSON.parse(await Deno.readTextFile(join(bdir, RUN_FILES.eval))).balanced_accuracy).toFixed(1)}`);
  for (const [name, st] of Object.entries(variants)) {
    const dir = `/tmp/exp-${backboneKind}/${name}-s${seed}`;
    await Deno.remove(dir, { recursive: true }).catch(() => {});
    const t0 = performance.now();
    const r = await runStage(await RunDir.create(dir, {}), "clipit", { ...inputs, initHead: join(bdir, RUN_FILES.model) }, { workers: 1, ...st, seed });
    console.log(`${name} s${seed}: ${(100 * r.test!.balanced_accuracy).toFixed(1)} steps ${r.steps} (${((performance.now() - t0) / 1000).toFixed(1)} s: ${r.seconds.train.toFixed(1)}+${r.seconds.validate.toFixed(1)}+${r.seconds.checkpoint.toFixed(1)})`);
  }
}
