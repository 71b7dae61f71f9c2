/**
 * Issue 12, classes 3-7 at the library level (no GPU): texts in bad shapes (nn/formats/text.ts),
 * image headers that lie (the probe, the PNG decoder), preprocessing that must stay bounded
 * whatever the aspect ratio, HDF5 shapes beyond the file, folder walks with link cycles and
 * files reachable twice, checkpoints with NaN, duplicate keys, bad CRCs or a legacy format, and
 * configs that are degenerate or cannot fit. Each case ends in milliseconds with an error that
 * names the file (and line, tensor or field). The command-line view is hostile_cli_test.ts.
 */
import assert from "node:assert/strict";
import { decodeTextLines, readTextLines } from "../nn/formats/text.ts";
import { decodeImage, ImageDecodeError, probeImage, readImage } from "../nn/formats/image.ts";
import { GRAY16_NOTE } from "../nn/formats/image_probe.ts";
import {
  resizeBicubic,
  resizeBicubicWindow,
  resizeShortSideBicubic,
  resizeShortSideCenterCrop,
  shortSideSize,
} from "../clip/preprocess.ts";
import { centerCrop } from "../clip/preprocess.ts";
import { H5File } from "../nn/formats/hdf5.ts";
import { DatasetError, openDataset } from "../train/data/datasets.ts";
import { type ListDuplicate, listImages, type ListProblem } from "../train/data/files.ts";
import { SafetensorsFile, writeSafetensors } from "../nn/formats/safetensors.ts";
import { loadTorchCheckpoint } from "../nn/formats/torch.ts";
import { ZipReader } from "../nn/formats/zip.ts";
import { openTensorSource } from "../clip/load.ts";
import { builtinConfig, type ClipConfig, parseConfig } from "../clip/config.ts";
import { checkClipConfigFits } from "../clip/config_check.ts";
import { fixturePath, pattern, tiffBytes, withTempDir } from "./fixture_util.ts";
import { makePng, mkfifo } from "./hostile_util.ts";
import jpeg from "jpeg-js";

const enc = (s: string) => new TextEncoder().encode(s);

// ---- class 5: texts --------------------------------------------------------------------------

Deno.test("texts: BOM stripped, UTF-16 by BOM, blank lines skipped with their line numbers kept", () => {
  const plain = decodeTextLines(enc("tumor cells\nadipose\n"), "t");
  const bom = decodeTextLines(
    new Uint8Array([0xef, 0xbb, 0xbf, ...enc("tumor cells\nadipose\n")]),
    "t",
  );
  assert.deepEqual(bom.lines, plain.lines, "the BOM is not part of the first report");
  assert.equal(bom.bom, true);
  const utf16 = (le: boolean) => {
    const s = "tumour\r\n\r\nstroma é\r\n";
    const out = new Uint8Array(2 + 2 * s.length);
    out.set(le ? [0xff, 0xfe] : [0xfe, 0xff]);
    const dv = new DataView(out.buffer);
    for (let i = 0; i < s.length; i++) dv.setUint16(2 + 2 * i, s.charCodeAt(i), le);
    return out;
  };
  for (const le of [true, false]) {
    const r = decodeTextLines(utf16(le), "t");
    assert.deepEqual(r.lines, ["tumour", "stroma é"]);
    assert.deepEqual(r.lineNumbers, [1, 3]);
    assert.equal(r.encoding, le ? "utf-16le" : "utf-16be");
  }
  const blanks = decodeTextLines(enc("\n  \na\r\n\t\nb\rc\n\n"), "t");
  assert.deepEqual(blanks.lines, ["a", "b", "c"]);
  assert.deepEqual(
    blanks.lineNumbers,
    [3, 5, 6],
    "original 1-based line numbers (\\r ends a line)",
  );
  assert.equal(blanks.skippedBlank, 4);
});

Deno.test("texts: invalid UTF-8, BOM-less UTF-16, empty and all-blank corpora are refused by line", async () => {
  const bad: [Uint8Array, RegExp][] = [
    [
      new Uint8Array([...enc("ok\nfine\nbad "), 0xff, ...enc("\n")]),
      /--texts r\.txt: line 3 is not valid UTF-8 \(byte 0xff at offset 12\)/,
    ],
    [new Uint8Array([...enc("ok\n"), 0xc3]), /line 2 is not valid UTF-8/], // truncated sequence
    [new Uint8Array([...enc("a\n"), 0xed, 0xa0, 0x80]), /line 2 is not valid UTF-8/], // surrogate
    [new Uint8Array([...enc("a\n"), 0xc0, 0xaf]), /line 2 is not valid UTF-8/], // overlong
    [
      new Uint8Array([0x61, 0, 0x0a, 0, 0x62, 0]),
      /line 1 holds a NUL byte .*UTF-16 text without a byte-order mark/,
    ],
    [new Uint8Array([0xff, 0xfe, 0x61]), /UTF-16LE byte-order mark but is not valid UTF-16LE/],
    [new Uint8Array(0), /no text lines \(the file is empty\)/],
    [enc("\n \r\n\t\n"), /no text lines \(3 blank line\(s\)\)/],
  ];
  for (const [bytes, re] of bad) assert.throws(() => decodeTextLines(bytes, "--texts r.txt"), re);
  await withTempDir("clipit-hostile-in-", async (dir) => {
    await mkfifo(`${dir}/fifo.txt`);
    await assert.rejects(
      () => readTextLines(`${dir}/fifo.txt`, { label: "--texts" }),
      /--texts .*fifo\.txt: is a FIFO/,
    );
    await Deno.writeFile(`${dir}/r.txt`, new Uint8Array([...enc("x\n"), 0xfe]));
    await assert.rejects(
      () => readTextLines(`${dir}/r.txt`, { label: "--texts" }),
      /--texts .*r\.txt: line 2 is not valid UTF-8/,
    );
  });
});

// ---- classes 3, 6, 7: images -----------------------------------------------------------------

/** An 8-bit gray uncompressed TIFF whose first IFD comes after the pixels (as libtiff writes). */
function tiffIfdAtEnd(width: number, height: number, bps: number): Uint8Array {
  const pixels = new Uint8Array(width * height * (bps / 8)).fill(7);
  const entries: [number, number, number][] = [
    [256, 4, width],
    [257, 4, height],
    [258, 3, bps],
    [259, 3, 1],
    [262, 3, 1],
    [273, 4, 8],
    [277, 3, 1],
    [278, 4, height],
    [279, 4, pixels.length],
  ];
  const ifdAt = 8 + pixels.length + (pixels.length % 2);
  const out = new Uint8Array(ifdAt + 2 + 12 * entries.length + 4);
  const v = new DataView(out.buffer);
  out.set([0x49, 0x49, 42, 0]);
  v.setUint32(4, ifdAt, true);
  out.set(pixels, 8);
  v.setUint16(ifdAt, entries.length, true);
  entries.forEach(([tag, type, value], i) => {
    const p = ifdAt + 2 + 12 * i;
    v.setUint16(p, tag, true);
    v.setUint16(p + 2, type, true);
    v.setUint32(p + 4, 1, true);
    if (type === 3) v.setUint16(p + 8, value, true);
    else v.setUint32(p + 8, value, true);
  });
  return out;
}

Deno.test("image probe: sizes from headers only; a PNG claiming 13000x13000 in 100 bytes is truncated", async () => {
  await withTempDir("clipit-hostile-in-", async (dir) => {
    const rgb = pattern(20, 10, 1);
    const files: [string, Uint8Array, number, number][] = [
      ["a.png", makePng(40, 30), 40, 30],
      ["b.tif", tiffBytes(33, 17, 2), 33, 17],
      ["c.tif", tiffIfdAtEnd(300, 300, 8), 300, 300], // IFD at byte 90,008: read by seeking
      [
        "d.jpg",
        new Uint8Array(jpeg.encode({ width: 20, height: 10, data: rgbaOf(rgb) }, 90).data),
        20,
        10,
      ],
    ];
    for (const [name, bytes, w, h] of files) {
      await Deno.writeFile(`${dir}/${name}`, bytes);
      const head = await probeImage(`${dir}/${name}`);
      assert.deepEqual([head.width, head.height], [w, h], name);
      assert.equal(head.note, undefined, name);
      const img = await readImage(`${dir}/${name}`);
      assert.deepEqual([img.width, img.height], [w, h], `${name} decodes to the probed size`);
    }
    // 16-bit grayscale: decoded as PIL does (clipped), and noted.
    await Deno.writeFile(`${dir}/g16.png`, makePng(8, 8, { gray16: true }));
    assert.equal((await probeImage(`${dir}/g16.png`)).note, GRAY16_NOTE);
    await Deno.writeFile(`${dir}/g16.tif`, tiffIfdAtEnd(4, 4, 16));
    assert.equal((await probeImage(`${dir}/g16.tif`)).note, GRAY16_NOTE);
    // A PNG whose IHDR claims 13000x13000 but whose file has 100 bytes.
    const liar = new Uint8Array(100);
    liar.set(makePng(2, 2).subarray(0, 79));
    new DataView(liar.buffer).setUint32(16, 13000);
    new DataView(liar.buffer).setUint32(20, 13000);
    liar.set(crcOf(liar.subarray(12, 29)), 29);
    await Deno.writeFile(`${dir}/liar.png`, liar);
    const truncated =
      /truncated PNG: the header says 13000x13000 .* but the file has only 100 bytes/;
    await assert.rejects(() => probeImage(`${dir}/liar.png`), truncated);
    await assert.rejects(() => readImage(`${dir}/liar.png`), truncated);
    assert.throws(() => decodeImage(liar, "liar.png"), (e: Error) => {
      assert.ok(e instanceof ImageDecodeError);
      assert.doesNotMatch(e.message, /Unsupported filter/);
      return truncated.test(e.message);
    });
    // Not images, and things that are not files: refused without being opened.
    await Deno.writeFile(`${dir}/x.png`, enc("GIF89a not a png"));
    await assert.rejects(
      () => probeImage(`${dir}/x.png`),
      /x\.png: unsupported or unrecognised format/,
    );
    await Deno.writeFile(`${dir}/empty.png`, new Uint8Array(0));
    await assert.rejects(() => probeImage(`${dir}/empty.png`), /empty\.png: the file is empty/);
    await mkfifo(`${dir}/fifo.png`);
    await assert.rejects(
      () => probeImage(`${dir}/fifo.png`),
      /fifo\.png: cannot read the file \(not a regular file/,
    );
    await assert.rejects(
      () => readImage(`${dir}/fifo.png`),
      /fifo\.png: cannot read the file \(not a regular file/,
    );
    await Deno.symlink(`${dir}/gone.png`, `${dir}/broken.png`);
    await assert.rejects(
      () => readImage(`${dir}/broken.png`),
      /broken\.png: cannot read the file \(a broken symbolic link\)/,
    );
  });
});

function rgbaOf(rgb: Uint8Array): Uint8Array {
  const out = new Uint8Array((rgb.length / 3) * 4);
  for (let i = 0, j = 0; i < rgb.length; i += 3, j += 4) {
    out.set([rgb[i], rgb[i + 1], rgb[i + 2], 255], j);
  }
  return out;
}

function crcOf(bytes: Uint8Array): Uint8Array {
  let c = 0xffffffff;
  for (const b of bytes) {
    c ^= b;
    for (let k = 0; k < 8; k++) c = c & 1 ? (c >>> 1) ^ 0xedb88320 : c >>> 1;
  }
  c = (c ^ 0xffffffff) >>> 0;
  return new Uint8Array([c >>> 24, (c >>> 16) & 255, (c >>> 8) & 255, c & 255]);
}

Deno.test("preprocess: any aspect ratio stays bounded; the crop window equals resize-then-crop", () => {
  // 1 x 50000: torchvision's resize would make 224 x 11,200,000 (7.5 GB) before cropping.
  const tall = { width: 1, height: 50000, data: pattern(1, 50000, 3) };
  const t0 = performance.now();
  const out = resizeShortSideCenterCrop(tall, 224);
  assert.deepEqual([out.width, out.height], [224, 224]);
  assert.ok(performance.now() - t0 < 2000, "bounded by the crop, not by the resized image");
  assert.throws(() => resizeShortSideBicubic(tall, 224), /more than the .* pixels allowed/);
  // Bit-exact with resize + centre crop wherever that is affordable: extreme and odd shapes,
  // up- and downscaling, and arbitrary windows of an arbitrary resize.
  for (
    const [w, h, s] of [[3, 500, 32], [700, 5, 24], [37, 91, 16], [224, 224, 224], [50, 20, 20]]
  ) {
    const img = { width: w, height: h, data: pattern(w, h, w + h) };
    const ref = centerCrop(resizeShortSideBicubic(img, s), s);
    assert.deepEqual(resizeShortSideCenterCrop(img, s), ref, `${w}x${h} -> ${s}`);
  }
  const img = { width: 41, height: 29, data: pattern(41, 29, 9) };
  for (const [ow, oh] of [[97, 13], [13, 97], [41, 60], [20, 29]]) {
    const full = resizeBicubic(img, ow, oh);
    const box = {
      left: Math.floor(ow / 3),
      top: Math.floor(oh / 4),
      width: Math.ceil(ow / 2),
      height: Math.ceil(oh / 2),
    };
    assert.deepEqual(
      resizeBicubicWindow(img, ow, oh, box),
      centerCropBox(full, box),
      `${ow}x${oh}`,
    );
  }
  assert.deepEqual(shortSideSize(1, 50000, 224), { width: 224, height: 11200000 });
});

function centerCropBox(
  img: { width: number; height: number; data: Uint8Array },
  b: { left: number; top: number; width: number; height: number },
) {
  const data = new Uint8Array(b.width * b.height * 3);
  for (let y = 0; y < b.height; y++) {
    const from = ((b.top + y) * img.width + b.left) * 3;
    data.set(img.data.subarray(from, from + b.width * 3), y * b.width * 3);
  }
  return { width: b.width, height: b.height, data };
}

// ---- class 3: HDF5 ---------------------------------------------------------------------------

Deno.test("hdf5: a 1.4 KB PCAM file declaring 10^9 patches is refused at open, naming the file", async () => {
  const dir = fixturePath("hostile");
  const t0 = performance.now();
  const f = H5File.open(`${dir}/camelyonpatch_level_2_split_test_y.h5`);
  try {
    assert.throws(
      () => f.dataset("y"),
      /test_y\.h5.*dataset "y" declares shape \[1000000000, 1, 1, 1\] .* the 1400-byte file can hold at most/,
    );
  } finally {
    f.close();
  }
  await assert.rejects(
    () => openDataset("pcam", dir),
    (e: Error) =>
      e instanceof DatasetError && /PCAM test split: .*test_x\.h5.*declares shape/.test(e.message),
  );
  assert.ok(performance.now() - t0 < 2000, "no allocation for the declared size");
});

// ---- class 4: folders ------------------------------------------------------------------------

Deno.test("folders: link cycles are not followed, a file reachable twice counts once", async () => {
  await withTempDir("clipit-hostile-in-", async (dir) => {
    await Deno.mkdir(`${dir}/A/sub`, { recursive: true });
    await Deno.writeFile(`${dir}/A/a.png`, makePng(4, 4));
    await Deno.writeFile(`${dir}/A/sub/b.png`, makePng(4, 4));
    await Deno.symlink("..", `${dir}/A/up`); // the 163-copies case
    await Deno.symlink(".", `${dir}/A/self1`); // the stack overflow case
    await Deno.symlink(".", `${dir}/A/self2`);
    await Deno.symlink("sub", `${dir}/A/again`); // a folder reachable twice
    await Deno.symlink("a.png", `${dir}/A/z-same.png`); // a file reachable twice
    await Deno.symlink("missing.png", `${dir}/A/y-broken.png`);
    const problems: ListProblem[] = [], duplicates: ListDuplicate[] = [];
    const files = await listImages(`${dir}/A`, { problems, duplicates });
    assert.deepEqual(files.map((f) => f.slice(dir.length + 3)), [
      "a.png",
      "again/b.png",
      "y-broken.png",
    ]);
    assert.deepEqual(problems.map((p) => p.path.slice(dir.length + 3)).sort(), [
      "self1",
      "self2",
      "up",
    ]);
    assert.match(
      problems[0].reason,
      /a link back to the enclosing folder .* \(a cycle\): not followed/,
    );
    assert.deepEqual(duplicates.map((d) => d.path.slice(dir.length + 3)), [
      "sub/b.png",
      "z-same.png",
    ]);
    // The broken link is listed so that reading it reports it, as for every command.
    await assert.rejects(() => readImage(files[2]), /a broken symbolic link/);
  });
});

Deno.test("folders: one file in two splits, or with two labels, is refused", async () => {
  await withTempDir("clipit-hostile-in-", async (dir) => {
    for (const s of ["train", "val"]) {
      for (const c of ["ADI", "TUM"]) await Deno.mkdir(`${dir}/${s}/${c}`, { recursive: true });
    }
    for (const [i, c] of ["ADI", "TUM", "ADI", "TUM"].entries()) {
      await Deno.writeFile(`${dir}/${i < 2 ? "train" : "val"}/${c}/${i}.png`, makePng(4, 4 + i));
    }
    const ok = await openDataset("folder", dir);
    assert.deepEqual(ok.splits.map((s) => s.labels.length), [2, 2]);
    await Deno.symlink(`${dir}/train/ADI/0.png`, `${dir}/val/ADI/leak.png`);
    await assert.rejects(
      () => openDataset("folder", dir),
      /val\/ADI\/leak\.png and .*train\/ADI\/0\.png are the same file, in the val and the train split/,
    );
    await Deno.remove(`${dir}/val/ADI/leak.png`);
    await Deno.link(`${dir}/train/TUM/1.png`, `${dir}/train/ADI/1-hard.png`);
    await Deno.symlink(`${dir}/train/TUM/1.png`, `${dir}/train/ADI/1-soft.png`);
    await assert.rejects(
      () => openDataset("folder", dir),
      /\(class TUM\) and .*1-soft\.png \(class ADI\) are the same file/,
    );
    await Deno.remove(`${dir}/train/ADI/1-soft.png`);
    // A hard link is another file as far as paths go; identical content under two labels is
    // the user's data, not a link mistake, and is left alone.
    assert.equal((await openDataset("folder", dir)).splits[0].labels.length, 3);
    // A folder link back to the root inside a class folder: not followed, noted.
    await Deno.symlink("../..", `${dir}/train/TUM/up`);
    const noted = await openDataset("folder", dir);
    assert.ok(
      noted.notes.some((n) => /folder link\(s\) not followed/.test(n)),
      noted.notes.join("\n"),
    );
    await assert.rejects(
      () => openDataset("crc", `${dir}/nothing-here`),
      /nothing-here does not exist/,
    );
  });
});

// ---- classes 6, 7: checkpoints ---------------------------------------------------------------

Deno.test("checkpoints: NaN named by tensor; duplicate keys, bad CRCs and foreign formats named", async () => {
  await withTempDir("clipit-hostile-in-", async (dir) => {
    const w = new Float32Array([1, 2, NaN, Infinity, 5]);
    await writeSafetensors(`${dir}/nan.safetensors`, {
      "visual.ok": { dtype: "F32", shape: [2], data: new Float32Array([1, 2]) },
      "visual.bad": { dtype: "F32", shape: [5], data: w },
    });
    const src = await openTensorSource(`${dir}/nan.safetensors`);
    try {
      assert.deepEqual([...await src.readFloat32("visual.ok")], [1, 2]);
      await assert.rejects(
        () => src.readFloat32("visual.bad"),
        /nan\.safetensors: tensor "visual\.bad" holds 1 NaN and 1 infinite value\(s\) of 5 \(the first at index 2\)/,
      );
    } finally {
      src.close();
    }
    // Duplicate keys in the header: JSON.parse would keep the last silently.
    const header = '{"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]},' +
      '"a":{"dtype":"F32","shape":[1],"data_offsets":[0,4]}}';
    const bytes = new Uint8Array(8 + header.length + 4);
    new DataView(bytes.buffer).setBigUint64(0, BigInt(header.length), true);
    bytes.set(enc(header), 8);
    await Deno.writeFile(`${dir}/dup.safetensors`, bytes);
    await assert.rejects(
      () => SafetensorsFile.open(`${dir}/dup.safetensors`),
      /dup\.safetensors: the header names "a" twice/,
    );
    // Messages that say what is wrong, not "neither a torch.save zip nor a safetensors file".
    const good = await Deno.readFile(`${dir}/nan.safetensors`);
    await Deno.writeFile(`${dir}/cut.safetensors`, good.slice(0, good.length - 7));
    await Deno.writeFile(`${dir}/noise.bin`, enc("this is no checkpoint at all"));
    await Deno.writeFile(`${dir}/model.gz`, new Uint8Array([0x1f, 0x8b, 8, 0, 0, 0, 0, 0, 0, 3]));
    const cases: [string, RegExp][] = [
      [
        `${dir}/cut.safetensors`,
        /cut\.safetensors: a corrupt or truncated safetensors file: tensor "visual\.ok": data_offsets \[20, 28\] out of range/,
      ],
      [
        `${dir}/noise.bin`,
        /noise\.bin: not a checkpoint this tool reads: no torch\.save zip signature/,
      ],
      [`${dir}/model.gz`, /model\.gz: a gzip file \(decompress it first\)/],
      [
        fixturePath("ckpt_legacy.pt"),
        /ckpt_legacy\.pt: legacy \(pre-1\.6, non-zip\) torch\.save format is not supported/,
      ],
    ];
    for (const [path, re] of cases) {
      await assert.rejects(() => openTensorSource(path), (e: Error) => {
        assert.doesNotMatch(e.message, /neither a torch\.save zip/);
        return re.test(e.message);
      });
    }
    // A flipped byte inside a stored tensor of a torch zip: the entry's CRC-32 catches it.
    const zipBytes = await Deno.readFile(fixturePath("ckpt_plain.bin"));
    const zip = await ZipReader.open(fixturePath("ckpt_plain.bin"));
    const entry = [...zip.entries.values()].find((e) =>
      /\/data\/\d+$/.test(e.name) && e.uncompressedSize > 8
    )!;
    zip.close();
    const lh = new DataView(zipBytes.buffer, entry.localHeaderOffset);
    const start = entry.localHeaderOffset + 30 + lh.getUint16(26, true) + lh.getUint16(28, true);
    zipBytes[start + 4] ^= 0x40;
    await Deno.writeFile(`${dir}/flipped.bin`, zipBytes);
    await assert.rejects(
      () => loadTorchCheckpoint(`${dir}/flipped.bin`),
      new RegExp(`flipped\\.bin: zip entry "${entry.name}" fails its CRC-32 check`),
    );
  });
});

// ---- classes 3, 6: configs -------------------------------------------------------------------

Deno.test("configs: degenerate values refused; 10^9 layers and huge widths refused by field before allocation", () => {
  const oc = (vision: Record<string, unknown>, text: Record<string, unknown> = {}) => ({
    embed_dim: 64,
    vision_cfg: { width: 64, layers: 2, patch_size: 16, image_size: 64, ...vision },
    text_cfg: { width: 64, layers: 2, heads: 2, ...text },
  });
  assert.throws(
    () => parseConfig(oc({}, { context_length: 1 }), "c.json"),
    /c\.json: text\.contextLength \(context_length\) 1 leaves no room/,
  );
  assert.throws(
    () => parseConfig(oc({}, { context_length: 2 }), "c.json"),
    /every text would embed the same/,
  );
  assert.throws(() => parseConfig({ ...oc({}), embed_dim: 1 }, "c.json"), /c\.json: embedDim 1/);
  assert.throws(
    () => parseConfig(oc({ layers: 1e300 }), "c.json"),
    /vision\.layers must be a positive integer/,
  );
  const GB = 1e9;
  const limits = {
    maxBufferSize: 2 * GB,
    maxStorageBufferBindingSize: 0.134 * GB,
    totalBytes: 16 * GB,
  };
  const fits = (c: ClipConfig, towers = {}) => checkClipConfigFits(c, limits, 32, towers);
  const t0 = performance.now();
  assert.throws(
    () => fits(parseConfig(oc({ layers: 1e9 }), "deep.json")),
    /deep\.json: the model needs about .* \(mostly vision\.layers: vision\.layers 1000000000 blocks/,
  );
  const wide = parseConfig(oc({ width: 6_400_000, heads: 50_000 }), "wide.json");
  assert.throws(() => fits(wide), /wide\.json: vision\.mlpWidth makes the image MLP weight/);
  assert.throws(
    () => checkClipConfigFits(wide, { totalBytes: 16 * GB }),
    /wide\.json: the model needs about 3\.93 PB \(mostly vision\.width: .* vision\.width 6400000/,
  );
  assert.throws(
    () => fits(parseConfig(oc({}, { width: 2048, heads: 16, vocab_size: 900_000 }), "v.json")),
    /v\.json: text\.vocabSize makes the token embedding \[900000, 2048\] 7\.37 GB, more than the 134 MB/,
  );
  assert.throws(
    () => fits(parseConfig(oc({ image_size: 4096, patch_size: 8 }), "big.json")),
    /big\.json: vision\.imageSize makes the image MLP activations of a batch of 32 \[32, 262145, 256\]/,
  );
  assert.ok(performance.now() - t0 < 100, "an estimate, nothing allocated");
  // Real models fit a real adapter; a tower that never runs needs no binding.
  fits(builtinConfig("ViT-B-16"));
  assert.throws(() => fits(builtinConfig("ViT-L-14")), /text\.vocabSize makes the token embedding/);
  checkClipConfigFits(builtinConfig("ViT-L-14"), limits, 8, { text: false });
  // ... and a batch whose activations exceed one binding is named as such.
  assert.throws(
    () => fits(builtinConfig("ViT-L-14"), { text: false }),
    /ViT-L-14: vision\.imageSize makes the image MLP activations of a batch of 32 \[32, 257, 4096\]/,
  );
});
