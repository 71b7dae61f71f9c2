/**
 * Issue 12, class 1: outputs that would destroy something. nn/formats/safe_write.ts against
 * FIFOs, sockets, folders, symbolic links, hard links, outputs that are inputs (by path, through
 * a link, through `..`), missing and unwritable folders, failures while writing, stale temporary
 * files of killed writers and Ctrl-C during a write. Every case is refused with a message
 * naming the option, and leaves every file in the folder as it was (tests/hostile_util.ts
 * snapshots the folder). The same refusals through `cli.ts embed` are in hostile_cli_test.ts.
 */
import assert from "node:assert/strict";
import { checkOutputPath, writeFileAtomic } from "../nn/formats/safe_write.ts";
import { checkInputFile } from "../nn/formats/input_file.ts";
import { SafetensorsFile, writeSafetensors } from "../nn/formats/safetensors.ts";
import { assertUnchanged, isRoot, mkfifo, mksocket, ROOT, snapshot } from "./hostile_util.ts";

/** A temporary folder with an input file, a FIFO, a socket, a folder and links. */
async function hostileFolder(): Promise<{ dir: string; socket: Deno.Listener }> {
  const dir = await Deno.makeTempDir({ prefix: "clipit-hostile-out-" });
  await Deno.writeTextFile(`${dir}/input.txt`, "a report\n");
  await Deno.writeTextFile(`${dir}/old.bin`, "previous output");
  await mkfifo(`${dir}/fifo`);
  const socket = mksocket(`${dir}/sock`);
  await Deno.mkdir(`${dir}/folder`);
  await Deno.symlink(`${dir}/old.bin`, `${dir}/link`);
  await Deno.symlink(`${dir}/nowhere`, `${dir}/dangling`);
  await Deno.writeTextFile(`${dir}/shared.bin`, "one file, two names");
  await Deno.link(`${dir}/shared.bin`, `${dir}/hard.bin`);
  await Deno.symlink(`${dir}/old.bin`, `${dir}/input-link`); // an input that is a link
  return { dir, socket };
}

Deno.test("safe writer: every hostile destination is refused, naming the option, nothing touched", async () => {
  const { dir, socket } = await hostileFolder();
  try {
    const before = await snapshot(dir);
    const cases: [string, { inputs?: string[] }, RegExp][] = [
      [`${dir}/fifo`, {}, /--out .*fifo: exists and is a FIFO/],
      [`${dir}/sock`, {}, /--out .*sock: exists and is a socket/],
      [`${dir}/folder`, {}, /--out .*folder: exists and is a folder/],
      [`${dir}/link`, {}, /--out .*link: is a symbolic link \(to .*old\.bin\)/],
      [`${dir}/dangling`, {}, /--out .*dangling: is a symbolic link/],
      [`${dir}/hard.bin`, {}, /--out .*hard\.bin: has 2 hard links/],
      [`${dir}/input.txt`, { inputs: [`${dir}/input.txt`] }, /same file as an input/],
      // The same file by another spelling of its path, and through a link given as the input.
      [`${dir}/folder/../input.txt`, { inputs: [`${dir}/input.txt`] }, /same file as/],
      [`${dir}/old.bin`, { inputs: [`${dir}/input-link`] }, /same file as an input/],
      [`${dir}/missing/out.bin`, {}, /--out .*folder .*missing does not exist/],
      [`${dir}/input.txt/out.bin`, {}, /--out .*input\.txt is not a folder/],
      [`${dir}/`, {}, /not a file name/],
    ];
    for (const [path, opts, re] of cases) {
      const o = { label: "--out", ...opts };
      await assert.rejects(() => checkOutputPath(path, o), re, `checkOutputPath ${path}`);
      await assert.rejects(() => writeFileAtomic(path, "new", o), re, `writeFileAtomic ${path}`);
    }
    // Inputs carry their own option name into the message.
    await assert.rejects(
      () =>
        writeSafetensors(`${dir}/input.txt`, {}, undefined, {
          label: "--out",
          inputs: [{ path: `${dir}/input.txt`, label: "--texts" }],
        }),
      /--out .*input\.txt: is the same file as --texts .*input\.txt; refusing to overwrite/,
    );
    await assertUnchanged(dir, before, "refused outputs");
    // A regular file of its own, not an input, is replaced atomically.
    await checkOutputPath(`${dir}/old.bin`, { label: "--out", inputs: [`${dir}/input.txt`] });
    await writeFileAtomic(`${dir}/old.bin`, ["new ", new TextEncoder().encode("bytes")]);
    assert.equal(await Deno.readTextFile(`${dir}/old.bin`), "new bytes");
    assert.deepEqual([...Deno.readDirSync(dir)].filter((e) => e.name.startsWith(".")), []);
  } finally {
    socket.close();
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test({
  name: "safe writer: an unwritable folder is found by the early probe (skipped as root)",
  ignore: isRoot,
  fn: async () => {
    const dir = await Deno.makeTempDir({ prefix: "clipit-hostile-out-" });
    try {
      await Deno.mkdir(`${dir}/ro`);
      await Deno.chmod(`${dir}/ro`, 0o555);
      await assert.rejects(
        () => checkOutputPath(`${dir}/ro/out.bin`, { label: "--out" }),
        /--out .*ro\/out\.bin: folder .*ro is not writable/,
      );
    } finally {
      await Deno.chmod(`${dir}/ro`, 0o755).catch(() => undefined);
      await Deno.remove(dir, { recursive: true });
    }
  },
});

Deno.test("safe writer: a failure while writing leaves the old file and no temporary file", async () => {
  const dir = await Deno.makeTempDir({ prefix: "clipit-hostile-out-" });
  try {
    await Deno.writeTextFile(`${dir}/out.bin`, "old");
    const before = await snapshot(dir);
    const failing = async function* () {
      yield new TextEncoder().encode("partial");
      throw new Error("the producer failed");
    };
    await assert.rejects(
      () => writeFileAtomic(`${dir}/out.bin`, failing(), { label: "--out" }),
      (e: Error) => {
        assert.match(e.message, /^--out .*out\.bin: could not write \(the producer failed\)/);
        assert.doesNotMatch(e.message, /\.tmp-/); // the user never named the temporary file
        return true;
      },
    );
    await assertUnchanged(dir, before, "failed write");
    // A temporary file of a writer that no longer runs (kill -9) is removed by the next write;
    // one of a live process (this one) is left alone.
    const stale = `${dir}/.out.bin.tmp-999999999-deadbeef`;
    const live = `${dir}/.out.bin.tmp-${Deno.pid}-cafebabe`;
    await Deno.writeTextFile(stale, "left by kill -9");
    await Deno.writeTextFile(live, "being written");
    await writeFileAtomic(`${dir}/out.bin`, "new", { label: "--out" });
    assert.equal(await Deno.readTextFile(`${dir}/out.bin`), "new");
    await assert.rejects(() => Deno.stat(stale), Deno.errors.NotFound);
    assert.ok((await Deno.stat(live)).isFile);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("safe writer: Ctrl-C during a write removes the temporary file and keeps the old one", async () => {
  const dir = await Deno.makeTempDir({ prefix: "clipit-hostile-out-" });
  try {
    await Deno.writeTextFile(`${dir}/out.bin`, "old");
    const before = await snapshot(dir);
    const script = `${dir}/writer.ts`;
    const module = new URL("nn/formats/safe_write.ts", `file://${ROOT}`).href;
    await Deno.writeTextFile(
      script,
      `import { writeFileAtomic } from ${JSON.stringify(module)};
      async function* slow() {
        yield new Uint8Array(1000);
        console.log("writing");
        await new Promise(() => setInterval(() => {}, 1000)); // never ends: Ctrl-C comes first
      }
      await writeFileAtomic(${JSON.stringify(`${dir}/out.bin`)}, slow(), { label: "--out" });`,
    );
    const child = new Deno.Command(Deno.execPath(), {
      args: ["run", "-A", "--no-check", script],
      stdout: "piped",
      stderr: "piped",
    }).spawn();
    const reader = child.stdout.getReader();
    const { value } = await reader.read();
    assert.match(new TextDecoder().decode(value), /writing/);
    const temps = [...Deno.readDirSync(dir)].filter((e) => e.name.includes(".tmp-"));
    assert.equal(temps.length, 1, "the temporary file exists while writing");
    child.kill("SIGINT");
    const status = await child.status;
    reader.releaseLock();
    await child.stdout.cancel();
    await child.stderr.cancel();
    assert.equal(status.code, 130);
    await Deno.remove(script);
    await assertUnchanged(dir, before, "Ctrl-C");
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
});

Deno.test("inputs: FIFOs, sockets, folders and broken links are refused without being opened", async () => {
  const { dir, socket } = await hostileFolder();
  try {
    const cases: [string, RegExp][] = [
      [
        `${dir}/fifo`,
        /--texts .*fifo: is a FIFO \(named pipe\), not a regular file \(reading it could block/,
      ],
      [`${dir}/sock`, /--texts .*sock: is a socket, not a regular file/],
      [`${dir}/folder`, /--texts .*folder: is a folder, not a regular file/],
      [`${dir}/dangling`, /--texts .*dangling: is a broken symbolic link \(to .*nowhere\)/],
      [`${dir}/absent`, /--texts .*absent: does not exist/],
    ];
    for (const [path, re] of cases) {
      await assert.rejects(() => checkInputFile(path, { label: "--texts" }), re);
    }
    // Checkpoint readers check before opening: a FIFO named like a checkpoint cannot hang them.
    await assert.rejects(() => SafetensorsFile.open(`${dir}/fifo`), /is a FIFO/);
  } finally {
    socket.close();
    await Deno.remove(dir, { recursive: true });
  }
});
