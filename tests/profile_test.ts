/**
 * The inference-cost counter (train/profile.ts) against independent counts: PyTorch's
 * FlopCounterMode on the real timm / OpenCLIP models of the paper's backbones, op by op
 * (tests/fixtures/flops_torch.json, made by make_flops_fixture.py), and timm's published
 * 17.6 GMACs for vit_base_patch16_224 (with its 1000-class head); the parameter count and the
 * latency measurement on a tiny model.
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { ClipImageBackbone } from "../clip/backbone.ts";
import { builtinConfig } from "../clip/config.ts";
import { timmBuiltin } from "../clip/timm_models.ts";
import { ClipItModel } from "../train/clipit.ts";
import type { BackboneSpec } from "../train/models.ts";
import {
  backboneCost,
  headCosts,
  inferenceCost,
  type LayerCost,
  measureLatency,
  modelParams,
  totalMacs,
} from "../train/profile.ts";
import { gpuTest } from "./util.ts";

const FIXTURE = JSON.parse(
  await Deno.readTextFile(
    fileURLToPath(new URL("./fixtures/flops_torch.json", import.meta.url)),
  ),
);

interface Entry {
  kind: "timm" | "clip" | "heads";
  name?: string;
  image_size?: number;
  macs: number;
  by_op: Record<string, number>;
  features?: number[];
  feature_dim?: number;
  classes?: number;
  text_dim?: number;
}

/** Our layers grouped as PyTorch's ops run them. */
function byOp(layers: LayerCost[]): Record<string, number> {
  const op = (l: LayerCost) =>
    l.name.startsWith("patch")
      ? "aten.convolution"
      : l.name.includes("Q K^T") || l.name.includes("A V")
      ? "aten.bmm"
      : l.name === "projection"
      ? "aten.mm"
      : "aten.addmm";
  const out: Record<string, number> = {};
  for (const l of layers) out[op(l)] = (out[op(l)] ?? 0) + l.macs * l.count;
  return out;
}

Deno.test("profile: per-layer MACs of every paper backbone equal PyTorch's FlopCounterMode, op by op", () => {
  const entries = FIXTURE.entries as Entry[];
  let checked = 0;
  for (const e of entries.filter((x) => x.kind !== "heads")) {
    const spec: BackboneSpec = e.kind === "timm"
      ? { kind: "timm", config: timmBuiltin(e.name!) }
      : { kind: "clip", config: builtinConfig(e.name!) };
    const cost = backboneCost(spec);
    assert.equal(cost.imageSize, e.image_size, `${e.name}: image size`);
    assert.equal(cost.featureDim, e.features![1], `${e.name}: feature width`);
    assert.deepEqual(byOp(cost.layers), e.by_op, `${e.name}: MACs per op`);
    assert.equal(totalMacs(cost.layers), e.macs, `${e.name}: total`);
    checked++;
  }
  assert.equal(checked, 9, "7 timm backbones and 2 CLIP towers");
  for (const e of entries.filter((x) => x.kind === "heads")) {
    const h = headCosts({
      featureDim: e.feature_dim!,
      numClasses: e.classes!,
      textDim: e.text_dim!,
    });
    assert.equal(totalMacs(h.clipit), e.macs, `heads ${e.feature_dim}/${e.classes}/${e.text_dim}`);
  }
});

Deno.test("profile: ViT-B/16 is timm's published 17.6 GMACs; CLIP-IT adds < 0.001 G (the paper's 17 vs 17.001)", () => {
  const spec: BackboneSpec = { kind: "timm", config: timmBuiltin("vit-b16-imagenet") };
  const c = inferenceCost(spec, { numClasses: 9, textDim: 512 });
  // timm's results table: vit_base_patch16_224, 224 px, 17.6 GMACs, with its 768 -> 1000 head.
  assert.equal(((c.unimodal.macs - 768 * 9 + 768 * 1000) / 1e9).toFixed(1), "17.6");
  assert.equal(c.unimodal.flops, 2 * c.unimodal.macs);
  const added = c.clipit.macs - c.unimodal.macs;
  // h_d 768x512 + h_t 512x512 + 512x9 + g 18x9.
  assert.equal(added, 768 * 512 + 512 * 512 + 512 * 9 + 18 * 9);
  assert.ok(added < 1e6, `CLIP-IT adds ${added} MACs: ~0.001 G as the paper says`);
  // Without the text branch only h_d comes on top of fc.
  const off = inferenceCost(spec, { numClasses: 9, textDim: 512, textBranch: false });
  assert.equal(off.clipit.macs - off.unimodal.macs, 768 * 512);
});

gpuTest("profile: parameters per path and a latency measurement on a tiny model", async () => {
  const config = builtinConfig("tiny-test");
  const backbone = ClipImageBackbone.create(config, 3);
  const model = new ClipItModel(backbone, { numClasses: 3, textDim: 16 });
  const D = backbone.featureDim;
  const p = modelParams(model);
  assert.equal(p.backbone, backbone.numParameters());
  assert.deepEqual(p.heads, {
    fc: D * 3 + 3,
    h_d: D * 16 + 16,
    h_t: 16 * 16 + 16 + 16 * 3 + 3,
    g: 6 * 3 + 3,
  });
  const cost = inferenceCost({ kind: "clip", config }, { numClasses: 3, textDim: 16 }, p);
  assert.equal(cost.unimodal.params, p.backbone + p.heads.fc);
  assert.equal(cost.clipit.params, model.numParameters());
  const lat = await measureLatency(model, { batches: [1, 2], runs: 2 });
  for (const path of [lat.unimodal, lat.clipit]) {
    assert.deepEqual(path.map((l) => l.batch), [1, 2]);
    for (const l of path) {
      assert.equal(l.runs_ms.length, 2);
      assert.ok(l.median_ms > 0 && Number.isFinite(l.median_ms));
      assert.equal(l.median_ms, (l.runs_ms[0] + l.runs_ms[1]) / 2, "median of two passes");
    }
  }
  model.dispose();
});
