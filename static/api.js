/**
 * The broker's HTTP surface, as the page uses it (README, "Protocol"). Every URL is
 * relative to the page, so the page works under a proxy's path prefix (`/cams/`) too.
 */

export const CAMERA_ID = /^[A-Za-z0-9_-]{1,64}$/;

/** A share link's token (`?share=` in the page's address): sent along with every request. */
export const SHARE = new URLSearchParams(location.search).get('share');

/** The broker wants credentials (401): the page shows its sign-in form. */
export class SignInRequired extends Error {}

/** The broker refused (403), with its reason: an expired share link, say. */
export class Refused extends Error {}

/** `path` with the share token added when the page was opened from a share link. */
function withShare(path) {
  const url = new URL(path, location.href);
  if (SHARE !== null) url.searchParams.set('share', SHARE);
  return url.href;
}

/** `path` as a WebSocket URL (ws: or wss:, as the page). */
function socketUrl(path) {
  const url = new URL(withShare(path));
  url.protocol = url.protocol === 'https:' ? 'wss:' : 'ws:';
  return url.href;
}

/**
 * Every URL the page needs for one camera. With a `width`, the MJPEG stream and the
 * snapshot are the broker's smaller size of about that width.
 */
export function cameraUrls(cameraId, width = null) {
  const base = `cameras/${encodeURIComponent(cameraId)}`;
  const sized = width ? `?width=${width}` : '';
  return {
    page: `#/cameras/${encodeURIComponent(cameraId)}`,
    ws: socketUrl(`${base}/ws?header=1`),
    mjpeg: withShare(`${base}/mjpeg${sized}`),
    snapshot: withShare(`${base}/snapshot.jpg${sized}`),
  };
}

/** The grid's one WebSocket for every camera on screen. */
export function gridSocketUrl() {
  return socketUrl('ws');
}

/** Throws SignInRequired or Refused for 401 and 403, Error for any other failure. */
async function check(response) {
  if (response.status === 401) throw new SignInRequired();
  if (response.status === 403) throw new Refused((await response.text()).trim());
  if (!response.ok) throw new Error(`${response.url} answered ${response.status}`);
  return response;
}

/** The cameras this visitor may watch, sorted by id; throws when the broker cannot be reached. */
export async function fetchCameras() {
  const response = await check(await fetch(withShare('api/cameras'), { cache: 'no-store' }));
  return (await response.json()).cameras;
}

/** Who the page acts for: `{user, via, camera, sign_in}` (via: session, basic, share or none). */
export async function fetchSession() {
  const response = await check(await fetch(withShare('api/session'), { cache: 'no-store' }));
  return response.json();
}

/**
 * Signs in with a user name and password; resolves to null on success, else to the
 * message to show (wrong password, too many attempts).
 */
export async function signIn(username, password) {
  const response = await fetch('login', {
    method: 'POST',
    // The cookie's path: this page's folder, so that under a proxy's prefix it stays ours.
    body: new URLSearchParams({ username, password, path: location.pathname }),
    cache: 'no-store',
  });
  if (response.ok) return null;
  if (response.status === 401) return 'Wrong user name or password.';
  if (response.status === 429) {
    return `Too many attempts. Try again in ${response.headers.get('Retry-After') ?? 'a few'} s.`;
  }
  return `Signing in failed (${response.status}).`;
}

/** Ends the session on the broker and drops the cookie. */
export async function signOut() {
  await fetch('logout', {
    method: 'POST',
    body: new URLSearchParams({ path: location.pathname }),
    cache: 'no-store',
  });
}

/**
 * Whether plain HTTP reaches the broker. A stream that fails while this succeeds is
 * blocked on the way (a proxy refusing WebSocket upgrades, say); a stream that fails
 * while this fails too has simply lost the broker.
 */
export async function brokerReachable() {
  try {
    const response = await fetch('healthz', {
      cache: 'no-store',
      signal: AbortSignal.timeout(3000),
    });
    return response.ok;
  } catch {
    return false;
  }
}
