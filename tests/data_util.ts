/**
 * Where the shared real data lives (`../shared/data` beside the repository), or null when it is
 * absent: tests that need it call `ignore: !hasSharedData` and say why in their name.
 */
import { fileURLToPath } from "node:url";
import { existsSync } from "node:fs";

export const SHARED_DATA: string = fileURLToPath(new URL("../../shared/data", import.meta.url));
export const hasSharedData: boolean = existsSync(SHARED_DATA);
