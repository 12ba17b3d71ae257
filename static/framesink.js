/**
 * Decodes JPEG blobs and draws them on a canvas, newest first.
 *
 * createImageBitmap decodes off the main thread. At most one decode is in flight and
 * one frame waits; a newer frame replaces the waiting one, so a slow device shows
 * fewer frames instead of falling behind (the broker's newest-frame rule, in the page).
 */
export class FrameSink {
  #canvas;
  #context;
  #onDrawn;
  #decoding = false;
  #waiting = null;
  #closed = false;

  /** `onDrawn(meta, width, height)` runs after each frame reaches the canvas. */
  constructor(canvas, onDrawn) {
    this.#canvas = canvas;
    this.#context = canvas.getContext('2d', { alpha: false });
    this.#onDrawn = onDrawn;
  }

  push(blob, meta) {
    if (this.#closed) return;
    if (this.#decoding) {
      this.#waiting = { blob, meta };
      return;
    }
    this.#drain({ blob, meta });
  }

  /** Draw nothing more; frames still decoding are dropped. */
  close() {
    this.#closed = true;
    this.#waiting = null;
  }

  async #drain(frame) {
    this.#decoding = true;
    while (frame && !this.#closed) {
      let bitmap = null;
      try {
        bitmap = await createImageBitmap(frame.blob);
      } catch {
        // A JPEG the browser cannot decode: skip it, the next frame replaces it.
      }
      if (bitmap) {
        if (!this.#closed) this.#draw(bitmap, frame.meta);
        // Bitmaps hold decoded pixels outside the JS heap; closing each one at once
        // keeps memory flat over hours instead of waiting for garbage collection.
        bitmap.close();
      }
      frame = this.#waiting;
      this.#waiting = null;
    }
    this.#decoding = false;
  }

  #draw(bitmap, meta) {
    const { width, height } = bitmap;
    if (this.#canvas.width !== width || this.#canvas.height !== height) {
      this.#canvas.width = width;
      this.#canvas.height = height;
    }
    this.#context.drawImage(bitmap, 0, 0);
    this.#onDrawn(meta, width, height);
  }
}
