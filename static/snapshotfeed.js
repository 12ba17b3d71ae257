import { cameraUrls } from './api.js';

/** Pause between polls; the last resort trades smoothness for working everywhere. */
const POLL_MS = 1000;

/**
 * Polls snapshot.jpg: the fallback when even MJPEG cannot get through.
 * `If-None-Match` makes an unchanged frame a bodiless 304. Same handler shape as WsFeed.
 * With a `width` it asks for the broker's smaller size.
 */
export class SnapshotFeed {
  #cameraId;
  #handlers;
  #width;
  #abort = null;
  #timer = null;
  #etag = null;
  #working = false;

  constructor(cameraId, handlers, { width = null } = {}) {
    this.#cameraId = cameraId;
    this.#handlers = handlers;
    this.#width = width;
  }

  start() {
    this.#abort = new AbortController();
    this.#poll(this.#abort.signal);
  }

  stop() {
    this.#abort?.abort();
    this.#abort = null;
    clearTimeout(this.#timer);
  }

  async #poll(signal) {
    let response;
    let blob = null;
    try {
      response = await fetch(cameraUrls(this.#cameraId, this.#width).snapshot, {
        // no-store keeps the browser cache out of the way, so a 304 reaches this code.
        cache: 'no-store',
        headers: this.#etag ? { 'If-None-Match': this.#etag } : {},
        signal,
      });
      if (response.ok) blob = await response.blob();
    } catch {
      if (signal.aborted) return;
      this.stop();
      this.#handlers.ended(this.#working);
      return;
    }
    if (signal.aborted) return;
    // Any answer means the path works, even 404 (camera never seen) or 503 (no frame
    // yet): polling goes on until a picture exists.
    if (!this.#working) {
      this.#working = true;
      this.#handlers.working();
    }
    if (blob) {
      this.#etag = response.headers.get('ETag');
      const age = Number.parseFloat(response.headers.get('X-Frame-Age'));
      this.#handlers.frame(blob, {
        receivedAt: Number.isFinite(age) ? Date.now() - age * 1000 : null,
        bytes: blob.size,
      });
    }
    this.#timer = setTimeout(() => this.#poll(signal), POLL_MS);
  }
}
