/** Options of `Upscaler.load` / `Upscaler.loadFiles`. */
export interface LoadOptions {
  /** Called as the bundle's shards arrive. */
  onProgress?: (loadedBytes: number, totalBytes: number) => void;
  /** Where the wasm is (default: `pkg/pgp_web_bg.wasm` beside this module). */
  wasm?: string | URL | Response | BufferSource | WebAssembly.Module;
}

/** Options of `Upscaler.upscale`; omitted ones take the bundle's defaults. */
export interface UpscaleOptions {
  /** Upscaling factor, 1 to 16 (default 2). */
  scale?: number;
  /** Sampling steps (default 20; one-step bundles use one). */
  steps?: number;
  /** Tile size in output pixels, a multiple of 8; 0 = the largest the adapter allows. */
  tile?: number;
  /** UpscalerJS's name: a tile in input pixels (used when `tile` is not given). */
  patchSize?: number;
  /** UpscalerJS's name; accepted and unused (tiles always overlap by half a tile). */
  padding?: number;
  /** Noise seed: the same seed and precision give the same image on every device. */
  seed?: number;
  /** A caption of the image. */
  prompt?: string;
  colorFix?: 'adain' | 'wavelet' | 'none';
  /** true: one UNet call; false: the full sampler; default: the bundle's. */
  oneStep?: boolean;
  /** Aborting rejects the upscale with a DOMException named AbortError before the next unit. */
  signal?: AbortSignal;
  /** UpscalerJS's progress: a fraction from 0 to 1 after each finished unit of work. */
  progress?: (fraction: number, done: number, total: number) => void;
  /** After each finished unit of work. */
  onProgress?: (done: number, total: number) => void;
  /** 'imageData' (default) or 'base64' (a PNG data URL). */
  output?: 'imageData' | 'base64';
}

export type ImageInput =
  | ImageData
  | HTMLImageElement
  | HTMLCanvasElement
  | OffscreenCanvas
  | ImageBitmap
  | Blob
  | string
  | URL;

/** Loads the wasm once; `Upscaler.load` calls it. */
export function initialize(wasm?: LoadOptions['wasm']): Promise<unknown>;

/** A model bundle loaded on the page's WebGPU adapter. */
export class Upscaler {
  private constructor();
  static load(manifestUrl: string | URL, options?: LoadOptions): Promise<Upscaler>;
  static loadFiles(files: FileList | File[], options?: LoadOptions): Promise<Upscaler>;
  readonly adapterName: string;
  readonly shaderF16: boolean;
  /** A software renderer on the CPU (SwiftShader, a fallback adapter): far slower than a GPU. */
  readonly softwareAdapter: boolean;
  /** 'f16' or 'f32'. */
  readonly precision: string;
  readonly oneStep: boolean;
  upscale(image: ImageInput, options: UpscaleOptions & { output: 'base64' }): Promise<string>;
  upscale(image: ImageInput, options?: UpscaleOptions): Promise<ImageData>;
  free(): void;
}
