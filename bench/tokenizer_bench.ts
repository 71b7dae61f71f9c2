/**
 * `deno bench -A bench/tokenizer_bench.ts`: CLIP tokenizer speed on the 376 real TCGA colon
 * reports (one per line, ~1,200 characters each). Ignored when ../shared/data is absent.
 */
import { join } from "node:path";
import { ClipTokenizer } from "../clip/tokenizer.ts";
import { hasSharedData, SHARED_DATA } from "../tests/data_util.ts";

const MERGES = join(SHARED_DATA, "clip-bpe", "bpe_simple_vocab_16e6.txt.gz");
const CORPUS = join(SHARED_DATA, "reports", "tcga-colon-reports.txt");
const reports = hasSharedData
  ? (await Deno.readTextFile(CORPUS)).split("\n").filter((line) => line.length > 0)
  : [];
const warm = hasSharedData ? await ClipTokenizer.load(MERGES) : null;
const NAME = hasSharedData ? "" : " [needs ../shared/data]";

Deno.bench({
  name: "load merges file (gz, 49408 tokens)" + NAME,
  ignore: !hasSharedData,
  async fn() {
    await ClipTokenizer.load(MERGES);
  },
});

Deno.bench({
  name: "tokenize 376 reports, ctx 77, cold BPE cache (fresh tokenizer, load excluded)" + NAME,
  ignore: !hasSharedData,
  async fn(b) {
    const tok = await ClipTokenizer.load(MERGES);
    b.start();
    tok.tokenize(reports, 77);
    b.end();
  },
});

Deno.bench({
  name: "tokenize 376 reports, ctx 77, warm BPE cache" + NAME,
  ignore: !hasSharedData,
  fn() {
    warm!.tokenize(reports, 77);
  },
});

Deno.bench({
  name: "tokenize 376 reports, ctx 128, warm BPE cache" + NAME,
  ignore: !hasSharedData,
  fn() {
    warm!.tokenize(reports, 128);
  },
});
