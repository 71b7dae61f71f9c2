/**
 * Helpers of the hostile-input tests (tests/hostile_*_test.ts): temporary folders holding FIFOs,
 * sockets, symbolic and hard links made by the test itself (never a real device file), a
 * snapshot of everything in a folder to prove a refused run changed nothing, and running
 * `deno run -A cli.ts ...` as a subprocess with a time limit.
 */
import assert from "node:assert/strict";
import { fileURLToPath } from "node:url";
import { crc32, deflateSync } from "node:zlib";

/** The repository root (where cli.ts is). */
export const ROOT = fileURLToPath(new URL("../", import.meta.url));

/** CLIP's BPE merges, when ../shared/data is present (tests that tokenize skip without it). */
export const BPE = fileURLToPath(
  new URL("../../shared/data/clip-bpe/bpe_simple_vocab_16e6.txt.gz", import.meta.url),
);

/** Whether the CLIP BPE merges file is there. */
export const hasBpe = (() => {
  try {
    return Deno.statSync(BPE).isFile;
  } catch {
    return false;
  }
})();

/** Root ignores permission bits: tests of unwritable folders skip as root. */
export const isRoot = Deno.uid() === 0;

/** Makes a FIFO (named pipe) at `path`. */
export async function mkfifo(path: string): Promise<void> {
  const r = await new Deno.Command("mkfifo", { args: [path] }).output();
  if (!r.success) throw new Error(`mkfifo ${path} failed: ${new TextDecoder().decode(r.stderr)}`);
}

/**
 * Makes a Unix socket file at `path`; it exists while the returned listener is open (Deno
 * removes the file on close).
 */
export function mksocket(path: string): Deno.Listener {
  return Deno.listen({ transport: "unix", path });
}

/** What a path is, for comparing before and after. */
export interface Entry {
  kind: string;
  ino: number | null;
  nlink: number | null;
  size: number;
  mtime: number | undefined;
  crc?: number;
  target?: string;
}

/** Every entry under `dir` (not following links), with a CRC of every regular file's bytes. */
export async function snapshot(dir: string): Promise<Map<string, Entry>> {
  const out = new Map<string, Entry>();
  const visit = async (d: string) => {
    for await (const e of Deno.readDir(d)) {
      const p = `${d}/${e.name}`;
      const st = await Deno.lstat(p);
      const kind = st.isFile
        ? "file"
        : st.isDirectory
        ? "dir"
        : st.isSymlink
        ? "symlink"
        : st.isFifo
        ? "fifo"
        : st.isSocket
        ? "socket"
        : "other";
      const entry: Entry = {
        kind,
        ino: st.ino,
        nlink: st.nlink,
        size: st.size,
        mtime: st.mtime?.getTime(),
      };
      if (st.isFile) entry.crc = crc32(await Deno.readFile(p));
      if (st.isSymlink) entry.target = await Deno.readLink(p);
      out.set(p, entry);
      if (st.isDirectory) await visit(p);
    }
  };
  await visit(dir);
  return out;
}

/** Asserts that `dir` holds exactly what `before` recorded (paths in `allowNew` may be added). */
export async function assertUnchanged(
  dir: string,
  before: Map<string, Entry>,
  what: string,
  allowNew: string[] = [],
): Promise<void> {
  const after = await snapshot(dir);
  for (const [p, e] of before) {
    assert.deepEqual(after.get(p), e, `${what}: ${p} changed`);
  }
  for (const p of after.keys()) {
    if (!before.has(p) && !allowNew.includes(p)) assert.fail(`${what}: ${p} appeared`);
  }
}

/** The outcome of a CLI run. */
export interface CliResult {
  code: number;
  stdout: string;
  stderr: string;
  seconds: number;
}

/**
 * Runs `deno run -A cli.ts ...args` in the repository root, killed after `timeoutS` seconds
 * (a hang then fails the test with the command line).
 */
export async function runCli(args: string[], timeoutS = 60): Promise<CliResult> {
  const t0 = performance.now();
  const child = new Deno.Command(Deno.execPath(), {
    args: ["run", "-A", "--no-check", "cli.ts", ...args],
    cwd: ROOT,
    stdout: "piped",
    stderr: "piped",
    stdin: "null",
  }).spawn();
  const timer = setTimeout(() => child.kill("SIGKILL"), timeoutS * 1000);
  const r = await child.output();
  clearTimeout(timer);
  const seconds = (performance.now() - t0) / 1000;
  const dec = new TextDecoder();
  const res = { code: r.code, stdout: dec.decode(r.stdout), stderr: dec.decode(r.stderr), seconds };
  if (r.signal === "SIGKILL") {
    assert.fail(`cli.ts ${args.join(" ")} did not end within ${timeoutS} s:\n${res.stderr}`);
  }
  return res;
}

/** Asserts a refused run: exit 1 or 2 (or `code`), and stderr matching every pattern. */
export function assertRefused(r: CliResult, patterns: RegExp[], what: string, code?: number) {
  const where = `${what}: exit ${r.code}, stderr:\n${r.stderr}`;
  if (code !== undefined) assert.equal(r.code, code, where);
  else assert.ok(r.code === 1 || r.code === 2, where);
  for (const p of patterns) assert.match(r.stderr, p, where);
}

/**
 * A valid PNG of `width` x `height`: 8-bit RGB with a seeded pattern, or 16-bit grayscale with
 * `gray16` (values above 255, which PIL's convert("RGB") clips to white).
 */
export function makePng(width: number, height: number, opts: { gray16?: boolean } = {}) {
  const gray16 = opts.gray16 ?? false;
  const rowBytes = gray16 ? 2 * width : 3 * width;
  const raw = new Uint8Array(height * (1 + rowBytes));
  for (let y = 0; y < height; y++) {
    for (let i = 0; i < rowBytes; i++) raw[y * (1 + rowBytes) + 1 + i] = (i * 7 + y * 13) & 0xff;
  }
  const chunk = (type: string, data: Uint8Array) => {
    const out = new Uint8Array(12 + data.length);
    const dv = new DataView(out.buffer);
    dv.setUint32(0, data.length);
    out.set(new TextEncoder().encode(type), 4);
    out.set(data, 8);
    dv.setUint32(8 + data.length, crc32(out.subarray(4, 8 + data.length)) >>> 0);
    return out;
  };
  const ihdr = new Uint8Array(13);
  const hv = new DataView(ihdr.buffer);
  hv.setUint32(0, width);
  hv.setUint32(4, height);
  ihdr.set(gray16 ? [16, 0, 0, 0, 0] : [8, 2, 0, 0, 0], 8);
  const parts = [
    new Uint8Array([0x89, 0x50, 0x4e, 0x47, 0x0d, 0x0a, 0x1a, 0x0a]),
    chunk("IHDR", ihdr),
    chunk("IDAT", new Uint8Array(deflateSync(raw))),
    chunk("IEND", new Uint8Array(0)),
  ];
  const out = new Uint8Array(parts.reduce((a, p) => a + p.length, 0));
  let at = 0;
  for (const p of parts) out.set(p, at), (at += p.length);
  return out;
}
