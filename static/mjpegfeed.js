import { cameraUrls } from './api.js';

/** How often the stream's liveness is checked (see #check). */
const CHECK_EVERY_MS = 3000;

/**
 * A camera's MJPEG stream in an <img>: the fallback when WebSockets cannot get
 * through. The browser decodes and shows the parts itself, so this feed sees no
 * individual frames: only the first picture (`load`) and a failed request (`error`).
 * Same handler shape as WsFeed.
 */
export class MjpegFeed {
  #cameraId;
  #handlers;
  #working = false;
  #running = false;
  #timer = null;
  #abort = null;
  #etag = null;
  #seq = 0;

  constructor(cameraId, handlers) {
    this.#cameraId = cameraId;
    this.#handlers = handlers;
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

  start() {
    this.#running = true;
    this.#abort = new AbortController();
    // A fresh query string each time: an <img> URL may be served from the memory
    // cache, which would replay a dead stream instead of opening a new one.
    const url = new URL(cameraUrls(this.#cameraId).mjpeg);
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
   * frames from the start again (it restarted) has cut this stream.
   */
  async #check() {
    let response;
    try {
      response = await fetch(cameraUrls(this.#cameraId).snapshot, {
        cache: 'no-store',
        headers: this.#etag ? { 'If-None-Match': this.#etag } : {},
        signal: this.#abort.signal,
      });
      await response.body?.cancel(); // only the headers matter
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
