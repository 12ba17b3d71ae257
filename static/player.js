import { brokerReachable } from './api.js';
import { Backoff } from './backoff.js';
import { FrameSink } from './framesink.js';
import { MjpegFeed } from './mjpegfeed.js';
import { RateMeter } from './ratemeter.js';
import { SnapshotFeed } from './snapshotfeed.js';
import { WsFeed } from './wsfeed.js';

/** Transports from best to worst: a player falls back down this list and climbs back up. */
const MODES = ['ws', 'mjpeg', 'snapshot'];

/**
 * How a player opens each mode: `open(cameraId, handlers)` makes a feed, and the
 * optional `available()` says whether the mode may be used now (else it is skipped).
 * These are the single-camera view's: each transport of its own, at full size.
 */
export const FULL_SIZE_FEEDS = {
  ws: { open: (cameraId, handlers) => new WsFeed(cameraId, handlers) },
  mjpeg: { open: (cameraId, handlers) => new MjpegFeed(cameraId, handlers) },
  snapshot: { open: (cameraId, handlers) => new SnapshotFeed(cameraId, handlers) },
};

export const MODE_NAMES = { ws: 'WebSocket', mjpeg: 'MJPEG', snapshot: 'snapshot' };

/** Failed openings in a row, while plain HTTP works, before trying the next mode. */
const FAILURES_BEFORE_FALLBACK = 2;
/** A feed that has delivered nothing after this long counts as a failed opening. */
const CONNECT_TIMEOUT_MS = 10_000;
/** How often a player in a fallback mode checks whether a better mode works again. */
const UPGRADE_EVERY_MS = 30_000;

/**
 * One camera's live picture: runs a feed, falls back and reconnects, and keeps the
 * statistics the overlay shows.
 *
 * Events: 'change' (state, mode or online changed) and 'frame' (a frame was drawn).
 * `state` is 'connecting', 'live', 'reconnecting', 'paused', 'hidden' (the tab) or
 * 'offscreen' (scrolled out of view).
 */
export class Player extends EventTarget {
  state = 'connecting';
  mode = MODES[0];
  /** The camera's state from the broker; null until known. */
  online = null;
  /** Frames drawn on the canvas since this player was made. */
  frames = 0;
  width = 0;
  height = 0;
  /** When the next reconnect attempt starts (Date.now() time), while 'reconnecting'. */
  retryAt = null;

  #media;
  #canvas;
  #sink;
  #feeds;
  #feed = null;
  #feedElement = null;
  // Bumped whenever the feed is torn down: callbacks and timers from an older epoch
  // find it changed and do nothing, so a stale socket can never steer the player.
  #epoch = 0;
  #timers = [];
  #failures = 0;
  #backoff = new Backoff();
  #fps = new RateMeter();
  #bytes = new RateMeter();
  #shownReceivedAt = null;
  #paused = false;
  #hidden = false;
  #offscreen = false;
  #destroyed = false;
  #running = null; // neither true nor false until start(), so start() always acts

  /**
   * `media` is the element holding the canvas; the MJPEG <img> goes there too.
   * `feeds` says how each mode is opened (FULL_SIZE_FEEDS by default).
   * Nothing streams before `start()`.
   */
  constructor(cameraId, media, { hidden = false, offscreen = false, feeds = FULL_SIZE_FEEDS } = {}) {
    super();
    this.cameraId = cameraId;
    this.#hidden = hidden;
    this.#offscreen = offscreen;
    this.#feeds = feeds;
    this.#media = media;
    this.#canvas = media.querySelector('canvas');
    this.#sink = new FrameSink(this.#canvas, (meta, width, height) =>
      this.#drawn(meta, width, height),
    );
  }

  get paused() {
    return this.#paused;
  }

  /** Frames drawn per second, recently. */
  get fps() {
    return this.#fps.rate();
  }

  get bytesPerSecond() {
    return this.#bytes.rate();
  }

  /** Milliseconds since the broker received the frame on screen; null when unknown. */
  get age() {
    if (this.#shownReceivedAt === null || this.mode === 'mjpeg') return null;
    // Broker and browser clocks may disagree by a little; a frame from the future is 0 old.
    return Math.max(0, Date.now() - this.#shownReceivedAt);
  }

  start() {
    this.#reconcile();
  }

  setPaused(paused) {
    this.#paused = paused;
    this.#reconcile();
  }

  /** A hidden tab streams nothing: sockets and connections close until it is shown. */
  setHidden(hidden) {
    this.#hidden = hidden;
    this.#reconcile();
  }

  /** A picture scrolled out of view streams nothing either, until it is back. */
  setOffscreen(offscreen) {
    this.#offscreen = offscreen;
    this.#reconcile();
  }

  /** Opens the current mode again, e.g. to ask for another size; the picture stays meanwhile. */
  reopen() {
    if (this.#running) this.#open(this.mode);
  }

  /** Takes news from /api/cameras, which covers what the current feed cannot tell. */
  setCameraInfo(camera) {
    // An open WebSocket hears of online changes first; the polled list may be older.
    if (!(this.mode === 'ws' && this.state === 'live')) this.#setOnline(camera.online);
    // An <img> exposes only its first picture's size; the broker knows the current one
    // (of the camera's full size: a stream of a smaller size keeps what its <img> said).
    if (this.mode === 'mjpeg' && !this.#feed?.sized && camera.width && camera.height) {
      this.width = camera.width;
      this.height = camera.height;
    }
  }

  destroy() {
    this.#destroyed = true;
    this.#reconcile();
    this.#sink.close();
  }

  // Private.

  #reconcile() {
    const run = !this.#paused && !this.#hidden && !this.#offscreen && !this.#destroyed;
    if (run === this.#running) return;
    this.#running = run;
    if (run) {
      this.#open(this.mode);
    } else {
      this.#tearDown();
      this.#setState(this.#paused ? 'paused' : this.#hidden ? 'hidden' : 'offscreen');
    }
  }

  /** Stops the feed and every timer; returns the new epoch. */
  #tearDown() {
    if (this.#feedElement) this.#freeze(this.#feedElement);
    this.#feed?.stop();
    this.#feed = null;
    this.#feedElement?.remove();
    this.#feedElement = null;
    this.#canvas.hidden = false;
    for (const timer of this.#timers) clearTimeout(timer);
    this.#timers = [];
    this.retryAt = null;
    this.#epoch += 1;
    return this.#epoch;
  }

  #open(mode) {
    const epoch = this.#tearDown();
    const current = () => epoch === this.#epoch;
    if (mode !== this.mode) {
      this.mode = mode;
      this.#failures = 0;
    }
    this.#fps.reset();
    this.#bytes.reset();
    const feed = this.#feeds[mode].open(this.cameraId, {
      working: () => current() && this.#working(),
      frame: (blob, meta) => {
        if (!current()) return;
        this.#bytes.add(meta.bytes);
        this.#sink.push(blob, meta);
      },
      status: (online) => current() && this.#setOnline(online),
      ended: (wasWorking) => current() && this.#ended(mode, wasWorking),
    });
    this.#feed = feed;
    if (feed.element) {
      this.#feedElement = feed.element;
      feed.element.alt = `Live picture from ${this.cameraId}`;
      this.#canvas.after(feed.element); // under the badge and the stats, like the canvas
    }
    this.#canvas.hidden = Boolean(feed.element);
    this.#later(CONNECT_TIMEOUT_MS, () => this.state === 'connecting' && this.#ended(mode, false));
    if (mode !== MODES[0]) this.#later(UPGRADE_EVERY_MS, () => this.#tryUpgrade(epoch));
    this.#setState('connecting');
    feed.start();
  }

  #working() {
    this.#failures = 0;
    this.#backoff.reset();
    if (this.mode === 'mjpeg') {
      this.width = this.#feedElement.naturalWidth;
      this.height = this.#feedElement.naturalHeight;
    }
    this.#setState('live');
  }

  /** The one place that decides what follows a feed's end: retry, or fall back. */
  async #ended(mode, wasWorking) {
    const epoch = this.#tearDown();
    this.#setState('reconnecting');
    if (!wasWorking && (await brokerReachable())) {
      if (epoch !== this.#epoch) return; // paused, hidden or gone meanwhile
      this.#failures += 1;
      const next = MODES.slice(MODES.indexOf(mode) + 1).find((later) => this.#available(later));
      if (next && this.#failures >= FAILURES_BEFORE_FALLBACK) {
        this.#open(next);
        return;
      }
    }
    if (epoch !== this.#epoch) return;
    // A stream that worked and stopped, or a broker that is down: same mode, later.
    const delay = this.#backoff.next();
    this.retryAt = Date.now() + delay;
    this.#later(delay, () => this.#open(mode));
    this.dispatchEvent(new Event('change'));
  }

  /** Probes the better modes without touching the screen; switches to the first that works. */
  async #tryUpgrade(epoch) {
    for (const mode of MODES.slice(0, MODES.indexOf(this.mode))) {
      if (!this.#available(mode)) continue;
      const works = await probe(this.#feeds[mode], this.cameraId);
      if (epoch !== this.#epoch) return;
      if (works) {
        this.#open(mode);
        return;
      }
    }
    this.#later(UPGRADE_EVERY_MS, () => this.#tryUpgrade(epoch));
  }

  /** Copies the <img>'s current picture to the canvas, so pausing MJPEG keeps it on screen. */
  #freeze(image) {
    if (!image.complete || !image.naturalWidth) return;
    this.#canvas.width = image.naturalWidth;
    this.#canvas.height = image.naturalHeight;
    this.#canvas.getContext('2d', { alpha: false }).drawImage(image, 0, 0);
  }

  #drawn(meta, width, height) {
    this.frames += 1;
    this.#fps.add(1);
    this.#shownReceivedAt = meta.receivedAt;
    this.width = width;
    this.height = height;
    this.dispatchEvent(new Event('frame'));
  }

  #setState(state) {
    this.state = state;
    this.dispatchEvent(new Event('change'));
  }

  #setOnline(online) {
    if (online === this.online) return;
    this.online = online;
    this.dispatchEvent(new Event('change'));
  }

  #later(ms, callback) {
    this.#timers.push(setTimeout(callback, ms));
  }

  #available(mode) {
    return this.#feeds[mode].available?.() ?? true;
  }
}

/** Whether a mode (its entry in `feeds`) can deliver this camera now; resolves within CONNECT_TIMEOUT_MS. */
function probe(entry, cameraId) {
  return new Promise((resolve) => {
    const finish = (works) => {
      clearTimeout(timer);
      feed.stop();
      resolve(works);
    };
    const feed = entry.open(cameraId, {
      working: () => finish(true),
      ended: () => finish(false),
      frame: () => {},
      status: () => {},
    });
    const timer = setTimeout(() => finish(false), CONNECT_TIMEOUT_MS);
    feed.start();
  });
}
