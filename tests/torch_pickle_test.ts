/**
 * Tests of nn/formats/zip.ts, pickle.ts and torch.ts against files written by PyTorch 1.13
 * (Debian python3-torch, see tests/fixtures/make_checkpoint_fixture.py): values must equal what
 * PyTorch held exactly (float32 bit patterns, integers as decimal strings; tolerance 0), for
 * stored, deflated and zip64 archives, plain, wrapped and nested dicts, and non-contiguous
 * tensors.
 */
import assert from "node:assert/strict";
import { join } from "node:path";
import { type LoadedTensor, loadTorchCheckpoint, TorchCheckpoint } from "../nn/formats/torch.ts";
import { PyObject, unpickle } from "../nn/formats/pickle.ts";
import { ZipReader } from "../nn/formats/zip.ts";
import { type DescribedTensor, f32Bits, fixturePath, readCkptExpected } from "./fixture_util.ts";

const expected = readCkptExpected();

/** Exact comparison of a loaded tensor with PyTorch's description of it. */
function assertTensor(t: LoadedTensor, want: DescribedTensor, name: string) {
  assert.equal(t.dtype, want.dtype, `${name} dtype`);
  assert.deepEqual(t.shape, want.shape, `${name} shape`);
  if (want.bits) {
    assert.ok(t.data instanceof Float32Array, `${name} is Float32Array`);
    assert.deepEqual(f32Bits(t.data), want.bits, `${name} values (bit-exact)`);
  } else {
    const expectedType = want.dtype === "I64" ? BigInt64Array : Int32Array;
    assert.ok(t.data instanceof expectedType, `${name} array type`);
    assert.deepEqual(Array.from(t.data as Int32Array, String), want.ints, `${name} values`);
  }
}

async function assertPlainStateDict(path: string) {
  const sd = await loadTorchCheckpoint(path);
  assert.deepEqual([...sd.keys()], Object.keys(expected.state_dict), `${path} keys`);
  for (const [name, want] of Object.entries(expected.state_dict)) {
    assertTensor(sd.get(name)!, want, `${path}: ${name}`);
  }
  // "tied" is the same pickled tensor as "layer.weight": one array, not two.
  assert.equal(sd.get("tied")!.data, sd.get("layer.weight")!.data);
}

Deno.test("torch.save zip (stored entries) gives exactly PyTorch's values", async () => {
  await assertPlainStateDict(fixturePath("ckpt_plain.bin"));
});

Deno.test("strides, offsets, parameters are seen as PyTorch wrote them", async () => {
  const ckpt = await TorchCheckpoint.open(fixturePath("ckpt_plain.bin"));
  try {
    assert.equal(ckpt.prefix, "ckpt_plain", "torch 1.13 names the folder after the file stem");
    const refs = ckpt.tensors();
    const tr = refs.get("transposed")!;
    assert.deepEqual([tr.shape, tr.stride, tr.isContiguous], [[6, 5], [1, 6], false]);
    const sl = refs.get("sliced")!;
    assert.deepEqual([sl.storageOffset, sl.stride, sl.isContiguous], [8, [6, 1], false]);
    assert.deepEqual(refs.get("expanded")!.stride, [1, 0]);
    assert.equal(refs.get("layer.weight")!.isContiguous, true);
    assert.equal(refs.get("param")!.isParameter, true);
    assert.equal(refs.get("param")!.requiresGrad, true);
    assert.equal(refs.get("layer.weight")!.isParameter, false);
    assert.equal(refs.get("tied"), refs.get("layer.weight"));
  } finally {
    ckpt.close();
  }
});

Deno.test("deflated and zip64 archives read identically", async () => {
  const zip = await ZipReader.open(fixturePath("ckpt_deflated.pt"));
  try {
    assert.ok([...zip.entries.values()].every((e) => e.method === 8), "all entries deflated");
  } finally {
    zip.close();
  }
  await assertPlainStateDict(fixturePath("ckpt_deflated.pt"));
  const bytes = await Deno.readFile(fixturePath("ckpt_zip64.pt"));
  const hex = Array.from(bytes, (b) => b.toString(16).padStart(2, "0")).join("");
  assert.ok(hex.includes("504b0607") && hex.includes("504b0606"), "fixture has zip64 records");
  assert.ok(hex.includes("504b0102") && hex.includes("ffffffffffffffff"), "zip64 sizes");
  await assertPlainStateDict(fixturePath("ckpt_zip64.pt"));
});

Deno.test("ZipReader ranges match whole reads for stored and deflated entries", async () => {
  for (const f of ["ckpt_plain.bin", "ckpt_deflated.pt"]) {
    const zip = await ZipReader.open(fixturePath(f));
    try {
      const name = [...zip.entries.keys()].find((n) => n.endsWith("/data.pkl"))!;
      const whole = await zip.read(name);
      assert.equal(whole.length, zip.entry(name).uncompressedSize);
      assert.deepEqual(await zip.readRange(name, 10, 100), whole.slice(10, 110), f);
      await assert.rejects(() => zip.readRange(name, whole.length - 2, 3), /outside zip entry/);
      await assert.rejects(() => zip.read("nope"), /no entry "nope"/);
    } finally {
      zip.close();
    }
  }
});

Deno.test("wrappers are unwrapped and nested dicts flattened with '.'", async () => {
  await assertPlainStateDict(fixturePath("ckpt_wrapped.pt"));
  const nested = await loadTorchCheckpoint(fixturePath("ckpt_nested.pt"));
  assert.deepEqual([...nested.keys()], expected.nested_keys);
  const sd = expected.state_dict;
  assertTensor(nested.get("encoder.layer.weight")!, sd["layer.weight"], "encoder.layer.weight");
  assertTensor(nested.get("encoder.bias")!, sd["layer.bias"], "encoder.bias");
  assertTensor(nested.get("head.weight")!, sd["param"], "head.weight");
  // The non-tensor siblings stay reachable through the raw tree.
  const ckpt = await TorchCheckpoint.open(fixturePath("ckpt_wrapped.pt"));
  try {
    const root = ckpt.root as Map<string, unknown>;
    assert.equal(root.get("epoch"), 3);
    assert.deepEqual(root.get("meta"), new Map<string, unknown>([["lr", 0.125], ["name", "run"]]));
  } finally {
    ckpt.close();
  }
});

Deno.test("bad checkpoints give clear errors", async () => {
  await assert.rejects(
    () => loadTorchCheckpoint(fixturePath("ckpt_legacy.pt")),
    /ckpt_legacy\.pt: legacy \(pre-1\.6, non-zip\) torch\.save format is not supported/,
  );
  await assert.rejects(
    () => loadTorchCheckpoint(fixturePath("ckpt_unknown_global.pt")),
    /ckpt_unknown_global\.pt: .*unknown global "argparse\.Namespace"/,
  );
  const lenient = await TorchCheckpoint.open(fixturePath("ckpt_unknown_global.pt"), {
    allowUnknownGlobals: true,
  });
  try {
    const args = (lenient.root as Map<string, unknown>).get("args");
    assert.ok(args instanceof PyObject && args.cls.qualified === "argparse.Namespace");
    assert.deepEqual(args.state, new Map([["lr", 0.1]]));
    const w = await lenient.read(lenient.tensors().get("w")!, "w");
    assertTensor(w, expected.state_dict["layer.bias"], "w");
  } finally {
    lenient.close();
  }
  await assert.rejects(
    () => loadTorchCheckpoint(fixturePath("ckpt_bad_storage.pt")),
    /ckpt_bad_storage\.pt: tensor "layer\.bias": needs bytes \[0, 12\) of storage "1", which has 6 bytes/,
  );
  await assert.rejects(
    () => loadTorchCheckpoint(fixturePath("ckpt_py.safetensors")),
    /ckpt_py\.safetensors: not a torch\.save zip checkpoint/,
  );
  const dir = await Deno.makeTempDir({ prefix: "torch_pickle_test_" });
  try {
    const whole = await Deno.readFile(fixturePath("ckpt_plain.bin"));
    const cut = join(dir, "cut.pt");
    await Deno.writeFile(cut, whole.subarray(0, whole.length - 200));
    await assert.rejects(() => loadTorchCheckpoint(cut), /cut\.pt: not a zip archive/);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

/** Canonical form of an unpickled value, mirroring `canon` in make_checkpoint_fixture.py. */
function canon(v: unknown): unknown {
  if (v === null || typeof v === "boolean" || typeof v === "string") return v;
  if (typeof v === "bigint") return { int: v.toString() };
  if (typeof v === "number") return Number.isInteger(v) ? { int: String(v) } : { float: v };
  if (v instanceof Uint8Array) {
    return { bytes: Array.from(v, (b) => b.toString(16).padStart(2, "0")).join("") };
  }
  if (Array.isArray(v)) return v.map(canon);
  if (v instanceof Map) return { dict: [...v].map(([k, x]) => [canon(k), canon(x)]) };
  throw new Error(`unexpected value ${String(v)}`);
}

Deno.test("pickle VM decodes Python's own protocol 2 and 4 pickles exactly", () => {
  const cases = JSON.parse(Deno.readTextFileSync(fixturePath("ckpt_pickles.json"))) as {
    protocol: number;
    b64: string;
    expected: unknown;
  }[];
  assert.ok(cases.length >= 10);
  for (const [i, c] of cases.entries()) {
    const bytes = Uint8Array.from(atob(c.b64), (ch) => ch.charCodeAt(0));
    assert.deepEqual(canon(unpickle(bytes)), c.expected, `case ${i} (protocol ${c.protocol})`);
  }
  // Memoised objects come back shared, as in Python.
  const shared = unpickle(
    Uint8Array.from(atob(cases.find((c) => JSON.stringify(c.expected).includes("shared"))!.b64), (
      ch,
    ) => ch.charCodeAt(0)),
  ) as Map<string, unknown[]>;
  const list = shared.get("shared")!;
  assert.equal(list[0], list[1]);
});

Deno.test("pickle VM refuses unknown globals, bad opcodes and truncation", () => {
  const enc = (s: string) => Uint8Array.from(s, (c) => c.charCodeAt(0));
  // GLOBAL os.system, then REDUCE: must fail at the GLOBAL without running anything.
  assert.throws(
    () => unpickle(enc("\x80\x02cos\nsystem\nX\x02\x00\x00\x00ls\x85R."), { source: "evil" }),
    /evil: unknown global "os\.system"/,
  );
  assert.throws(() => unpickle(enc("\x80\x02\xff.")), /unsupported pickle opcode 0xff/);
  assert.throws(() => unpickle(enc("\x80\x02X\x10\x00\x00\x00ab")), /truncated pickle/);
  assert.throws(() => unpickle(enc("\x80\x02K\x01K\x02.")), /malformed pickle at STOP/);
  assert.throws(() => unpickle(enc("\x80\x02(K\x01Q.")), /persistent id without a persistent/);
});
