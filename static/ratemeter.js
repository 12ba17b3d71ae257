/** A per-second rate over a sliding window: frames drawn, bytes received. */
export class RateMeter {
  #samples = []; // [time, amount], oldest first
  #since = performance.now();

  constructor(windowMs = 2000) {
    this.windowMs = windowMs;
  }

  add(amount, now = performance.now()) {
    this.#samples.push([now, amount]);
    this.#prune(now);
  }

  rate(now = performance.now()) {
    this.#prune(now);
    // Divide by the time actually observed, so that the first two seconds after a
    // (re)connect do not read low; but by one second at least, so that the burst at
    // connect time (the broker's cached frame, then the next) does not read high.
    const seconds = Math.min(this.windowMs, Math.max(1000, now - this.#since)) / 1000;
    return this.#samples.reduce((sum, [, amount]) => sum + amount, 0) / seconds;
  }

  /** Forget everything, e.g. when a stream (re)starts. */
  reset(now = performance.now()) {
    this.#samples = [];
    this.#since = now;
  }

  #prune(now) {
    const oldest = now - this.windowMs;
    let stale = 0;
    while (stale < this.#samples.length && this.#samples[stale][0] < oldest) stale += 1;
    if (stale) this.#samples.splice(0, stale);
  }
}
