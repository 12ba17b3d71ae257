/**
 * The viewer page: a grid of live tiles at `#/`, one camera large at `#/cameras/ID`.
 * The hash is the whole state, so views are bookmarkable and the back button works.
 */
import {
  CAMERA_ID,
  Refused,
  SignInRequired,
  cameraUrls,
  fetchCameras,
  fetchSession,
  signIn,
  signOut,
} from './api.js';
import { GridSocket } from './gridsocket.js';
import { StreamBudget } from './mjpegfeed.js';
import { Tile } from './tile.js';

/** How often the camera list is fetched again (cameras come and go, go offline). */
const REFRESH_MS = 4000;

const view = document.querySelector('#view');
const nav = document.querySelector('#camera-nav');
const brokerNote = document.querySelector('#broker-note');
const account = document.querySelector('#account');

/** Tiles on screen, by camera id. */
const tiles = new Map();
/** What the grid's tiles share: one WebSocket for all cameras, and the MJPEG fallback's streams. */
const grid = { socket: new GridSocket(), budget: new StreamBudget() };
/** The last camera list from the broker; null until the first answer. */
let cameras = null;
let navSignature = '';
let refreshTimer = null;
let refreshing = false;
/** The sign-in form is on screen: the broker wants credentials before it shows any camera. */
let signingIn = false;

/** The camera id in a hash; null for the grid. */
function routeCamera(hash = location.hash) {
  const match = /^#\/cameras\/([^/]+)$/.exec(hash);
  if (!match) return null;
  try {
    return decodeURIComponent(match[1]);
  } catch {
    return match[1]; // a malformed escape: shown as an invalid id
  }
}

function clearView() {
  for (const tile of tiles.values()) tile.destroy();
  tiles.clear();
  view.replaceChildren();
}

function showView() {
  if (signingIn) return;
  clearView();
  const cameraId = routeCamera();
  if (cameraId === null) {
    showGrid();
  } else if (CAMERA_ID.test(cameraId)) {
    // Until the camera list arrives the view stays empty: it decides between the
    // camera and a note that no such camera exists (applyCameras).
    if (cameras !== null) showCamera(cameraId);
  } else {
    showInvalid(cameraId);
  }
  applyCameras();
}

function showGrid() {
  document.title = 'framebroker';
  view.append(
    element('h1', { className: 'visually-hidden', textContent: 'Cameras' }),
    element('div', { className: 'grid' }),
    element('p', {
      className: 'empty',
      hidden: true,
      textContent: 'No cameras yet. A camera appears here once a camera agent publishes to this broker.',
    }),
  );
}

function showCamera(cameraId) {
  if (!cameras.some(({ id }) => id === cameraId)) {
    showMissing(cameraId);
    return;
  }
  document.title = `${cameraId} · framebroker`;
  const tile = addTile(cameraId, { large: true });
  view.append(element('a', { className: 'back', href: '#/', textContent: '← All cameras' }), tile.element);
}

/** A link to a camera the broker does not have: say so, and offer the ones it has. */
function showMissing(cameraId) {
  document.title = 'No such camera · framebroker';
  const section = element('section', { className: 'missing' });
  section.dataset.cameras = cameras.map(({ id }) => id).join(' ');
  const heading = element('h1', { tabIndex: -1, textContent: `No camera “${cameraId}”` });
  const list = element('ul', { className: 'camera-list' });
  list.append(
    ...cameras.map(({ id }) => {
      const item = element('li');
      item.append(element('a', { href: cameraUrls(id).page, textContent: id }));
      return item;
    }),
  );
  section.append(
    heading,
    element('p', {
      className: 'empty',
      textContent: cameras.length
        ? `This broker has no camera called “${cameraId}”. Its cameras:`
        : `This broker has no camera called “${cameraId}”, and no other camera yet.`,
    }),
  );
  if (cameras.length) section.append(list);
  section.append(element('a', { href: '#/', textContent: 'Show all cameras' }));
  view.append(section);
}

function showInvalid(cameraId) {
  document.title = 'framebroker';
  const message = element('p', {
    className: 'empty',
    textContent: `“${cameraId}” is not a camera id (letters, digits, “_” and “-”, at most 64). `,
  });
  message.append(element('a', { href: '#/', textContent: 'Show all cameras' }));
  view.append(message);
}

/** The page's own sign-in form: the page never lets the browser show its Basic dialog. */
function showSignIn() {
  signingIn = true;
  clearView();
  cameras = null;
  navSignature = '';
  nav.replaceChildren();
  account.hidden = true;
  document.title = 'Sign in · framebroker';
  const form = document.querySelector('#sign-in-template').content.firstElementChild.cloneNode(true);
  const error = form.querySelector('.error');
  form.addEventListener('submit', async (event) => {
    event.preventDefault();
    const button = form.querySelector('button');
    button.disabled = true;
    let problem;
    try {
      problem = await signIn(form.elements.username.value, form.elements.password.value);
    } catch {
      problem = 'The broker cannot be reached.';
    }
    button.disabled = false;
    if (problem) {
      error.textContent = problem;
      error.hidden = false;
      form.elements.password.select();
      return;
    }
    signingIn = false;
    showView();
    refresh();
    updateAccount();
  });
  view.replaceChildren(form);
  form.elements.username.focus();
}

/** A share link the broker no longer accepts (expired, or the broker's key changed). */
function showRefused(reason) {
  clearView();
  cameras = null;
  nav.replaceChildren();
  view.append(element('p', { className: 'empty', textContent: reason || 'The broker refused this page.' }));
}

/** The header's account area: who is signed in and a way out, or a way in. */
async function updateAccount() {
  let session;
  try {
    session = await fetchSession();
  } catch {
    return; // signed out, refused or unreachable: the camera list handles each
  }
  const signedIn = session.via === 'session';
  const signInButton = account.querySelector('.sign-in');
  account.querySelector('.user').textContent = session.user ? `Signed in as ${session.user}` : '';
  account.querySelector('.sign-out').hidden = !signedIn;
  signInButton.hidden = !(session.sign_in && session.via === 'none');
  account.hidden = signingIn || (!session.user && signInButton.hidden);
}

account.querySelector('.sign-out').addEventListener('click', async () => {
  await signOut().catch(() => {});
  account.hidden = true;
  clearView();
  cameras = null;
  navSignature = '';
  nav.replaceChildren();
  await start();
});
account.querySelector('.sign-in').addEventListener('click', () => showSignIn());

function addTile(cameraId, { large = false } = {}) {
  const tile = new Tile(cameraId, { large, grid });
  tiles.set(cameraId, tile);
  // A player's WebSocket hears of a camera going offline long before the next list
  // does; the nav follows it so that the two never disagree for seconds.
  tile.player.addEventListener('change', () => {
    const camera = cameras?.find(({ id }) => id === cameraId);
    if (camera && tile.player.online !== null && camera.online !== tile.player.online) {
      camera.online = tile.player.online;
      renderNav();
    }
  });
  return tile;
}

/** Brings the nav, the grid and the tiles' online state up to date with `cameras`. */
function applyCameras() {
  if (cameras === null) return;
  const routed = routeCamera();
  if (routed !== null && CAMERA_ID.test(routed)) {
    // The first list for a camera view, or a change to the cameras a "no such camera"
    // note lists (the camera may have just arrived): draw the view again.
    const missing = view.querySelector('.missing');
    const ids = cameras.map(({ id }) => id).join(' ');
    if (view.childElementCount === 0 || (missing && missing.dataset.cameras !== ids)) {
      showView();
      return;
    }
  }
  const grid = view.querySelector('.grid');
  if (grid) syncGrid(grid);
  for (const camera of cameras) {
    const tile = tiles.get(camera.id);
    if (!tile) continue;
    tile.update(camera);
    // The player may know better (an open WebSocket hears changes first).
    if (tile.player.online !== null) camera.online = tile.player.online;
  }
  renderNav();
}

/** Adds, removes and orders grid tiles by id; tiles that stay keep streaming undisturbed. */
function syncGrid(grid) {
  const listed = new Set(cameras.map((camera) => camera.id));
  for (const [id, tile] of tiles) {
    if (!listed.has(id)) {
      tile.destroy();
      tiles.delete(id);
    }
  }
  cameras.forEach((camera, index) => {
    const tile = tiles.get(camera.id) ?? addTile(camera.id);
    if (grid.children[index] !== tile.element) {
      grid.insertBefore(tile.element, grid.children[index] ?? null);
    }
  });
  view.querySelector('.empty').hidden = cameras.length > 0;
}

function renderNav() {
  const selected = routeCamera();
  // Rebuilt only when something shown changed, so a focused link is not yanked away
  // every few seconds.
  const signature = JSON.stringify([selected, cameras.map(({ id, title, online }) => [id, title, online])]);
  if (signature === navSignature) return;
  navSignature = signature;
  const focused = nav.contains(document.activeElement) ? document.activeElement.dataset.camera : null;
  nav.replaceChildren(
    ...cameras.map(({ id, title, online }) => {
      const link = element('a', { href: cameraUrls(id).page, className: online ? 'online' : 'offline' });
      link.dataset.camera = id;
      if (id === selected) link.setAttribute('aria-current', 'page');
      link.append(
        element('span', { className: 'dot' }),
        title ?? id,
        element('span', { className: 'visually-hidden', textContent: online ? ' (online)' : ' (offline)' }),
      );
      const item = element('li');
      item.append(link);
      return item;
    }),
  );
  if (focused) nav.querySelector(`a[data-camera="${focused}"]`)?.focus();
}

async function refresh() {
  if (refreshing) return;
  refreshing = true;
  clearTimeout(refreshTimer);
  try {
    cameras = await fetchCameras();
    brokerNote.hidden = true;
    applyCameras();
  } catch (error) {
    if (error instanceof SignInRequired) {
      if (!signingIn) showSignIn();
      return; // nothing to refresh until someone signs in
    }
    if (error instanceof Refused) {
      showRefused(error.message);
      return;
    }
    brokerNote.hidden = false; // the players retry on their own; the list retries below
  } finally {
    refreshing = false;
  }
  if (!document.hidden) refreshTimer = setTimeout(refresh, REFRESH_MS);
}

function element(tag, properties = {}) {
  return Object.assign(document.createElement(tag), properties);
}

window.addEventListener('hashchange', (event) => {
  const left = routeCamera(new URL(event.oldURL).hash);
  showView();
  // Move focus to what just opened, or back to the tile the user came from.
  const [tile] = tiles.values();
  if (routeCamera() !== null) {
    (tile ?? view.querySelector('.missing h1'))?.focus();
  } else if (left !== null) {
    tiles.get(left)?.focus();
  }
});

// A hidden tab streams nothing: every player closes its connection until it is shown.
document.addEventListener('visibilitychange', () => {
  for (const tile of tiles.values()) tile.player.setHidden(document.hidden);
  if (document.hidden) {
    clearTimeout(refreshTimer);
  } else {
    refresh();
  }
});

document.addEventListener('keydown', (event) => {
  // Escape leaves the large view (in fullscreen the browser uses it to leave fullscreen).
  if (event.key === 'Escape' && routeCamera() !== null && !document.fullscreenElement) {
    location.hash = '#/';
  }
});

/**
 * Asks for the camera list before showing any picture: a broker that wants a sign-in
 * gets the form at once, instead of players failing against it first.
 */
async function start() {
  await refresh();
  if (!signingIn && cameras !== null) showView();
  else if (!signingIn && !brokerNote.hidden) showView(); // unreachable: the players keep retrying
  updateAccount();
}

start();
