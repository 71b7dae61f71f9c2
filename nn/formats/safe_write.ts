/**
 * The one way this project writes an output file: whole or not at all.
 *
 * `writeFileAtomic` writes the bytes to a temporary file in the same folder, flushes it to disk,
 * then renames it over the destination, so a crash or a kill at any moment leaves either the old
 * file or the new one, never a torn one; on failure the temporary file is removed and the error
 * names the destination (and the option that named it), not the temporary file.
 * `checkOutputPath` is the cheap check to run before any expensive work.
 */

/** Who asked for an output: used in error messages and for the input check. */
export interface OutputOptions {
  /** How the user named this path, e.g. `--out`; messages start with it. */
  label?: string;
}

function where(path: string, opts: OutputOptions): string {
  return opts.label ? `${opts.label} ${path}` : path;
}

function dirOf(path: string): string {
  const i = path.lastIndexOf("/");
  return i < 0 ? "." : i === 0 ? "/" : path.slice(0, i);
}

/**
 * Check early that `path` can be written: its folder exists and is a folder, and `path` itself,
 * if it exists, is a regular file. Throws an Error naming `opts.label` and the path.
 */
export async function checkOutputPath(path: string, opts: OutputOptions = {}): Promise<void> {
  const dir = dirOf(path);
  let st: Deno.FileInfo;
  try {
    st = await Deno.stat(dir);
  } catch (e) {
    throw new Error(`${where(path, opts)}: folder ${dir} does not exist (${(e as Error).message})`);
  }
  if (!st.isDirectory) throw new Error(`${where(path, opts)}: ${dir} is not a folder`);
  try {
    const own = await Deno.lstat(path);
    if (!own.isFile && !own.isSymlink) {
      throw new Error(
        `${where(path, opts)}: exists and is not a regular file; refusing to replace it`,
      );
    }
  } catch (e) {
    if (!(e instanceof Deno.errors.NotFound)) throw e;
  }
}

/**
 * Write `data` (bytes, or text as UTF-8) to `path` atomically (temporary file in the same folder,
 * fsync, rename). A crash leaves the old file intact; a failure removes the temporary file and
 * throws naming `path`.
 */
export async function writeFileAtomic(
  path: string,
  data: Uint8Array | string | (Uint8Array | string)[],
  opts: OutputOptions = {},
): Promise<void> {
  const parts = (Array.isArray(data) ? data : [data]).map((d) =>
    typeof d === "string" ? new TextEncoder().encode(d) : d
  );
  const tmp = `${dirOf(path)}/.${path.slice(path.lastIndexOf("/") + 1)}.tmp-${
    crypto.randomUUID().slice(0, 8)
  }`;
  let file: Deno.FsFile | null = null;
  try {
    file = await Deno.open(tmp, { write: true, createNew: true });
    for (const b of parts) {
      let done = 0;
      while (done < b.length) done += await file.write(b.subarray(done));
    }
    await file.sync();
    file.close();
    file = null;
    await Deno.rename(tmp, path);
  } catch (e) {
    file?.close();
    await Deno.remove(tmp).catch(() => undefined);
    throw new Error(`${where(path, opts)}: could not write (${(e as Error).message})`, {
      cause: e,
    });
  }
}
