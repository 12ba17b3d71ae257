import { gridSocketUrl } from './api.js';

/** Bytes before each JPEG on the grid socket (README, "Viewing many cameras on one socket"). */
const HEADER_BYTES = 24;

/**
 * The grid's one WebSocket (`ws`) carrying every tile's camera: each GridFeed
 * subscribes its camera at the width its tile needs. The socket opens with the first
 * subscription and closes with the last, so a hidden tab or the single-camera view
 * holds no grid socket. When it breaks, every feed on it ends, and each tile's player
 * reconnects (and falls back) as it would with a socket of its own.
 */
export class GridSocket {
  #socket = null;
  #feeds = new Map(); // camera id -> GridFeed
  #streams = new Map(); // stream number -> camera id

  /** Subscribes `feed`'s camera (replacing an earlier feed of that camera). */
  add(feed) {
    this.#feeds.set(feed.cameraId, feed);
    if (this.#socket === null) {
      this.#connect();
    } else if (this.#socket.readyState === WebSocket.OPEN) {
      this.#subscribe(feed);
    }
  }

  /** Unsubscribes `feed`; the socket closes with the last one. */
  remove(feed) {
    if (this.#feeds.get(feed.cameraId) !== feed) return;
    this.#feeds.delete(feed.cameraId);
    this.#forgetStreams(feed.cameraId);
    const socket = this.#socket;
    if (!socket) return;
    if (this.#feeds.size === 0) {
      this.#socket = null;
      close(socket);
    } else if (socket.readyState === WebSocket.OPEN) {
      socket.send(JSON.stringify({ type: 'unsubscribe', camera: feed.cameraId }));
    }
  }

  #connect() {
    const socket = new WebSocket(gridSocketUrl());
    socket.binaryType = 'arraybuffer'; // the header is read synchronously with a DataView
    socket.addEventListener('open', () => {
      if (this.#socket !== socket) return;
      for (const feed of this.#feeds.values()) this.#subscribe(feed);
    });
    socket.addEventListener('message', (event) => {
      if (this.#socket === socket) this.#message(event.data);
    });
    // 'error' is always followed by 'close', which is where every feed on it ends.
    socket.addEventListener('close', () => {
      if (this.#socket !== socket) return;
      this.#socket = null;
      const feeds = [...this.#feeds.values()];
      this.#feeds.clear();
      this.#streams.clear();
      for (const feed of feeds) feed.socketEnded();
    });
    this.#socket = socket;
  }

  #subscribe(feed) {
    const request = { type: 'subscribe', camera: feed.cameraId };
    if (feed.width) request.width = feed.width;
    this.#socket.send(JSON.stringify(request));
  }

  #forgetStreams(cameraId) {
    for (const [stream, camera] of this.#streams) {
      if (camera === cameraId) this.#streams.delete(stream);
    }
  }

  #message(data) {
    if (typeof data !== 'string') {
      if (data.byteLength <= HEADER_BYTES) return;
      const header = new DataView(data);
      const feed = this.#feeds.get(this.#streams.get(header.getUint32(0)));
      if (!feed) return; // a frame sent before an unsubscription reached the broker
      // Bytes 4-15 (width, quality, sequence number) are not needed to draw the picture.
      const receivedAt = header.getFloat64(16);
      const jpeg = new Blob([new Uint8Array(data, HEADER_BYTES)], { type: 'image/jpeg' });
      feed.frame(jpeg, { receivedAt, bytes: data.byteLength });
      return;
    }
    let message;
    try {
      message = JSON.parse(data);
    } catch {
      return; // not JSON: nothing the page can act on
    }
    const feed = this.#feeds.get(message?.camera);
    if (!feed) return; // an answer about a camera no tile shows any more
    // Unknown message types are ignored so that a newer broker works with this page.
    switch (message.type) {
      case 'subscribed':
        this.#forgetStreams(feed.cameraId);
        this.#streams.set(message.stream, feed.cameraId);
        feed.subscribed();
        break;
      case 'status':
        if (typeof message.online === 'boolean') feed.status(message.online);
        break;
      case 'error':
        // Refused (not allowed, camera full): that tile's feed ends, the others go on.
        this.remove(feed);
        feed.socketEnded();
        break;
      default:
    }
  }
}

/** Closes a socket quietly, even one still connecting (see WsFeed.stop). */
function close(socket) {
  if (socket.readyState === WebSocket.CONNECTING) {
    socket.addEventListener('open', () => socket.close(1000));
  } else {
    socket.close(1000);
  }
}

/**
 * One tile's camera on the grid socket, at `width` pixels (null: full size).
 * Same shape as WsFeed: `start()`, `stop()`, handlers working/frame/status/ended.
 */
export class GridFeed {
  #socket;
  #handlers;
  #running = false;
  #working = false;

  constructor(socket, cameraId, width, handlers) {
    this.#socket = socket;
    this.cameraId = cameraId;
    this.width = width;
    this.#handlers = handlers;
  }

  start() {
    this.#running = true;
    this.#socket.add(this);
  }

  stop() {
    if (!this.#running) return;
    this.#running = false;
    this.#socket.remove(this);
  }

  // Called by the GridSocket.

  subscribed() {
    // The answer to the subscription proves the path works end to end.
    if (!this.#running || this.#working) return;
    this.#working = true;
    this.#handlers.working();
  }

  frame(blob, meta) {
    if (this.#running) this.#handlers.frame(blob, meta);
  }

  status(online) {
    if (this.#running) this.#handlers.status(online);
  }

  socketEnded() {
    if (!this.#running) return;
    this.#running = false;
    this.#handlers.ended(this.#working);
  }
}
