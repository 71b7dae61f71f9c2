/**
 * Tests of clip/tokenizer.ts, clip/ftfy.ts and clip/html_entities.ts. Exact-match checks
 * (tolerance: none, ids and strings must be equal) against tests/fixtures/tokenizer_cases.json,
 * written from OpenCLIP's own tokenizer by tests/fixtures/make_tokenizer_fixture.py, and
 * tests/fixtures/ftfy_cases.json, written from ftfy itself by make_ftfy_fixture.py. Tests that
 * need the real CLIP merges file or the report corpus (../shared/data) are ignored when it is
 * absent; clean-up, ftfy, HTML unescaping, BPE mechanics and row layout are also checked without
 * it (a tiny merges table for the BPE).
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { CLIP_NUM_MERGES, clipCleanText, ClipTokenizer, eotPositions } from "../clip/tokenizer.ts";
import { html5Entities, htmlUnescape } from "../clip/html_entities.ts";
import {
  badness,
  CATEGORIES_PACKED,
  codepages,
  fixCharacterWidth,
  fixText,
  ftfyEntities,
  unpackCodePoints,
  utf8Clues,
  utf8DetectorPattern,
} from "../clip/ftfy.ts";
import { hasSharedData, SHARED_DATA } from "./data_util.ts";

interface Case {
  text: string;
  /** `ftfy.fix_text(text)`. */
  ftfy: string;
  /** OpenCLIP's clean-up of `text`: what the piece pattern runs on. */
  clean: string;
  ids: number[];
  decoded: string;
  /** Rows without their padding zeros, present where the ids do not fit (and for 3 others). */
  row77?: number[];
  row128?: number[];
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

/** tests/fixtures/ftfy_cases.json, written by make_ftfy_fixture.py from ftfy itself. */
interface FtfyFixture {
  ftfy_version: string;
  codepages: Record<string, number[]>;
  categories: Record<string, number[]>;
  utf8_clues: Record<string, number[]>;
  html_entities_sha256: string;
  html_entities_count: number;
  width_map_sha256: string;
  width_map_count: number;
  probe_pool: string;
  probe_seed: number;
  probe_count: number;
  probe_badness: string;
  probe_utf8_spans: string[];
  literal_pool: string;
  literal_pair_badness: string;
  triple_pool: string;
  triple_badness_sha256: string;
  triple_bad_count: number;
  extra_probes: [string, number][];
  mojibake: { kind: string; text: string; fixed: string }[];
}

const fixture: Fixture = JSON.parse(
  await Deno.readTextFile(new URL("./fixtures/tokenizer_cases.json", import.meta.url)),
);
const ftfyFixture: FtfyFixture = JSON.parse(
  await Deno.readTextFile(new URL("./fixtures/ftfy_cases.json", import.meta.url)),
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

/** A fixture row (stored without its padding zeros) padded back to `n`. */
function padded(row: number[], n: number): number[] {
  return [...row, ...new Array<number>(n - row.length).fill(0)];
}

/**
 * The expected row of a case for context length n: OpenCLIP's row where the fixture has it (the
 * ids did not fit), else `[sot] ids [eot]` padded (the fixture script checks that this holds).
 */
function expectedRow(c: Case, n: 77 | 128): number[] {
  const row = n === 77 ? c.row77 : c.row128;
  return padded(row ?? [49406, ...c.ids, 49407], n);
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

// ---- ftfy (clip/ftfy.ts) against ftfy itself ----------------------------------------------

Deno.test("ftfy tables: code pages, badness categories, UTF-8 clues, entities, width map", async () => {
  const pages = codepages();
  assert.deepEqual(pages.map((p) => p.name), ["latin-1", ...Object.keys(ftfyFixture.codepages)]);
  for (const page of pages.slice(1)) {
    assert.deepEqual(page.chars, ftfyFixture.codepages[page.name], page.name);
  }
  for (const [name, packed] of Object.entries(CATEGORIES_PACKED)) {
    assert.deepEqual(unpackCodePoints(packed), ftfyFixture.categories[name], name);
  }
  assert.deepEqual(Object.keys(CATEGORIES_PACKED), Object.keys(ftfyFixture.categories));
  const clues = utf8Clues();
  const want = ftfyFixture.utf8_clues;
  assert.deepEqual(clues.first2, want.utf8_first_of_2);
  assert.deepEqual(clues.first3, want.utf8_first_of_3);
  assert.deepEqual(clues.first4, want.utf8_first_of_4);
  assert.deepEqual(clues.continuation, want.utf8_continuation);
  assert.deepEqual(clues.continuationStrict, want.utf8_continuation_strict);
  // Entities (HTML5 + ftfy's upper-case variants) and the width map, as sorted lines.
  const entities = ftfyEntities();
  assert.equal(entities.size, ftfyFixture.html_entities_count);
  const lines = [...entities.entries()].sort(([a], [b]) => (a < b ? -1 : a > b ? 1 : 0))
    .map(([k, v]) => `${k}\t${v}\n`).join("");
  assert.equal(await sha256(lines), ftfyFixture.html_entities_sha256);
  let width = "";
  let count = 0;
  for (const cp of [0x3000, ...Array.from({ length: 0xffef - 0xff01 + 1 }, (_, i) => 0xff01 + i)]) {
    const c = String.fromCodePoint(cp);
    const w = fixCharacterWidth(c);
    if (w !== c) {
      width += `${cp.toString(16)}\t${w}\n`;
      count++;
    }
  }
  assert.equal(count, ftfyFixture.width_map_count);
  assert.equal(await sha256(width), ftfyFixture.width_map_sha256);
});

/** xorshift32, as in make_ftfy_fixture.py. */
function xorshift32(seed: number): () => number {
  let x = seed >>> 0;
  return () => {
    x = (x ^ (x << 13)) >>> 0;
    x = (x ^ (x >>> 17)) >>> 0;
    x = (x ^ (x << 5)) >>> 0;
    return x;
  };
}

Deno.test("ftfy badness heuristic and UTF-8 detector match ftfy on probe strings", async () => {
  const pool = unpackCodePoints(ftfyFixture.probe_pool);
  const next = xorshift32(ftfyFixture.probe_seed);
  const detector = utf8DetectorPattern();
  const spans: string[] = [];
  const mismatches: string[] = [];
  for (let i = 0; i < ftfyFixture.probe_count; i++) {
    const length = 1 + next() % 8;
    let s = "";
    for (let k = 0; k < length; k++) s += String.fromCodePoint(pool[next() % pool.length]);
    if (String(badness(s)) !== ftfyFixture.probe_badness[i]) mismatches.push(JSON.stringify(s));
    const found = [...s.matchAll(detector)].map((m) => `${m.index}-${m.index + m[0].length}`);
    if (found.length) spans.push(`${i}:${found.join(",")}`);
  }
  assert.deepEqual(mismatches, [], "probes whose badness differs from ftfy's");
  assert.deepEqual(spans, ftfyFixture.probe_utf8_spans);
  // Every pair of the characters in the heuristic's fixed sequences.
  const lit = [...ftfyFixture.literal_pool];
  const pairMismatches: string[] = [];
  lit.forEach((a, i) =>
    lit.forEach((b, j) => {
      const want = ftfyFixture.literal_pair_badness[i * lit.length + j];
      if (String(badness(a + b)) !== want) pairMismatches.push(JSON.stringify(a + b));
    })
  );
  assert.deepEqual(pairMismatches, [], "pairs whose badness differs from ftfy's");
  // Every triple of the characters of its three-character sequences (a digest).
  const tri = [...ftfyFixture.triple_pool];
  let counts = "";
  let bad = 0;
  for (const a of tri) {
    for (const b of tri) {
      for (const c of tri) {
        const n = badness(a + b + c);
        counts += n;
        if (n) bad++;
      }
    }
  }
  assert.equal(bad, ftfyFixture.triple_bad_count);
  assert.equal(await sha256(counts), ftfyFixture.triple_badness_sha256);
  for (const [text, n] of ftfyFixture.extra_probes) {
    assert.equal(badness(text), n, `badness(${JSON.stringify(text)})`);
  }
});

Deno.test("fixText matches ftfy.fix_text on generated mojibake and every tokenizer string", () => {
  const kinds = new Set<string>();
  for (const c of ftfyFixture.mojibake) {
    assert.equal(fixText(c.text), c.fixed, `${c.kind}: fixText(${JSON.stringify(c.text)})`);
    kinds.add(c.kind);
  }
  assert.ok(kinds.size >= 20, `only ${kinds.size} kinds of mojibake`);
  for (const c of fixture.cases) {
    assert.equal(fixText(c.text), c.ftfy, `fixText(${JSON.stringify(c.text)})`);
  }
  assert.ok(fixture.cases.filter((c) => c.ftfy !== c.text).length >= 60);
});

Deno.test("fixText: documented ftfy behaviours and kept quirks", () => {
  // Examples from ftfy's documentation.
  assert.equal(fixText("\u00e2\u0153\u201d No problems"), "\u2714 No problems");
  assert.equal(fixText("\ufb02u\ufb03e\ufb06"), "fluffiest");
  assert.equal(
    fixText("\uff2c\uff2f\uff35\uff24\u3000\uff2e\uff2f\uff29\uff33\uff25\uff33"),
    "LOUD NOISES",
  );
  assert.equal(fixText("voil\u00c3 le travail"), "voil\u00e0 le travail");
  assert.equal(fixText("P&EACUTE;REZ &ntilde; &nTILDE;"), "P\u00c9REZ \u00f1 &nTILDE;");
  // Left alone: proper UTF-8, and Latin-1 text that merely looks like mojibake.
  for (const ok of ["na\u00efve caf\u00e9", "Le Saint-Si\u00e8ge", "IRL: \u00c2\u00c2\u00c2"]) {
    assert.equal(fixText(ok), ok);
  }
  // A '<' turns HTML unescaping off for the rest of the text, not just its line.
  assert.equal(fixText("&eacute;\n<b>\n&eacute;"), "\u00e9\n<b>\n&eacute;");
  // Python's `$` matches before a final newline: a Java-style C0 at the line end eats the "\n".
  assert.equal(fixText("caf\u00c3\u00a9 \u00c0\nx"), "caf\u00e9 x");
  // Lines are fixed in pieces of at most 1,000,000 code points (not UTF-16 units): a reference
  // cut by the boundary stays (checked with ftfy 6.3.1).
  assert.ok(fixText("\u{1F642}".repeat(999_997) + "&EACUTE;").endsWith("\u{1F642}&EACUTE;"));
  assert.ok(fixText("\u{1F642}".repeat(999_990) + "&EACUTE;").endsWith("\u{1F642}\u00c9"));
  const ascii = "plain ASCII report text, 3.5 x 2 cm; no change\n\tat all";
  assert.equal(fixText(ascii), ascii);
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
  // Space (byte 0x20) is whitespace and never a piece. Bytes outside the printable set map to
  // U+0100.. in byte order; 0xAD (of U+00AD = C2 AD) is the last of them, id 255; "Â" is 126.
  assert.deepEqual(tok.encode("\u00ad"), [126, 255 + 256]);
  assert.deepEqual(tok.encode("\x00"), []); // ftfy removes control characters
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
      assert.deepEqual(Array.from(tok.tokenize(c.text, 77)), expectedRow(c, 77), `row77(${what})`);
      assert.deepEqual(
        Array.from(tok.tokenize([c.text], 128)),
        expectedRow(c, 128),
        `row128(${what})`,
      );
    }
    for (const d of fixture.decode_cases) assert.equal(tok.decode(d.ids), d.text);
    // Batched rows equal the single rows, and eot positions point at eot.
    const batch = tok.tokenize(fixture.cases.map((c) => c.text), 77);
    assert.deepEqual(Array.from(batch), fixture.cases.flatMap((c) => expectedRow(c, 77)));
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
      assert.deepEqual(
        Array.from(rows.subarray(r.index * 77, (r.index + 1) * 77)),
        padded(r.row77, 77),
      );
      assert.deepEqual(Array.from(fresh.tokenize(text, 128)), padded(r.row128, 128));
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
        assert.deepEqual(
          Array.from(hf.tokenize(c.text, 77)),
          expectedRow(c, 77),
          JSON.stringify(c.text),
        );
      }
      assert.deepEqual(hf.encode("<|startoftext|>hi<|endoftext|>"), [49406, 1883, 49407]);
      assert.equal(hf.decode([49406, 1883, 49407]), "<|startoftext|>hi <|endoftext|>");
    } finally {
      await Deno.remove(dir, { recursive: true });
    }
  },
});
