/**
 * Matmul choices by measurement on CPU adapters, cached on disk per adapter.
 *
 * The fixed tile table (`tune.ts`) fits one CPU and not another: on one llvmpipe machine the
 * register tile reaches the adapter's FMA ceiling, on an AMD EPYC it reached 20% of it, and there
 * reading A and B through textures instead of storage buffers helped most. So on first use `init()`
 * times a few candidates on one product (storage vs texture inputs, 32x32 vs 16x16 register
 * tiles) and keeps the fastest as {@link MatmulPreference} in the device's tuning; the result is
 * stored in a small JSON file keyed by adapter, driver and Deno version, so later processes read
 * it instead of measuring. Without a cache entry and with measuring disabled (`InitOptions.tune =
 * false`, env `CLIPIT_TUNE=off`: tests and CI) the fixed table applies.
 *
 * Cache file: `$CLIPIT_TUNE_CACHE`, else `$XDG_CACHE_HOME/clip-it-webgpu/tune.json`, else
 * `~/.cache/clip-it-webgpu/tune.json`. A corrupt or foreign file is ignored with a warning and
 * replaced; it is written atomically (a temporary file in the same folder, then a rename), so
 * two processes tuning at once leave one complete file.
 */
import type { AdapterDescription, Gpu } from "./device.ts";
import { matmulKernel } from "./matmul.ts";
import { pool, sync, upload } from "./runtime.ts";
import type { MatmulPreference, MatmulTile } from "./tune.ts";

/** A measured preference with what it was measured against (stored in the cache). */
export interface TuneRecord {
  preference: MatmulPreference;
  /** GFLOP/s per candidate (JSON of the tile), for the record. */
  measured: Record<string, number>;
  /** The product measured, e.g. "512^3". */
  shape: string;
  /** ISO time of the measurement. */
  when: string;
}

interface CacheFile {
  version: 1;
  entries: Record<string, TuneRecord>;
}

const VERSION = 1;

/** The cache key of an adapter: description, vendor, architecture, backend, Deno version. */
export function tuneKey(a: AdapterDescription): string {
  const deno = typeof Deno !== "undefined" ? Deno.version.deno : "?";
  return [a.description, a.vendor, a.architecture, a.backend, `deno ${deno}`].join(" | ");
}

function env(name: string): string | undefined {
  try {
    return Deno.env.get(name) || undefined;
  } catch {
    return undefined;
  }
}

/** Where the cache lives (see the module doc), or null when no home folder is known. */
export function tuneCachePath(): string | null {
  const explicit = env("CLIPIT_TUNE_CACHE");
  if (explicit) return explicit;
  const base = env("XDG_CACHE_HOME") ?? (env("HOME") ? `${env("HOME")}/.cache` : undefined);
  return base ? `${base}/clip-it-webgpu/tune.json` : null;
}

/** Measuring is on unless `CLIPIT_TUNE` is `off`, `0` or `false`. */
export function tuneEnabledByEnv(): boolean {
  const v = env("CLIPIT_TUNE")?.toLowerCase();
  return !(v === "off" || v === "0" || v === "false");
}

function isRecord(x: unknown): x is TuneRecord {
  const r = x as TuneRecord;
  return typeof r === "object" && r !== null && typeof r.preference === "object" &&
    r.preference !== null && typeof r.preference.textures === "boolean" &&
    (r.preference.maxTile === 16 || r.preference.maxTile === 32);
}

/**
 * Read the cache: its entries, or an empty set when the file is missing; a file that is not a
 * cache of this version (corrupt, truncated, foreign) is reported through `warn` and ignored.
 */
export function readTuneCache(path: string, warn: (msg: string) => void): CacheFile {
  let text: string;
  try {
    text = Deno.readTextFileSync(path);
  } catch {
    return { version: VERSION, entries: {} };
  }
  try {
    const data = JSON.parse(text) as CacheFile;
    if (data?.version !== VERSION || typeof data.entries !== "object" || data.entries === null) {
      throw new Error(`not a version ${VERSION} tune cache`);
    }
    const entries: Record<string, TuneRecord> = {};
    for (const [k, v] of Object.entries(data.entries)) if (isRecord(v)) entries[k] = v;
    return { version: VERSION, entries };
  } catch (e) {
    warn(`ignoring the kernel tuning cache ${path}: ${(e as Error).message}`);
    return { version: VERSION, entries: {} };
  }
}

/**
 * Write `text` to `path` atomically: a temporary file in the same folder, then a rename (kernels/
 * may not use nn/formats' writer). Creates the folder. Throws on failure, leaving no temporary.
 */
export function atomicWriteText(path: string, text: string): void {
  const dir = path.includes("/") ? path.slice(0, path.lastIndexOf("/")) : ".";
  Deno.mkdirSync(dir, { recursive: true });
  const tmp = `${path}.${Deno.pid}.${Math.random().toString(36).slice(2)}.tmp`;
  try {
    Deno.writeTextFileSync(tmp, text);
    Deno.renameSync(tmp, path);
  } catch (e) {
    try {
      Deno.removeSync(tmp);
    } catch { /* never created */ }
    throw e;
  }
}

/** Store `rec` under `key`, keeping the other adapters' entries. Failures are warnings. */
export function writeTuneRecord(
  path: string,
  key: string,
  rec: TuneRecord,
  warn: (msg: string) => void,
): void {
  const file = readTuneCache(path, () => {});
  file.entries[key] = rec;
  try {
    atomicWriteText(path, JSON.stringify(file, null, 1) + "\n");
  } catch (e) {
    warn(`could not write the kernel tuning cache ${path}: ${(e as Error).message}`);
  }
}

/** The candidates a CPU adapter's sweep times (register tiles; see the module doc). */
export function cpuCandidates(): MatmulTile[] {
  const big: MatmulTile = { TM: 32, TN: 32, WX: 8, WY: 1, rowsFirst: true, KU: 2 };
  const mid: MatmulTile = { TM: 16, TN: 16, WX: 8, WY: 1, rowsFirst: true };
  return [big, { ...big, textures: true }, mid, { ...mid, textures: true }];
}

/** The preference a candidate tile stands for. */
export function preferenceOf(t: MatmulTile): MatmulPreference {
  return { textures: t.textures === true, maxTile: t.TM >= 32 ? 32 : 16 };
}

/**
 * Pick the fastest of `candidates` by `time(tile) -> ms`: one untimed run each (it compiles),
 * then `reps` rounds that time every candidate once, in turn, so that a burst of other work on
 * the machine hits all of them alike; each candidate's best round counts. Returns the record to
 * store.
 */
export async function sweep(
  candidates: MatmulTile[],
  time: (t: MatmulTile) => Promise<number>,
  flops: number,
  shape: string,
  reps = 3,
): Promise<TuneRecord> {
  for (const t of candidates) await time(t);
  const best = candidates.map(() => Infinity);
  for (let r = 0; r < reps; r++) {
    for (const [i, t] of candidates.entries()) best[i] = Math.min(best[i], await time(t));
  }
  const measured: Record<string, number> = {};
  let win = 0;
  candidates.forEach((t, i) => {
    measured[JSON.stringify(t)] = Number((flops / best[i] / 1e6).toFixed(2));
    if (best[i] < best[win]) win = i;
  });
  return {
    preference: preferenceOf(candidates[win]),
    measured,
    shape,
    when: new Date().toISOString(),
  };
}

/**
 * Set `g.tuning.matmul` from the cache entry of this adapter, or (`mode` "measure") by a sweep
 * of {@link cpuCandidates} on a 512^3 product, stored in the cache. Called by `init()`.
 */
export async function autotuneMatmul(
  g: Gpu,
  mode: "cache" | "measure",
  warn: (msg: string) => void,
): Promise<void> {
  const path = tuneCachePath();
  const key = tuneKey(g.adapter);
  const hit = path ? readTuneCache(path, warn).entries[key] : undefined;
  if (hit) {
    g.tuning.matmul = hit.preference;
    g.tuning.matmulSource = "cache";
    return;
  }
  if (mode !== "measure") return;
  const n = 512;
  const d = { batch: 1, M: n, N: n, K: n, sab: 0, sam: n, sak: 1, sbb: 0, sbk: n, sbn: 1 };
  const a = pool.acquire(n * n * 4), b = pool.acquire(n * n * 4), c = pool.acquire(n * n * 4);
  try {
    const x = new Float32Array(n * n).map((_, i) => ((i * 7919) % 1000) / 1000 - 0.5);
    upload(a, x);
    upload(b, x);
    const time = async (t: MatmulTile) => {
      const t0 = performance.now();
      for (let i = 0; i < 2; i++) matmulKernel(a, b, c, d, null, t);
      await sync();
      return (performance.now() - t0) / 2;
    };
    const rec = await sweep(cpuCandidates(), time, 2 * n ** 3, `${n}^3`);
    g.tuning.matmul = rec.preference;
    g.tuning.matmulSource = "measured";
    if (path) writeTuneRecord(path, key, rec, warn);
  } finally {
    [a, b, c].forEach((x) => pool.release(x));
  }
}
