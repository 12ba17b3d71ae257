import { cameraUrls } from './api.js';
import { GridFeed } from './gridsocket.js';
import { MjpegFeed } from './mjpegfeed.js';
import { MODE_NAMES, Player } from './player.js';
import { SnapshotFeed } from './snapshotfeed.js';

/** How often the overlay's numbers (fps, data rate, age) are refreshed. */
const RENDER_EVERY_MS = 500;
/**
 * Device pixels per CSS pixel a grid tile asks for at most: a thumbnail looks no sharper
 * at 3x than at 2x, and at 3x a phone's grid would take twice the data.
 */
const MAX_PIXEL_RATIO = 2;
/** A grid tile asks for a new size when its width changed by more than this share. */
const RESIZE_SHARE = 0.25;
/** Tiles this close to the screen count as on screen, so they are live when scrolled in. */
const ON_SCREEN_MARGIN = '64px';

/**
 * One camera on screen: the live picture, its overlay and its controls.
 * `large` is the single-camera view, at full size; otherwise the tile links to it and,
 * given `grid` ({socket: GridSocket, budget: StreamBudget}), streams a size that fits it
 * over the grid's one socket (or over an MJPEG stream of the budget, or snapshots), and
 * only while it is on screen.
 */
export class Tile {
  #badge;
  #fields;
  #pause;
  #fullscreen;
  #heading;
  #timer;
  #observers = [];
  #width = null;

  constructor(cameraId, { large = false, grid = null } = {}) {
    const template = document.querySelector('#tile-template');
    const element = template.content.firstElementChild.cloneNode(true);
    const urls = cameraUrls(cameraId);
    this.element = element;
    element.dataset.camera = cameraId;
    element.classList.toggle('large', large);

    this.#heading = document.createElement(large ? 'h1' : 'h2');
    this.#heading.className = 'name';
    if (large) {
      this.#heading.textContent = cameraId;
      this.#heading.tabIndex = -1; // focused when the view opens, for keyboard and screen reader users
    } else {
      const open = document.createElement('a');
      open.className = 'open';
      open.href = urls.page;
      open.textContent = cameraId;
      this.#heading.append(open);
    }
    element.querySelector('.bar').prepend(this.#heading);
    element.querySelector('canvas').setAttribute('aria-label', `Live picture from ${cameraId}`);

    this.#badge = element.querySelector('.badge');
    this.#fields = Object.fromEntries(
      [...element.querySelectorAll('[data-field]')].map((span) => [span.dataset.field, span]),
    );

    const snapshot = element.querySelector('[data-action="snapshot"]');
    label(snapshot, `Download a snapshot of ${cameraId}`);
    snapshot.href = urls.snapshot;
    snapshot.addEventListener('click', () => {
      const stamp = new Date().toISOString().slice(0, 19).replaceAll(':', '-');
      snapshot.download = `${cameraId}-${stamp}.jpg`;
    });

    this.#fullscreen = element.querySelector('[data-action="fullscreen"]');
    label(this.#fullscreen, `Show ${cameraId} full screen`);
    // iPhone Safari, for one, has no element fullscreen: hide the button there.
    this.#fullscreen.hidden = !document.fullscreenEnabled;
    this.#fullscreen.addEventListener('click', () => this.#toggleFullscreen());
    element.addEventListener('fullscreenchange', () => this.#render());

    this.#pause = element.querySelector('[data-action="pause"]');
    label(this.#pause, `Pause ${cameraId}`);
    this.#pause.addEventListener('click', () => this.player.setPaused(!this.player.paused));

    const media = element.querySelector('.media');
    this.player = new Player(cameraId, media, {
      hidden: document.hidden,
      ...(large || !grid ? {} : { offscreen: true, feeds: this.#gridFeeds(grid) }),
    });
    if (!large && grid) this.#observe(media);
    this.player.addEventListener('change', () => this.#render());
    this.player.addEventListener('frame', () => {
      // The frame counter is a test hook (tests wait on it); it costs one attribute write.
      // The rest of the overlay follows on the timer, except after the first picture,
      // which ends "waiting for a picture" at once.
      if (this.player.frames === 1) this.#render();
      element.dataset.frames = String(this.player.frames);
    });
    this.#timer = setInterval(() => this.#render(), RENDER_EVERY_MS);
    this.player.start();
  }

  /** Takes this camera's entry from /api/cameras. */
  update(camera) {
    const name = this.#heading.querySelector('a') ?? this.#heading;
    if (camera.title && name.textContent !== camera.title) name.textContent = camera.title;
    this.player.setCameraInfo(camera);
  }

  /** Focuses the tile's link (grid) or heading (large view). */
  focus() {
    (this.#heading.querySelector('a') ?? this.#heading).focus();
  }

  destroy() {
    clearInterval(this.#timer);
    for (const observer of this.#observers) observer.disconnect();
    this.player.destroy();
    this.element.remove();
  }

  /** A grid tile's modes: each at the width the tile needs (the broker snaps it to its sizes). */
  #gridFeeds({ socket, budget }) {
    const width = () => this.#width;
    return {
      ws: { open: (cameraId, handlers) => new GridFeed(socket, cameraId, width(), handlers) },
      mjpeg: {
        open: (cameraId, handlers) => new MjpegFeed(cameraId, handlers, { width: width(), budget }),
        available: () => budget.free > 0,
      },
      snapshot: { open: (cameraId, handlers) => new SnapshotFeed(cameraId, handlers, { width: width() }) },
    };
  }

  /** Streams only while on screen, at a width that follows the tile's. */
  #observe(media) {
    const visibility = new IntersectionObserver(
      ([entry]) => {
        if (entry.isIntersecting) this.#width ??= wantedWidth(entry.boundingClientRect.width);
        this.player.setOffscreen(!entry.isIntersecting);
      },
      { rootMargin: ON_SCREEN_MARGIN },
    );
    const size = new ResizeObserver(([entry]) => {
      const wanted = wantedWidth(entry.contentRect.width);
      if (this.#width === null || Math.abs(wanted - this.#width) <= this.#width * RESIZE_SHARE) return;
      this.#width = wanted;
      this.player.reopen();
    });
    visibility.observe(this.element);
    size.observe(media);
    this.#observers.push(visibility, size);
  }

  #toggleFullscreen() {
    if (document.fullscreenElement === this.element) {
      document.exitFullscreen();
    } else {
      this.element.requestFullscreen();
    }
  }

  #render() {
    const { player } = this;
    const data = this.element.dataset;
    data.state = player.state;
    data.mode = player.mode;
    data.online = player.online === null ? 'unknown' : String(player.online);
    data.frames = String(player.frames);
    this.#badge.hidden = player.online !== false;
    this.#pause.setAttribute('aria-pressed', String(player.paused));
    this.#fullscreen.setAttribute(
      'aria-pressed',
      String(document.fullscreenElement === this.element),
    );

    // An <img> shows MJPEG frames without telling the page, so there is nothing to count.
    const counting = player.state === 'live' && player.mode !== 'mjpeg';
    const { age } = player;
    this.#fields.connection.textContent = describe(player);
    this.#fields.fps.textContent = counting ? `${player.fps.toFixed(1)} fps` : '';
    this.#fields.size.textContent = player.width ? `${player.width}×${player.height}` : '';
    this.#fields.rate.textContent = counting ? formatRate(player.bytesPerSecond) : '';
    this.#fields.age.textContent = age === null ? '' : `${formatAge(age)} old`;
  }
}

/** Device pixels across a picture `cssWidth` wide, as a width to ask the broker for. */
function wantedWidth(cssWidth) {
  return Math.max(1, Math.round(cssWidth * Math.min(window.devicePixelRatio || 1, MAX_PIXEL_RATIO)));
}

function label(control, text) {
  control.setAttribute('aria-label', text);
  control.title = text;
}

/** The connection line of the overlay, e.g. "WebSocket" or "reconnecting in 4 s". */
function describe(player) {
  const mode = MODE_NAMES[player.mode];
  switch (player.state) {
    case 'connecting':
      return `connecting (${mode})…`;
    case 'live':
      return player.frames === 0 && player.mode !== 'mjpeg' ? `${mode}, waiting for a picture` : mode;
    case 'reconnecting':
      if (player.retryAt === null) return 'reconnecting…';
      return `reconnecting in ${Math.max(1, Math.ceil((player.retryAt - Date.now()) / 1000))} s`;
    default:
      return player.state; // 'paused' or 'hidden'
  }
}

function formatRate(bytesPerSecond) {
  if (bytesPerSecond >= 1e6) return `${(bytesPerSecond / 1e6).toFixed(1)} MB/s`;
  return `${Math.round(bytesPerSecond / 1e3)} kB/s`;
}

function formatAge(ms) {
  if (ms < 1000) return `${Math.round(ms)} ms`;
  if (ms < 60_000) return `${(ms / 1000).toFixed(1)} s`;
  return `${Math.floor(ms / 60_000)} min`;
}
