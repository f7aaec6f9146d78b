// Where records may go in a staging area's ring (J2, J6), as pure functions of the ring's
// geometry: the live region [tail, head) holds records some consumer still needs according
// to the last durable checkpoint; everything else is free. The ring is empty when the tail is
// at the next sequence number; tail === head with records live means it is full.

/** Where a record of `span` bytes can go with the head at `head`, or -1 when there is no free space. */
export function placeRecord(head: number, span: number, tail: number, ringBytes: number, empty: boolean): number {
  if (empty) return head + span <= ringBytes ? head : 0;
  if (head === tail) return -1;
  if (head > tail) {
    if (head + span <= ringBytes) return head;
    // A record never straddles the end of the ring (J6): it goes to offset 0, if that is free.
    return span <= tail ? 0 : -1;
  }
  return head + span <= tail ? head : -1;
}

/** Whether ring bytes [start, end) lie outside the live region [tail, head). */
export function outsideLiveRing(start: number, end: number, tail: number, head: number, empty: boolean): boolean {
  if (empty) return true;
  if (tail < head) return end <= tail || start >= head;
  return start >= head && end <= tail;
}
