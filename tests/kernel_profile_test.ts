/**
 * Per-kernel GPU time (`startProfile` / `stopProfile` in kernels/runtime.ts, `deno task
 * profile`): every launch is counted under its kernel name with a non-negative time, work before
 * and after the profile is not, and results are unchanged by profiling.
 */
import assert from "node:assert/strict";
import { gpu } from "../kernels/device.ts";
import { startProfile, stopProfile } from "../kernels/runtime.ts";
import { matmul, softmax } from "../nn/ops/index.ts";
import { tensor, tidy } from "../nn/tensor.ts";
import { assertClose, gpuTest, randArray } from "./util.ts";

gpuTest("profile: GPU time per kernel name, only inside the profile", async () => {
  if (!gpu().device.features.has("timestamp-query")) {
    assert.throws(() => startProfile(), /timestamp-query/);
    return;
  }
  const a = tensor(randArray(33 * 20, 1), [33, 20]), b = tensor(randArray(20 * 17, 2), [20, 17]);
  const before = tidy(() => softmax(matmul(a, b)));
  const want = await before.toArray();
  startProfile();
  assert.throws(() => startProfile(), /already running/);
  const outs = [1, 2, 3].map(() => tidy(() => softmax(matmul(a, b))));
  const got = await outs[2].toArray();
  const { kernels, bad } = await stopProfile();
  assertClose(got, want, { atol: 0 }, "profiled result");
  const names = [...kernels.keys()];
  assert.equal(names.length, 2, names.join(", "));
  assert.ok(
    names.some((n) => n.startsWith("matmul_")) && names.some((n) => n.startsWith("softmax")),
  );
  for (const [n, k] of kernels) {
    assert.equal(k.count, 3, n);
    assert.ok(k.ns >= 0 && Number.isFinite(k.ns), `${n}: ${k.ns} ns`);
  }
  assert.equal(bad, 0);
  await assert.rejects(() => stopProfile(), /no profile is running/);
  [a, b, before, ...outs].forEach((t) => t.dispose());
});
