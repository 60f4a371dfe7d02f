// pgp-wgpu for web pages: the engine's module (pkg/, built by web/build.sh) behind two calls.
//
//   import { Upscaler } from 'pgp-wgpu';
//   const up = await Upscaler.load('https://…/osediff.bundle/manifest.json');
//   const out = await up.upscale(img, { progress: (p) => bar.value = p });   // ImageData
//
// `upscale(image, options)` takes ImageData, an <img>, a canvas, an ImageBitmap, a Blob or a
// URL, with the engine's options (scale, steps, tile, seed, prompt, colorFix, oneStep, signal)
// and UpscalerJS's names where they mean something here: `patchSize` (a tile in input pixels),
// `padding` (accepted; tiles always overlap by half), `progress(fraction, done, total)`,
// `signal` (an AbortSignal) and `output` ('imageData', the default, or 'base64': a PNG data
// URL).
import init, { Upscaler as Engine } from './pkg/pgp_web.js';

let ready;

/** Loads the wasm once (from beside this file unless `wasm` names it). */
export function initialize(wasm) {
  ready ??= init(wasm === undefined ? undefined : { module_or_path: wasm });
  return ready;
}

async function toImageData(image) {
  if (typeof ImageData !== 'undefined' && image instanceof ImageData) return image;
  let source = image;
  if (typeof image === 'string' || image instanceof URL) {
    const res = await fetch(image);
    if (!res.ok) throw new Error(`fetching ${image}: HTTP ${res.status}`);
    source = await res.blob();
  }
  if (typeof Blob !== 'undefined' && source instanceof Blob) source = await createImageBitmap(source);
  if (typeof HTMLImageElement !== 'undefined' && source instanceof HTMLImageElement && !source.complete) {
    await source.decode();
  }
  const width = source.naturalWidth ?? source.videoWidth ?? source.width;
  const height = source.naturalHeight ?? source.videoHeight ?? source.height;
  if (!width || !height) throw new Error('upscale: the image has no pixels (not loaded?)');
  const ctx = new OffscreenCanvas(width, height).getContext('2d');
  ctx.drawImage(source, 0, 0);
  return ctx.getImageData(0, 0, width, height);
}

async function toBase64(imageData) {
  const canvas = new OffscreenCanvas(imageData.width, imageData.height);
  canvas.getContext('2d').putImageData(imageData, 0, 0);
  const blob = await canvas.convertToBlob({ type: 'image/png' });
  const bytes = new Uint8Array(await blob.arrayBuffer());
  let text = '';
  for (let i = 0; i < bytes.length; i += 0x8000) {
    text += String.fromCharCode(...bytes.subarray(i, i + 0x8000));
  }
  return `data:image/png;base64,${btoa(text)}`;
}

/** A model bundle loaded on the page's WebGPU adapter. */
export class Upscaler {
  #engine;

  constructor(engine) {
    this.#engine = engine;
  }

  /** Loads a bundle by the URL of its manifest.json (`onProgress(loadedBytes, totalBytes)`). */
  static async load(manifestUrl, options = {}) {
    await initialize(options.wasm);
    return new Upscaler(await Engine.load(String(manifestUrl), options));
  }

  /** Loads a bundle folder the visitor chose (`<input type=file webkitdirectory>` files). */
  static async loadFiles(files, options = {}) {
    await initialize(options.wasm);
    return new Upscaler(await Engine.loadFiles(files, options));
  }

  get adapterName() { return this.#engine.adapterName; }
  get shaderF16() { return this.#engine.shaderF16; }
  /** A software renderer (SwiftShader, a fallback adapter): it works, far slower than a GPU. */
  get softwareAdapter() { return this.#engine.softwareAdapter; }
  get precision() { return this.#engine.precision; }
  get oneStep() { return this.#engine.oneStep; }

  async upscale(image, options = {}) {
    const { patchSize, padding, progress, output = 'imageData', ...engineOptions } = options;
    if (output !== 'imageData' && output !== 'base64') {
      throw new Error(`upscale: output must be 'imageData' or 'base64', not '${output}'`);
    }
    void padding; // tiles always overlap by half a tile
    const input = await toImageData(image);
    const scale = engineOptions.scale ?? 2;
    if (patchSize !== undefined && engineOptions.tile === undefined) {
      engineOptions.tile = Math.max(8, Math.floor((patchSize * scale) / 8) * 8);
    }
    if (progress !== undefined) {
      const user = engineOptions.onProgress;
      engineOptions.onProgress = (done, total) => {
        progress(total > 0 ? done / total : 0, done, total);
        if (user) user(done, total);
      };
    }
    const result = await this.#engine.upscale(input, engineOptions);
    return output === 'base64' ? toBase64(result) : result;
  }

  /** Frees the model's GPU memory now (otherwise when garbage-collected). */
  free() { this.#engine.free(); }
}
