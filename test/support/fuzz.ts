// Seeded generators of hostile input for the fuzz tests. Every case draws from
// its own PRNG, derived from the run's seed and the case number, so a failure
// names both and one case replays alone without running the ones before it.

/** How many cases a fuzz file runs, and which seed; from the environment. */
export interface FuzzConfig {
  readonly seed: number;
  readonly cases: number;
  /** Only this case (replaying a failure), or undefined for all. */
  readonly only: number | undefined;
}

function envInt(name: string): number | undefined {
  const text = process.env[name];
  if (text === undefined || text.trim() === "") return undefined;
  const value = Number(text);
  if (!Number.isSafeInteger(value) || value < 0) throw new Error(`${name}='${text}' is not a non-negative integer`);
  return value;
}

/**
 * FLEETWATCH_FUZZ_CASES=N runs N cases per fuzz file (default `defaultCases`);
 * FLEETWATCH_FUZZ_SEED=S fixes the seed (default: a new one each run);
 * FLEETWATCH_FUZZ_ONLY=K runs only case K of that seed.
 */
export function fuzzConfig(defaultCases: number): FuzzConfig {
  const seed = envInt("FLEETWATCH_FUZZ_SEED") ?? Math.floor(Math.random() * 0x7fffffff);
  const only = envInt("FLEETWATCH_FUZZ_ONLY");
  return { seed: seed >>> 0, cases: envInt("FLEETWATCH_FUZZ_CASES") ?? defaultCases, only };
}

/** The case numbers to run under a config. */
export function caseNumbers(config: FuzzConfig): number[] {
  if (config.only !== undefined) return [config.only];
  return Array.from({ length: config.cases }, (_, i) => i);
}

/** How to run one failing case again. */
export function replayHint(config: FuzzConfig, caseNo: number): string {
  return `fuzz case ${caseNo} of seed ${config.seed}; replay it with FLEETWATCH_FUZZ_SEED=${config.seed} FLEETWATCH_FUZZ_ONLY=${caseNo}`;
}

/** A small, fast, seedable PRNG (sfc32) with helpers for hostile values. */
export class Rng {
  private a: number;
  private b: number;
  private c: number;
  private d: number;

  /** The PRNG of case `caseNo` of a run seeded with `seed`. */
  static forCase(seed: number, caseNo: number): Rng {
    return new Rng(seed, caseNo);
  }

  constructor(seed: number, stream = 0) {
    this.a = seed >>> 0;
    this.b = Math.imul(stream + 1, 0x9e3779b9) >>> 0;
    this.c = 0x6a09e667 ^ stream;
    this.d = 1;
    // Mix: the first outputs of sfc32 follow the seed too closely.
    for (let i = 0; i < 15; i++) this.u32();
  }

  /** Uniform in [0, 2^32). */
  u32(): number {
    const t = (((this.a + this.b) >>> 0) + this.d) >>> 0;
    this.d = (this.d + 1) >>> 0;
    this.a = this.b ^ (this.b >>> 9);
    this.b = (this.c + (this.c << 3)) >>> 0;
    this.c = ((this.c << 21) | (this.c >>> 11)) >>> 0;
    this.c = (this.c + t) >>> 0;
    return t;
  }

  /** Uniform in [0, n). */
  int(n: number): number {
    return Math.floor((this.u32() / 0x1_0000_0000) * n);
  }

  /** True with probability p. */
  chance(p: number): boolean {
    return this.u32() / 0x1_0000_0000 < p;
  }

  pick<T>(items: readonly T[]): T {
    return items[this.int(items.length)]!;
  }

  u64(): bigint {
    return (BigInt(this.u32()) << 32n) | BigInt(this.u32());
  }

  bytes(n: number): Buffer {
    const out = Buffer.allocUnsafe(n);
    for (let i = 0; i < n; i++) out[i] = this.u32() & 0xff;
    return out;
  }

  /** A length: mostly small, sometimes at a boundary, sometimes huge. */
  size(max: number): number {
    const r = this.int(10);
    if (r < 6) return this.int(Math.min(max, 16) + 1);
    if (r < 8) return this.int(max + 1);
    return this.pick([0, 1, max - 1, max].filter((n) => n >= 0));
  }

  /** Numbers at the edges of 32 and 64 bits, and negatives as unsigned. */
  u64Edge(): bigint {
    return this.pick([0n, 1n, 2n, 0x7fn, 0xffn, 0x7fffffffn, 0x80000000n, 0xffffffffn, 0x1_0000_0000n, 0x7fff_ffff_ffff_ffffn, 0x8000_0000_0000_0000n, 0xffff_ffff_ffff_ffffn, 0xffff_ffff_ffff_fffen, this.u64()]);
  }

  u32Edge(): number {
    return this.pick([0, 1, 2, 3, 4, 5, 8, 16, 17, 64, 65, 255, 256, 0xffff, 0x7fffffff, 0x80000000, 0xfffffffe, 0xffffffff, this.u32()]);
  }

  i32Edge(): number {
    return this.pick([0, 1, -1, 2147483647, -2147483648, this.u32() | 0]);
  }

  /** Addresses a watch must never get into a debug register, and a few it may. */
  address(): bigint {
    return this.pick([
      0n,
      1n,
      0x1000n,
      0x7ffffffff000n - 8n,
      0x7ffffffff000n - 1n,
      0x7ffffffff000n,
      0x800000000000n,
      0xffff800000000000n,
      0xffffffff81000000n,
      0xffff_ffff_ffff_fff8n,
      0xffff_ffff_ffff_ffffn,
      this.u64(),
      this.u64() & 0x7fff_ffff_fff8n,
      (this.u64() & 0x7fff_ffff_ffffn) | 1n,
    ]);
  }

  /** Longest string string() makes, whatever its caller asks (many() lowers it for huge repeated fields). */
  maxStringLength = Number.POSITIVE_INFINITY;

  /** Strings that break parsers, logs and size limits (at most maxLength UTF-16 units, give or take a word). */
  string(maxLength = 70_000): string {
    const s = this.anyString(Math.min(maxLength, this.maxStringLength));
    return s.length > this.maxStringLength ? s.slice(0, this.maxStringLength) : s;
  }

  private anyString(maxLength: number): string {
    switch (this.int(12)) {
      case 0:
        return "";
      case 1:
        return "\0";
      case 2:
        return `fw_counter\0${this.word()}`;
      case 3:
        return "x".repeat(this.size(maxLength));
      case 4:
        return "é☃\u{1F600}".repeat(this.int(Math.floor(maxLength / 4) + 1));
      case 5:
        return this.pick(["../../../etc/passwd", "/", "//", "%s%s%n", "${x}", "'\"`;--", "\r\n\r\n", "a,b,,=", "in (", "!=", "sample:0", "sample:9999999", "all", "any"]);
      case 6:
        return Buffer.from(this.bytes(this.size(64))).toString("latin1");
      case 7:
        return `${this.word()}+${this.pick(["0x", "-1", "0xffffffffffffffffffff", "99999999999999999999999", String(this.u64())])}`;
      case 8:
        return `${this.word()}${this.pick(["->", ".", "[", "]", "[-1]", "[18446744073709551616]", "..", "->->"])}${this.word()}`;
      default:
        return this.word();
    }
  }

  /** A short identifier-like word. */
  word(): string {
    const alphabet = "abcdefghijklmnopqrstuvwxyz_0123456789";
    let out = "fz";
    for (let i = this.int(10); i > 0; i--) out += alphabet[this.int(alphabet.length)];
    return out;
  }

  /** Random bytes shaped a little like protobuf: valid tags with wrong wire types, varints that never end, lengths past the end. */
  protobufish(maxFields = 8): Buffer {
    const parts: Buffer[] = [];
    for (let i = this.int(maxFields + 1); i > 0; i--) {
      const field = this.pick([1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15, 16, 100, 536870911, this.int(1 << 29)]);
      const wireType = this.int(8);
      parts.push(varint(BigInt(field) * 8n + BigInt(wireType)));
      switch (wireType) {
        case 0:
          parts.push(this.chance(0.1) ? Buffer.alloc(11, 0xff) : varint(this.u64Edge()));
          break;
        case 1:
          parts.push(this.bytes(this.chance(0.9) ? 8 : this.int(8)));
          break;
        case 2: {
          const n = this.size(64);
          parts.push(varint(BigInt(this.chance(0.8) ? n : this.u32Edge())), this.bytes(n));
          break;
        }
        case 5:
          parts.push(this.bytes(this.chance(0.9) ? 4 : this.int(4)));
          break;
        default:
          parts.push(this.bytes(this.int(4)));
      }
    }
    const out = Buffer.concat(parts);
    return this.chance(0.2) && out.length > 0 ? out.subarray(0, this.int(out.length)) : out;
  }

  /** A copy of bytes with a few bytes flipped, cut or inserted. */
  corrupt(bytes: Uint8Array): Buffer {
    const out = Buffer.from(bytes);
    if (out.length === 0) return this.bytes(this.int(8));
    switch (this.int(3)) {
      case 0:
        for (let i = 1 + this.int(4); i > 0; i--) out[this.int(out.length)] = this.u32() & 0xff;
        return out;
      case 1:
        return out.subarray(0, this.int(out.length));
      default: {
        const at = this.int(out.length);
        return Buffer.concat([out.subarray(0, at), this.bytes(1 + this.int(8)), out.subarray(at)]);
      }
    }
  }
}

/** A protobuf base-128 varint. */
export function varint(value: bigint): Buffer {
  const out: number[] = [];
  let v = BigInt.asUintN(64, value);
  do {
    let byte = Number(v & 0x7fn);
    v >>= 7n;
    if (v > 0n) byte |= 0x80;
    out.push(byte);
  } while (v > 0n);
  return Buffer.from(out);
}
