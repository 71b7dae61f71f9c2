/**
 * Finding image files on disk: the one image lister of the project (datasets and the `embed`
 * command both use it) and the folder helpers the dataset openers share.
 *
 * Listing rules ({@link listImages}):
 * - Entries whose name starts with "." are skipped (hidden files and folders, `.DS_Store`, ...).
 * - Symbolic links are followed, to files and to folders, the same way for every command. A
 *   dangling link, and a FIFO or device with an image name, is listed as a file, so reading it
 *   reports the problem (the readers never open anything but a regular file) instead of the
 *   file vanishing.
 * - Cycles are detected by real path: a link to the folder itself or to an enclosing folder is
 *   not followed and is reported in `problems`.
 * - A file reachable under two names (two links, a link into a folder listed anyway) is listed
 *   once, under the first name in listing order; the others go to `duplicates`. Share `seen`
 *   between calls to extend this across several listings (a dataset's class folders).
 * - Files with a supported image extension (IMAGE_EXTENSIONS) are listed, and so are files with
 *   the extension of an image format the decoders do not read (.bmp, .webp, .svs, ...): those
 *   then fail (or are skipped) with a clear reason instead of vanishing. Other files are reported
 *   in `ignored`.
 * - Entries are visited in code-point order of their names (independent of locale and file
 *   system), folders depth-first where they sort, so the result is sorted by path component.
 */
import { extname, join } from "node:path";

/** File extensions read as images (lower case, with the dot). */
export const IMAGE_EXTENSIONS = [".png", ".tif", ".tiff", ".jpg", ".jpeg"];

/**
 * Extensions of image formats the decoder does not read: such files are listed as samples so they
 * fail (or are skipped) with a clear reason instead of vanishing.
 */
const UNSUPPORTED_IMAGE_EXTENSIONS = [
  ".bmp",
  ".gif",
  ".webp",
  ".jp2",
  ".j2k",
  ".jfif",
  ".heic",
  ".ppm",
  ".pgm",
  ".svs",
  ".ndpi",
];

/** Whether `path` is a folder (following symlinks); false when it does not exist. */
export async function isDir(path: string): Promise<boolean> {
  try {
    return (await Deno.stat(path)).isDirectory;
  } catch {
    return false;
  }
}

/** Code-point order, so listings do not depend on the locale or the file system. */
export function byName(a: string, b: string): number {
  return a < b ? -1 : a > b ? 1 : 0;
}

/** Subfolders of `dir` (following symlinks), hidden ones left out, sorted. */
export async function subdirs(dir: string): Promise<string[]> {
  const out: string[] = [];
  for await (const e of Deno.readDir(dir)) {
    if (e.name.startsWith(".")) continue;
    if (e.isDirectory || (e.isSymlink && await isDir(join(dir, e.name)))) out.push(e.name);
  }
  return out.sort(byName);
}

/** Whether a file name has an image extension (supported or not). */
function looksLikeImage(name: string): boolean {
  const ext = extname(name).toLowerCase();
  return IMAGE_EXTENSIONS.includes(ext) || UNSUPPORTED_IMAGE_EXTENSIONS.includes(ext);
}

/** Something a listing did not follow, with the reason. */
export interface ListProblem {
  /** The path as reached. */
  path: string;
  /** Why it was not followed. */
  reason: string;
}

/** A file left out of a listing because it is another name of a file listed before. */
export interface ListDuplicate {
  /** The name left out. */
  path: string;
  /** The name it was listed under. */
  first: string;
}

/** Options of {@link listImages}. */
export interface ListImagesOptions {
  /** Descend into subfolders (default true). */
  recursive?: boolean;
  /** Receives the paths of the non-hidden files that are not images. */
  ignored?: string[];
  /**
   * Real path -> the name a file was first listed under. Share one map between the calls that
   * build one dataset, so that a file reachable from two folders is listed once for all of them.
   */
  seen?: Map<string, string>;
  /** Receives the names left out because they are another name of a file listed before. */
  duplicates?: ListDuplicate[];
  /** Receives the folder links not followed (links back to an enclosing folder: cycles). */
  problems?: ListProblem[];
}

/** Per `seen` map: the image files (relative name, real path) found under each real folder. */
const FOLDER_MEMO = new WeakMap<Map<string, string>, Map<string, [string, string][]>>();

/**
 * The image files under `dir` (see the module comment for the rules), as paths joined onto
 * `dir`, sorted by path.
 * @throws the file system's error when `dir` (or a subfolder) cannot be read.
 */
export async function listImages(dir: string, opts: ListImagesOptions = {}): Promise<string[]> {
  const seen = opts.seen ?? new Map<string, string>();
  let memo = FOLDER_MEMO.get(seen);
  if (!memo) FOLDER_MEMO.set(seen, memo = new Map());
  const out: string[] = [];
  const real = await Deno.realPath(dir);
  await walk(dir, real, [], { ...opts, seen, memo, out, recursive: opts.recursive ?? true });
  return out;
}

interface WalkContext extends ListImagesOptions {
  seen: Map<string, string>;
  memo: Map<string, [string, string][]>;
  out: string[];
  recursive: boolean;
}

function add(ctx: WalkContext, path: string, real: string): void {
  const first = ctx.seen.get(real);
  if (first === undefined) {
    ctx.seen.set(real, path);
    ctx.out.push(path);
  } else ctx.duplicates?.push({ path, first });
}

/** Lists `dir` (real path `real`) into ctx.out; returns its images as (relative, real) pairs. */
async function walk(
  dir: string,
  real: string,
  ancestors: string[],
  ctx: WalkContext,
): Promise<[string, string][]> {
  const found: [string, string][] = [];
  const entries: Deno.DirEntry[] = [];
  for await (const e of Deno.readDir(dir)) entries.push(e);
  entries.sort((a, b) => byName(a.name, b.name));
  const chain = [...ancestors, real];
  for (const e of entries) {
    if (e.name.startsWith(".")) continue;
    const p = join(dir, e.name);
    let r = `${real === "/" ? "" : real}/${e.name}`;
    let folder = e.isDirectory, broken = false;
    if (e.isSymlink) {
      try {
        folder = (await Deno.stat(p)).isDirectory;
        r = await Deno.realPath(p);
      } catch {
        broken = true; // a dangling link: listed below so reading it reports the problem
      }
    }
    if (folder) {
      if (!ctx.recursive) continue;
      if (chain.some((a) => a === r || a.startsWith(`${r}/`))) {
        ctx.problems?.push({
          path: p,
          reason: `a link back to the enclosing folder ${r} (a cycle): not followed`,
        });
        continue;
      }
      let sub = ctx.memo.get(r);
      if (sub) {
        // Reached before under another name: its files are duplicates, no need to walk it again.
        for (const [rel, fr] of sub) add(ctx, join(p, rel), fr);
      } else {
        sub = await walk(p, r, chain, ctx);
        ctx.memo.set(r, sub);
      }
      for (const [rel, fr] of sub) found.push([`${e.name}/${rel}`, fr]);
    } else if (looksLikeImage(e.name)) {
      // Regular files, dangling links, and FIFOs / devices with image names: listed, so that
      // reading reports them (the readers never open anything but a regular file).
      add(ctx, p, broken ? p : r);
      found.push([e.name, broken ? p : r]);
    } else ctx.ignored?.push(p);
  }
  return found;
}
