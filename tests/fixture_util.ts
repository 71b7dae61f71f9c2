/**
 * Fixture helpers shared by several test files: paths into tests/fixtures, the checkpoint
 * description that make_checkpoint_fixture.py writes, deterministic PNG / TIFF writers, a
 * temporary folder, and the byte checksums and pixel reads the image fixtures are checked with.
 * This file holds no tests, so importing it runs none.
 */
import { join } from "node:path";
import { encode as encodePng } from "fast-png";
import { pcamFileName } from "../train/data/datasets.ts";
import { H5File } from "../nn/formats/hdf5.ts";

const FIXTURES_URL = new URL("./fixtures/", import.meta.url);

/** Absolute path of tests/fixtures/, with a trailing slash. */
export const FIXTURES_DIR: string = FIXTURES_URL.pathname;

/** Absolute path of `name` (a path relative to tests/fixtures/). */
export function fixturePath(name: string): string {
  return new URL(name, FIXTURES_URL).pathname;
}

/**
 * One tensor as PyTorch described it in ckpt_expected.json: float32 values as their bit patterns
 * (`bits`), integers as decimal strings (`ints`).
 */
export interface DescribedTensor {
  dtype: string;
  shape: number[];
  bits?: number[];
  ints?: string[];
}

/** ckpt_expected.json, written by tests/fixtures/make_checkpoint_fixture.py. */
export interface CkptExpected {
  torch_version: string;
  state_dict: Record<string, DescribedTensor>;
  nested_keys: string[];
  safetensors: Record<string, DescribedTensor>;
  safetensors_metadata: Record<string, string>;
  rounding: { f32_bits: number[]; f16_bits: number[]; bf16_bits: number[] };
}

/**
 * Reads tests/fixtures/ckpt_expected.json. Throws Deno.errors.NotFound if it is missing and a
 * SyntaxError if it is not JSON (regenerate it with make_checkpoint_fixture.py).
 */
export function readCkptExpected(): CkptExpected {
  return JSON.parse(Deno.readTextFileSync(fixturePath("ckpt_expected.json"))) as CkptExpected;
}

/** The IEEE-754 bit patterns of `a`, one uint32 per element, for bit-exact comparisons. */
export function f32Bits(a: Float32Array): number[] {
  return Array.from(new Uint32Array(a.buffer, a.byteOffset, a.length));
}

/**
 * A deterministic RGB image (`width * height * 3` bytes, row-major, interleaved) whose pixels
 * depend on (seed, x, y, channel).
 */
export function pattern(width: number, height: number, seed: number): Uint8Array {
  const d = new Uint8Array(width * height * 3);
  for (let y = 0; y < height; y++) {
    for (let x = 0; x < width; x++) {
      for (let c = 0; c < 3; c++) {
        d[(y * width + x) * 3 + c] = (seed * 53 + x * 7 + y * 13 + c * 85 + x * y) % 256;
      }
    }
  }
  return d;
}

/** An 8-bit RGB PNG of `pattern(width, height, seed)`. */
export function pngBytes(width: number, height: number, seed: number): Uint8Array {
  return encodePng({ width, height, data: pattern(width, height, seed), channels: 3, depth: 8 });
}

/** A baseline uncompressed little-endian RGB TIFF (one strip) of `pattern(width, height, seed)`. */
export function tiffBytes(width: number, height: number, seed: number): Uint8Array {
  const pixels = pattern(width, height, seed);
  const entries: [number, number, number, number][] = [
    // tag, type (3 short, 4 long), count, value
    [256, 4, 1, width],
    [257, 4, 1, height],
    [258, 3, 3, 0], // BitsPerSample -> offset filled below
    [259, 3, 1, 1],
    [262, 3, 1, 2],
    [273, 4, 1, 0], // StripOffsets -> filled below
    [277, 3, 1, 3],
    [278, 4, 1, height],
    [279, 4, 1, pixels.length],
  ];
  const ifdAt = 8;
  const ifdSize = 2 + entries.length * 12 + 4;
  const bpsAt = ifdAt + ifdSize;
  const dataAt = bpsAt + 6;
  entries[2][3] = bpsAt;
  entries[5][3] = dataAt;
  const out = new Uint8Array(dataAt + pixels.length);
  const v = new DataView(out.buffer);
  out.set([0x49, 0x49, 42, 0]);
  v.setUint32(4, ifdAt, true);
  v.setUint16(ifdAt, entries.length, true);
  entries.forEach(([tag, type, count, value], i) => {
    const p = ifdAt + 2 + i * 12;
    v.setUint16(p, tag, true);
    v.setUint16(p + 2, type, true);
    v.setUint32(p + 4, count, true);
    if (type === 3 && count === 1) v.setUint16(p + 8, value, true);
    else v.setUint32(p + 8, value, true);
  });
  for (let i = 0; i < 3; i++) v.setUint16(bpsAt + 2 * i, 8, true);
  out.set(pixels, dataAt);
  return out;
}

/**
 * Runs `fn` with a fresh temporary folder (name starting with `prefix`) and removes the folder
 * and everything in it afterwards, also when `fn` throws.
 */
export async function withTempDir(
  prefix: string,
  fn: (dir: string) => Promise<void>,
): Promise<void> {
  const dir = await Deno.makeTempDir({ prefix });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/**
 * Copies the PCAM fixture (tests/fixtures/pcam, all three splits) into `dir` and overwrites
 * bytes 20..60 of the compressed chunk that holds training patch 6 with 0xee, so that reading
 * patch 6 fails. Returns the path of the corrupted training x file.
 */
export async function writeCorruptPcam(dir: string): Promise<string> {
  const pcam = join(FIXTURES_DIR, "pcam");
  for (const s of ["train", "valid", "test"] as const) {
    for (const xy of ["x", "y"] as const) {
      await Deno.copyFile(join(pcam, pcamFileName(s, xy)), join(dir, pcamFileName(s, xy)));
    }
  }
  const xPath = join(dir, pcamFileName("train", "x"));
  const f = H5File.open(xPath);
  const loc = f.dataset("x").chunkLocation([6, 0, 0, 0])!;
  f.close();
  const bytes = await Deno.readFile(xPath);
  bytes.fill(0xee, loc.offset + 20, loc.offset + 60);
  await Deno.writeFile(xPath, bytes);
  return xPath;
}

/** Decodes base64 (as the Python fixture scripts write bytes) into bytes. */
export function fromB64(s: string): Uint8Array {
  return Uint8Array.from(atob(s), (c) => c.charCodeAt(0));
}

/**
 * (sum of bytes, sum of i * byte mod 2^32), as make_image_fixture.py computes them: every byte
 * enters both, so equal checksums mean (all but certainly) equal images.
 */
export function checksum(data: Uint8Array): [number, number] {
  let sum = 0, wsum = 0;
  for (let i = 0; i < data.length; i++) {
    sum += data[i];
    wsum = (wsum + i * data[i]) % 4294967296;
  }
  return [sum, wsum];
}

/** The [r, g, b] bytes at row `y`, column `x` of an interleaved RGB image. */
export function pixel(img: { width: number; data: Uint8Array }, y: number, x: number): number[] {
  const p = (y * img.width + x) * 3;
  return [img.data[p], img.data[p + 1], img.data[p + 2]];
}
