/**
 * The check every input file gets before it is opened: it exists and is a regular file (after
 * following symbolic links). Opening a FIFO or a character device blocks or never ends, a folder
 * gives a confusing read error, a broken link a bare "not found": each is refused here with a
 * message naming the option and the path.
 */
import { fileKind } from "./safe_write.ts";

/** How the user named an input, for messages. */
export interface InputOptions {
  /** e.g. `--texts`; messages start with it. */
  label?: string;
  /** Accept a folder too (checkpoints and tokenizers may be folders). */
  allowFolder?: boolean;
}

/**
 * Checks that `path` exists and is a regular file (or, with `allowFolder`, a folder), following
 * symbolic links. Returns its `stat`.
 * @throws Error naming `opts.label` and `path`: missing, a broken link, a FIFO, a device, a
 * socket, or a folder where a file is needed.
 */
export async function checkInputFile(
  path: string,
  opts: InputOptions = {},
): Promise<Deno.FileInfo> {
  const w = opts.label ? `${opts.label} ${path}` : path;
  let st: Deno.FileInfo;
  try {
    st = await Deno.stat(path);
  } catch (e) {
    if (e instanceof Deno.errors.NotFound) {
      const link = await Deno.lstat(path).then((l) => l.isSymlink).catch(() => false);
      if (link) {
        const to = await Deno.readLink(path).catch(() => "?");
        throw new Error(`${w}: is a broken symbolic link (to ${to})`);
      }
      throw new Error(`${w}: does not exist`);
    }
    throw new Error(`${w}: cannot be read (${(e as Error).message})`);
  }
  if (st.isFile || (opts.allowFolder && st.isDirectory)) return st;
  throw new Error(
    `${w}: is ${fileKind(st)}, not a regular file${
      st.isDirectory ? "" : " (reading it could block or never end)"
    }`,
  );
}
