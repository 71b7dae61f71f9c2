/**
 * A destroyed device (`device.destroy()`, as a driver reset or an out-of-memory kill would do):
 * the next operation rejects with the engine's GpuError within a second, never hangs; tensors of
 * the old device then fail with a clear error, and `init()` creates a new device on which
 * everything (pool, pipelines, batching) works again, so later tests are unaffected.
 */
import assert from "node:assert/strict";
import { GpuError, init } from "../kernels/device.ts";
import { sync } from "../kernels/runtime.ts";
import { tensor } from "../nn/tensor.ts";
import { add, embedding } from "../nn/ops/index.ts";
import { gpuTest } from "./util.ts";

/** `p`, or a rejection after `ms` (so a hang fails the test instead of stalling the suite). */
function within<T>(p: Promise<T>, ms: number): Promise<T> {
  let timer: ReturnType<typeof setTimeout> | undefined;
  const late = new Promise<never>((_, reject) => {
    timer = setTimeout(() => reject(new Error(`no answer within ${ms} ms`)), ms);
  });
  return Promise.race([p, late]).finally(() => clearTimeout(timer));
}

gpuTest(
  "a destroyed device: next operation rejects with GpuError within 1 s; init() recovers",
  async () => {
    const g = await init();
    const a = tensor([1, 2, 3]);
    assert.deepEqual([...await a.toArray()], [1, 2, 3]);
    g.device.destroy();
    const t0 = performance.now();
    await assert.rejects(
      () => within((async () => await add(a, a).toArray())(), 1000),
      (e: Error) => e instanceof GpuError,
    );
    assert.ok(performance.now() - t0 < 1000, `rejected after ${performance.now() - t0} ms`);
    // Every later operation says so too, until a new device exists.
    await assert.rejects(() => within(sync(), 1000), GpuError);
    assert.throws(() => tensor([1]), GpuError);

    const g2 = await init({ tune: false });
    assert.notEqual(g2.device, g.device, "init() made a new device");
    assert.throws(() => add(a, a), /a tensor of a lost WebGPU device was used/);
    a.dispose(); // harmless: its buffer died with the device
    const b = tensor([1, 2, 3]);
    assert.deepEqual([...await add(b, b).toArray()], [2, 4, 6]);
    // Device-side checks and the pool work on the new device.
    const w = tensor(new Float32Array(8), [4, 2]);
    embedding(w, tensor(Int32Array.from([9]), [1]));
    await assert.rejects(() => b.toArray(), /embedding: id 9 not in \[0, 4\)/);
    assert.deepEqual([...await add(b, b).toArray()], [2, 4, 6]);
    b.dispose();
    w.dispose();
  },
);
