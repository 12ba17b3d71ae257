import { cameraUrls } from './api.js';

/** Bytes before each JPEG with `?header=1`: seq (uint64 BE), broker receive time (float64 BE, ms). */
const HEADER_BYTES = 16;

/**
 * A camera's frames over the viewer WebSocket.
 *
 * Feeds share one shape: `start()`, a silent idempotent `stop()`, and handlers
 * `working()` (once, when the feed first delivers), `frame(blob, meta)`,
 * `status(online)` and `ended(wasWorking)` (once, when the feed dies by itself).
 */
export class WsFeed {
  #cameraId;
  #handlers;
  #socket = null;
  #working = false;

  constructor(cameraId, handlers) {
    this.#cameraId = cameraId;
    this.#handlers = handlers;
  }

  start() {
    const socket = new WebSocket(cameraUrls(this.#cameraId).ws);
    socket.binaryType = 'arraybuffer'; // the header is read synchronously with a DataView
    socket.addEventListener('message', (event) => {
      if (this.#socket === socket) this.#message(event.data);
    });
    // 'error' is always followed by 'close', which is where the feed ends.
    socket.addEventListener('close', () => {
      if (this.#socket !== socket) return;
      this.#socket = null;
      this.#handlers.ended(this.#working);
    });
    this.#socket = socket;
  }

  stop() {
    const socket = this.#socket;
    this.#socket = null;
    if (!socket) return;
    if (socket.readyState === WebSocket.CONNECTING) {
      // Closing a socket before it opens makes Chromium log a console error;
      // letting it open and closing it then is quiet and just as quick.
      socket.addEventListener('open', () => socket.close(1000));
    } else {
      socket.close(1000);
    }
  }

  #message(data) {
    // The broker's first message on every connection is a status, so the first
    // message of any kind proves the path works end to end (a proxy that accepts
    // the upgrade and then drops the stream never gets here).
    if (!this.#working) {
      this.#working = true;
      this.#handlers.working();
    }
    if (typeof data === 'string') {
      this.#text(data);
      return;
    }
    if (data.byteLength <= HEADER_BYTES) return;
    // Bytes 0-7 are the sequence number, which the page has no use for.
    const receivedAt = new DataView(data).getFloat64(8);
    const jpeg = new Blob([new Uint8Array(data, HEADER_BYTES)], { type: 'image/jpeg' });
    this.#handlers.frame(jpeg, { receivedAt, bytes: data.byteLength });
  }

  #text(data) {
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      return; // not JSON: nothing the page can act on
    }
    // Unknown message types are ignored so that a newer broker works with this page.
    if (message?.type === 'status' && typeof message.online === 'boolean') {
      this.#handlers.status(message.online);
    }
  }
}
