/**
 * CONCH against CONCH's own code: tests/fixtures/make_conch_fixture.py builds a tiny
 * random-weight CoCa with the classes of a mahmoodlab/CONCH checkout, saves its state dict and
 * float64 reference embeddings (encode_image / encode_text, normalize=False), and records the ids
 * CONCH's tokenize() gives for tricky strings and for every report of the TCGA corpus (as
 * SHA-256 per row), with a tokenizer trained locally in CONCH's tokenizer.json structure and,
 * when the checkout was given, with CONCH's real tokenizer.json.
 *
 * The real tokenizer.json is not in this repository (CONCH's licence forbids derivatives, and
 * it is not ours to redistribute): set CONCH_TOKENIZER to its path
 * (`conch/open_clip_custom/tokenizers/conch_byte_level_bpe_uncased.json` of a checkout) to run
 * those checks; they are skipped otherwise.
 */
import assert from "node:assert/strict";
import { existsSync } from "node:fs";
import { fileURLToPath } from "node:url";
import { noGrad } from "../nn/autograd.ts";
import { SafetensorsFile } from "../nn/formats/safetensors.ts";
import { type Tensor, tensor, tidy } from "../nn/tensor.ts";
import { applyLora, mergeLora } from "../nn/lora.ts";
import { ConchImageBackbone, ConchModel, ConchTextEncoder } from "../clip/conch.ts";
import {
  conchBuiltin,
  loadConch,
  loadConchWeights,
  parseConchConfig,
  resolveConchConfig,
} from "../clip/conch_load.ts";
import { ConchTokenizer } from "../clip/conch_tokenizer.ts";
import { hasSharedData, SHARED_DATA } from "./data_util.ts";
import { assertClose, gpuTest } from "./util.ts";

const FIX = fileURLToPath(new URL("./fixtures/conch/", import.meta.url));
const WEIGHTS = FIX + "conch_tiny.bin";
const CONFIG = FIX + "conch_tiny.json";
/** The bound: embeddings within 1e-4 of CONCH's code (float64 reference). */
const TOL = { atol: 1e-4 };
const CORPUS = `${SHARED_DATA}/reports/tcga-colon-reports.txt`;
const REAL = Deno.env.get("CONCH_TOKENIZER") ?? "";
const hasReal = REAL !== "" && existsSync(REAL);

const expected = await SafetensorsFile.open(FIX + "conch_expected.safetensors");

interface TokenCase {
  file_sha256: string;
  reports: string[];
  reports_first?: number[][];
  tricky: number[][];
}
const tokens: { tricky_texts: string[]; corpus_lines: number; local: TokenCase; real?: TokenCase } =
  JSON.parse(await Deno.readTextFile(FIX + "conch_tokens.json"));

async function read(t: Tensor): Promise<Float32Array> {
  const a = await t.toFloat32Array();
  t.dispose();
  return a;
}

async function imageEmbeds(b: ConchImageBackbone, size: number): Promise<Float32Array> {
  const x = await expected.readFloat32(`images.${size}`);
  return await read(noGrad(() => tidy(() => b.features(tensor(x, [2, 3, size, size])))));
}

async function textIds(): Promise<Int32Array> {
  const raw = await expected.read("text.ids");
  return new Int32Array(raw.buffer.slice(raw.byteOffset, raw.byteOffset + raw.byteLength));
}

gpuTest("conch: image and text embeddings match CONCH's code (tiny random model)", async () => {
  const model = await loadConch(WEIGHTS, { config: CONFIG });
  const image = new ConchImageBackbone(model);
  const text = new ConchTextEncoder(model);
  assert.deepEqual([image.featureDim, image.imageSize, text.contextLength], [16, 32, 12]);
  for (const s of [32, 40]) {
    assertClose(
      await imageEmbeds(image, s),
      await expected.readFloat32(`image_embeds.${s}`),
      TOL,
      `image ${s}px`,
    );
  }
  const ids = await textIds();
  const got = await read(noGrad(() => text.encode(ids)));
  assertClose(got, await expected.readFloat32("text_embeds"), TOL, "text");
  // Rows alone (each cut at its own length) equal the batch (cut at the longest row).
  const n = ids.length / 12;
  for (let r = 0; r < n; r++) {
    const one = await read(noGrad(() => text.encode(ids.slice(r * 12, r * 12 + 12))));
    assertClose(one, got.subarray(r * 16, r * 16 + 16), { atol: 1e-5 }, `row ${r} alone`);
  }
  model.dispose();
});

gpuTest(
  "conch: LoRA sites; zero-initialised adapters change nothing, merging keeps it",
  async () => {
    const model = await loadConch(WEIGHTS, { config: CONFIG });
    const image = new ConchImageBackbone(model);
    const text = new ConchTextEncoder(model);
    const names = image.loraSites().map((s) => s.name);
    assert.ok(names.includes("visual.trunk.patch_embed.proj"));
    assert.ok(names.includes("visual.trunk.blocks.1.mlp.fc2"));
    assert.deepEqual(names.slice(-5), [
      "visual.attn_pool_contrast.attn.q_proj",
      "visual.attn_pool_contrast.attn.k_proj",
      "visual.attn_pool_contrast.attn.v_proj",
      "visual.attn_pool_contrast.attn.out_proj",
      "visual.proj_contrast",
    ]);
    const tnames = text.loraSites().map((s) => s.name);
    assert.deepEqual([tnames[0], tnames[1], tnames.at(-1)], [
      "text.token_embedding",
      "text.transformer.resblocks.0.attn.in_proj",
      "text.text_projection",
    ]);
    applyLora(image, { rank: 2 });
    applyLora(text, { rank: 2 });
    const want = await expected.readFloat32("image_embeds.32");
    assertClose(await imageEmbeds(image, 32), want, TOL, "image with zero adapters");
    const ids = await textIds();
    const wantText = await expected.readFloat32("text_embeds");
    assertClose(await read(noGrad(() => text.encode(ids))), wantText, TOL, "text with adapters");
    assert.equal(mergeLora(image), names.length);
    assert.equal(mergeLora(text), tnames.length);
    assertClose(await imageEmbeds(image, 32), want, TOL, "image merged");
    model.dispose();
  },
);

gpuTest("conch: checkpoint mismatches fail naming the file and the tensor", async () => {
  const cfg = await resolveConchConfig(CONFIG);
  const fewer = new ConchModel({ ...cfg, text: { ...cfg.text, layers: 1 } });
  await assert.rejects(
    () => loadConchWeights(fewer, WEIGHTS),
    /conch_tiny\.bin: tensor "text\.transformer\.resblocks\.1\.[a-z_.0-9]+" \[[\d,]*\] of the checkpoint has no place in the .*conch_tiny\.json model/,
  );
  const lax = await loadConchWeights(fewer, WEIGHTS, { strict: false });
  assert.ok(
    lax.unused.length > 0 && lax.unused.every((n) => n.startsWith("text.transformer.resblocks.1.")),
  );
  assert.ok(lax.skipped > 0); // captioning pooler, ln_caption, text_decoder
  fewer.dispose();
  const wide = new ConchModel({ ...cfg, embedDim: 24 });
  await assert.rejects(
    () => loadConchWeights(wide, WEIGHTS),
    /conch_tiny\.bin: tensor "visual\.proj_contrast" has shape \[16,16\] in the checkpoint but \[24,24\]/,
  );
  wide.dispose();
  const timmFile = fileURLToPath(new URL("./fixtures/timm/avgmax_pre", import.meta.url));
  await assert.rejects(() => loadConch(timmFile, { config: CONFIG }), /not a CONCH checkpoint/);
});

Deno.test("conch: the released configuration and config checks", () => {
  const c = conchBuiltin();
  assert.equal(c.embedDim, 512);
  assert.deepEqual(
    [c.vision.imageSize, c.vision.patchSize, c.vision.width, c.vision.layers, c.vision.heads],
    [448, 16, 768, 12, 12],
  );
  assert.equal(c.vision.poolerHeads, 8);
  assert.deepEqual(
    [c.text.contextLength, c.text.vocabSize, c.text.width, c.text.heads, c.text.layers],
    [128, 32007, 768, 12, 12],
  );
  assert.deepEqual([...c.mean], [0.48145466, 0.4578275, 0.40821073]);
  assert.throws(
    () => parseConchConfig({ vision_cfg: {}, text_cfg: { embed_cls: true } }, "x.json"),
    /x\.json: vision_cfg\.attentional_pool_contrast must be true/,
  );
  assert.throws(
    () =>
      parseConchConfig(
        { vision_cfg: { attentional_pool_contrast: true }, text_cfg: { embed_cls: false } },
        "y.json",
      ),
    /y\.json: text_cfg\.embed_cls must be true/,
  );
});

async function sha256(ids: Int32Array): Promise<string> {
  const d = await crypto.subtle.digest(
    "SHA-256",
    new Uint8Array(ids.slice().buffer),
  );
  return [...new Uint8Array(d)].map((b) => b.toString(16).padStart(2, "0")).join("");
}

async function readReports(): Promise<string[]> {
  const lines = (await Deno.readTextFile(CORPUS)).replace(/\r\n?/g, "\n").split("\n");
  if (lines.at(-1) === "") lines.pop();
  return lines;
}

async function checkTokenizer(tok: ConchTokenizer, want: TokenCase, label: string) {
  const rows = tok.tokenize(tokens.tricky_texts, 128);
  tokens.tricky_texts.forEach((t, i) => {
    assert.deepEqual(
      [...rows.subarray(i * 128, (i + 1) * 128)],
      want.tricky[i],
      `${label}: ids of ${JSON.stringify(t.slice(0, 60))}`,
    );
  });
  if (!hasSharedData) return;
  const reports = await readReports();
  assert.equal(reports.length, tokens.corpus_lines);
  const all = tok.tokenize(reports, 128);
  if (want.reports_first) {
    assert.deepEqual([...all.subarray(0, 128)], want.reports_first[0], `${label}: report 0`);
  }
  let bad = 0, first = -1;
  for (let i = 0; i < reports.length; i++) {
    if (await sha256(all.subarray(i * 128, (i + 1) * 128)) !== want.reports[i]) {
      bad++;
      if (first < 0) first = i;
    }
  }
  assert.equal(bad, 0, `${label}: ${bad} of ${reports.length} reports differ (first: ${first})`);
}

Deno.test("conch tokenizer: tokenizer.json byte-level BPE (trained locally) matches CONCH's tokenize()", async () => {
  const tok = await ConchTokenizer.fromFile(FIX + "tokenizer_local.json");
  assert.equal(tok.padId, 0);
  assert.equal(tok.vocabSize, 700);
  await checkTokenizer(tok, tokens.local, "local tokenizer");
  // Rows: <start_of_text> ... <end_of_text>, pads, and the placeholder pad column.
  const r = tok.tokenize(["a", "word ".repeat(300)], 8);
  assert.equal(r[0], 1);
  assert.deepEqual([...r.subarray(8, 16)].slice(-2), [2, 0]);
  assert.throws(() => tok.tokenize(["x"], 2), /context length must be an integer >= 3/);
});

Deno.test({
  name: "conch tokenizer: CONCH's real tokenizer.json on tricky strings and all 376 reports" +
    (hasReal ? "" : " [skipped: set CONCH_TOKENIZER to CONCH's tokenizer.json]"),
  ignore: !hasReal || !tokens.real,
  fn: async () => {
    const bytes = await Deno.readFile(REAL);
    const d = new Uint8Array(await crypto.subtle.digest("SHA-256", bytes));
    const sha = [...d].map((b) => b.toString(16).padStart(2, "0")).join("");
    assert.equal(sha, tokens.real!.file_sha256, `${REAL} is not the file the fixture used`);
    const tok = await ConchTokenizer.fromFile(REAL);
    assert.equal(tok.vocabSize, 32007);
    assert.ok(hasSharedData, "the report corpus (../shared/data) is needed for this check");
    await checkTokenizer(tok, tokens.real!, "CONCH tokenizer");
  },
});
