/**
 * The in-place writes of nn/ops/inplace.ts: `copyInto` and `writeTensor` must give exactly the
 * values written (tolerance 0: they move bits, they compute nothing), on odd sizes, for float32
 * and int32, in the right order relative to ops recorded before and after them, and refuse
 * mismatched sizes, dtypes and ranges with errors that name the tensor. (`scale`, the third op the
 * layout issue asked for, already existed: tests/core_test.ts checks its values and gradient.)
 */
import assert from "node:assert/strict";
import { copyInto, scale, writeTensor } from "../nn/ops/index.ts";
import { tensor, zeros } from "../nn/tensor.ts";
import { gpuTest, randArray } from "./util.ts";

gpuTest("writeTensor: whole and partial writes land exactly, float32 and int32", async () => {
  const n = 37;
  const t = zeros([n]);
  const all = randArray(n, 1);
  writeTensor(t, all);
  assert.deepEqual(await t.toArray(), all);
  // Elements [11, 11 + 9) replaced, the rest kept.
  const part = randArray(9, 2, 5, 6);
  writeTensor(t, part, 11);
  const want = Float32Array.from(all);
  want.set(part, 11);
  assert.deepEqual(await t.toArray(), want);
  // Int32 values beyond float32's exact range come back bit for bit.
  const ids = tensor(new Int32Array(5), [5]);
  const big = Int32Array.from([2 ** 31 - 1, -(2 ** 31), 16_777_217, -3, 0]);
  writeTensor(ids, big);
  assert.deepEqual(await ids.toInt32Array(), big);
  // An empty write is allowed and changes nothing.
  writeTensor(t, new Float32Array(0), n);
  assert.deepEqual(await t.toArray(), want);
  for (const x of [t, ids]) x.dispose();
});

gpuTest("writeTensor: wrong array type, overflow and bad offsets throw naming the tensor", () => {
  const t = zeros([2, 3]);
  t.name = "w";
  const ids = tensor(new Int32Array(4), [4]);
  assert.throws(() => writeTensor(ids, new Float32Array(4)), /writeTensor: .*Int32Array.*Float32/);
  assert.throws(() => writeTensor(t, new Int32Array(6)), /writeTensor: Tensor\(w, .*Float32Array/);
  assert.throws(() => writeTensor(t, new Float32Array(7)), /7 values at offset 0 do not fit/);
  assert.throws(() => writeTensor(t, new Float32Array(2), 5), /at offset 5 do not fit/);
  assert.throws(() => writeTensor(t, new Float32Array(1), -1), RangeError);
  assert.throws(() => writeTensor(t, new Float32Array(1), 0.5), RangeError);
  t.dispose();
  ids.dispose();
});

gpuTest("writeTensor is ordered with the ops that use the tensor", async () => {
  const old = randArray(101, 3);
  const t = tensor(old, [101]);
  const before = scale(t, 2); // recorded, not yet submitted
  const fresh = randArray(101, 4);
  writeTensor(t, fresh);
  const after = scale(t, 2);
  assert.deepEqual(await before.toArray(), old.map((v) => 2 * v));
  assert.deepEqual(await after.toArray(), fresh.map((v) => 2 * v));
  for (const x of [t, before, after]) x.dispose();
});

gpuTest(
  "copyInto: same element count, any shapes, exact values, ordered with other ops",
  async () => {
    const src = tensor(randArray(105, 5), [3, 7, 5]);
    const dst = tensor(randArray(105, 6), [105]);
    const dstOld = await dst.toArray();
    const before = scale(dst, 1); // reads dst before the copy
    copyInto(dst, src);
    assert.deepEqual(await dst.toArray(), await src.toArray());
    assert.deepEqual(await before.toArray(), dstOld);
    // int32, and a copy onto itself is a no-op.
    const a = tensor(Int32Array.from([7, -8, 2 ** 30, 0, 1, -1, 3]), [7]);
    const b = tensor(new Int32Array(7), [7]);
    copyInto(b, a);
    copyInto(b, b);
    assert.deepEqual(await b.toInt32Array(), await a.toInt32Array());
    for (const x of [src, dst, before, a, b]) x.dispose();
  },
);

gpuTest("copyInto: refuses other sizes and dtypes, records no gradient", () => {
  const w = zeros([4, 3], { requiresGrad: true });
  const u = tensor(randArray(12, 7), [12]);
  assert.throws(() => copyInto(w, tensor(randArray(11, 8), [11])), /11 elements, .* has 12/);
  assert.throws(() => copyInto(w, tensor(new Int32Array(12), [12])), TypeError);
  copyInto(w, u);
  assert.equal(w.node, null);
  assert.equal(w.requiresGrad, true);
  w.dispose();
  u.dispose();
});
