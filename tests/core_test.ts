/**
 * The engine core: tensors, the map/reduce kernels, layout ops, autograd and device errors.
 * Forward results are compared with float64 CPU loops; backward with finite differences.
 */
import assert from "node:assert/strict";
import { assertClose, gpuTest, gradCheck, randArray } from "./util.ts";
import { counters, dispatch, flush, poolStats } from "../kernels/runtime.ts";
import { init, NoAdapterError } from "../kernels/device.ts";
import { backward, detach, noGrad } from "../nn/autograd.ts";
import { empty, keep, randn, type Tensor, tensor, tidy } from "../nn/tensor.ts";
import {
  add,
  broadcastTo,
  clamp,
  concat,
  div,
  exp,
  log,
  max,
  mean,
  mul,
  neg,
  permute,
  pow,
  relu,
  reshape,
  scale,
  sigmoid,
  slice,
  sqrt,
  square,
  sub,
  sum,
  tanh,
  transpose,
} from "../nn/ops/index.ts";
import { matmul } from "../nn/ops/matmul.ts";
import { broadcastRef } from "../kernels/elementwise_ref.ts";
import { denseMatmulRef } from "../kernels/matmul_ref.ts";
import { reduceRef } from "../kernels/reduce_ref.ts";

const F = { atol: 1e-5, rtol: 1e-5 };

gpuTest("tensor: creation, toArray, reshape view, dispose errors", async () => {
  const t = tensor([[1, 2, 3], [4, 5, 6]], [2, 3]);
  assert.deepEqual([...await t.toArray()], [1, 2, 3, 4, 5, 6]);
  const r = reshape(t, [3, -1]);
  assert.deepEqual(r.shape, [3, 2]);
  t.dispose();
  assert.deepEqual([...await r.toArray()], [1, 2, 3, 4, 5, 6]); // the view keeps the buffer
  r.dispose();
  assert.throws(() => add(t, t), /used after dispose/);
  assert.throws(() => tensor([1, 2, 3], [2, 2]), /3 values do not fill shape \[2,2\]/);
  const ids = tensor(new Int32Array([3, -1, 7, 2 ** 31 - 1]));
  assert.equal(ids.dtype, "int32");
  assert.deepEqual([...await ids.toInt32Array()], [3, -1, 7, 2 ** 31 - 1]);
  // toArray() gives each dtype its own array type: int32 stays exact (2^31 - 1 is not a float).
  const arr = await ids.toArray();
  assert.ok(arr instanceof Int32Array, "toArray() of an int32 tensor is an Int32Array");
  assert.deepEqual([...arr], [3, -1, 7, 2 ** 31 - 1]);
  assert.ok((await tensor([1.5]).toArray()) instanceof Float32Array);
  await assert.rejects(() => ids.toFloat32Array(), /toFloat32Array\(\) on Tensor/);
  ids.dispose();
});

gpuTest(
  "tidy keeps the tensors it returns inside arrays, objects, Maps (keys and values), Sets",
  () => {
    const before = poolStats().inUseBytes;
    const out = tidy(() => {
      const scratch = tensor([9, 9]);
      void scratch;
      const k = tensor([1]), v = tensor([2]), s = tensor([3]), nested = tensor([4]);
      return {
        map: new Map<Tensor | string, Tensor | Map<string, Tensor>>([
          [k, v],
          ["inner", new Map([["t", nested]])],
        ]),
        set: new Set([s]),
      };
    });
    const map = out.map as Map<Tensor | string, Tensor | Map<string, Tensor>>;
    const [k, v] = [...map.entries()][0] as [Tensor, Tensor];
    const nested = (map.get("inner") as Map<string, Tensor>).get("t")!;
    const s = [...out.set][0];
    for (const t of [k, v, nested, s]) assert.ok(!t.disposed, `${t} survived`);
    // Only the scratch tensor was released: four survivors of one 256-byte size class each.
    assert.equal(poolStats().inUseBytes - before, 4 * 256);
    for (const t of [k, v, nested, s]) t.dispose();
  },
);

gpuTest("tensor: seeded randn/rand are deterministic and have the right moments", async () => {
  const a = await randn([4001], { seed: 3 }).toFloat32Array();
  const b = await randn([4001], { seed: 3 }).toArray();
  const c = await randn([4001], { seed: 4 }).toArray();
  assert.deepEqual(a, b);
  assert.notDeepEqual(a, c);
  const m = a.reduce((s, x) => s + x, 0) / a.length;
  const v = a.reduce((s, x) => s + (x - m) ** 2, 0) / a.length;
  assert.ok(Math.abs(m) < 0.05 && Math.abs(v - 1) < 0.08, `mean ${m}, var ${v}`);
});

gpuTest(
  "elementwise binary ops with broadcasting match float64 (atol 1e-5, rtol 1e-5)",
  async () => {
    const cases: [number[], number[]][] = [
      [[7, 33], [7, 33]],
      [[3, 5, 129], [129]],
      [[3, 1, 7], [1, 5, 1]],
      [[1], [33, 1]],
      [[2, 3, 4, 5, 6], [3, 1, 5, 1]],
    ];
    const ops: [
      string,
      (a: never, b: never) => ReturnType<typeof add>,
      (x: number, y: number) => number,
    ][] = [
      ["add", add, (x, y) => x + y],
      ["sub", sub, (x, y) => x - y],
      ["mul", mul, (x, y) => x * y],
      ["div", div, (x, y) => x / y],
    ];
    let seed = 1;
    for (const [as, bs] of cases) {
      const na = as.reduce((x, y) => x * y, 1), nb = bs.reduce((x, y) => x * y, 1);
      const a = randArray(na, seed++), b = randArray(nb, seed++, 0.5, 2);
      for (const [name, op, f] of ops) {
        const got = tidy(() => keep(op(tensor(a, as) as never, tensor(b, bs) as never)));
        const ref = broadcastRef(a, as, b, bs, f);
        assert.deepEqual(got.shape, ref.shape, `${name} shape`);
        assertClose(await got.toArray(), ref.out, F, `${name} [${as}] x [${bs}]`);
        got.dispose();
      }
    }
  },
);

gpuTest("elementwise unary ops match float64", async () => {
  const x = randArray(129 * 7, 11, 0.1, 3);
  const xs = randArray(129 * 7, 12, -3, 3);
  const cases: [
    string,
    (t: never) => ReturnType<typeof add>,
    (v: number) => number,
    Float32Array,
  ][] = [
    ["exp", exp, Math.exp, xs],
    ["log", log, Math.log, x],
    ["sqrt", sqrt, Math.sqrt, x],
    ["neg", neg, (v) => -v, xs],
    ["relu", relu, (v) => Math.max(v, 0), xs],
    ["tanh", tanh, Math.tanh, xs],
    ["sigmoid", sigmoid, (v) => 1 / (1 + Math.exp(-v)), xs],
    ["square", square, (v) => v * v, xs],
    ["pow3", ((t: never) => pow(t, 3)) as never, (v) => v ** 3, xs],
    ["pow0.5", ((t: never) => pow(t, 0.5)) as never, Math.sqrt, x],
    ["scale", ((t: never) => scale(t, -2.5)) as never, (v) => -2.5 * v, xs],
    [
      "clamp",
      ((t: never) => clamp(t, -1, 0.5)) as never,
      (v) => Math.min(0.5, Math.max(-1, v)),
      xs,
    ],
  ];
  for (const [name, op, f, data] of cases) {
    const got = tidy(() => keep(op(tensor(data, [7, 129]) as never)));
    assertClose(await got.toArray(), Array.from(data, f), { atol: 1e-5, rtol: 2e-5 }, name);
    got.dispose();
  }
});

gpuTest("reductions sum/mean/max over each axis and all match float64", async () => {
  const shape = [3, 7, 33];
  const x = randArray(3 * 7 * 33, 21);
  for (let axis = 0; axis < 3; axis++) {
    for (const op of ["sum", "mean", "max"] as const) {
      const got = tidy(() => keep({ sum, mean, max }[op](tensor(x, shape), axis)));
      const outShape = shape.filter((_, d) => d !== axis);
      assert.deepEqual(got.shape, outShape);
      const outer = shape.slice(0, axis).reduce((a, b) => a * b, 1);
      const inner = shape.slice(axis + 1).reduce((a, b) => a * b, 1);
      const out = reduceRef(op, x, outer, shape[axis], inner);
      assertClose(await got.toArray(), out, { atol: 1e-5, rtol: 1e-5 }, `${op} axis ${axis}`);
      got.dispose();
    }
  }
  const big = randArray(100003, 5);
  const s = tidy(() => keep(sum(tensor(big))));
  assert.deepEqual(s.shape, []);
  assertClose(
    await s.toArray(),
    [big.reduce((a, b) => a + b, 0)],
    { atol: 1e-3, rtol: 1e-5 },
    "sum all",
  );
  s.dispose();
});

gpuTest("layout ops: permute, transpose, slice, concat match CPU indexing", async () => {
  const shape = [2, 3, 5, 7];
  const x = randArray(2 * 3 * 5 * 7, 31);
  const at = (a: number, b: number, c: number, d: number) => x[((a * 3 + b) * 5 + c) * 7 + d];
  const p = tidy(() => keep(permute(tensor(x, shape), [3, 1, 0, 2])));
  assert.deepEqual(p.shape, [7, 3, 2, 5]);
  const pr: number[] = [];
  for (let d = 0; d < 7; d++) {
    for (let b = 0; b < 3; b++) {
      for (let a = 0; a < 2; a++) for (let c = 0; c < 5; c++) pr.push(at(a, b, c, d));
    }
  }
  assert.deepEqual([...await p.toArray()], pr);
  const t = tidy(() => keep(transpose(tensor(x, shape))));
  assert.deepEqual(t.shape, [2, 3, 7, 5]);
  const s = tidy(() => keep(slice(tensor(x, shape), 2, 1, 3)));
  const sr: number[] = [];
  for (let a = 0; a < 2; a++) {
    for (let b = 0; b < 3; b++) {
      for (let c = 1; c < 4; c++) for (let d = 0; d < 7; d++) sr.push(at(a, b, c, d));
    }
  }
  assert.deepEqual([...await s.toArray()], sr);
  const c = tidy(() => keep(concat([tensor(x, shape), slice(tensor(x, shape), 1, 0, 1)], 1)));
  assert.deepEqual(c.shape, [2, 4, 5, 7]);
  const ca = await c.toArray();
  assert.equal(ca[(1 * 4 + 3) * 35 + 2 * 7 + 4], at(1, 0, 2, 4));
  assert.equal(ca[(1 * 4 + 2) * 35 + 2 * 7 + 4], at(1, 2, 2, 4));
  for (const z of [p, t, s, c]) z.dispose();
});

gpuTest("backward of elementwise ops with broadcasting matches finite differences", async () => {
  const a = { data: randArray(3 * 7, 41, 0.5, 1.5), shape: [3, 7] };
  const b = { data: randArray(7, 42, 0.5, 1.5), shape: [7] };
  await gradCheck(([x, y]) => add(x, y), [a, b]);
  await gradCheck(([x, y]) => sub(x, y), [a, b]);
  await gradCheck(([x, y]) => mul(x, y), [a, b]);
  await gradCheck(([x, y]) => div(x, y), [a, b]);
  await gradCheck(([x]) => exp(x), [a]);
  await gradCheck(([x]) => log(x), [a]);
  await gradCheck(([x]) => sqrt(x), [a]);
  await gradCheck(([x]) => tanh(x), [a]);
  await gradCheck(([x]) => sigmoid(x), [a]);
  await gradCheck(([x]) => pow(x, 3), [a]);
  await gradCheck(([x]) => div(2, x), [a]);
  await gradCheck(([x]) => square(x), [a]);
  await gradCheck(([x]) => neg(x), [a]);
  await gradCheck(([x]) => scale(x, -1.5), [a]);
  await gradCheck(([x]) => add(x, 0.25), [a]);
  await gradCheck(([x]) => sub(1, x), [a]);
  // relu and clamp: inputs kept away from the kinks, where the derivative is defined.
  const signed = { data: a.data.map((v, i) => (i % 2 ? v : -v)), shape: a.shape };
  await gradCheck(([x]) => relu(x), [signed]);
  await gradCheck(([x]) => clamp(x, -0.75, 0.8), [signed]);
});

gpuTest("backward of reductions and layout ops matches finite differences", async () => {
  const x = { data: randArray(3 * 5 * 7, 51), shape: [3, 5, 7] };
  await gradCheck(([t]) => sum(t, 1), [x]);
  await gradCheck(([t]) => mean(t, 2, true), [x]);
  await gradCheck(([t]) => max(t, 0), [x]);
  await gradCheck(([t]) => reshape(sum(t), [1]), [x]);
  await gradCheck(([t]) => permute(t, [2, 0, 1]), [x]);
  await gradCheck(([t]) => slice(t, 1, 2, 2), [x]);
  await gradCheck(([t]) => concat([t, slice(t, 2, 1, 3)], 2), [x]);
  await gradCheck(([t]) => transpose(t, 0, 2), [x]);
  await gradCheck(([t]) => broadcastTo(slice(t, 1, 0, 1), [3, 4, 7]), [x]);
});

gpuTest("autograd: accumulation for reused tensors, noGrad, detach", async () => {
  const x = tensor([1, 2, 3], [3], { requiresGrad: true });
  tidy(() => backward(sum(add(mul(x, x), x)))); // d/dx (x^2 + x) = 2x + 1
  assert.deepEqual([...await x.grad!.toArray()], [3, 5, 7]);
  tidy(() => backward(sum(x))); // accumulates into .grad
  assert.deepEqual([...await x.grad!.toArray()], [4, 6, 8]);
  const y = noGrad(() => mul(x, x));
  assert.equal(y.requiresGrad, false);
  assert.equal(y.node, null);
  const d = detach(x);
  assert.equal(d.requiresGrad, false);
  assert.throws(() => backward(sum(d)), /does not require grad/);
  x.dispose();
  y.dispose();
});

gpuTest("autograd: backward releases intermediate gradients and saved tensors", async () => {
  const w = randn([33, 7], { seed: 1, requiresGrad: true });
  const x = randn([5, 33], { seed: 2 });
  const step = () =>
    tidy(() => {
      const h = tanh(mul(matmul(x, w), 2));
      backward(sum(exp(neg(square(h)))));
      w.grad!.dispose();
      w.grad = null;
    });
  step();
  await w.toArray();
  const before = poolStats().inUseBytes;
  step();
  step();
  await x.toArray();
  assert.equal(poolStats().inUseBytes, before);
  w.dispose();
  x.dispose();
});

gpuTest("matmul op: forward, transposes, bias, batch folding and backward", async () => {
  const A = randArray(2 * 7 * 33, 61), B = randArray(33 * 5, 62), bias = randArray(5, 63);
  const y = tidy(() =>
    keep(matmul(tensor(A, [2, 7, 33]), tensor(B, [33, 5]), { bias: tensor(bias) }))
  );
  assertClose(await y.toArray(), denseMatmulRef(A, B, 1, 14, 5, 33, { bias }), {
    atol: 1e-4,
    rtol: 1e-5,
  }, "mm");
  y.dispose();
  await gradCheck(
    ([a, b, c]) => matmul(a, b, { transposeB: true, bias: c }),
    [
      { data: randArray(2 * 3 * 9, 64), shape: [2, 3, 9] },
      { data: randArray(5 * 9, 65), shape: [5, 9] },
      { data: randArray(5, 66), shape: [5] },
    ],
  );
  await gradCheck(
    ([a, b]) => matmul(a, b, { transposeA: true }),
    [{ data: randArray(2 * 9 * 3, 67), shape: [2, 9, 3] }, {
      data: randArray(2 * 9 * 4, 68),
      shape: [2, 9, 4],
    }],
  );
});

gpuTest("a WGSL error surfaces as an error on the next operation, not a hang", async () => {
  const out = empty([4]);
  dispatch("broken", "this is not wgsl", [out.buf], null, [1]);
  flush();
  const started = Date.now();
  await assert.rejects(async () => {
    for (let i = 0; i < 50; i++) {
      await out.toArray();
      await new Promise((r) => setTimeout(r, 10));
    }
  }, /broken/);
  assert.ok(Date.now() - started < 10_000);
  out.dispose();
});

gpuTest("few submits: many ops record into one batch, readback submits once", async () => {
  const x = randn([9, 9], { seed: 9 });
  await x.toArray();
  const s0 = counters.submits, r0 = counters.readbacks;
  const y = tidy(() => {
    let h = x;
    for (let i = 0; i < 40; i++) h = tanh(add(h, 0.01));
    return h;
  });
  assert.equal(counters.submits, s0, "no submit before a value is needed");
  await y.toArray();
  assert.equal(counters.submits - s0, 1);
  assert.equal(counters.readbacks - r0, 1);
  x.dispose();
  y.dispose();
});

Deno.test("no adapter gives a clear error that says how to get one", async () => {
  const cmd = new Deno.Command(Deno.execPath(), {
    args: [
      "eval",
      `import { init } from "${new URL("../kernels/device.ts", import.meta.url)}";
      try { await init(); console.log("no error"); } catch (e) { console.log(e.name + ": " + e.message); }`,
    ],
    env: { CLIPIT_NO_ADAPTER: "1" },
    stdout: "piped",
    stderr: "piped",
  });
  const { stdout } = await cmd.output();
  const text = new TextDecoder().decode(stdout);
  assert.match(text, /NoAdapterError: No WebGPU adapter found/);
  assert.match(text, /mesa-vulkan-drivers/);
  assert.ok(new NoAdapterError().message.includes("llvmpipe"));
  void init;
});
