/**
 * The first-use matmul tuning (kernels/autotune.ts) without running a sweep: the cache file
 * (missing, corrupt, foreign, kept entries of other adapters, atomic replacement), the sweep's
 * choice with a fake timer, and init's use of a cached entry.
 */
import assert from "node:assert/strict";
import {
  atomicWriteText,
  autotuneMatmul,
  preferenceOf,
  readTuneCache,
  sweep,
  tuneCachePath,
  tuneKey,
  type TuneRecord,
  writeTuneRecord,
} from "../kernels/autotune.ts";
import { gpu } from "../kernels/device.ts";
import type { MatmulTile } from "../kernels/tune.ts";
import { gpuTest } from "./util.ts";

const REC: TuneRecord = {
  preference: { textures: true, maxTile: 16 },
  measured: { "{}": 1 },
  shape: "512^3",
  when: "2026-01-01T00:00:00.000Z",
};

function tmpFile(): string {
  return `${Deno.makeTempDirSync({ prefix: "clipit-tune-" })}/sub/tune.json`;
}

Deno.test("tune cache: missing file is empty, corrupt and foreign files warn and are ignored", () => {
  const path = tmpFile();
  const warnings: string[] = [];
  const warn = (m: string) => warnings.push(m);
  assert.deepEqual(readTuneCache(path, warn).entries, {});
  assert.equal(warnings.length, 0, "a missing cache is not worth a warning");
  Deno.mkdirSync(path.slice(0, path.lastIndexOf("/")), { recursive: true });
  for (
    const bad of ['{"version": 1, "entries": {"a": ', "[1,2]", '{"version": 7, "entries": {}}']
  ) {
    Deno.writeTextFileSync(path, bad);
    assert.deepEqual(readTuneCache(path, warn).entries, {});
  }
  assert.equal(warnings.length, 3);
  assert.match(warnings[0], /ignoring the kernel tuning cache .*tune\.json/);
  // A well-formed file with one malformed entry keeps the good ones.
  Deno.writeTextFileSync(
    path,
    JSON.stringify({ version: 1, entries: { good: REC, bad: { preference: { maxTile: 3 } } } }),
  );
  assert.deepEqual(Object.keys(readTuneCache(path, warn).entries), ["good"]);
});

Deno.test("tune cache: records of other adapters are kept; the write is atomic", () => {
  const path = tmpFile();
  const warn = (m: string) => assert.fail(m);
  writeTuneRecord(path, "adapter one", REC, warn);
  writeTuneRecord(
    path,
    "adapter two",
    { ...REC, preference: { textures: false, maxTile: 32 } },
    warn,
  );
  const entries = readTuneCache(path, warn).entries;
  assert.deepEqual(Object.keys(entries).sort(), ["adapter one", "adapter two"]);
  assert.equal(entries["adapter two"].preference.maxTile, 32);
  // Replacing a corrupt file works, and no temporary file is left behind.
  Deno.writeTextFileSync(path, "garbage");
  writeTuneRecord(path, "adapter three", REC, () => {});
  const dir = path.slice(0, path.lastIndexOf("/"));
  assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["tune.json"]);
  assert.deepEqual(Object.keys(readTuneCache(path, warn).entries), ["adapter three"]);
  // A write that cannot happen (the folder is a file) throws and leaves nothing.
  assert.throws(() => atomicWriteText(`${path}/x.json`, "{}"));
});

Deno.test("tune cache path: CLIPIT_TUNE_CACHE, then XDG_CACHE_HOME, then ~/.cache", () => {
  const saved = ["CLIPIT_TUNE_CACHE", "XDG_CACHE_HOME", "HOME"].map((k) => Deno.env.get(k));
  try {
    Deno.env.set("CLIPIT_TUNE_CACHE", "/x/t.json");
    assert.equal(tuneCachePath(), "/x/t.json");
    Deno.env.delete("CLIPIT_TUNE_CACHE");
    Deno.env.set("XDG_CACHE_HOME", "/xdg");
    assert.equal(tuneCachePath(), "/xdg/clip-it-webgpu/tune.json");
    Deno.env.delete("XDG_CACHE_HOME");
    Deno.env.set("HOME", "/home/u");
    assert.equal(tuneCachePath(), "/home/u/.cache/clip-it-webgpu/tune.json");
  } finally {
    ["CLIPIT_TUNE_CACHE", "XDG_CACHE_HOME", "HOME"].forEach((k, i) =>
      saved[i] === undefined ? Deno.env.delete(k) : Deno.env.set(k, saved[i]!)
    );
  }
});

Deno.test("sweep: picks the fastest candidate (fake timer) and records every rate", async () => {
  const tiles: MatmulTile[] = [
    { TM: 32, TN: 32, WX: 8, WY: 1 },
    { TM: 32, TN: 32, WX: 8, WY: 1, textures: true },
    { TM: 16, TN: 16, WX: 8, WY: 1, textures: true },
  ];
  const ms = [10, 4, 6];
  const rec = await sweep(tiles, (t) => Promise.resolve(ms[tiles.indexOf(t)]), 2e9, "x");
  assert.deepEqual(rec.preference, { textures: true, maxTile: 32 });
  assert.equal(Object.keys(rec.measured).length, 3);
  assert.equal(rec.measured[JSON.stringify(tiles[1])], 500);
  assert.deepEqual(preferenceOf(tiles[2]), { textures: true, maxTile: 16 });
});

gpuTest("autotune: a cached entry for this adapter is used without measuring", async () => {
  const g = gpu();
  const saved = { m: g.tuning.matmul, s: g.tuning.matmulSource };
  const env = Deno.env.get("CLIPIT_TUNE_CACHE");
  const path = tmpFile();
  try {
    Deno.env.set("CLIPIT_TUNE_CACHE", path);
    // No entry and measuring off: nothing changes.
    await autotuneMatmul(g, "cache", () => {});
    assert.equal(g.tuning.matmul, saved.m);
    writeTuneRecord(path, tuneKey(g.adapter), REC, () => {});
    await autotuneMatmul(g, "cache", () => {});
    assert.deepEqual(g.tuning.matmul, REC.preference);
    assert.equal(g.tuning.matmulSource, "cache");
  } finally {
    g.tuning.matmul = saved.m;
    g.tuning.matmulSource = saved.s;
    env === undefined
      ? Deno.env.delete("CLIPIT_TUNE_CACHE")
      : Deno.env.set("CLIPIT_TUNE_CACHE", env);
  }
});
