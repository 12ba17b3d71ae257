/** The broker's HTTP surface, as the page uses it (see docs/protocol.md). */

export const CAMERA_ID = /^[A-Za-z0-9_-]{1,64}$/;

/** Every URL the page needs for one camera. */
export function cameraUrls(cameraId) {
  const base = `/cameras/${encodeURIComponent(cameraId)}`;
  const ws = new URL(`${base}/ws?header=1`, location.href);
  ws.protocol = ws.protocol === 'https:' ? 'wss:' : 'ws:';
  return {
    page: `#/cameras/${encodeURIComponent(cameraId)}`,
    ws: ws.href,
    mjpeg: `${base}/mjpeg`,
    snapshot: `${base}/snapshot.jpg`,
  };
}

/** The broker's camera list, sorted by id; throws when the broker cannot be reached. */
export async function fetchCameras() {
  const response = await fetch('/api/cameras', { cache: 'no-store' });
  if (!response.ok) throw new Error(`/api/cameras answered ${response.status}`);
  return (await response.json()).cameras;
}

/**
 * Whether plain HTTP reaches the broker. A stream that fails while this succeeds is
 * blocked on the way (a proxy refusing WebSocket upgrades, say); a stream that fails
 * while this fails too has simply lost the broker.
 */
export async function brokerReachable() {
  try {
    const response = await fetch('/healthz', {
      cache: 'no-store',
      signal: AbortSignal.timeout(3000),
    });
    return response.ok;
  } catch {
    return false;
  }
}
