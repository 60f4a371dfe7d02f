// The page: a thin UI over the pgp-web module (all engine work is in the wasm).
import init, { Upscaler } from './pkg/pgp_web.js';

const $ = (id) => document.getElementById(id);
const ui = {
  gpu: $('gpu'), error: $('error'), model: $('model'), load: $('load'), folder: $('folder'), file: $('file'),
  drop: $('drop'), run: $('run'), cancel: $('cancel'), download: $('download'),
  progress: $('progress'), status: $('status'), compare: $('compare'), before: $('before'),
  after: $('after'), slider: $('slider'), sliderLabel: $('sliderLabel'),
};
let upscaler = null;
let input = null;       // ImageData
let abort = null;       // AbortController of the running upscale

// Said when the browser gives a software renderer (SwiftShader) instead of the GPU.
const SOFTWARE = 'This is a software renderer on the CPU, not your GPU: upscaling works but is ' +
  'one or two orders of magnitude slower. On Linux, Chrome uses the GPU when started with ' +
  '--enable-unsafe-webgpu --enable-features=Vulkan (check chrome://gpu); elsewhere, update the ' +
  'graphics driver and make sure hardware acceleration is on in the browser\'s settings.';

const showError = (e) => { ui.error.textContent = e ? String(e.message ?? e) : ''; };
const number = (el) => (el.value === '' ? undefined : Number(el.value));

function fmtTime(s) {
  if (!isFinite(s)) return '';
  return s < 90 ? `${Math.round(s)} s left` : `${Math.round(s / 60)} min left`;
}

// Loads from the URL field, or from a folder's files when given.
async function loadModel(files) {
  showError('');
  ui.load.disabled = true;
  ui.run.disabled = true;
  try {
    upscaler?.free();
    upscaler = null;
    const options = {
      onProgress: (loaded, total) => {
        ui.progress.max = total; ui.progress.value = loaded;
        ui.status.textContent = `Loading the model: ${(loaded / 2 ** 20).toFixed(1)} of ${(total / 2 ** 20).toFixed(1)} MiB`;
      },
    };
    upscaler = files
      ? await Upscaler.loadFiles(files, options)
      : await Upscaler.load(new URL(ui.model.value, location.href).href, options);
    ui.gpu.textContent = `GPU: ${upscaler.adapterName} — computing in ${upscaler.precision}` +
      (upscaler.shaderF16 ? ' (the adapter has shader-f16)' : ' (no shader-f16 on this adapter)') +
      (upscaler.oneStep ? '; one-step model' : '') +
      (upscaler.softwareAdapter ? '. ' + SOFTWARE : '');
    ui.status.textContent = 'Model loaded.';
  } catch (e) {
    showError(e);
    ui.status.textContent = '';
  } finally {
    ui.load.disabled = false;
    ui.run.disabled = !(upscaler && input);
  }
}

async function openImage(file) {
  showError('');
  try {
    const bitmap = await createImageBitmap(file);
    const c = new OffscreenCanvas(bitmap.width, bitmap.height);
    const ctx = c.getContext('2d');
    ctx.drawImage(bitmap, 0, 0);
    input = ctx.getImageData(0, 0, bitmap.width, bitmap.height);
    ui.status.textContent = `${file.name}: ${input.width}×${input.height}`;
    ui.run.disabled = !upscaler;
  } catch (e) {
    showError(`${file.name}: not an image this browser can read (${e.message ?? e})`);
  }
}

function show(before, after) {
  for (const [canvas, img] of [[ui.after, after], [ui.before, before]]) {
    canvas.width = after.width; canvas.height = after.height;
    const ctx = canvas.getContext('2d');
    if (img === after) ctx.putImageData(after, 0, 0);
    else {
      const small = new OffscreenCanvas(before.width, before.height);
      small.getContext('2d').putImageData(before, 0, 0);
      ctx.imageSmoothingEnabled = false;
      ctx.drawImage(small, 0, 0, after.width, after.height);
    }
  }
  ui.compare.style.display = 'block';
  ui.sliderLabel.hidden = false;
  ui.after.toBlob((blob) => {
    if (ui.download.href) URL.revokeObjectURL(ui.download.href);
    ui.download.href = URL.createObjectURL(blob);
    ui.download.hidden = false;
  }, 'image/png');
}

async function upscale() {
  showError('');
  abort = new AbortController();
  ui.run.disabled = true;
  ui.cancel.disabled = false;
  ui.download.hidden = true;
  const started = performance.now();
  try {
    const out = await upscaler.upscale(input, {
      scale: number($('scale')), steps: number($('steps')), tile: number($('tile')),
      seed: number($('seed')), colorFix: $('colorFix').value, prompt: $('prompt').value,
      signal: abort.signal,
      onProgress: (done, total, stage) => {
        ui.progress.max = total; ui.progress.value = done;
        const elapsed = (performance.now() - started) / 1000;
        ui.status.textContent = `Upscaling (${done}/${total}): ${stage}. ${fmtTime(elapsed / done * (total - done))}`;
      },
    });
    show(input, out);
    ui.status.textContent = `Done: ${out.width}×${out.height} in ${((performance.now() - started) / 1000).toFixed(1)} s.`;
  } catch (e) {
    if (e.name === 'AbortError') ui.status.textContent = 'Cancelled.';
    else showError(e);
  } finally {
    abort = null;
    ui.cancel.disabled = true;
    ui.run.disabled = !(upscaler && input);
  }
}

ui.load.addEventListener('click', () => loadModel());
ui.folder.addEventListener('change', () => ui.folder.files.length && loadModel(ui.folder.files));
ui.run.addEventListener('click', upscale);
ui.cancel.addEventListener('click', () => abort?.abort());
ui.file.addEventListener('change', () => ui.file.files[0] && openImage(ui.file.files[0]));
ui.drop.addEventListener('dragover', (e) => { e.preventDefault(); ui.drop.classList.add('over'); });
ui.drop.addEventListener('dragleave', () => ui.drop.classList.remove('over'));
ui.drop.addEventListener('drop', (e) => {
  e.preventDefault(); ui.drop.classList.remove('over');
  if (e.dataTransfer.files[0]) openImage(e.dataTransfer.files[0]);
});
ui.slider.addEventListener('input', () => {
  ui.before.style.clipPath = `inset(0 ${100 - ui.slider.value}% 0 0)`;
});

if (!navigator.gpu) {
  ui.gpu.textContent = 'This browser has no WebGPU, which the upscaler needs. Use a recent Chrome, Edge or Safari (or Firefox with WebGPU enabled).';
  ui.load.disabled = true;
  ui.folder.disabled = true;
} else {
  ui.gpu.textContent = 'WebGPU is available. Load a model to start.';
  await init();
  window.pgp = { Upscaler }; // for scripts and tests driving the module directly
}
