import { cameraUrls } from './api.js';

/** How often the stream's liveness is checked (see #check). */
const CHECK_EVERY_MS = 3000;
/**
 * MJPEG streams one grid keeps open at once. Browsers allow about 6 connections to a
 * host over HTTP/1.1, and each stream holds one for good: past this, tiles poll
 * snapshots, and the page's own requests still get through.
 */
const STREAMS_OVER_HTTP1 = 4;

/** The MJPEG streams a page may hold at once; unbounded over HTTP/2 and HTTP/3, which multiplex. */
export class StreamBudget {
  #free;

  constructor(streams = multiplexed() ? Infinity : STREAMS_OVER_HTTP1) {
    this.#free = streams;
  }

  get free() {
    return this.#free;
  }

  take() {
    if (this.#free <= 0) return false;
    this.#free -= 1;
    return true;
  }

  give() {
    this.#free += 1;
  }
}

function multiplexed() {
  const protocol = performance.getEntriesByType('navigation')[0]?.nextHopProtocol ?? '';
  return protocol === 'h2' || protocol === 'h3';
}

/**
 * A camera's MJPEG stream in an <img>: the fallback when WebSockets cannot get
 * through. The browser decodes and shows the parts itself, so this feed sees no
 * individual frames: only the first picture (`load`) and a failed request (`error`).
 * Same handler shape as WsFeed. With a `width` it asks for the broker's smaller size;
 * with a `budget` (StreamBudget) it holds one of its streams while it runs.
 */
export class MjpegFeed {
  #cameraId;
  #handlers;
  #width;
  #budget;
  #holds = false;
  #working = false;
  #running = false;
  #timer = null;
  #abort = null;
  #etag = null;
  #seq = 0;

  constructor(cameraId, handlers, { width = null, budget = null } = {}) {
    this.#cameraId = cameraId;
    this.#handlers = handlers;
    this.#width = width;
    this.#budget = budget;
    /** The element that shows the stream; the player puts it on screen. */
    this.element = new Image();
    this.element.decoding = 'async';
    this.element.addEventListener('load', () => {
      if (!this.#running || this.#working) return;
      this.#working = true;
      this.#handlers.working();
      this.#timer = setTimeout(() => this.#check(), CHECK_EVERY_MS);
    });
    this.element.addEventListener('error', () => this.#end());
  }

  /** Whether this stream is of a smaller size than the camera's own. */
  get sized() {
    return Boolean(this.#width);
  }

  start() {
    this.#running = true;
    this.#abort = new AbortController();
    if (this.#budget) {
      this.#holds = this.#budget.take();
      if (!this.#holds) {
        // Another tile took the last stream since the player looked: a failed opening.
        queueMicrotask(() => this.#end());
        return;
      }
    }
    // A fresh query string each time: an <img> URL may be served from the memory
    // cache, which would replay a dead stream instead of opening a new one.
    const url = new URL(cameraUrls(this.#cameraId, this.#width).mjpeg);
    url.searchParams.set('t', String(Date.now()));
    this.element.src = url.href;
  }

  stop() {
    if (!this.#running) return;
    this.#running = false;
    clearTimeout(this.#timer);
    this.#abort.abort();
    // Dropping the source is what makes the browser close the HTTP connection.
    this.element.removeAttribute('src');
    if (this.#holds) {
      this.#holds = false;
      this.#budget.give();
    }
  }

  #end() {
    if (!this.#running) return;
    this.stop();
    this.#handlers.ended(this.#working);
  }

  /**
   * Chromium fires no event when a multipart stream breaks off: the <img> just keeps
   * its last picture. So the newest snapshot's headers stand in as a heartbeat: a
   * broker that cannot be reached, no longer knows the camera, or counts the camera's
   * frames from the start again (it restarted) has cut this stream. HEAD: only the
   * headers matter, and the full-size picture is not sent along.
   */
  async #check() {
    let response;
    try {
      response = await fetch(cameraUrls(this.#cameraId).snapshot, {
        method: 'HEAD',
        cache: 'no-store',
        headers: this.#etag ? { 'If-None-Match': this.#etag } : {},
        signal: this.#abort.signal,
      });
    } catch {
      this.#end();
      return;
    }
    if (!this.#running) return;
    if (response.status !== 304) {
      const seq = Number(response.headers.get('X-Frame-Seq'));
      if (!response.ok || seq < this.#seq) {
        this.#end();
        return;
      }
      this.#etag = response.headers.get('ETag');
      this.#seq = seq;
    }
    this.#timer = setTimeout(() => this.#check(), CHECK_EVERY_MS);
  }
}
