/**
 * The layering of the library, enforced: every import of every .ts file under nn/formats/,
 * kernels/, nn/, clip/, train/, cli/ and of cli.ts and mod.ts is read (static `import` and
 * `export ... from`, dynamic `import(...)`, and worker URLs `new URL(..., import.meta.url)`),
 * each file is mapped to its layer, and the test fails on:
 *
 * 1. an upward edge: layers from lowest to highest are formats (nn/formats/) < kernels < nn <
 *    clip < train < mod.ts (the library surface) < cli (cli/ and cli.ts, the library's client);
 * 2. a file of nn/formats/ importing anything else of the project (formats are the leaf);
 * 3. clip/, train/ or cli importing from kernels/ anything but kernels/device.ts (init, adapter
 *    information): above nn nothing touches buffers or dispatches kernels;
 * 4. clip/, train/, cli or mod.ts importing a raw GPU name (`map`, `mapKernel`, `dispatch`,
 *    `upload`, `readback`, `viewOf`, `broadcastView`) from anywhere;
 * 5. library code importing a file that is not library code (tests/, bench/) or does not exist;
 * 6. clip/, train/ or cli source that touches a tensor's buffer (`.buf`) or holds WGSL
 *    (`@compute`, `@group(`, `var<storage`).
 *
 * Packages (`node:`, npm, import-map names) are outside the project and always allowed. The
 * checker itself is tested on synthetic imports that break each rule.
 */
import assert from "node:assert/strict";
import { dirname, join, normalize } from "node:path";
import { fileURLToPath } from "node:url";

const ROOT = fileURLToPath(new URL("../", import.meta.url));

/** The layers, lowest first; an import may only point to the same or a lower layer. */
const LAYERS = ["formats", "kernels", "nn", "clip", "train", "surface", "cli"] as const;
type Layer = typeof LAYERS[number];

/** Names that mean raw GPU work (WGSL mapping, kernel views, buffers), refused above nn. */
const RAW_GPU_NAMES = [
  "map",
  "mapKernel",
  "dispatch",
  "upload",
  "readback",
  "viewOf",
  "broadcastView",
];

/** The layer of a project file (repository-relative, "/"-separated), or null if not library. */
function layerOf(path: string): Layer | null {
  if (path.startsWith("nn/formats/")) return "formats";
  if (path.startsWith("kernels/")) return "kernels";
  if (path.startsWith("nn/")) return "nn";
  if (path.startsWith("clip/")) return "clip";
  if (path.startsWith("train/")) return "train";
  if (path.startsWith("cli/") || path === "cli.ts") return "cli";
  if (path === "mod.ts") return "surface";
  return null;
}

const rank = (l: Layer) => LAYERS.indexOf(l);

/** One import found in a source file. */
interface FoundImport {
  specifier: string;
  /** Imported or re-exported names ("*" for a namespace or `export *`, "default"). */
  names: string[];
  line: number;
  kind: "static" | "dynamic" | "worker";
}

/** An import edge between two files; `to` is null for a package outside the project. */
interface Edge {
  from: string;
  to: string | null;
  names?: string[];
  line?: number;
}

/** The names of an import / export clause: `{ a, type b, c as d }`, `X`, `* as ns`, `*`. */
function clauseNames(clause: string): string[] {
  const names: string[] = [];
  const braces = clause.match(/\{([^}]*)\}/);
  if (braces) {
    for (const part of braces[1].split(",")) {
      const name = part.trim().replace(/^type\s+/, "").split(/\s+as\s+/)[0].trim();
      if (name) names.push(name);
    }
  }
  const rest = clause.replace(/\{[^}]*\}/, "").replace(/^type\s+/, "").trim();
  if (/^\w+/.test(rest)) names.push("default");
  if (rest.includes("*")) names.push("*");
  return names;
}

/** Every import of `source` (see the module comment); comment lines are skipped. */
function scanImports(source: string): FoundImport[] {
  const out: FoundImport[] = [];
  const lineAt = (i: number) => source.slice(0, i).split("\n").length;
  // Static imports and re-exports start at column 0 (deno fmt), so JSDoc examples (" * import")
  // and code inside template strings are not mistaken for them.
  const clause = String
    .raw`(?:type\s+)?(?:\*(?:\s+as\s+\w+)?|\{[^}]*\}|\w+(?:\s*,\s*(?:\{[^}]*\}|\*\s+as\s+\w+))?)`;
  const fromRe = new RegExp(
    String.raw`^(import|export)\s+(${clause})\s+from\s*["']([^"']+)["']`,
    "gm",
  );
  for (const m of source.matchAll(fromRe)) {
    out.push({
      specifier: m[3],
      names: clauseNames(m[2]),
      line: lineAt(m.index!),
      kind: "static",
    });
  }
  for (const m of source.matchAll(/^import\s*["']([^"']+)["']/gm)) {
    out.push({ specifier: m[1], names: [], line: lineAt(m.index!), kind: "static" });
  }
  const code = source.split("\n").map((
    l,
  ) => (/^\s*(\*|\/\/|\/\*)/.test(l) ? " ".repeat(l.length) : l))
    .join("\n");
  for (const m of code.matchAll(/\bimport\(\s*["'`]([^"'`]+)["'`]\s*\)/g)) {
    out.push({ specifier: m[1], names: ["*"], line: lineAt(m.index!), kind: "dynamic" });
  }
  for (const m of code.matchAll(/new URL\(\s*["'`]([^"'`]+)["'`]\s*,\s*import\.meta\.url\s*\)/g)) {
    out.push({ specifier: m[1], names: [], line: lineAt(m.index!), kind: "worker" });
  }
  return out;
}

/** The repository-relative path `specifier` points to from `from`, or null outside the project. */
function resolveSpecifier(from: string, specifier: string): string | null {
  if (!specifier.startsWith("./") && !specifier.startsWith("../")) return null; // a package
  const path = normalize(join(dirname(from), specifier)).replaceAll("\\", "/");
  return path.startsWith("../") ? null : path;
}

/** Every rule that `edges` break, one readable line each (empty when the layering holds). */
function checkEdges(edges: Edge[]): string[] {
  const problems: string[] = [];
  for (const e of edges) {
    const from = layerOf(e.from);
    if (from === null || e.to === null) continue;
    const where = `${e.from}${e.line ? `:${e.line}` : ""}`;
    const to = layerOf(e.to);
    if (to === null) {
      problems.push(`${where} imports ${e.to}, which is not library code`);
      continue;
    }
    if (from === "formats" && to !== "formats") {
      problems.push(`${where} (formats, the leaf) imports ${e.to} of the project`);
    } else if (rank(to) > rank(from)) {
      problems.push(`${where} (${from}) imports ${e.to} (${to}): an upward edge`);
    }
    const above = rank(from) >= rank("clip");
    if (above && from !== "surface" && to === "kernels" && e.to !== "kernels/device.ts") {
      problems.push(`${where} (${from}) imports ${e.to}: above nn only kernels/device.ts`);
    }
    const raw = (e.names ?? []).filter((n) => RAW_GPU_NAMES.includes(n));
    if (above && raw.length) {
      problems.push(`${where} (${from}) imports raw GPU ${raw.join(", ")} from ${e.to}`);
    }
  }
  return problems;
}

/** Raw GPU work in the source of a file above nn (see rule 6); comment lines are skipped. */
function checkSource(file: string, source: string): string[] {
  const layer = layerOf(file);
  if (layer === null || rank(layer) < rank("clip") || layer === "surface") return [];
  const problems: string[] = [];
  source.split("\n").forEach((line, i) => {
    if (/^\s*(\*|\/\/|\/\*)/.test(line)) return;
    if (/\.buf\b/.test(line)) problems.push(`${file}:${i + 1} touches a tensor's buffer (.buf)`);
    if (/@compute|@group\(|var<storage/.test(line)) {
      problems.push(`${file}:${i + 1} holds WGSL`);
    }
  });
  return problems;
}

/** The library's .ts files, repository-relative. */
function libraryFiles(): string[] {
  const out = ["cli.ts", "mod.ts"];
  const walk = (dir: string) => {
    for (const e of Deno.readDirSync(join(ROOT, dir))) {
      const p = `${dir}/${e.name}`;
      if (e.isDirectory) walk(p);
      else if (e.isFile && e.name.endsWith(".ts")) out.push(p);
    }
  };
  for (const d of ["kernels", "nn", "clip", "train", "cli"]) walk(d);
  return out.sort();
}

function exists(path: string): boolean {
  try {
    return Deno.statSync(join(ROOT, path)).isFile;
  } catch {
    return false;
  }
}

Deno.test("layering: no import of the library breaks the layers", () => {
  const files = libraryFiles();
  assert.ok(files.length > 60, `found only ${files.length} library files`);
  const edges: Edge[] = [];
  const problems: string[] = [];
  let workers = 0;
  for (const file of files) {
    const source = Deno.readTextFileSync(join(ROOT, file));
    for (const imp of scanImports(source)) {
      const to = resolveSpecifier(file, imp.specifier);
      if (to !== null && !exists(to)) {
        problems.push(`${file}:${imp.line} imports ${imp.specifier}, which does not exist`);
      }
      if (imp.kind === "worker" && to?.endsWith(".ts")) workers++;
      edges.push({ from: file, to, names: imp.names, line: imp.line });
    }
    problems.push(...checkSource(file, source));
  }
  problems.push(...checkEdges(edges));
  assert.deepEqual(problems, [], `layering broken:\n${problems.join("\n")}`);
  // The scan sees what it must: the decode worker URL and edges between all layers.
  assert.ok(workers >= 1, "the decode worker's URL was not found");
  const seen = new Set(
    edges.filter((e) => e.to).map((e) => `${layerOf(e.from)}>${layerOf(e.to!)}`),
  );
  for (
    const pair of ["cli>clip", "train>nn", "clip>nn", "nn>kernels", "nn>formats", "clip>formats"]
  ) {
    assert.ok(seen.has(pair), `no ${pair} edge found: is the scanner reading imports?`);
  }
});

Deno.test("layering: the checker fails on each kind of forbidden edge", () => {
  const edges: Edge[] = [
    { from: "nn/tensor.ts", to: "clip/model.ts" }, // upward
    { from: "kernels/matmul.ts", to: "nn/tensor.ts" }, // upward
    { from: "clip/embed.ts", to: "train/data/loader.ts" }, // upward
    { from: "train/data/loader.ts", to: "cli/progress.ts" }, // upward
    { from: "nn/formats/zip.ts", to: "kernels/device.ts" }, // formats import the project
    { from: "clip/text.ts", to: "kernels/runtime.ts" }, // kernel internals above nn
    { from: "cli/embed.ts", to: "kernels/elementwise.ts" }, // kernel internals above nn
    { from: "nn/lora.ts", to: "clip/text.ts", names: ["LoraSite"] }, // upward
    { from: "clip/text.ts", to: "nn/ops/elementwise.ts", names: ["add", "map"] }, // raw name
    { from: "train/data/pool.ts", to: "tests/util.ts" }, // not library code
    { from: "clip/model.ts", to: "mod.ts" }, // upward: the surface re-exports clip
    // Allowed:
    { from: "clip/text.ts", to: "kernels/device.ts" },
    { from: "cli/embed.ts", to: "clip/embed.ts" },
    { from: "train/data/sample.ts", to: "nn/formats/image.ts" },
    { from: "nn/lora.ts", to: "nn/formats/safetensors.ts" },
    { from: "nn/formats/torch.ts", to: "nn/formats/pickle.ts" },
    { from: "nn/formats/png.ts", to: null },
    { from: "nn/ops/elementwise.ts", to: "kernels/elementwise.ts", names: ["mapKernel"] },
    { from: "mod.ts", to: "kernels/runtime.ts", names: ["flush"] },
    { from: "cli/demo.ts", to: "mod.ts", names: ["poolStats"] },
    { from: "tests/util.ts", to: "kernels/runtime.ts", names: ["upload"] },
  ];
  const problems = checkEdges(edges);
  assert.equal(problems.length, 11, problems.join("\n"));
  for (const [i, e] of edges.slice(0, 11).entries()) {
    assert.ok(problems[i].startsWith(e.from), `problem ${i} names ${e.from}: ${problems[i]}`);
  }
  assert.match(problems[0], /upward edge/);
  assert.match(problems[4], /formats, the leaf/);
  assert.match(problems[5], /only kernels\/device\.ts/);
  assert.match(problems[8], /raw GPU map/);
  assert.match(problems[9], /not library code/);
  assert.deepEqual(
    checkSource("clip/x.ts", "const b = t.buf;\n  // t.buf in a comment\nconst w = `@compute`;"),
    ["clip/x.ts:1 touches a tensor's buffer (.buf)", "clip/x.ts:3 holds WGSL"],
  );
  assert.deepEqual(checkSource("nn/x.ts", "const b = t.buf;"), []);
});

Deno.test("layering: the scanner reads every kind of import and skips comments", () => {
  const source = [
    "/**",
    ' * import { ignored } from "../cli.ts";',
    " */",
    'import { a, type B, c as d } from "./one.ts";',
    "import {",
    "  e,",
    "  f,",
    '} from "../two.ts";',
    'import type { G } from "./three.ts";',
    'import Def, * as ns from "./four.ts";',
    'export * from "./five.ts";',
    'export { h } from "./six.ts";',
    'import "./seven.ts";',
    'import { parseArgs } from "node:util";',
    "export function notAnImport() {}",
    'const w = new URL("./worker.ts", import.meta.url);',
    'const m = await import("./lazy.ts");',
    '// const x = await import("./commented.ts");',
  ].join("\n");
  const found = scanImports(source).map((i) => `${i.kind} ${i.specifier} [${i.names}] @${i.line}`);
  assert.deepEqual(found.sort(), [
    "dynamic ./lazy.ts [*] @17",
    "static ../two.ts [e,f] @5",
    "static ./five.ts [*] @11",
    "static ./four.ts [default,*] @10",
    "static ./one.ts [a,B,c] @4",
    "static ./seven.ts [] @13",
    "static ./six.ts [h] @12",
    "static ./three.ts [G] @9",
    "static node:util [parseArgs] @14",
    "worker ./worker.ts [] @16",
  ]);
  assert.equal(resolveSpecifier("clip/text.ts", "../nn/tensor.ts"), "nn/tensor.ts");
  assert.equal(
    resolveSpecifier("train/data/pool.ts", "./decode_worker.ts"),
    "train/data/decode_worker.ts",
  );
  assert.equal(resolveSpecifier("cli/embed.ts", "../../shared/data/x.gz"), null);
  assert.equal(resolveSpecifier("nn/formats/png.ts", "fast-png"), null);
});

Deno.test("layering: mod.ts exports no raw WGSL mapping, kernel view or buffer access", async () => {
  const surface = await import("../mod.ts");
  const leaked = RAW_GPU_NAMES.filter((n) => n in surface);
  assert.deepEqual(leaked, [], `mod.ts exports ${leaked.join(", ")}`);
  for (const n of ["copyInto", "writeTensor", "scale", "applyLora", "embedImageBatches"]) {
    assert.ok(n in surface, `mod.ts lacks ${n}`);
  }
});
