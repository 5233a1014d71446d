// GGUF container reader (model/gguf.ts) against the test writer (tests/gguf_writer.ts) and against
// hand-made bytes: round trip of every metadata type, tensor placement and reads, a large vocab
// header read incrementally, and every kind of broken file.

import assert from "node:assert/strict";
import {
  GgufError,
  type GgufFile,
  GgufReader,
  metaArray,
  metaArrayOpt,
  metaBool,
  metaNumber,
  metaNumberArray,
  metaNumberOpt,
  metaString,
  metaStringArray,
  metaStringOpt,
  readGguf,
  readGgufTensor,
} from "../model/gguf.ts";
import { ModelFormatError } from "../model/types.ts";
import { encodeGguf, type GgufWriteSpec, type GgufWriteTensor, writeGguf } from "./gguf_writer.ts";

const F32 = 0, F16 = 1, Q4_0 = 2, Q8_0 = 8;

async function withTempDir(fn: (dir: string) => Promise<void>) {
  const dir = await Deno.makeTempDir({ prefix: "zigzag_gguf_" });
  try {
    await fn(dir);
  } finally {
    await Deno.remove(dir, { recursive: true });
  }
}

/** Asserts that `p` rejects with a GgufError whose message names the file and every needle. */
async function rejectsNaming(p: Promise<unknown>, path: string, ...needles: string[]) {
  let err: unknown = null;
  try {
    await p;
  } catch (e) {
    err = e;
  }
  assert.ok(err instanceof GgufError, `expected GgufError, got ${err}`);
  assert.ok(err instanceof ModelFormatError);
  for (const n of [path, ...needles]) {
    assert.ok(err.message.includes(n), `message ${JSON.stringify(err.message)} lacks ${n}`);
  }
  return err;
}

/** `n` bytes 0, 1, 2, ... (mod 251) offset by `seed`, so every tensor's bytes differ. */
function pattern(n: number, seed: number): Uint8Array {
  const b = new Uint8Array(n);
  for (let i = 0; i < n; i++) b[i] = (i * 7 + seed) % 251;
  return b;
}

function f32Bytes(xs: number[]): Uint8Array {
  return new Uint8Array(new Float32Array(xs).buffer);
}

const BIG_U64 = 2n ** 60n + 1n;
const BIG_I64 = -(2n ** 60n) - 3n;

const ROUND_TRIP: GgufWriteSpec = {
  alignment: 64,
  metadata: [
    ["general.architecture", { type: "string", value: "llama" }],
    ["t.u8", { type: "u8", value: 255 }],
    ["t.i8", { type: "i8", value: -128 }],
    ["t.u16", { type: "u16", value: 65535 }],
    ["t.i16", { type: "i16", value: -32768 }],
    ["t.u32", { type: "u32", value: 4294967295 }],
    ["t.i32", { type: "i32", value: -2147483648 }],
    ["t.f32", { type: "f32", value: 3.14159 }],
    ["t.bool.true", { type: "bool", value: true }],
    ["t.bool.false", { type: "bool", value: false }],
    ["t.string.unicode", { type: "string", value: "héllo ▁wörld 日本語 🦙" }],
    ["t.string.empty", { type: "string", value: "" }],
    ["t.u64.small", { type: "u64", value: 2 ** 53 - 1 }],
    ["t.u64.big", { type: "u64", value: BIG_U64 }],
    ["t.i64.small", { type: "i64", value: -(2 ** 53 - 1) }],
    ["t.i64.big", { type: "i64", value: BIG_I64 }],
    ["t.f64", { type: "f64", value: Math.PI }],
    ["t.arr.string", { type: "array", elem: "string", value: ["<s>", "▁the", "", "🦙", "a b"] }],
    ["t.arr.f32", { type: "array", elem: "f32", value: [0.5, -1.25, 0.1] }],
    ["t.arr.i32", { type: "array", elem: "i32", value: [1, -2, 3] }],
    ["t.arr.u8", { type: "array", elem: "u8", value: [0, 1, 255] }],
    ["t.arr.u64", { type: "array", elem: "u64", value: [1, BIG_U64] }],
    ["t.arr.bool", { type: "array", elem: "bool", value: [true, false] }],
    ["t.arr.empty", { type: "array", elem: "string", value: [] }],
    [
      "t.arr.nested",
      {
        type: "array",
        elem: "array",
        value: [{ elem: "u16", value: [1, 2] }, { elem: "string", value: ["x"] }],
      },
    ],
    ["ключ.ünïcode", { type: "u32", value: 7 }],
  ],
  tensors: [
    { name: "tok_embd.weight", dims: [3, 2], type: F32, data: f32Bytes([1, 2, 3, 4, 5, 6]) },
    { name: "norm.weight", dims: [5], type: F16, data: pattern(10, 1) },
    // Q8_0: 64 x 2 elements = 4 blocks of (f16 scale + 32 int8).
    { name: "blk.0.attn_q.weight", dims: [64, 2], type: Q8_0, data: pattern(4 * 34, 2) },
  ],
};

/** What readGguf must return for ROUND_TRIP's metadata, written out by hand. */
const EXPECTED_METADATA: [string, unknown, string][] = [
  ["general.alignment", 64, "u32"],
  ["general.architecture", "llama", "string"],
  ["t.u8", 255, "u8"],
  ["t.i8", -128, "i8"],
  ["t.u16", 65535, "u16"],
  ["t.i16", -32768, "i16"],
  ["t.u32", 4294967295, "u32"],
  ["t.i32", -2147483648, "i32"],
  ["t.f32", Math.fround(3.14159), "f32"],
  ["t.bool.true", true, "bool"],
  ["t.bool.false", false, "bool"],
  ["t.string.unicode", "héllo ▁wörld 日本語 🦙", "string"],
  ["t.string.empty", "", "string"],
  ["t.u64.small", 2 ** 53 - 1, "u64"],
  ["t.u64.big", BIG_U64, "u64"],
  ["t.i64.small", -(2 ** 53 - 1), "i64"],
  ["t.i64.big", BIG_I64, "i64"],
  ["t.f64", Math.PI, "f64"],
  ["t.arr.string", ["<s>", "▁the", "", "🦙", "a b"], "array<string>"],
  ["t.arr.f32", [0.5, -1.25, Math.fround(0.1)], "array<f32>"],
  ["t.arr.i32", [1, -2, 3], "array<i32>"],
  ["t.arr.u8", [0, 1, 255], "array<u8>"],
  ["t.arr.u64", [1, BIG_U64], "array<u64>"],
  ["t.arr.bool", [true, false], "array<bool>"],
  ["t.arr.empty", [], "array<string>"],
  ["t.arr.nested", [[1, 2], ["x"]], "array<array>"],
  ["ключ.ünïcode", 7, "u32"],
];

Deno.test("GGUF round trip: metadata of every type, tensor placement and reads", async (t) => {
  await withTempDir(async (dir) => {
    const path = `${dir}/rt.gguf`;
    const layout = await writeGguf(path, ROUND_TRIP);
    const f = await readGguf(path);

    await t.step("header fields", () => {
      assert.equal(f.version, 3);
      assert.equal(f.path, path);
      assert.equal(f.size, layout.bytes.length);
      assert.equal(f.alignment, 64);
      assert.equal(f.dataOffset, layout.dataOffset);
      assert.equal(f.dataOffset % 64, 0);
      assert.ok(f.dataOffset >= layout.infosEnd && f.dataOffset - layout.infosEnd < 64);
    });

    await t.step("metadata values and types, in file order", () => {
      assert.deepEqual([...f.metadata.keys()], EXPECTED_METADATA.map(([k]) => k));
      for (const [key, value, type] of EXPECTED_METADATA) {
        assert.deepEqual(f.metadata.get(key), value, key);
        assert.equal(f.metadataTypes.get(key), type, key);
      }
      assert.equal(typeof f.metadata.get("t.u64.small"), "number");
      assert.equal(typeof f.metadata.get("t.u64.big"), "bigint");
    });

    await t.step("tensor infos match where the writer put the data", () => {
      const want = ROUND_TRIP.tensors!.map((w: GgufWriteTensor, i) => ({
        name: w.name,
        dims: w.dims,
        type: w.type,
        offset: layout.tensorOffsets[i],
        bytes: w.data.length,
      }));
      assert.deepEqual(
        f.tensors.map(({ name, dims, type, offset, bytes }) => ({
          name,
          dims,
          type,
          offset,
          bytes,
        })),
        want,
      );
      assert.deepEqual(f.tensors.map((x) => x.typeName), ["F32", "F16", "Q8_0"]);
      assert.deepEqual(f.tensors.map((x) => x.elements), [6, 5, 128]);
      for (const x of f.tensors) {
        assert.equal(x.offset % 64, 0, x.name);
        assert.equal(f.tensorsByName.get(x.name), x);
      }
    });

    await t.step("GgufReader reads exact bytes, sub-ranges and chunks", async () => {
      const r = await GgufReader.open(path);
      try {
        assert.deepEqual(r.file.tensors, f.tensors);
        for (const w of ROUND_TRIP.tensors!) {
          assert.deepEqual(await r.read(r.tensor(w.name)), w.data, w.name);
        }
        const q = ROUND_TRIP.tensors![2];
        assert.deepEqual(await r.read("blk.0.attn_q.weight", 34, 40), q.data.subarray(34, 74));
        assert.deepEqual(await r.read(q.name, 136, 0), new Uint8Array(0));
        // Concurrent reads are serialized and each gets its own bytes.
        const all = await Promise.all(f.tensors.map((x) => r.read(x)));
        assert.deepEqual(all, ROUND_TRIP.tensors!.map((w) => w.data));
        const parts: Uint8Array[] = [];
        for await (const c of r.chunks(q.name, 50)) parts.push(c);
        assert.deepEqual(parts.map((c) => c.length), [50, 50, 36]);
        assert.deepEqual(new Uint8Array(parts.flatMap((c) => [...c])), q.data);
        const dest = new Uint8Array(4);
        assert.equal(await r.readInto("tok_embd.weight", 8, dest), dest);
        assert.deepEqual(new Float32Array(dest.buffer), new Float32Array([3]));
        assert.deepEqual(
          await readGgufTensor(path, "norm.weight", 2, 3),
          pattern(10, 1).slice(2, 5),
        );
      } finally {
        r.close();
      }
    });

    await t.step(
      "reader errors: unknown tensor, range outside the tensor, read after close",
      async () => {
        const r = await GgufReader.open(path);
        assert.throws(
          () => r.tensor("nope"),
          (e: Error) =>
            e instanceof GgufError && e.message.includes(path) && e.message.includes('"nope"'),
        );
        assert.throws(() => r.read("norm.weight", 5, 6), /norm\.weight.*\[5, 11\).*10 bytes/);
        assert.throws(() => r.read("norm.weight", -1, 2), GgufError);
        r.close();
        await rejectsNaming(r.read("norm.weight"), path, "after close");
      },
    );
  });
});

Deno.test("GGUF header bytes checked by hand", async (t) => {
  // One u32 KV "a" = 7 and one F32 tensor "t" of 2 elements, default alignment 32.
  const le = (v: number, n: number) =>
    Array.from({ length: n }, (_, i) => Number((BigInt(v) >> BigInt(8 * i)) & 0xffn));
  const hand = new Uint8Array([
    ...[0x47, 0x47, 0x55, 0x46], // 0: "GGUF"
    ...le(3, 4), // 4: version 3
    ...le(1, 8), // 8: tensor count
    ...le(1, 8), // 16: metadata count
    ...le(1, 8), // 24: key length
    0x61, // 32: "a"
    ...le(4, 4), // 33: value type u32
    ...le(7, 4), // 37: value
    ...le(1, 8), // 41: tensor name length
    0x74, // 49: "t"
    ...le(1, 4), // 50: n_dims
    ...le(2, 8), // 54: ne[0]
    ...le(0, 4), // 62: type F32
    ...le(0, 8), // 66: offset; infos end at 74, data at 96
    ...new Array(96 - 74).fill(0),
    ...f32Bytes([1.5, -2]),
  ]);
  assert.equal(hand.length, 104);
  const layout = encodeGguf({
    metadata: [["a", { type: "u32", value: 7 }]],
    tensors: [{ name: "t", dims: [2], type: F32, data: f32Bytes([1.5, -2]) }],
  });

  await t.step("the writer produces exactly these bytes", () => {
    assert.equal(layout.infosEnd, 74);
    assert.equal(layout.dataOffset, 96);
    assert.deepEqual(layout.bytes, hand);
    // Spot checks straight from the buffer.
    const dv = new DataView(layout.bytes.buffer);
    assert.equal(new TextDecoder().decode(layout.bytes.subarray(0, 4)), "GGUF");
    assert.equal(dv.getUint32(0, true), 0x46554747);
    assert.equal(dv.getUint32(4, true), 3);
    assert.equal(dv.getBigUint64(8, true), 1n);
    assert.equal(dv.getBigUint64(16, true), 1n);
  });

  await t.step("the reader parses the hand-made bytes", async () => {
    await withTempDir(async (dir) => {
      const path = `${dir}/hand.gguf`;
      await Deno.writeFile(path, hand);
      const f = await readGguf(path);
      assert.equal(f.version, 3);
      assert.deepEqual([...f.metadata], [["a", 7]]);
      assert.equal(f.alignment, 32);
      assert.equal(f.dataOffset, 96);
      assert.deepEqual(f.tensors, [
        { name: "t", dims: [2], type: 0, typeName: "F32", offset: 96, bytes: 8, elements: 2 },
      ]);
      assert.deepEqual(await readGgufTensor(path, "t"), f32Bytes([1.5, -2]));

      // Version 2 has the same layout.
      const v2 = hand.slice();
      v2[4] = 2;
      await Deno.writeFile(path, v2);
      assert.equal((await readGguf(path)).version, 2);
    });
  });
});

Deno.test("GGUF: a 128k-token vocabulary header parses quickly and incrementally", async () => {
  await withTempDir(async (dir) => {
    const n = 128_000;
    const tokens = Array.from({ length: n }, (_, i) => (i % 3 === 0 ? `▁tok${i}` : `t${i}`));
    const scores = Array.from({ length: n }, (_, i) => -i / 4);
    const types = Array.from({ length: n }, (_, i) => (i < 3 ? 3 : 1));
    const merges = Array.from({ length: n }, (_, i) => `a${i} b${i}`);
    const path = `${dir}/vocab.gguf`;
    await writeGguf(path, {
      metadata: [
        ["tokenizer.ggml.tokens", { type: "array", elem: "string", value: tokens }],
        ["tokenizer.ggml.scores", { type: "array", elem: "f32", value: scores }],
        ["tokenizer.ggml.token_type", { type: "array", elem: "i32", value: types }],
        ["tokenizer.ggml.merges", { type: "array", elem: "string", value: merges }],
        ["tokenizer.ggml.bos_token_id", { type: "u32", value: 1 }],
      ],
      tensors: [{ name: "w", dims: [32], type: Q8_0, data: pattern(34, 9) }],
    });
    assert.ok((await Deno.stat(path)).size > 2 * 1024 * 1024); // several buffer growths
    const t0 = performance.now();
    const f = await readGguf(path);
    const ms = performance.now() - t0;
    assert.ok(ms < 3000, `parse took ${ms.toFixed(0)} ms`);
    const got = metaStringArray(f, "tokenizer.ggml.tokens");
    assert.equal(got.length, n);
    assert.equal(got[0], "▁tok0");
    assert.equal(got[n - 1], tokens[n - 1]);
    assert.deepEqual(got, tokens);
    assert.deepEqual(metaNumberArray(f, "tokenizer.ggml.scores"), scores);
    assert.deepEqual(metaNumberArray(f, "tokenizer.ggml.token_type"), types);
    assert.deepEqual(metaStringArray(f, "tokenizer.ggml.merges"), merges);
    assert.equal(metaNumber(f, "tokenizer.ggml.bos_token_id"), 1);
    assert.deepEqual(await readGgufTensor(path, "w"), pattern(34, 9));
  });
});

Deno.test("GGUF: a 4 GiB tensor (sparse file): header only is read, offsets past 2^32", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/big.gguf`;
    const big = 2 ** 30 + 8; // F32 elements: 4 GiB + 32 bytes
    const l = await writeGguf(path, {
      tensors: [
        { name: "small", dims: [4], type: F32, data: f32Bytes([1, 2, 3, 4]) },
        { name: "big", dims: [8, big / 8], type: F32, data: new Uint8Array(0) },
      ],
    });
    // Extends the file with a hole (no disk blocks on the usual file systems), then puts a marker
    // just past 2^32 bytes into "big".
    await Deno.truncate(path, l.tensorOffsets[1] + big * 4);
    const fh = await Deno.open(path, { write: true });
    await fh.seek(l.tensorOffsets[1] + 2 ** 32, Deno.SeekMode.Start);
    await fh.write(new Uint8Array([9, 8, 7]));
    fh.close();

    const t0 = performance.now();
    const r = await GgufReader.open(path);
    try {
      assert.ok(performance.now() - t0 < 2000);
      const info = r.tensor("big");
      assert.equal(info.bytes, big * 4);
      assert.equal(info.elements, big);
      assert.equal(info.offset, l.tensorOffsets[1]);
      assert.deepEqual(await r.read(info, 2 ** 32 - 1, 5), new Uint8Array([0, 9, 8, 7, 0]));
      assert.deepEqual(await r.read("small"), f32Bytes([1, 2, 3, 4]));
      assert.throws(() => r.read(info, big * 4 - 1, 2), /outside its 4294967328 bytes/);
    } finally {
      r.close();
    }
  });
});

Deno.test("GGUF: invalid UTF-8 in string arrays decodes per string, never across strings", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/utf8.gguf`;
    const l = encodeGguf({
      metadata: [["toks", {
        type: "array",
        elem: "string",
        value: ["xA", "Ay", "ok", "é🦙", "zA"],
      }]],
    });
    const b = l.bytes.slice();
    const at = (s: string, from = 0) =>
      b.findIndex((_, i) => i >= from && s.split("").every((c, j) => b[i + j] === c.charCodeAt(0)));
    // "x" 0xC3 | 0xA9 "y": each string is invalid alone, although together they spell "xéy".
    b[at("xA") + 1] = 0xc3;
    b[at("Ay")] = 0xa9;
    b[at("zA") + 1] = 0xff;
    await Deno.writeFile(path, b);
    const f = await readGguf(path);
    assert.deepEqual(f.metadata.get("toks"), ["x\ufffd", "\ufffdy", "ok", "é🦙", "z\ufffd"]);
  });
});

Deno.test("GGUF: broken files throw GgufError naming the file and the problem", async (t) => {
  await withTempDir(async (dir) => {
    const path = `${dir}/bad.gguf`;
    const base = encodeGguf({
      metadata: [
        ["general.architecture", { type: "string", value: "llama" }],
        ["tokenizer.ggml.tokens", { type: "array", elem: "string", value: ["a", "bb", "ccc"] }],
        ["llama.block_count", { type: "u32", value: 2 }],
      ],
      tensors: [
        { name: "a.weight", dims: [4], type: F32, data: pattern(16, 3) },
        { name: "b.weight", dims: [32, 2], type: Q4_0, data: pattern(36, 4) },
      ],
    });
    const write = (b: Uint8Array) => Deno.writeFile(path, b);
    const patched = (at: number, bytes: number[]) => {
      const b = base.bytes.slice();
      b.set(bytes, at);
      return b;
    };
    const file = (spec: GgufWriteSpec) => write(encodeGguf(spec).bytes);

    await t.step("missing file", async () => {
      await rejectsNaming(readGguf(`${dir}/nope.gguf`), `${dir}/nope.gguf`, "not found");
      await rejectsNaming(GgufReader.open(`${dir}/nope.gguf`), "nope.gguf", "not found");
    });

    await t.step("bad magic", async () => {
      await write(patched(0, [0x47, 0x47, 0x4d, 0x4c])); // "GGML"
      await rejectsNaming(readGguf(path), path, "not a GGUF file", "47 47 4d 4c");
      await write(new Uint8Array([0x47, 0x47]));
      await rejectsNaming(readGguf(path), path, "not a GGUF file");
      await write(new Uint8Array(0));
      await rejectsNaming(readGguf(path), path, "not a GGUF file");
    });

    await t.step("unsupported versions", async () => {
      await write(patched(4, [1, 0, 0, 0]));
      await rejectsNaming(readGguf(path), path, "unsupported GGUF version 1", "2 and 3");
      await write(patched(4, [4, 0, 0, 0]));
      await rejectsNaming(readGguf(path), path, "unsupported GGUF version 4");
      await write(patched(4, [0, 0, 0, 3]));
      await rejectsNaming(readGguf(path), path, "big-endian");
    });

    await t.step("truncated in the middle of the metadata", async () => {
      // Cut inside the token array (the 2nd KV): 8+4+8+"general.architecture"... find "bb".
      const at = base.bytes.findIndex((_, i) =>
        base.bytes[i] === 0x62 && base.bytes[i + 1] === 0x62
      );
      await write(base.bytes.slice(0, at + 1));
      await rejectsNaming(readGguf(path), path, "truncated header", "tokenizer.ggml.tokens");
    });

    await t.step("every cut inside the header is an error, never a hang or a crash", async () => {
      for (let cut = 0; cut < base.infosEnd; cut++) {
        await write(base.bytes.slice(0, cut));
        const e = await rejectsNaming(readGguf(path), path);
        assert.match(e.message, cut < 4 ? /not a GGUF file/ : /truncated header/, `cut ${cut}`);
      }
    });

    await t.step("absurd counts are refused before allocating", async () => {
      await write(patched(16, [0, 0, 0, 0, 0, 0, 1, 0])); // 2^48 metadata entries
      await rejectsNaming(readGguf(path), path, "truncated header", "metadata entries");
      await write(patched(16, [0, 0, 0, 0, 0, 0, 0, 1])); // 2^56: not a safe integer
      await rejectsNaming(readGguf(path), path, "metadata entry count", "too large");
    });

    await t.step("tensor data past the end of the file", async () => {
      await write(base.bytes.slice(0, base.bytes.length - 1));
      await rejectsNaming(readGguf(path), path, '"b.weight"', "past the end of the file");
    });

    await t.step("unsupported ggml type ids name the id and the supported types", async () => {
      const one = (type: number) =>
        file({ tensors: [{ name: "x.weight", dims: [32], type, data: new Uint8Array(64) }] });
      await one(99);
      await rejectsNaming(readGguf(path), path, '"x.weight"', "99", "supported", "Q8_0=8");
      await one(3);
      await rejectsNaming(readGguf(path), path, "type id 3 (Q4_1)", "supported");
    });

    await t.step("unknown metadata value type", async () => {
      const b = encodeGguf({ metadata: [["k.x", { type: "u32", value: 1 }]] });
      const bytes = b.bytes.slice();
      new DataView(bytes.buffer).setUint32(24 + 8 + 3, 13, true); // the value type after "k.x"
      await write(bytes);
      await rejectsNaming(readGguf(path), path, "unknown metadata value type 13", '"k.x"');
    });

    await t.step("duplicate tensor names and metadata keys", async () => {
      const t1 = { name: "same", dims: [1], type: F32, data: new Uint8Array(4) };
      await file({ tensors: [t1, t1] });
      await rejectsNaming(readGguf(path), path, 'duplicate tensor name "same"');
      await file({ metadata: [["k", { type: "u8", value: 1 }], ["k", { type: "u8", value: 2 }]] });
      await rejectsNaming(readGguf(path), path, 'duplicate metadata key "k"');
    });

    await t.step("ne[0] not a whole number of blocks", async () => {
      await file({ tensors: [{ name: "q", dims: [16, 2], type: Q8_0, data: new Uint8Array(68) }] });
      await rejectsNaming(readGguf(path), path, '"q"', "ne[0] = 16", "32-element Q8_0 block");
    });

    await t.step("misaligned tensor offset and bad alignment", async () => {
      const b = base.bytes.slice();
      new DataView(b.buffer).setBigUint64(base.offsetFields[1], 16n, true);
      await write(b);
      await rejectsNaming(readGguf(path), path, '"b.weight"', "offset 16", "alignment 32");
      await file({ metadata: [["general.alignment", { type: "u32", value: 48 }]] });
      await rejectsNaming(readGguf(path), path, "general.alignment", "power of two", "48");
      await file({ metadata: [["general.alignment", { type: "string", value: "32" }]] });
      await rejectsNaming(readGguf(path), path, "general.alignment", "string");
    });

    await t.step("too many dimensions", async () => {
      await file({
        tensors: [{ name: "d5", dims: [1, 1, 1, 1, 1], type: F32, data: new Uint8Array(4) }],
      });
      await rejectsNaming(readGguf(path), path, '"d5"', "5 dimensions");
    });

    await t.step("bool other than 0/1", async () => {
      const b = encodeGguf({ metadata: [["b", { type: "bool", value: true }]] });
      const bytes = b.bytes.slice();
      bytes[24 + 8 + 1 + 4] = 2;
      await write(bytes);
      await rejectsNaming(readGguf(path), path, "bool value 2");
    });
  });
});

Deno.test("GGUF metadata helpers name the key when missing or mistyped", async () => {
  await withTempDir(async (dir) => {
    const path = `${dir}/meta.gguf`;
    await writeGguf(path, ROUND_TRIP);
    const f: GgufFile = await readGguf(path);
    assert.equal(metaString(f, "general.architecture"), "llama");
    assert.equal(metaNumber(f, "t.u32"), 4294967295);
    assert.equal(metaNumber(f, "t.f64"), Math.PI);
    assert.equal(metaBool(f, "t.bool.true"), true);
    assert.deepEqual(metaArray(f, "t.arr.i32"), [1, -2, 3]);
    assert.deepEqual(metaStringArray(f, "t.arr.empty"), []);
    assert.equal(metaStringOpt(f, "absent"), undefined);
    assert.equal(metaNumberOpt(f, "absent"), undefined);
    assert.equal(metaArrayOpt(f, "absent"), undefined);
    const throwsNaming = (fn: () => unknown, ...needles: string[]) =>
      assert.throws(fn, (e: Error) => {
        assert.ok(e instanceof GgufError, String(e));
        for (const n of [path, ...needles]) assert.ok(e.message.includes(n), e.message);
        return true;
      });
    throwsNaming(() => metaString(f, "llama.context_length"), '"llama.context_length"', "missing");
    throwsNaming(() => metaNumber(f, "general.architecture"), '"general.architecture"', "string");
    throwsNaming(() => metaNumber(f, "t.u64.big"), '"t.u64.big"', "u64", "safe integer");
    throwsNaming(() => metaNumberOpt(f, "t.bool.true"), '"t.bool.true"', "bool");
    throwsNaming(() => metaArray(f, "t.u8"), '"t.u8"', "an array");
    throwsNaming(() => metaStringArray(f, "t.arr.f32"), '"t.arr.f32"', "array<f32>");
    throwsNaming(() => metaNumberArray(f, "t.arr.u64"), '"t.arr.u64"', "element 1");
    throwsNaming(() => metaBool(f, "t.u8"), '"t.u8"', "a bool");
  });
});
