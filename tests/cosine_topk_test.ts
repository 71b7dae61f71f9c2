/**
 * cosineTopK against a float64 CPU reference: random odd sizes, every k up to 64, Tensor and
 * Float32Array inputs, streaming in small query blocks and key chunks (ties across chunk
 * boundaries), exact ties ordered by lower index, zero rows, the copy path for tensors over the
 * buffer limit, both matmul families, and input errors.
 */
import assert from "node:assert/strict";
import { cosineTopK, type TopK } from "../nn/retrieval.ts";
import { tensor } from "../nn/tensor.ts";
import { gpuTest, randArray } from "./util.ts";
import { cosineRef } from "../kernels/cosine_topk_ref.ts";
import { gpu } from "../kernels/device.ts";

/**
 * Check a result: scores sorted best first, each score the true cosine of its index (tolerance
 * 2e-5, fp32 dot products of unit vectors), no index twice, and the k-th best true score matched
 * (so no better key was missed, up to the same tolerance).
 */
function verify(r: TopK, ref: Float64Array[], k: number, label: string): void {
  const tol = 2e-5;
  assert.equal(r.indices.length, ref.length * k, `${label}: result size`);
  ref.forEach((row, i) => {
    const idx = Array.from(r.indices.subarray(i * k, (i + 1) * k));
    const sc = r.scores.subarray(i * k, (i + 1) * k);
    assert.equal(new Set(idx).size, k, `${label}: query ${i} has a repeated index`);
    const sorted = Float64Array.from(row).sort().reverse();
    for (let t = 0; t < k; t++) {
      assert.ok(idx[t] >= 0 && idx[t] < row.length, `${label}: query ${i} index ${idx[t]}`);
      if (t > 0) assert.ok(sc[t] <= sc[t - 1], `${label}: query ${i} not sorted at ${t}`);
      assert.ok(Math.abs(sc[t] - row[idx[t]]) <= tol, `${label}: query ${i} score ${t}`);
      assert.ok(Math.abs(sc[t] - sorted[t]) <= tol, `${label}: query ${i} rank ${t} missed`);
    }
  });
}

gpuTest("cosineTopK: random odd sizes, several k, Float32Array and Tensor inputs", async () => {
  const d = 33, N = 37, M = 301;
  const Q = randArray(N * d, 1), K = randArray(M * d, 2);
  const ref = cosineRef(Q, K, d);
  for (const k of [1, 5, 64]) {
    verify(await cosineTopK(Q, K, k, { dim: d }), ref, k, `arrays k=${k}`);
  }
  const tq = tensor(Q, [N, d]), tk = tensor(K, [M, d]);
  verify(await cosineTopK(tq, tk, 10), ref, 10, "tensors");
  verify(await cosineTopK(Q, tk, 7), ref, 7, "array queries, tensor keys");
  // Tiny blocks: many query blocks, many key chunks, two resident super-batches.
  const streamed = await cosineTopK(tq, K, 9, {
    queryBlock: 5,
    keyChunk: 13,
    maxResidentBytes: 4 * 5 * (d + 18) * 4,
  });
  verify(streamed, ref, 9, "streamed");
  // The inputs were not modified (normalisation happens in copies).
  assert.deepEqual(await tq.toArray(), Q);
  tq.dispose();
  tk.dispose();
});

gpuTest("cosineTopK: exact ties are ordered by the lower key index, across chunks", async () => {
  const d = 16, M = 50;
  const K = randArray(M * d, 3);
  // Keys 3, 11, 12, 40 are the same vector; 20 is it scaled by 2 (same cosine after normalising,
  // maybe not bit-identical, so it is only required to be among the best).
  for (const j of [11, 12, 40]) K.set(K.subarray(3 * d, 4 * d), j * d);
  for (let t = 0; t < d; t++) K[20 * d + t] = 2 * K[3 * d + t];
  const Q = Float32Array.from(K.subarray(3 * d, 4 * d)); // one query equal to that vector
  for (const keyChunk of [undefined, 4, 11]) {
    const r = await cosineTopK(Q, K, 5, { dim: d, keyChunk });
    const top = Array.from(r.indices);
    const tied = top.filter((j) => j !== 20);
    assert.deepEqual(tied.slice(0, 4), [3, 11, 12, 40], `keyChunk ${keyChunk}: ${top}`);
    assert.ok(top.includes(20), `keyChunk ${keyChunk}: the scaled copy is among the best`);
    assert.equal(r.scores[0], r.scores[1], "the duplicates score exactly the same");
    assert.ok(Math.abs(r.scores[0] - 1) < 1e-6, "a vector's cosine with itself is 1");
  }
});

gpuTest("cosineTopK: zero rows score 0, normalize: false ranks dot products", async () => {
  const d = 8, M = 6;
  const K = randArray(M * d, 4);
  K.fill(0, 2 * d, 3 * d); // key 2 is zero
  const Q = randArray(3 * d, 5);
  const r = await cosineTopK(Q, K, M, { dim: d });
  verify(r, cosineRef(Q, K, d), M, "zero key");
  for (let i = 0; i < 3; i++) {
    const at = Array.from(r.indices.subarray(i * M, (i + 1) * M)).indexOf(2);
    assert.equal(r.scores[i * M + at], 0, "a zero key scores 0, not NaN");
  }
  const dot = await cosineTopK(Q, K, 4, { dim: d, normalize: false });
  verify(dot, cosineRef(Q, K, d, false), 4, "dot products");
});

gpuTest("cosineTopK: tensors over the buffer limit are copied in row ranges", async () => {
  const d = 24, N = 21, M = 97;
  const Q = randArray(N * d, 6), K = randArray(M * d, 7);
  const tq = tensor(Q, [N, d]), tk = tensor(K, [M, d]);
  // 1 KiB buffers: each tensor (2-9 KiB) must be copied a range at a time.
  const r = await cosineTopK(tq, tk, 6, { maxBufferBytes: 1024 });
  verify(r, cosineRef(Q, K, d), 6, "copied ranges");
  tq.dispose();
  tk.dispose();
});

gpuTest("cosineTopK: the workgroup-memory matmul gives the same result", async () => {
  const d = 64, N = 40, M = 257;
  const Q = randArray(N * d, 8), K = randArray(M * d, 9);
  // The device's tuning is what every launch without an explicit tile reads.
  const { tuning } = gpu();
  const old = tuning.matmulKind;
  tuning.matmulKind = "shared";
  try {
    verify(await cosineTopK(Q, K, 12, { dim: d }), cosineRef(Q, K, d), 12, "shared kernel");
  } finally {
    tuning.matmulKind = old;
  }
});

gpuTest("cosineTopK: bad inputs give clear errors", async () => {
  const K = randArray(10 * 4, 1);
  await assert.rejects(() => cosineTopK(K, K, 3), /opts.dim/);
  await assert.rejects(() => cosineTopK(K, K, 11, { dim: 4 }), /k = 11/);
  await assert.rejects(() => cosineTopK(K, randArray(100 * 4, 2), 65, { dim: 4 }), /k = 65/);
  await assert.rejects(() => cosineTopK(K, K, 0, { dim: 4 }), /k = 0/);
  await assert.rejects(() => cosineTopK(K, K.subarray(1), 3, { dim: 4 }), /not a multiple/);
  const t = tensor(K, [10, 4]);
  await assert.rejects(() => cosineTopK(t, tensor(K, [8, 5]), 3), /expected 4/);
  await assert.rejects(() => cosineTopK(tensor(K, [40]), t, 3), /\[rows, d\]/);
  const empty = await cosineTopK(new Float32Array(0), K, 3, { dim: 4 });
  assert.equal(empty.indices.length, 0);
});
