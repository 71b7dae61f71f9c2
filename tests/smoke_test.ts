import { gpuTest } from "./util.ts";
import { tensor } from "../nn/tensor.ts";
import { add, matmul, sum } from "../nn/ops/index.ts";
import { backward } from "../nn/autograd.ts";

gpuTest("smoke", async () => {
  const a = tensor([1, 2, 3, 4, 5, 6], [2, 3], { requiresGrad: true });
  const b = tensor([1, 0, 0, 1, 1, 1], [3, 2]);
  const c = matmul(a, b);
  console.log(await c.toArray());
  const d = add(c, tensor([10, 20], [2]));
  console.log(await d.toArray());
  const s = sum(d);
  backward(s);
  console.log(await s.toArray(), await a.grad!.toArray());
});
