/**
 * Issue 12, every class through the command line: `deno run -A cli.ts ...` as a subprocess on
 * temporary folders holding FIFOs, symbolic and hard links made here. Each refusal must end
 * within seconds with exit 1 or 2 and a message naming the file, option or config field, and
 * leave every input and every pre-existing output as it was (the folder is snapshotted before
 * and compared after). Three runs start the GPU (a late bad image under both policies, NaN
 * weights); every other case is refused before the model is built, which is the point.
 */
import assert from "node:assert/strict";
import {
  SafetensorsFile,
  type SafetensorsTensor,
  writeSafetensors,
} from "../nn/formats/safetensors.ts";
import { fixturePath, withTempDir } from "./fixture_util.ts";
import {
  assertRefused,
  assertUnchanged,
  BPE,
  type CliResult,
  hasBpe,
  isRoot,
  makePng,
  mkfifo,
  runCli,
  snapshot,
} from "./hostile_util.ts";

const enc = (s: string) => new TextEncoder().encode(s);

/** Runs the CLI cases at once (two cores: the waits overlap) and returns their results. */
function all(cases: string[][]): Promise<CliResult[]> {
  return Promise.all(cases.map((args) => runCli(args)));
}

/** A folder with a few images, a corpus, a dummy weights file and a pre-existing output. */
async function workspace(dir: string): Promise<void> {
  await Deno.mkdir(`${dir}/tiles`);
  for (let i = 0; i < 3; i++) await Deno.writeFile(`${dir}/tiles/t${i}.png`, makePng(40, 30 + i));
  await Deno.writeTextFile(`${dir}/reports.txt`, "tumor cells\nadipose tissue\n");
  await Deno.writeTextFile(`${dir}/weights.safetensors`, "a 15 MB checkpoint, in spirit");
  await Deno.writeTextFile(`${dir}/tok.txt.gz`, "not read: the run is refused before");
  await Deno.writeTextFile(`${dir}/previous.safetensors`, "an earlier run's output");
}

Deno.test("cli class 1: --out onto a FIFO, a symlink, a hard link, an input, or nowhere is refused", async () => {
  await withTempDir("clipit-hostile-cli-", async (dir) => {
    await workspace(dir);
    await mkfifo(`${dir}/fifo`);
    await Deno.symlink(`${dir}/previous.safetensors`, `${dir}/link.safetensors`);
    await Deno.link(`${dir}/previous.safetensors`, `${dir}/hard.safetensors`);
    const before = await snapshot(dir);
    // The tokenizer is named (it is never read: every case is refused before), so the cases do
    // not depend on ../shared/data's CLIP merges being found.
    const base = [
      "embed",
      "--arch",
      "tiny",
      "--texts",
      `${dir}/reports.txt`,
      "--tokenizer",
      `${dir}/tok.txt.gz`,
      "--quiet",
    ];
    const withWeights = [...base, "--weights", `${dir}/weights.safetensors`];
    const cases: [string[], RegExp][] = [
      [[...withWeights, "--out", `${dir}/fifo`], /--out .*fifo: exists and is a FIFO/],
      [
        [...withWeights, "--out", `${dir}/link.safetensors`],
        /--out .*link\.safetensors: is a symbolic link/,
      ],
      [
        [...withWeights, "--out", `${dir}/hard.safetensors`],
        /--out .*hard\.safetensors: has 2 hard links/,
      ],
      [
        [...withWeights, "--out", `${dir}/weights.safetensors`],
        /--out .*: is the same file as --weights/,
      ],
      [[...withWeights, "--out", `${dir}/reports.txt`], /--out .*: is the same file as --texts/],
      [[...withWeights, "--out", `${dir}/tiles/../reports.txt`], /is the same file as --texts/],
      [
        [...withWeights, "--out", `${dir}/no/such/folder/out.safetensors`],
        /--out .*: folder .* does not exist/,
      ],
      [
        [...withWeights, "--out", `${dir}/tok.txt.gz`],
        /is the same file as --tokenizer/,
      ],
      [
        [...base, "--random-init", "--images", `${dir}/tiles`, "--out", `${dir}/tiles/t1.png`],
        /is the same file as --images .*t1\.png/,
      ],
    ];
    const results = await all(cases.map(([args]) => args));
    results.forEach((r, i) => assertRefused(r, [cases[i][1]], cases[i][0].slice(-1)[0], 1));
    await assertUnchanged(dir, before, "class 1");
  });
});

Deno.test({
  name: "cli class 1: an unwritable --out folder is found before any work (skipped as root)",
  ignore: isRoot,
  fn: () =>
    withTempDir("clipit-hostile-cli-", async (dir) => {
      await workspace(dir);
      await Deno.mkdir(`${dir}/ro`);
      await Deno.chmod(`${dir}/ro`, 0o555);
      const r = await runCli([
        "embed",
        "--arch",
        "tiny",
        "--random-init",
        "--images",
        `${dir}/tiles`,
        "--out",
        `${dir}/ro/e.safetensors`,
      ]);
      await Deno.chmod(`${dir}/ro`, 0o755);
      assertRefused(
        r,
        [/--out .*ro\/e\.safetensors: folder .* is not writable/],
        "read-only folder",
        1,
      );
    }),
});

Deno.test("cli classes 2, 3, 5, 6, 7: refused before the model is built, naming the culprit", async () => {
  await withTempDir("clipit-hostile-cli-", async (dir) => {
    await workspace(dir);
    // Class 2: a bad image at the end of the list is found by its header, before any work.
    await Deno.mkdir(`${dir}/late`);
    for (let i = 0; i < 3; i++) {
      await Deno.copyFile(`${dir}/tiles/t${i}.png`, `${dir}/late/t${i}.png`);
    }
    await Deno.writeFile(`${dir}/late/zz-last.png`, enc("GIF89a, not a PNG"));
    // Class 7: a PNG claiming 13000x13000 in 100 bytes.
    await Deno.mkdir(`${dir}/liar`);
    const liar = new Uint8Array(100);
    liar.set(makePng(2, 2).subarray(0, 79));
    new DataView(liar.buffer).setUint32(16, 13000);
    new DataView(liar.buffer).setUint32(20, 13000);
    await Deno.writeFile(`${dir}/liar/big.png`, liar);
    // Class 3: configs that cannot fit; class 6: a degenerate one.
    const cfg = (vision: object, text: object = {}) =>
      JSON.stringify({
        embed_dim: 64,
        vision_cfg: { width: 64, layers: 2, patch_size: 16, image_size: 64, ...vision },
        text_cfg: { width: 64, layers: 2, heads: 2, ...text },
      });
    await Deno.writeTextFile(`${dir}/deep.json`, cfg({ layers: 1e9 }));
    await Deno.writeTextFile(`${dir}/wide.json`, cfg({ width: 6_400_000, heads: 50_000 }));
    await Deno.writeTextFile(`${dir}/ctx1.json`, cfg({}, { context_length: 1 }));
    // Class 5: texts in bad shapes.
    await Deno.writeFile(`${dir}/latin1.txt`, new Uint8Array([...enc("ok\nbad "), 0xe9, 0x0a]));
    await Deno.writeFile(`${dir}/utf16.txt`, new Uint8Array([0x61, 0, 0x0a, 0, 0x62, 0, 0x0a, 0]));
    await Deno.writeTextFile(`${dir}/empty.txt`, "");
    await Deno.writeTextFile(`${dir}/blank.txt`, "\n  \n\t\n");
    await mkfifo(`${dir}/fifo.txt`);
    // Class 7: checkpoints that are not what they claim.
    const st = await Deno.readFile(fixturePath("clip_tiny_hf.safetensors"));
    await Deno.writeFile(`${dir}/cut.safetensors`, st.subarray(0, st.length - 1000));
    const header = '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},' +
      '"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}';
    const dup = new Uint8Array(8 + header.length + 4);
    new DataView(dup.buffer).setBigUint64(0, BigInt(header.length), true);
    dup.set(enc(header), 8);
    await Deno.writeFile(`${dir}/dup.safetensors`, dup);
    const before = await snapshot(dir);
    const out = `${dir}/previous.safetensors`;
    const rnd = ["embed", "--random-init", "--quiet", "--out", out];
    const texts = (
      f: string,
    ) => ["embed", "--arch", "tiny", "--random-init", "--texts", `${dir}/${f}`, "--out", out];
    const cases: [string[], RegExp[], number][] = [
      [[...rnd, "--arch", "tiny", "--images", `${dir}/late`], [
        /--images .*late: 1 image\(s\) cannot be read: zz-last\.png \(unsupported or unrecognised format/,
        /nothing was embedded/,
      ], 1],
      [[...rnd, "--arch", "tiny", "--images", `${dir}/liar`], [
        /big\.png \(truncated PNG: the header says 13000x13000 .* only 100 bytes\)/,
      ], 1],
      [[...rnd, "--arch", `${dir}/deep.json`, "--images", `${dir}/tiles`], [
        /deep\.json: the model needs about .* \(mostly vision\.layers/,
      ], 1],
      [[...rnd, "--arch", `${dir}/wide.json`, "--images", `${dir}/tiles`], [
        /wide\.json: the model needs about .* \(mostly vision\.width/,
      ], 1],
      [[...rnd, "--arch", `${dir}/ctx1.json`, "--images", `${dir}/tiles`], [
        /ctx1\.json: text\.contextLength \(context_length\) 1/,
      ], 1],
      [texts("latin1.txt"), [/--texts .*latin1\.txt: line 2 is not valid UTF-8 \(byte 0xe9/], 1],
      [texts("utf16.txt"), [
        /--texts .*utf16\.txt: line 1 holds a NUL byte .*UTF-16 text without a byte-order mark/,
      ], 1],
      [texts("empty.txt"), [/--texts .*empty\.txt: no text lines \(the file is empty\)/], 1],
      [texts("blank.txt"), [/--texts .*blank\.txt: no text lines \(3 blank line\(s\)\)/], 1],
      [texts("fifo.txt"), [/--texts .*fifo\.txt: is a FIFO/], 1],
      [
        [
          "embed",
          "--weights",
          `${dir}/weights.safetensors`,
          "--random-init",
          "--arch",
          "tiny",
          "--images",
          `${dir}/tiles`,
          "--out",
          out,
        ],
        [/--weights .*weights\.safetensors and --random-init contradict each other/],
        2,
      ],
      [["embed", "--weights", `${dir}/cut.safetensors`, "--images", `${dir}/tiles`, "--out", out], [
        /cut\.safetensors: a corrupt or truncated safetensors file: /,
      ], 1],
      [["embed", "--weights", `${dir}/dup.safetensors`, "--images", `${dir}/tiles`, "--out", out], [
        /dup\.safetensors: a corrupt or truncated safetensors file: the header names "a" twice/,
      ], 1],
      [
        [
          "embed",
          "--weights",
          fixturePath("ckpt_legacy.pt"),
          "--images",
          `${dir}/tiles`,
          "--out",
          out,
        ],
        [/ckpt_legacy\.pt: legacy \(pre-1\.6, non-zip\) torch\.save format/],
        1,
      ],
      [["data", "--dataset", "crc", "--root", `${dir}/missing-root`], [
        /--root .*missing-root: does not exist/,
      ], 2],
      [["data", "--dataset", "pcam", "--root", fixturePath("hostile")], [
        /test_x\.h5: dataset "x" declares shape \[1000000000, 96, 96, 3\]/,
      ], 2],
      [["data", "--dataset", "crc", "--root", dir, "--split-file", `${dir}/reports.txt`], [
        /--split-file does nothing with --dataset crc/,
      ], 2],
    ];
    if (hasBpe) {
      // Class 2: a tokenizer that does not fit the config is found before any work.
      cases.push([
        [...rnd, "--arch", "tiny-test", "--texts", `${dir}/reports.txt`, "--tokenizer", BPE],
        [/--tokenizer .*: the tokenizer has 49408 tokens but the tiny-test model only 48/],
        1,
      ]);
    }
    const results = await all(cases.map(([args]) => args));
    results.forEach((r, i) => {
      assertRefused(r, cases[i][1], cases[i][0].join(" "), cases[i][2]);
      assert.doesNotMatch(
        r.stderr,
        /neither a torch\.save zip|Unsupported filter|Maximum call stack|Invalid array length/,
      );
    });
    await assertUnchanged(dir, before, "refused runs");
  });
});

Deno.test("cli class 4: link cycles and doubly reachable files in `data`; a file in two splits refused", async () => {
  await withTempDir("clipit-hostile-cli-", async (dir) => {
    for (const c of ["A", "B"]) {
      await Deno.mkdir(`${dir}/${c}`);
      for (let i = 0; i < 5; i++) {
        await Deno.writeFile(`${dir}/${c}/${c}${i}.png`, makePng(8, 8 + i));
      }
    }
    await Deno.symlink("..", `${dir}/A/up`); // counted 2 files 163 times before
    await Deno.symlink(".", `${dir}/B/self1`); // "Maximum call stack size exceeded" before
    await Deno.symlink(".", `${dir}/B/self2`);
    await Deno.symlink("A0.png", `${dir}/A/zz-again.png`);
    const before = await snapshot(dir);
    const [cycles] = await all([[
      "data",
      "--dataset",
      "folder",
      "--root",
      dir,
      "--quick",
      "--json",
    ]]);
    assert.equal(cycles.code, 0, cycles.stderr);
    const report = JSON.parse(cycles.stdout);
    const counts = report.splits.map((s: { count: number }) => s.count);
    assert.equal(counts.reduce((a: number, b: number) => a + b, 0), 10, "every file once");
    assert.ok(
      report.notes.some((n: string) => /3 folder link\(s\) not followed/.test(n)),
      report.notes,
    );
    assert.ok(
      report.notes.some((n: string) => /1 file\(s\) reachable under a second name/.test(n)),
    );
    await assertUnchanged(dir, before, "data over link cycles");
    // The same file in train and val: refused, naming both names.
    await Deno.mkdir(`${dir}/split/train/A`, { recursive: true });
    await Deno.mkdir(`${dir}/split/val/A`, { recursive: true });
    await Deno.writeFile(`${dir}/split/train/A/x.png`, makePng(8, 8));
    await Deno.symlink(`${dir}/split/train/A/x.png`, `${dir}/split/val/A/y.png`);
    const snap = await snapshot(dir);
    const [leak] = await all([[
      "data",
      "--dataset",
      "folder",
      "--root",
      `${dir}/split`,
      "--quick",
    ]]);
    assertRefused(
      leak,
      [/val\/A\/y\.png and .*train\/A\/x\.png are the same file, in the val and the train split/],
      "leak",
      2,
    );
    await assertUnchanged(dir, snap, "class 4");
  });
});

Deno.test({
  name:
    "cli classes 2, 3, 4, 5, 6: late bad image (partial output or skip), 1x50000 PNG, links, BOM, 16-bit gray, NaN weights",
  sanitizeOps: false,
  sanitizeResources: false,
  fn: () =>
    withTempDir("clipit-hostile-cli-", async (dir) => {
      await workspace(dir);
      const img = `${dir}/imgs`;
      await Deno.mkdir(img);
      for (let i = 0; i < 3; i++) await Deno.copyFile(`${dir}/tiles/t${i}.png`, `${img}/a${i}.png`);
      await Deno.writeFile(`${img}/b-tall.png`, makePng(1, 50000)); // hung embedding before
      await Deno.writeFile(`${img}/c-gray16.png`, makePng(16, 16, { gray16: true }));
      await Deno.symlink(`${dir}/tiles/t0.png`, `${img}/d-link.png`); // followed like `data` does
      const corrupt = makePng(40, 30);
      corrupt[60] ^= 0xff; // inside IDAT: the header is fine, the decoder is not
      await Deno.writeFile(`${img}/z-corrupt.png`, corrupt);
      const bom = hasBpe ? ["--texts", `${dir}/bom.txt`, "--tokenizer", BPE] : [];
      await Deno.writeFile(
        `${dir}/bom.txt`,
        new Uint8Array([0xef, 0xbb, 0xbf, ...enc("tumor\n\nadipose\ntumor\n")]),
      );
      const out = `${dir}/previous.safetensors`;
      const run = [
        "embed",
        "--arch",
        "tiny",
        "--random-init",
        "--images",
        img,
        "--out",
        out,
        "--batch",
        "2",
        "--workers",
        "0",
        "--quiet",
      ];
      const before = await snapshot(dir);
      // Default policy: the run stops at the corrupt image, the finished rows are saved beside
      // --out with what is missing, --out itself is left as it was.
      const failed = await runCli(run);
      const partial = `${dir}/previous.partial.safetensors`;
      assertRefused(
        failed,
        [
          /cannot decode image .*z-corrupt\.png/,
          /embedded before the failure are in .*previous\.partial\.safetensors/,
          /--out .*previous\.safetensors was not written/,
        ],
        "late failure",
        1,
      );
      await assertUnchanged(dir, before, "late failure", [partial]);
      const p = await SafetensorsFile.open(partial);
      assert.equal(p.metadata.complete, "false");
      const done: string[] = JSON.parse(p.metadata.image_files);
      const missing: string[] = JSON.parse(p.metadata.missing_images);
      assert.deepEqual([...done, ...missing].sort(), [
        "a0.png",
        "a1.png",
        "a2.png",
        "b-tall.png",
        "c-gray16.png",
        "d-link.png",
        "z-corrupt.png",
      ]);
      assert.ok(missing.includes("z-corrupt.png") && done.length === 6, p.metadata.image_files);
      assert.deepEqual(p.entry("image_embeds").shape, [done.length, 64]);
      p.close();
      // --on-bad-image skip: complete output without it, the skip recorded; the 16-bit gray
      // image noted once, by name; the BOM is not part of the first text.
      const ok = await runCli([...run, "--on-bad-image", "skip", ...bom]);
      assert.equal(ok.code, 0, ok.stderr);
      assert.equal(ok.stderr.match(/16-bit grayscale/g)?.length, 1, ok.stderr);
      assert.match(ok.stderr, /1 image\(s\) are 16-bit grayscale: .*c-gray16\.png/);
      assert.match(ok.stderr, /1 unreadable image\(s\) left out .*z-corrupt\.png/);
      const f = await SafetensorsFile.open(out);
      assert.deepEqual(JSON.parse(f.metadata.image_files), [
        "a0.png",
        "a1.png",
        "a2.png",
        "b-tall.png",
        "c-gray16.png",
        "d-link.png",
      ]);
      assert.deepEqual(JSON.parse(f.metadata.skipped_images).map((s: { file: string }) => s.file), [
        "z-corrupt.png",
      ]);
      const rows = await f.readFloat32("image_embeds");
      assert.deepEqual(
        rows.subarray(0, 64),
        rows.subarray(5 * 64, 6 * 64),
        "a link embeds as its target",
      );
      if (hasBpe) {
        assert.deepEqual(JSON.parse(f.metadata.text_line_numbers), [1, 3, 4]);
        const t = await f.readFloat32("text_embeds");
        assert.deepEqual(t.subarray(0, 64), t.subarray(128, 192), "BOM-prefixed line 1 = line 4");
      }
      f.close();
      // Class 6: weights holding a NaN are named by tensor at load.
      const src = await SafetensorsFile.open(fixturePath("clip_tiny_hf.safetensors"));
      const tensors: Record<string, SafetensorsTensor> = {};
      for (const [name, e] of src.entries()) {
        tensors[name] = e.dtype === "F32"
          ? { dtype: "F32", shape: e.shape, data: await src.readFloat32(name) }
          : { dtype: e.dtype, shape: e.shape, data: await src.read(name) };
      }
      src.close();
      const bad = "vision_model.encoder.layers.1.mlp.fc1.weight";
      (tensors[bad].data as Float32Array)[7] = NaN;
      await writeSafetensors(`${dir}/nan.safetensors`, tensors);
      const snap = await snapshot(dir);
      const nan = await runCli([
        "embed",
        "--weights",
        `${dir}/nan.safetensors`,
        "--arch",
        fixturePath("clip_tiny_hf_config.json"),
        "--images",
        `${dir}/tiles`,
        "--out",
        out,
        "--quiet",
        "--workers",
        "0",
      ]);
      assertRefused(
        nan,
        [new RegExp(`nan\\.safetensors: tensor "${bad.replaceAll(".", "\\.")}" holds 1 NaN`)],
        "NaN weights",
        1,
      );
      await assertUnchanged(dir, snap, "NaN weights");
    }),
});
