/**
 * Tests of clip/tokenizer.ts. Exact-match checks (tolerance: none, ids and strings must be equal)
 * against tests/fixtures/tokenizer_cases.json, written by the independent Python
 * reimplementation tests/fixtures/make_tokenizer_fixture.py. Tests that need the real CLIP merges
 * file or the report corpus (../shared/data) are ignored when it is absent; clean-up, HTML
 * unescaping, BPE mechanics and row layout are also checked without it on a tiny merges table.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { CLIP_NUM_MERGES, clipCleanText, ClipTokenizer, eotPositions } from "../clip/tokenizer.ts";
import { html5Entities, htmlUnescape } from "../clip/html_entities.ts";
import { hasSharedData, SHARED_DATA } from "./data_util.ts";

interface Case {
  text: string;
  clean: string;
  ids: number[];
  decoded: string;
  row77: number[];
  row128: number[];
}
interface ReportCase {
  index: number;
  text_sha256: string;
  n_ids: number;
  ids_sha256: string;
  row77: number[];
  row128: number[];
}
interface Fixture {
  merges_file: string;
  html5_entities_sha256: string;
  html5_entities_count: number;
  cases: Case[];
  decode_cases: { ids: number[]; text: string }[];
  reports: ReportCase[];
  corpus_file: string;
  corpus_lines: number;
  corpus_ids_sha256_16: string[];
}

const fixture: Fixture = JSON.parse(
  await Deno.readTextFile(new URL("./fixtures/tokenizer_cases.json", import.meta.url)),
);
const MERGES_GZ = join(SHARED_DATA, fixture.merges_file);
const CORPUS = join(SHARED_DATA, fixture.corpus_file);
const NEEDS_DATA = " [needs ../shared/data: CLIP merges file / reports]";

async function sha256(text: string): Promise<string> {
  const digest = await crypto.subtle.digest("SHA-256", new TextEncoder().encode(text));
  return Array.from(new Uint8Array(digest), (b) => b.toString(16).padStart(2, "0")).join("");
}

/** Report lines as Python's text-mode read + split("\n") sees them. */
async function readReports(): Promise<string[]> {
  const lines = (await Deno.readTextFile(CORPUS)).replace(/\r\n?/g, "\n").split("\n");
  if (lines.at(-1) === "") lines.pop();
  return lines;
}

let shared: ClipTokenizer | null = null;
async function clip(): Promise<ClipTokenizer> {
  shared ??= await ClipTokenizer.load(MERGES_GZ);
  return shared;
}

/**
 * CLIP's byte-char vocabulary order (printable Latin-1 bytes first, then the other 68 bytes as
 * U+0100..), derived here independently to build tiny tables and a Hugging Face vocab.json.
 */
function byteVocab(): string[] {
  const keep: number[] = [];
  for (let b = 0; b < 256; b++) {
    if ((b >= 0x21 && b <= 0x7e) || (b >= 0xa1 && b <= 0xac) || (b >= 0xae && b <= 0xff)) {
      keep.push(b);
    }
  }
  const rest: string[] = [];
  let n = 0;
  for (let b = 0; b < 256; b++) if (!keep.includes(b)) rest.push(String.fromCharCode(0x100 + n++));
  return [...keep.map((b) => String.fromCharCode(b)), ...rest];
}

// A tiny merges table for "low" / "lower". Ranks: l o (0), lo w</w> (1), lo w (2), e r</w> (3), low er</w> (4).
const TINY_MERGES = "#version: tiny\nl o\nlo w</w>\nlo w\ne r</w>\nlow er</w>\n";
const TINY_N = 5;

Deno.test("html5 entity table matches Python's html.entities.html5 (sha256 of sorted lines)", async () => {
  const table = html5Entities();
  assert.equal(table.size, fixture.html5_entities_count);
  const lines = [...table.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([k, v]) => `${k}\t${v}\n`).join("");
  assert.equal(await sha256(lines), fixture.html5_entities_sha256);
});

Deno.test("htmlUnescape: named, legacy, longest-prefix and numeric references", () => {
  assert.equal(htmlUnescape("a &amp; b"), "a & b");
  assert.equal(htmlUnescape("&amp;amp;"), "&amp;");
  assert.equal(htmlUnescape("&ampfoo &notit; &AMP"), "&foo ¬it; &");
  assert.equal(
    htmlUnescape("&#39;&#x27;&#128;&#0;&#xD800;&#1114112;&#1;"),
    "''€\ufffd\ufffd\ufffd",
  );
  assert.equal(htmlUnescape("&#x1F642;&NotEqualTilde;&unknown; & x &;"), "🙂≂̸&unknown; & x &;");
  assert.equal(htmlUnescape("no entities"), "no entities");
});

Deno.test("clipCleanText matches the Python reference on every fixture string", () => {
  for (const c of fixture.cases) {
    assert.equal(clipCleanText(c.text), c.clean, `clean(${JSON.stringify(c.text)})`);
  }
});

Deno.test("tiny merges table: vocabulary layout, BPE merges, decode, rows", () => {
  const tok = ClipTokenizer.fromMerges(TINY_MERGES, { numMerges: TINY_N });
  const vocab = byteVocab();
  const id = (s: string) => {
    const i = vocab.indexOf(s.replace("</w>", ""));
    return s.endsWith("</w>") ? i + 256 : i;
  };
  assert.equal(tok.vocabSize, 512 + TINY_N + 2);
  assert.equal(tok.sotToken, 512 + TINY_N);
  assert.equal(tok.eotToken, 512 + TINY_N + 1);
  // Merge k has id 512 + k.
  assert.deepEqual(tok.encode("low"), [512 + 1]); // l o -> lo, lo w</w> -> low</w>
  assert.deepEqual(tok.encode("LOWER"), [512 + 4]); // lo, e r</w>, lo w, low er</w>
  assert.deepEqual(tok.encode("lows"), [512 + 2, id("s</w>")]);
  assert.deepEqual(tok.encode("a"), [id("a</w>")]);
  assert.deepEqual(tok.encode("lolo"), [512, id("l"), id("o</w>")]); // no "lo o</w>" merge
  assert.deepEqual(tok.encode("<start_of_text>x"), [tok.sotToken, id("x</w>")]);
  // Space (byte 0x20) is whitespace and never a piece; bytes 0x00 -> U+0100 (id 188).
  assert.deepEqual(tok.encode("\x00"), [188 + 256]);
  assert.equal(tok.decode(tok.encode("Lower, low lows!")), "lower , low lows ! ");
  const rows = tok.tokenize(["low low", "", "a b c d e"], 5);
  assert.deepEqual(Array.from(rows), [
    ...[tok.sotToken, 513, 513, tok.eotToken, 0],
    ...[tok.sotToken, tok.eotToken, 0, 0, 0],
    ...[tok.sotToken, id("a</w>"), id("b</w>"), id("c</w>"), tok.eotToken],
  ]);
  assert.deepEqual(Array.from(eotPositions(rows, 5)), [3, 1, 4]);
  assert.deepEqual(Array.from(tok.tokenize("a b", 1)), [tok.eotToken]);
  assert.deepEqual(Array.from(tok.tokenize("a b", 2)), [tok.sotToken, tok.eotToken]);
  assert.equal(tok.tokenize([], 77).length, 0);
});

Deno.test("bad inputs give clear errors", async () => {
  assert.throws(() => ClipTokenizer.fromMerges(TINY_MERGES), /expected 48894 merge lines/);
  assert.throws(
    () => ClipTokenizer.fromMerges("#h\nl o\nbad\n", { numMerges: 2, source: "m.txt" }),
    /m\.txt: merge line 3 is not two symbols/,
  );
  const tok = ClipTokenizer.fromMerges(TINY_MERGES, { numMerges: TINY_N });
  assert.throws(() => tok.tokenize("x", 0), /contextLength must be an integer >= 1/);
  assert.throws(() => tok.decode([0, 99999]), /id 99999 at position 1/);
  assert.throws(() => eotPositions(new Int32Array(7), 3), /7 ids do not split into rows/);
  assert.throws(
    () => ClipTokenizer.fromHuggingFace("{", "#v\n", "hf"),
    /hf: vocab.json is not valid JSON/,
  );
  assert.throws(
    () => ClipTokenizer.fromHuggingFace({ a: 0 }, "#v\n", "hf"),
    /lacks the special tokens/,
  );
  await assert.rejects(ClipTokenizer.load("/nonexistent/bpe.txt.gz"), /cannot read \/nonexistent/);
  const dir = await Deno.makeTempDir();
  try {
    const plain = join(dir, "merges.txt");
    await Deno.writeTextFile(plain, TINY_MERGES);
    await assert.rejects(ClipTokenizer.load(plain), /merges\.txt: expected 48894 merge lines/);
    await assert.rejects(ClipTokenizer.load(dir), /no readable vocab\.json \+ merges\.txt/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("eotPositions is the first argmax of each row", () => {
  const ids = Int32Array.from([5, 9, 9, 0, /* row 2 */ 1, 2, 3, 4, /* row 3 */ 7, 0, 0, 0]);
  assert.deepEqual(Array.from(eotPositions(ids, 4)), [1, 3, 0]);
});

Deno.test({
  name: "CLIP merges file: README reference ids, vocabulary size, gz == plain" + NEEDS_DATA,
  ignore: !hasSharedData,
  fn: async () => {
    const tok = await clip();
    assert.equal(tok.vocabSize, 49408);
    assert.equal(tok.sotToken, 49406);
    assert.equal(tok.eotToken, 49407);
    const ref = (t: string, n: number) => Array.from(tok.tokenize(t, 77).subarray(0, n));
    assert.deepEqual(ref("a photo of a cat", 7), [49406, 320, 1125, 539, 320, 2368, 49407]);
    assert.deepEqual(ref("hello world!", 5), [49406, 3306, 1002, 256, 49407]);
    const gz = await Deno.readFile(MERGES_GZ);
    const stream = new Blob([gz]).stream().pipeThrough(new DecompressionStream("gzip"));
    const text = await new Response(stream).text();
    const dir = await Deno.makeTempDir();
    try {
      await Deno.writeTextFile(join(dir, "bpe.txt"), text);
      const plain = await ClipTokenizer.load(join(dir, "bpe.txt"));
      const sample = fixture.cases.map((c) => c.text).join(" ");
      assert.deepEqual(plain.encode(sample), tok.encode(sample));
      assert.equal(plain.vocabSize, 49408);
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test({
  name: "CLIP merges file: fixture strings encode/decode/rows (77, 128) exactly" + NEEDS_DATA,
  ignore: !hasSharedData,
  fn: async () => {
    const tok = await clip();
    for (const c of fixture.cases) {
      const what = JSON.stringify(c.text);
      assert.deepEqual(tok.encode(c.text), c.ids, `encode(${what})`);
      assert.equal(tok.decode(c.ids), c.decoded, `decode(${what})`);
      assert.deepEqual(Array.from(tok.tokenize(c.text, 77)), c.row77, `row77(${what})`);
      assert.deepEqual(Array.from(tok.tokenize([c.text], 128)), c.row128, `row128(${what})`);
    }
    for (const d of fixture.decode_cases) assert.equal(tok.decode(d.ids), d.text);
    // Batched rows equal the single rows, and eot positions point at eot.
    const batch = tok.tokenize(fixture.cases.map((c) => c.text), 77);
    assert.deepEqual(Array.from(batch), fixture.cases.flatMap((c) => c.row77));
    const pos = eotPositions(batch, 77);
    pos.forEach((p, r) => assert.equal(batch[r * 77 + p], tok.eotToken, `row ${r}`));
  },
});

Deno.test({
  name: "CLIP merges file: real reports (truncated rows, full ids) and whole-corpus parity" +
    NEEDS_DATA,
  ignore: !hasSharedData,
  fn: async () => {
    const reports = await readReports();
    assert.equal(reports.length, fixture.corpus_lines);
    const fresh = await ClipTokenizer.load(MERGES_GZ); // cold cache for the timing below
    const t0 = performance.now();
    const rows = fresh.tokenize(reports, 77);
    const ms = performance.now() - t0;
    console.log(`tokenized ${reports.length} reports (ctx 77, cold cache) in ${ms.toFixed(0)} ms`);
    assert.equal(rows.length, reports.length * 77);
    for (const r of fixture.reports) {
      const text = reports[r.index];
      assert.equal(await sha256(text), r.text_sha256, `report ${r.index} text changed`);
      const ids = fresh.encode(text);
      assert.equal(ids.length, r.n_ids, `report ${r.index} length`);
      assert.equal(await sha256(ids.join(",")), r.ids_sha256, `report ${r.index} ids`);
      assert.deepEqual(Array.from(rows.subarray(r.index * 77, (r.index + 1) * 77)), r.row77);
      assert.deepEqual(Array.from(fresh.tokenize(text, 128)), r.row128);
    }
    const bad: number[] = [];
    for (let i = 0; i < reports.length; i++) {
      const digest = (await sha256(fresh.encode(reports[i]).join(","))).slice(0, 16);
      if (digest !== fixture.corpus_ids_sha256_16[i]) bad.push(i);
    }
    assert.deepEqual(bad, [], "reports whose ids differ from the Python reference");
  },
});

Deno.test({
  name: "Hugging Face vocab.json + merges.txt folder gives the same ids" + NEEDS_DATA,
  ignore: !hasSharedData,
  fn: async () => {
    const gz = await Deno.readFile(MERGES_GZ);
    const stream = new Blob([gz]).stream().pipeThrough(new DecompressionStream("gzip"));
    const lines = (await new Response(stream).text()).split("\n").slice(1, CLIP_NUM_MERGES + 1);
    const bytes = byteVocab();
    const tokens = [
      ...bytes,
      ...bytes.map((b) => b + "</w>"),
      ...lines.map((l) => l.replace(" ", "")),
    ];
    tokens.push("<|startoftext|>", "<|endoftext|>");
    const vocab: Record<string, number> = {};
    tokens.forEach((t, i) => (vocab[t] = i));
    const dir = await Deno.makeTempDir();
    try {
      await Deno.writeTextFile(join(dir, "vocab.json"), JSON.stringify(vocab));
      await Deno.writeTextFile(
        join(dir, "merges.txt"),
        "#version: 0.2\n" + lines.join("\n") + "\n",
      );
      const hf = await ClipTokenizer.load(dir);
      assert.equal(hf.vocabSize, 49408);
      assert.equal(hf.sotToken, 49406);
      assert.equal(hf.eotToken, 49407);
      // OpenCLIP's spelling of the specials is plain text for HF, and vice versa.
      for (const c of fixture.cases.filter((c) => !/start_of_text|startoftext/.test(c.clean))) {
        assert.deepEqual(Array.from(hf.tokenize(c.text, 77)), c.row77, JSON.stringify(c.text));
      }
      assert.deepEqual(hf.encode("<|startoftext|>hi<|endoftext|>"), [49406, 1883, 49407]);
      assert.equal(hf.decode([49406, 1883, 49407]), "<|startoftext|>hi <|endoftext|>");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
