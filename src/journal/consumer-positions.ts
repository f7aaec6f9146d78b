// The consumers of a staging area (the committer, a mirror stream) and the position of each:
// the next record it needs, where that record lies in the ring and the chain link it must
// carry. A position moves only forward, never past the durable head, and only once the
// consumer made the records before it durable on its side (asserted in advance(), J4); the
// journal's checkpoint makes the positions durable (J4), and the one furthest behind bounds
// the ring space that may be written (J2). Positions are handed out as copies.
import assert from 'node:assert/strict';
import { FerryError } from '../errors.js';
import { CONSUMERS_MAX, type ConsumerPosition } from './format.js';

export class ConsumerPositions {
  private readonly positions = new Map<string, ConsumerPosition>();

  constructor(checkpointed: ConsumerPosition[]) {
    for (const c of checkpointed) this.positions.set(c.name, { ...c });
  }

  has(name: string): boolean {
    return this.positions.has(name);
  }

  /** A copy of consumer `name`'s position. */
  get(name: string): ConsumerPosition {
    const c = this.positions.get(name);
    if (!c) throw new Error(`no consumer ${name}`);
    return { ...c };
  }

  /** The consumer furthest behind. */
  min(): ConsumerPosition {
    let min: ConsumerPosition | null = null;
    for (const c of this.positions.values()) if (!min || c.nextSeq < min.nextSeq) min = c;
    assert.ok(min, 'a staging area always has a consumer');
    return min;
  }

  /** Throws unless a consumer `name` can be added. */
  checkAdd(name: string): void {
    if (this.positions.has(name)) throw new Error(`consumer ${name} exists`);
    if (this.positions.size >= CONSUMERS_MAX) throw new FerryError('BAD_REQUEST', `a staging area serves at most ${CONSUMERS_MAX} consumers`);
  }

  set(pos: ConsumerPosition): void {
    this.positions.set(pos.name, pos);
  }

  /** Removes consumer `name`: false when there is none; the last one is never removed. */
  remove(name: string): boolean {
    if (!this.positions.has(name)) return false;
    if (this.positions.size === 1) throw new Error('the last consumer cannot be removed');
    this.positions.delete(name);
    return true;
  }

  /**
   * Moves consumer `name` to `pos`. `durableHeadSeq` is the first record not yet durable in
   * the staging area: a consumer can have made durable on its side only records it could read (J4, J5).
   */
  advance(name: string, pos: ConsumerPosition, durableHeadSeq: number): void {
    const c = this.positions.get(name);
    assert.ok(c, `unknown consumer ${name}`);
    assert.ok(pos.nextSeq >= c.nextSeq, 'a consumer position only moves forward (J4)');
    assert.ok(pos.nextSeq <= durableHeadSeq, 'a consumer position never passes the durable head of the staging area (J4)');
    this.positions.set(name, { ...pos, name });
  }

  /** Copies of every position (what a checkpoint writes). */
  snapshot(): ConsumerPosition[] {
    return [...this.positions.values()].map((c) => ({ ...c }));
  }

  /** A rebase: every consumer restarts at `firstSeq` at ring position `headPos`, with a new chain. */
  restartAll(firstSeq: number, headPos: number): void {
    for (const [name, c] of this.positions) {
      assert.ok(firstSeq >= c.nextSeq, 'a rebase moves every consumer position forward (J4)');
      this.positions.set(name, { name, nextSeq: firstSeq, nextPos: headPos, prevCrc: 0 });
    }
  }

  stats(headSeq: number): Array<{ name: string; nextSeq: number; pendingRecords: number }> {
    return [...this.positions.values()].map((c) => ({ name: c.name, nextSeq: c.nextSeq, pendingRecords: headSeq - c.nextSeq }));
  }
}
