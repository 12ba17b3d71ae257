/**
 * Reconnect delays: exponential, capped, with jitter.
 *
 * Half of each delay is fixed and half random ("equal jitter"): never zero, so a
 * restarting broker is not hammered, yet spread out, so that every open tab does not
 * reconnect in the same millisecond when the broker comes back.
 */
export class Backoff {
  #attempt = 0;

  constructor({ baseMs = 500, capMs = 10_000 } = {}) {
    this.baseMs = baseMs;
    this.capMs = capMs;
  }

  /** The delay before the next attempt, in milliseconds; each call doubles the ceiling. */
  next() {
    const ceiling = Math.min(this.capMs, this.baseMs * 2 ** this.#attempt);
    this.#attempt += 1;
    return ceiling / 2 + Math.random() * (ceiling / 2);
  }

  /** Start again from the shortest delay (after a connection delivered something). */
  reset() {
    this.#attempt = 0;
  }
}
