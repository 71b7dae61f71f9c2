/** `cli.ts info`: the WebGPU adapter (description, backend, features, limits) as JSON. */
import { adapterInfo, init } from "../kernels/device.ts";

/** Prints the adapter that `init()` finds; returns the exit status (0). */
export async function infoCommand(_args: string[]): Promise<number> {
  await init();
  console.log(JSON.stringify(adapterInfo(), null, 2));
  return 0;
}
