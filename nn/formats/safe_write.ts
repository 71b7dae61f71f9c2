/**
 * The one way this project writes an output file: whole or not at all, and never onto something
 * that is not an ordinary file of its own.
 *
 * `checkOutputPath` is the cheap check every command runs before any expensive work;
 * `writeFileAtomic` runs the same check again and then writes the bytes to a temporary file in
 * the same folder, flushes it to disk and renames it over the destination, so a crash or a kill
 * at any moment leaves either the old file or the new one, never a torn one. Errors name the
 * option that named the path (`--out ...`), never the temporary file.
 *
 * Policies (the README's "What the tool refuses, and why" lists them too):
 * - An existing destination must be a regular file. A folder, FIFO, socket or device node is
 *   refused (renaming over `/dev/null` as root would replace the device with a file; a FIFO
 *   would hang a plain write).
 * - A destination that is a symbolic link is refused, not followed and not replaced: writing
 *   through it would change a file the user did not name, replacing it would silently turn the
 *   link into a file. Name the target itself.
 * - A destination with more than one hard link is refused: the rename would give this name a new
 *   file while every other name keeps the old content, silently splitting what was one file.
 * - A destination that is also an input of the run (`opts.inputs`: weights, texts, configs,
 *   images, and the run's other outputs) is refused, compared by real path (symlinks and `..`
 *   resolved) and, when both exist, by device + inode.
 * - The folder must exist and be writable: a probe file is created and removed in it (this also
 *   catches read-only mounts and full quotas that permission bits do not show).
 * - The temporary file (`.<name>.tmp-<pid>-<random>` beside the destination) is removed on any
 *   failure and on Ctrl-C (SIGINT) or SIGTERM while writing (the process then exits with
 *   130 / 143). A `kill -9` cannot be caught: the next write to the same destination removes
 *   temporary files left by processes that no longer run.
 */

/** One input (or other output) of a run, which an output must not be. */
export interface InputRef {
  /** The path as the user gave it. */
  path: string;
  /** How the user named it, e.g. `--weights`. */
  label?: string;
}

/** Who asked for an output: used in error messages and for the input check. */
export interface OutputOptions {
  /** How the user named this path, e.g. `--out`; messages start with it. */
  label?: string;
  /**
   * The run's inputs and its other outputs: the output may be none of them (same real path, or
   * same device + inode). Plain strings are labelled "an input".
   */
  inputs?: Iterable<string | InputRef>;
}

/** Data for {@link writeFileAtomic}: bytes, text (UTF-8), a list of them, or a stream. */
export type OutputData =
  | Uint8Array
  | string
  | readonly (Uint8Array | string)[]
  | AsyncIterable<Uint8Array | string>;

function where(path: string, opts: OutputOptions): string {
  return opts.label ? `${opts.label} ${path}` : path;
}

function dirOf(path: string): string {
  const i = path.lastIndexOf("/");
  return i < 0 ? "." : i === 0 ? "/" : path.slice(0, i);
}

function baseOf(path: string): string {
  return path.slice(path.lastIndexOf("/") + 1);
}

/** What kind of thing a non-regular file is, for messages. */
export function fileKind(st: Deno.FileInfo): string {
  if (st.isFile) return "a regular file";
  if (st.isDirectory) return "a folder";
  if (st.isSymlink) return "a symbolic link";
  if (st.isFifo) return "a FIFO (named pipe)";
  if (st.isSocket) return "a socket";
  if (st.isCharDevice) return "a character device";
  if (st.isBlockDevice) return "a block device";
  return "not a regular file";
}

async function lstatOrNull(path: string): Promise<Deno.FileInfo | null> {
  try {
    return await Deno.lstat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) return null;
    throw e;
  }
}

/** The real path a name would have: its folder's real path (cached) plus its base name. */
async function placeOf(path: string, dirs: Map<string, string | null>): Promise<string | null> {
  const dir = dirOf(path);
  let real = dirs.get(dir);
  if (real === undefined) {
    real = await Deno.realPath(dir).catch(() => null);
    dirs.set(dir, real);
  }
  return real === null ? null : `${real === "/" ? "" : real}/${baseOf(path)}`;
}

function sameInode(a: Deno.FileInfo, b: Deno.FileInfo): boolean {
  return a.dev === b.dev && a.ino !== null && a.ino === b.ino;
}

async function checkDestination(path: string, opts: OutputOptions): Promise<Deno.FileInfo | null> {
  const w = where(path, opts);
  if (path === "" || path.endsWith("/")) throw new Error(`${w}: not a file name`);
  const dir = dirOf(path);
  let st: Deno.FileInfo;
  try {
    st = await Deno.stat(dir);
  } catch (e) {
    throw new Error(`${w}: folder ${dir} does not exist (${(e as Error).message})`);
  }
  if (!st.isDirectory) throw new Error(`${w}: ${dir} is not a folder`);
  const own = await lstatOrNull(path);
  if (own?.isSymlink) {
    const target = await Deno.readLink(path).catch(() => "?");
    throw new Error(
      `${w}: is a symbolic link (to ${target}); refusing to write through it or replace it ` +
        `(name the file itself)`,
    );
  }
  if (own && !own.isFile) {
    throw new Error(`${w}: exists and is ${fileKind(own)}; refusing to replace it`);
  }
  if (own && own.nlink !== null && own.nlink > 1) {
    throw new Error(
      `${w}: has ${own.nlink} hard links; replacing it would leave the other names with the ` +
        `old content, so it is refused (remove this name first or write elsewhere)`,
    );
  }
  return own;
}

async function checkNotAnInput(path: string, own: Deno.FileInfo | null, opts: OutputOptions) {
  if (!opts.inputs) return;
  const dirs = new Map<string, string | null>();
  const outPlace = await placeOf(path, dirs);
  for (const item of opts.inputs) {
    const input = typeof item === "string" ? { path: item } : item;
    if (!input.path) continue;
    let same = outPlace !== null && (await placeOf(input.path, dirs)) === outPlace;
    if (!same && own) {
      // The input may be a link to the output, or another name of the same file.
      const st = await Deno.stat(input.path).catch(() => null);
      same = st !== null && st.isFile && sameInode(st, own);
    }
    if (same) {
      const what = input.label ? `${input.label} ${input.path}` : `an input (${input.path})`;
      throw new Error(
        `${where(path, opts)}: is the same file as ${what}; refusing to overwrite an input ` +
          `of this run`,
      );
    }
  }
}

/**
 * Check early that `path` can be written (see the module comment for the policies): its folder
 * exists, is a folder and is writable (a probe file is created and removed); `path`, if it
 * exists, is a regular file with one link, not a symbolic link, and none of `opts.inputs`.
 * Throws an Error whose message starts with `opts.label` and the path.
 */
export async function checkOutputPath(path: string, opts: OutputOptions = {}): Promise<void> {
  const own = await checkDestination(path, opts);
  await checkNotAnInput(path, own, opts);
  const probe = `${dirOf(path)}/.${baseOf(path)}.probe-${Deno.pid}-${rand()}`;
  try {
    const f = await Deno.open(probe, { write: true, createNew: true });
    f.close();
  } catch (e) {
    throw new Error(
      `${where(path, opts)}: folder ${dirOf(path)} is not writable (${(e as Error).message})`,
    );
  }
  await Deno.remove(probe).catch(() => undefined);
}

function rand(): string {
  return crypto.randomUUID().slice(0, 8);
}

// ---- temporary files and signals ----------------------------------------------------------

const liveTemps = new Set<string>();
const SIGNALS: [Deno.Signal, number][] = [["SIGINT", 130], ["SIGTERM", 143]];
const handlers = new Map<Deno.Signal, () => void>();

function removeTempsAndExit(code: number): void {
  for (const t of liveTemps) {
    try {
      Deno.removeSync(t);
    } catch {
      // already gone
    }
  }
  liveTemps.clear();
  Deno.exit(code);
}

function trackTemp(tmp: string): void {
  liveTemps.add(tmp);
  if (handlers.size > 0) return;
  for (const [sig, code] of SIGNALS) {
    const h = () => removeTempsAndExit(code);
    try {
      Deno.addSignalListener(sig, h);
      handlers.set(sig, h);
    } catch {
      // this platform does not deliver that signal (Windows: SIGTERM)
    }
  }
}

function untrackTemp(tmp: string): void {
  liveTemps.delete(tmp);
  if (liveTemps.size > 0) return;
  for (const [sig, h] of handlers) Deno.removeSignalListener(sig, h);
  handlers.clear();
}

function alive(pid: number): boolean {
  if (pid === Deno.pid) return true;
  try {
    Deno.statSync(`/proc/${pid}`);
    return true;
  } catch {
    return false;
  }
}

/** Removes `.<name>.tmp-<pid>-*` files beside `path` left by processes that no longer run. */
async function removeStaleTemps(path: string): Promise<void> {
  if (Deno.build.os !== "linux") return; // liveness is read from /proc
  const prefix = `.${baseOf(path)}.tmp-`;
  try {
    for await (const e of Deno.readDir(dirOf(path))) {
      if (!e.isFile || !e.name.startsWith(prefix)) continue;
      const pid = Number(e.name.slice(prefix.length).split("-")[0]);
      if (Number.isInteger(pid) && pid > 0 && !alive(pid)) {
        await Deno.remove(`${dirOf(path)}/${e.name}`).catch(() => undefined);
      }
    }
  } catch {
    // an unreadable folder: the write itself will say so
  }
}

async function writeAll(file: Deno.FsFile, b: Uint8Array | string): Promise<void> {
  const bytes = typeof b === "string" ? new TextEncoder().encode(b) : b;
  let done = 0;
  while (done < bytes.length) done += await file.write(bytes.subarray(done));
}

/**
 * Write `data` (bytes, text as UTF-8, a list of them, or an async stream of them) to `path`
 * atomically: the checks of {@link checkOutputPath} (without the probe), then a temporary file
 * in the same folder, fsync, rename. A crash leaves the old file intact; a failure or Ctrl-C
 * removes the temporary file; errors name `opts.label` and `path`.
 */
export async function writeFileAtomic(
  path: string,
  data: OutputData,
  opts: OutputOptions = {},
): Promise<void> {
  const own = await checkDestination(path, opts);
  await checkNotAnInput(path, own, opts);
  await removeStaleTemps(path);
  const tmp = `${dirOf(path)}/.${baseOf(path)}.tmp-${Deno.pid}-${rand()}`;
  let file: Deno.FsFile | null = null;
  trackTemp(tmp);
  try {
    file = await Deno.open(tmp, { write: true, createNew: true });
    if (typeof data === "string" || data instanceof Uint8Array) await writeAll(file, data);
    else if (Array.isArray(data)) { for (const b of data) await writeAll(file, b); }
    else for await (const b of data as AsyncIterable<Uint8Array | string>) await writeAll(file, b);
    await file.sync();
    file.close();
    file = null;
    // The destination may have changed while the data was produced: check it once more.
    await checkDestination(path, opts);
    await Deno.rename(tmp, path);
  } catch (e) {
    file?.close();
    await Deno.remove(tmp).catch(() => undefined);
    // Name the destination, never the temporary file the user did not ask for.
    const msg = (e as Error).message.replaceAll(tmp, `a temporary file beside ${path}`);
    throw new Error(
      msg.startsWith(where(path, opts)) ? msg : `${where(path, opts)}: could not write (${msg})`,
      { cause: e },
    );
  } finally {
    untrackTemp(tmp);
  }
}
