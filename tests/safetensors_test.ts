/**
 * Tests of nn/formats/safetensors.ts: exact round trips, the Python-written fixture, f16/bf16
 * conversions against PyTorch's own roundings, every header validation error, and the atomic
 * write. All comparisons are exact (bit-for-bit, tolerance 0) unless a check says otherwise.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import {
  bf16ToF32,
  f16ToF32,
  f32ToBf16,
  f32ToF16,
  SafetensorsFile,
  type SafetensorsTensor,
  writeSafetensors,
} from "../nn/formats/safetensors.ts";
import { f32Bits, fixturePath, readCkptExpected, withTempDir } from "./fixture_util.ts";

const expected = readCkptExpected();

/** Builds a safetensors file from a header object and a data block, bypassing all checks. */
function rawFile(header: unknown, data: Uint8Array, lengthOverride?: bigint): Uint8Array {
  const json = new TextEncoder().encode(
    typeof header === "string" ? header : JSON.stringify(header),
  );
  const out = new Uint8Array(8 + json.length + data.length);
  new DataView(out.buffer).setBigUint64(0, lengthOverride ?? BigInt(json.length), true);
  out.set(json, 8);
  out.set(data, 8 + json.length);
  return out;
}

Deno.test("writeSafetensors -> SafetensorsFile round trip is exact for every dtype", async () => {
  await withTempDir("safetensors_test_", async (dir) => {
    const path = join(dir, "rt.safetensors");
    const f32 = new Float32Array([1.5, -0, Number.NaN, Infinity, 1e-45, 3.4028234663852886e38]);
    const i32 = new Int32Array([0, -1, 2147483647, -2147483648, 42, 7]);
    const u8 = new Uint8Array([0, 1, 254, 255]);
    const i64 = new BigInt64Array([-(2n ** 63n), 2n ** 53n + 1n, -5n]);
    const bf = new Float32Array([1, -2.5, 3.140625, 2 ** 100]); // exactly representable in bf16
    const half = new Float32Array([0.5, -65504, 2 ** -24, 1000.5]); // exactly representable in f16
    const tensors: Record<string, SafetensorsTensor> = {
      "b.f32": { dtype: "F32", shape: [2, 3], data: f32 },
      "a.i32": { dtype: "I32", shape: [3, 2], data: i32 },
      "z.u8": { dtype: "U8", shape: [4], data: u8 },
      "i64raw": { dtype: "I64", shape: [3], data: new Uint8Array(i64.buffer) },
      "i64wide": { dtype: "I64", shape: [6], data: i32 },
      "bf": { dtype: "BF16", shape: [2, 2], data: bf },
      "half": { dtype: "F16", shape: [4], data: half },
      "scalar": { dtype: "F32", shape: [], data: new Float32Array([7]) },
      "empty": { dtype: "F32", shape: [0, 3], data: new Float32Array(0) },
    };
    await writeSafetensors(path, tensors, { format: "pt", who: "test" });
    const bytes = await Deno.readFile(path);
    const headerLen = Number(new DataView(bytes.buffer).getBigUint64(0, true));
    assert.equal(headerLen % 8, 0, "header length is a multiple of 8");
    const file = await SafetensorsFile.open(path);
    try {
      assert.deepEqual(file.metadata, { format: "pt", who: "test" });
      const entries = file.entries();
      assert.deepEqual(new Set(entries.keys()), new Set(Object.keys(tensors)));
      // Layout as the Python library: widest dtype first, then by name; each entry aligned.
      assert.deepEqual([...entries.keys()], [
        "i64raw",
        "i64wide",
        "b.f32",
        "empty",
        "scalar",
        "a.i32",
        "bf",
        "half",
        "z.u8",
      ]);
      for (const [name, e] of entries) {
        assert.deepEqual(e.shape, tensors[name].shape, name);
        assert.equal(e.dtype, tensors[name].dtype, name);
        const item = { I64: 8, I32: 4, F32: 4, BF16: 2, F16: 2, U8: 1 }[e.dtype as "I64"];
        assert.equal((e.byteOffset - 8 - headerLen) % item, 0, `${name} aligned in data block`);
      }
      assert.deepEqual(f32Bits(await file.readFloat32("b.f32")), f32Bits(f32));
      assert.deepEqual(new Int32Array((await file.read("a.i32")).buffer), i32);
      assert.deepEqual(await file.read("z.u8"), u8);
      assert.deepEqual(new BigInt64Array((await file.read("i64raw")).buffer), i64);
      assert.deepEqual(
        new BigInt64Array((await file.read("i64wide")).buffer),
        BigInt64Array.from(i32, (v) => BigInt(v)),
      );
      assert.deepEqual(await file.readFloat32("bf"), bf);
      assert.deepEqual(await file.readFloat32("half"), half);
      assert.deepEqual(await file.readFloat32("scalar"), new Float32Array([7]));
      assert.equal((await file.readFloat32("empty")).length, 0);
      // Concurrent reads on one handle must not interleave their seeks.
      const both = await Promise.all([file.read("z.u8"), file.read("a.i32"), file.read("z.u8")]);
      assert.deepEqual(both[0], u8);
      assert.deepEqual(new Int32Array(both[1].buffer), i32);
      assert.deepEqual(both[2], u8);
      await assert.rejects(() => file.readFloat32("a.i32"), /"a\.i32" has dtype I32/);
      assert.throws(() => file.entry("nope"), /no tensor named "nope"/);
    } finally {
      file.close();
    }
    assert.deepEqual([...Deno.readDirSync(dir)].map((e) => e.name), ["rt.safetensors"]);
  });
});

Deno.test("reads the Python-written safetensors fixture exactly", async () => {
  const path = fixturePath("ckpt_py.safetensors");
  const file = await SafetensorsFile.open(path);
  try {
    assert.deepEqual(file.metadata, expected.safetensors_metadata);
    const entries = file.entries();
    assert.deepEqual(new Set(entries.keys()), new Set(Object.keys(expected.safetensors)));
    for (const [name, want] of Object.entries(expected.safetensors)) {
      const e = entries.get(name)!;
      assert.equal(e.dtype, want.dtype, name);
      assert.deepEqual(e.shape, want.shape, name);
      if (want.bits) {
        assert.deepEqual(f32Bits(await file.readFloat32(name)), want.bits, name);
      } else {
        const raw = await file.read(name);
        const ints = e.dtype === "I64"
          ? Array.from(new BigInt64Array(raw.buffer), String)
          : e.dtype === "I32"
          ? Array.from(new Int32Array(raw.buffer), String)
          : Array.from(raw, String);
        assert.deepEqual(ints, want.ints, name);
      }
    }
  } finally {
    file.close();
  }
});

Deno.test("f16/bf16 conversions match PyTorch bit for bit", () => {
  const { f32_bits, f16_bits, bf16_bits } = expected.rounding;
  const f32 = new Float32Array(new Uint32Array(f32_bits).buffer);
  assert.deepEqual(Array.from(f32ToF16(f32)), f16_bits);
  // NaN: PyTorch versions disagree on the bf16 NaN pattern (1.13 gives 0xffff, later ones
  // 0x7fc0), so for NaN inputs only NaN-ness is checked; every other value exactly.
  const bf = f32ToBf16(f32);
  for (let i = 0; i < f32.length; i++) {
    if (Number.isNaN(f32[i])) assert.ok((bf[i] & 0x7f80) === 0x7f80 && (bf[i] & 0x7f) !== 0);
    else assert.equal(bf[i], bf16_bits[i], `bf16 of ${f32[i]}`);
  }
  // Back to float32: every half / bfloat16 value is exactly representable.
  const half = new Uint16Array(f16_bits);
  const back = f16ToF32(half);
  assert.deepEqual(Array.from(f32ToF16(back)), f16_bits, "f16 -> f32 -> f16 is the identity");
  assert.deepEqual(
    f32Bits(bf16ToF32(new Uint16Array(bf16_bits))),
    bf16_bits.map((b) => b << 16 >>> 0),
  );
  // Every one of the 65536 half patterns survives f16 -> f32 -> f16 (NaNs stay NaN).
  const all = new Uint16Array(65536).map((_, i) => i);
  const rt = f32ToF16(f16ToF32(all));
  for (let h = 0; h < 65536; h++) {
    const isNan = (h & 0x7c00) === 0x7c00 && (h & 0x3ff) !== 0;
    if (isNan) assert.ok((rt[h] & 0x7c00) === 0x7c00 && (rt[h] & 0x3ff) !== 0, `NaN ${h}`);
    else assert.equal(rt[h], h, `half pattern ${h}`);
  }
});

Deno.test("every malformed file gives a clear error naming the file and tensor", async () => {
  await withTempDir("safetensors_test_", async (dir) => {
    const good = join(dir, "good.safetensors");
    await writeSafetensors(good, {
      w: { dtype: "F32", shape: [2, 2], data: new Float32Array([1, 2, 3, 4]) },
      b: { dtype: "F32", shape: [2], data: new Float32Array([5, 6]) },
    });
    const goodBytes = await Deno.readFile(good);
    const cases: [string, Uint8Array, RegExp][] = [
      ["tiny", new Uint8Array(5), /too short for a safetensors file/],
      [
        "truncated",
        goodBytes.subarray(0, goodBytes.length - 3),
        /tensor "w": data_offsets \[8, 24\] out of range of the 21-byte data block/,
      ],
      [
        "truncated_header",
        goodBytes.subarray(0, 20),
        /header length \d+ goes beyond the end of the 20-byte file/,
      ],
      [
        "huge_len",
        rawFile({}, new Uint8Array(0), 2n ** 62n),
        /header length 4611686018427387904 goes beyond/,
      ],
      ["bad_json", rawFile('{"w": {', new Uint8Array(0)), /header is not valid JSON/],
      ["not_object", rawFile("[1,2]", new Uint8Array(0)), /header is not a JSON object/],
      [
        "wrong_length",
        rawFile({ w: { dtype: "F32", shape: [2, 2], data_offsets: [0, 12] } }, new Uint8Array(12)),
        /tensor "w": byte length 12 != 16 = prod\(\[2,2\]\) \* 4 \(F32\)/,
      ],
      [
        "unknown_dtype",
        rawFile({ w: { dtype: "F8_E9M9", shape: [1], data_offsets: [0, 1] } }, new Uint8Array(1)),
        /tensor "w": unknown dtype "F8_E9M9"/,
      ],
      [
        "bad_shape",
        rawFile({ w: { dtype: "U8", shape: [-1], data_offsets: [0, 1] } }, new Uint8Array(1)),
        /tensor "w": bad shape \[-1\]/,
      ],
      [
        "out_of_range",
        rawFile({ w: { dtype: "U8", shape: [4], data_offsets: [2, 6] } }, new Uint8Array(4)),
        /tensor "w": data_offsets \[2, 6\] out of range of the 4-byte data block/,
      ],
      [
        "overlap",
        rawFile({
          a: { dtype: "U8", shape: [4], data_offsets: [0, 4] },
          b: { dtype: "U8", shape: [4], data_offsets: [2, 6] },
        }, new Uint8Array(6)),
        /tensor "b" overlaps tensor "a"/,
      ],
      [
        "gap",
        rawFile({ a: { dtype: "U8", shape: [2], data_offsets: [2, 4] } }, new Uint8Array(4)),
        /bytes \[0, 2\) of the data block before tensor "a" belong to no tensor/,
      ],
      [
        "trailing",
        rawFile({ a: { dtype: "U8", shape: [2], data_offsets: [0, 2] } }, new Uint8Array(5)),
        /tensors cover 2 bytes but the data block has 5 bytes/,
      ],
      [
        "metadata_not_string",
        rawFile({ __metadata__: { epoch: 3 } }, new Uint8Array(0)),
        /"__metadata__" value for "epoch" is not a string/,
      ],
    ];
    for (const [name, bytes, pattern] of cases) {
      const path = join(dir, `${name}.safetensors`);
      await Deno.writeFile(path, bytes);
      await assert.rejects(() => SafetensorsFile.open(path), (e: Error) => {
        assert.match(e.message, pattern, name);
        assert.ok(e.message.startsWith(path), `${name}: error names the file: ${e.message}`);
        return true;
      });
    }
  });
});

Deno.test("atomic write: a failed write leaves the old file intact and no temp file", async () => {
  await withTempDir("safetensors_test_", async (dir) => {
    const path = join(dir, "model.safetensors");
    await writeSafetensors(path, {
      w: { dtype: "F32", shape: [2], data: new Float32Array([1, 2]) },
    });
    const before = await Deno.readFile(path);
    const bad: [Record<string, SafetensorsTensor>, RegExp][] = [
      [
        { w: { dtype: "F32", shape: [3], data: new Uint8Array(8) } },
        /tensor "w": byte length 8 != 12/,
      ],
      [
        { w: { dtype: "F32", shape: [3], data: new Float32Array(2) } },
        /tensor "w": 2 values for shape \[3\]/,
      ],
      [{ w: { dtype: "U8", shape: [2], data: new Float32Array(2) } }, /cannot be written as U8/],
      [{ w: { dtype: "Q4" as "U8", shape: [2], data: new Uint8Array(2) } }, /unknown dtype "Q4"/],
      [{ __metadata__: { dtype: "U8", shape: [1], data: new Uint8Array(1) } }, /reserved name/],
    ];
    for (const [tensors, pattern] of bad) {
      await assert.rejects(() => writeSafetensors(path, tensors), pattern);
    }
    // A failure after the temporary file exists: renaming over a non-empty directory fails.
    const blocker = join(dir, "blocker");
    await Deno.mkdir(blocker);
    await Deno.writeTextFile(join(blocker, "keep"), "x");
    await assert.rejects(() =>
      writeSafetensors(blocker, { w: { dtype: "U8", shape: [1], data: new Uint8Array(1) } })
    );
    assert.deepEqual(await Deno.readFile(path), before, "old file untouched");
    const names = [...Deno.readDirSync(dir)].map((e) => e.name).sort();
    assert.deepEqual(names, ["blocker", "model.safetensors"], "no temporary file left behind");
    // A successful overwrite replaces the content.
    await writeSafetensors(path, { v: { dtype: "I32", shape: [1], data: new Int32Array([9]) } });
    const file = await SafetensorsFile.open(path);
    assert.deepEqual([...file.entries().keys()], ["v"]);
    file.close();
  });
});
