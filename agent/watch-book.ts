// The watches of one host, found by their helper group (hits and helper
// events) or by job and pid (the controller's commands). A watch stays here
// after it ended until its process is gone or it is replaced, so its
// counters go on; its group is dropped once its hits are settled.
import { slotMask } from "./foreign-registers.js";
import { watchKey, type Watch } from "./watch.js";

/** The watches of one host. */
export class WatchBook {
  readonly #byGroup = new Map<bigint, Watch>();
  readonly #byKey = new Map<string, Watch>();

  /** Every watch kept, ended ones too (a copy: dropping while iterating is safe). */
  all(): Watch[] {
    return [...this.#byKey.values()];
  }

  /** The watches the helper has armed now. */
  live(): Watch[] {
    return this.all().filter((w) => !w.ended);
  }

  /** The live watches of one process. */
  ofPid(pid: number): Watch[] {
    return this.live().filter((w) => w.pid === pid);
  }

  /** The watch of a job on a pid. */
  get(jobId: string, pid: number): Watch | undefined {
    return this.#byKey.get(watchKey(jobId, pid));
  }

  /** Keeps a watch as its job's on its pid (replacing an earlier one). */
  keep(watch: Watch): void {
    this.#byKey.set(watchKey(watch.jobId, watch.pid), watch);
  }

  /** Forgets a watch, unless another one took its place. */
  drop(watch: Watch): void {
    const key = watchKey(watch.jobId, watch.pid);
    if (this.#byKey.get(key) === watch) this.#byKey.delete(key);
  }

  /** Whether any watch of the job is kept. */
  hasJob(jobId: string): boolean {
    return this.all().some((w) => w.jobId === jobId);
  }

  /** The watch whose helper group this is. */
  group(group: bigint): Watch | undefined {
    return this.#byGroup.get(group);
  }

  addGroup(group: bigint, watch: Watch): void {
    this.#byGroup.set(group, watch);
  }

  dropGroup(group: bigint): void {
    this.#byGroup.delete(group);
  }

  /** A new helper starts with no groups. */
  clearGroups(): void {
    this.#byGroup.clear();
  }

  /** The debug registers (a DR mask) the live watches hold in a process. */
  registersOf(pid: number): number {
    return slotMask(this.ofPid(pid).flatMap((w) => w.slots));
  }
}
