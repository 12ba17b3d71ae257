import { cameraUrls } from './api.js';
import { MODE_NAMES, Player } from './player.js';

/** How often the overlay's numbers (fps, data rate, age) are refreshed. */
const RENDER_EVERY_MS = 500;

/**
 * One camera on screen: the live picture, its overlay and its controls.
 * `large` is the single-camera view; otherwise the tile links to it.
 */
export class Tile {
  #badge;
  #fields;
  #pause;
  #fullscreen;
  #heading;
  #timer;

  constructor(cameraId, { large = false } = {}) {
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

    this.player = new Player(cameraId, element.querySelector('.media'), {
      hidden: document.hidden,
    });
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
    this.player.destroy();
    this.element.remove();
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
