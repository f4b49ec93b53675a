// The real fleetwatch-helper driven from tests: its events consumed from the
// start and waited on by name, and a per-test scene that shuts helpers down
// and checks every target is left untraced.
import assert from "node:assert/strict";
import type { TestContext } from "node:test";
import { HelperError, HelperProcess } from "../../agent/helper-process.js";
import type { HelperChunk, HelperEvent, HelperHit, HelperOptions } from "../../agent/helper-process.js";
import { procState, startTarget } from "./targets.js";
import type { StartOptions, Target } from "./targets.js";
import { scaled } from "./wait.js";

/** How long a test waits for a helper event by default. */
export const EVENT_TIMEOUT_MS = 60_000;

export type EventOf<K extends HelperEvent["kind"]> = Extract<HelperEvent, { kind: K }>;

/** Consumes a helper's events from the start; tests wait on named conditions. */
export class EventLog {
  readonly events: HelperEvent[] = [];
  readonly hits: HelperHit[] = [];
  private ended = false;
  private readonly wakers = new Set<() => boolean>();

  constructor(helper: HelperProcess) {
    void (async () => {
      for await (const event of helper.events()) {
        this.events.push(event);
        if (event.kind === "hits") this.hits.push(...event.hits);
        this.wake();
      }
      this.ended = true;
      this.wake();
    })();
  }

  /** The events iterable has ended (the helper exited). */
  get finished(): boolean {
    return this.ended;
  }

  private wake(): void {
    for (const w of [...this.wakers]) w();
  }

  of<K extends HelperEvent["kind"]>(kind: K): EventOf<K>[] {
    return this.events.filter((e): e is EventOf<K> => e.kind === kind);
  }

  hitsOf(group: bigint): HelperHit[] {
    return this.hits.filter((h) => h.group === group);
  }

  /** Resolves with pick()'s first value other than undefined/false. */
  until<T>(what: string, pick: () => T | undefined | false, timeoutMs = EVENT_TIMEOUT_MS): Promise<T> {
    return new Promise<T>((resolve, reject) => {
      const finish = (): void => {
        clearTimeout(timer);
        this.wakers.delete(check);
      };
      const check = (): boolean => {
        const v = pick();
        if (v !== undefined && v !== false) {
          finish();
          resolve(v);
          return true;
        }
        if (this.ended) {
          finish();
          reject(new Error(`helper events ended before ${what}`));
          return true;
        }
        return false;
      };
      timeoutMs = scaled(timeoutMs);
      const timer = setTimeout(() => {
        finish();
        const kinds = this.events.map((e) => e.kind).join(",");
        reject(new Error(`timed out after ${timeoutMs} ms waiting for ${what} (${this.hits.length} hits; events ${kinds})`));
      }, timeoutMs);
      if (!check()) this.wakers.add(check);
    });
  }

  groupDone(group: bigint): Promise<EventOf<"group-done">> {
    return this.until(`group-done of group ${group}`, () => this.of("group-done").find((e) => e.group === group));
  }

  targetExited(pid: number): Promise<EventOf<"target-exited">> {
    return this.until(`target-exited of pid ${pid}`, () => this.of("target-exited").find((e) => e.pid === pid));
  }

  /** Waits until group has exactly n hits (fails at once if it has more). */
  async hitCount(group: bigint, n: number): Promise<void> {
    await this.until(`${n} hits of group ${group}`, () => this.hitsOf(group).length >= n);
    assert.equal(this.hitsOf(group).length, n, `hits of group ${group}`);
  }
}

/** Per test: helpers and targets started through it are shut down and killed, and checked untraced. */
export function scene(t: TestContext) {
  const helpers: HelperProcess[] = [];
  const targets: Target[] = [];
  t.after(async () => {
    for (const h of helpers) await h.shutdown();
    for (const target of targets) {
      const state = await procState(target.pid);
      if (state !== undefined && state !== "Z") {
        assert.equal(await target.tracerPid(), 0, `${target.name} (pid ${target.pid}) is still traced after the test`);
      }
      await target.kill();
    }
  });
  return {
    async helper(options: HelperOptions = {}): Promise<{ helper: HelperProcess; log: EventLog }> {
      const helper = await HelperProcess.start(options);
      helpers.push(helper);
      return { helper, log: new EventLog(helper) };
    },
    async target(name: string, args: string[] = [], options: StartOptions = {}): Promise<Target> {
      const target = await startTarget(name, args, options);
      targets.push(target);
      return target;
    },
  };
}

/** Addresses a fixture printed on its ready line ("ready <pid> <addr>..."). */
export function readyAddresses(target: Target): bigint[] {
  const line = target.lines.find((l) => l.startsWith("ready ")) ?? "";
  return line.split(" ").slice(2).map((a) => BigInt(a));
}

export function write8(address: bigint, dr = 0): HelperChunk {
  return { dr, mode: "w", length: 8, address };
}

export async function rejectsWith(p: Promise<unknown>, errnoName: string, message: RegExp): Promise<HelperError> {
  try {
    await p;
  } catch (err) {
    assert.ok(err instanceof HelperError, `expected HelperError, got ${String(err)}`);
    assert.equal(err.errnoName, errnoName, err.message);
    assert.match(err.message, message);
    return err;
  }
  assert.fail(`expected ${errnoName}`);
}

