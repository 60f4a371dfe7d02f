// The page and the pgp-web module in a real browser: Debian's Chromium, headless, WebGPU on
// SwiftShader, driven by playwright-core. Needs web/dist (web/build.sh) and the native binary
// (built by `cargo test`), which converts the tiny fixture and gives the reference output.
//
//   node web/tests/browser.mjs
//
// Prints one line a test and `N passed, N failed`; exits non-zero when any failed.
import { execFileSync } from 'node:child_process';
import { createServer } from 'node:http';
import { existsSync, mkdirSync, mkdtempSync, readFileSync, rmSync, statSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { dirname, extname, join, resolve } from 'node:path';
import { fileURLToPath } from 'node:url';
import { chromium } from 'playwright-core';

const root = resolve(dirname(fileURLToPath(import.meta.url)), '../..');
const dist = join(root, 'web/dist');
const target = process.env.CARGO_TARGET_DIR ?? join(root, 'target');
const bin = join(target, 'debug/pgp-wgpu');
const browserPath = process.env.CHROMIUM ?? '/usr/bin/chromium';
for (const [what, path] of [['web/dist (run web/build.sh)', join(dist, 'pkg/pgp_web.js')],
  ['the pgp-wgpu binary (cargo test builds it)', bin], ['chromium', browserPath]]) {
  if (!existsSync(path)) { console.error(`missing ${what}: ${path}`); process.exit(2); }
}

// The tiny fixture as a bundle, and the native binary's output for the settings tested.
const work = mkdtempSync(join(tmpdir(), 'pgp-web-'));
const bundle = join(work, 'bundle');
const hub = join(root, 'tests/hub');
execFileSync(bin, ['convert', '--sdxl', join(hub, 'sdxl'), '--vae', join(hub, 'vae'),
  '--faithdiff', join(hub, 'FaithDiff.bin'), '--dtype', 'f32', '-q', '-o', bundle]);
const settings = { scale: 2, steps: 3, tile: 32, seed: 7 };
// The largest per-channel difference allowed between the page (SwiftShader, f32) and the native
// CPU backend (f32) on the same seed: float sums run in another order, nothing more.
const MAX_DIFF = 2;
// OSEDiff's tiny fixture (the SD2.1 family, one step) and its native output at ×4, seed 7.
const osediff = join(work, 'osediff');
execFileSync(bin, ['convert', '--sd21', join(hub, 'sd21'), '--osediff', join(hub, 'osediff.pkl'),
  '--dtype', 'f32', '-q', '-o', osediff]);
const osediffOut = join(work, 'osediff.png');
execFileSync(bin, ['upscale', '-q', '--device', 'cpu', '-i', join(root, 'tests/pipeline/input.png'),
  '-o', osediffOut, '--model', osediff, '-s', '4', '--seed', '7']);
const nativeOut = join(work, 'native.png');
execFileSync(bin, ['upscale', '-q', '--device', 'cpu', '-i', join(root, 'tests/pipeline/input.png'),
  '-o', nativeOut, '--model', bundle, '-s', '2', '--steps', '3', '-t', '32', '--seed', '7']);

// The npm package as `npm pack` makes it, unpacked where a site's node_modules would be.
const npmDir = join(work, 'npm');
mkdirSync(npmDir, { recursive: true });
const tarball = execFileSync('npm', ['pack', '--silent', '--pack-destination', npmDir, join(dist, 'npm')],
  { encoding: 'utf8' }).trim().split('\n').pop();
execFileSync('tar', ['xzf', join(npmDir, tarball), '-C', npmDir]);
const packed = join(npmDir, 'package');

// A static server: the page at /, the bundle at /models/, test files at /t/; counts requests.
const requests = [];
const types = { '.html': 'text/html', '.js': 'text/javascript', '.wasm': 'application/wasm',
  '.json': 'application/json', '.png': 'image/png' };
const server = createServer((req, res) => {
  const path = decodeURIComponent(new URL(req.url, 'http://x').pathname);
  requests.push(path);
  let file;
  if (path.startsWith('/models/')) file = join(bundle, path.slice(8));
  else if (path.startsWith('/osediff/')) file = join(osediff, path.slice(9));
  else if (path === '/t/osediff.png') file = osediffOut;
  else if (path.startsWith('/node_modules/pgp-wgpu/')) file = join(packed, path.slice(23));
  else if (path === '/t/input.png') file = join(root, 'tests/pipeline/input.png');
  else if (path === '/t/native.png') file = nativeOut;
  else file = join(dist, path === '/' ? 'index.html' : path.slice(1));
  if (!file.startsWith(work) && !file.startsWith(dist) && !file.startsWith(root)) file = '';
  if (!file || !existsSync(file) || !statSync(file).isFile()) {
    res.writeHead(404); res.end('not found'); return;
  }
  res.writeHead(200, { 'content-type': types[extname(file)] ?? 'application/octet-stream' });
  res.end(readFileSync(file));
});
await new Promise((r) => server.listen(0, '127.0.0.1', r));
const origin = `http://127.0.0.1:${server.address().port}`;

const browser = await chromium.launch({
  executablePath: browserPath,
  headless: true,
  args: ['--enable-unsafe-webgpu', '--enable-features=Vulkan', '--use-angle=swiftshader',
    '--use-webgpu-adapter=swiftshader', '--no-sandbox'],
});
const context = await browser.newContext({ acceptDownloads: true });
const page = await context.newPage();
const logs = [];
page.on('console', (m) => logs.push(`[${m.type()}] ${m.text()}`));
page.on('pageerror', (e) => logs.push(`[pageerror] ${e.message}`));

async function openPage() {
  await page.goto(`${origin}/`);
  await page.waitForFunction(() => window.pgp !== undefined || !navigator.gpu, null, { timeout: 60000 });
}

// Loads the fixture bundle through the page's own URL field and button; the error shown ('' when
// it loaded).
async function loadOnPage(p) {
  await p.fill('#model', 'models/manifest.json');
  await p.click('#load');
  await p.waitForFunction(() => document.querySelector('#status').textContent.includes('Model loaded')
    || document.querySelector('#error').textContent !== '', null, { timeout: 120000 });
  return p.textContent('#error');
}

let passed = 0, failed = 0;
// PGP_BROWSER_TESTS=k (a letter, or a part of a name) runs only the tests it names.
const only = process.env.PGP_BROWSER_TESTS;
async function test(name, body) {
  if (only && !name.includes(only.length === 1 ? `(${only})` : only)) return;
  const t0 = Date.now();
  try {
    await body();
    passed++;
    console.log(`ok   ${name} (${((Date.now() - t0) / 1000).toFixed(1)} s)`);
  } catch (e) {
    failed++;
    console.log(`FAIL ${name}: ${e.stack ?? e}`);
    console.log(logs.slice(-20).join('\n'));
  }
}
function assert(cond, msg) { if (!cond) throw new Error(msg); }

await openPage();

await test('the page has WebGPU and the module loads', async () => {
  const has = await page.evaluate(() => !!navigator.gpu && !!window.pgp);
  assert(has, `navigator.gpu or the module missing: ${await page.textContent('#gpu')}`);
});

await test('(a) same bundle, settings and seed: the browser equals the native binary', async () => {
  const r = await page.evaluate(async (settings) => {
    const decode = async (url) => {
      const bmp = await createImageBitmap(await (await fetch(url)).blob());
      const c = new OffscreenCanvas(bmp.width, bmp.height).getContext('2d');
      c.drawImage(bmp, 0, 0);
      return c.getImageData(0, 0, bmp.width, bmp.height);
    };
    const up = await window.pgp.Upscaler.load('/models/manifest.json', {});
    const input = await decode('/t/input.png');
    const out = await up.upscale(input, settings);
    const ref = await decode('/t/native.png');
    // SwiftShader has no shader-f16: auto computes in f32, as the native CPU reference does.
    if (up.precision !== (up.shaderF16 ? 'f16' : 'f32')) return { precision: up.precision };
    // Every channel of every pixel, alpha included (the input is opaque, so is the output):
    // the worst pixel, not only the mean, so a few corrupt bytes cannot hide in an average.
    const compare = (data) => {
      let sum = 0, max = 0, at = -1;
      for (let i = 0; i < data.length; i++) {
        const d = Math.abs(data[i] - ref.data[i]);
        sum += d;
        if (d > max) { max = d; at = i; }
      }
      return { mean: sum / data.length, max, at };
    };
    const first = compare(out.data);
    const snapshot = new Uint8ClampedArray(out.data);
    // The result must own its pixels: more wasm allocations and another run leave it as it was.
    const again = await up.upscale(input, settings);
    const changed = out.data.findIndex((v, i) => v !== snapshot[i]);
    const second = compare(again.data);
    up.free();
    return { w: out.width, h: out.height, rw: ref.width, rh: ref.height, first, second, changed,
      head: Array.from(out.data.slice(0, 8)), refHead: Array.from(ref.data.slice(0, 8)) };
  }, settings);
  assert(r.w === 48 && r.h === 32 && r.rw === 48 && r.rh === 32, JSON.stringify(r));
  assert(r.changed === -1, `the first result changed at byte ${r.changed} during a second run`);
  for (const c of [r.first, r.second]) {
    assert(c.mean <= 1 && c.max <= MAX_DIFF,
      `|Δ| mean ${c.mean}/255, max ${c.max}/255 at byte ${c.at}; first bytes ${r.head} vs ${r.refHead}`);
  }
  console.log(`     |Δ| browser vs native: mean ${r.first.mean.toFixed(4)}/255, max ${r.first.max}/255`);
});

await test('(i) a one-step SD2.1 model (OSEDiff) equals the native binary', async () => {
  const r = await page.evaluate(async () => {
    const decode = async (url) => {
      const bmp = await createImageBitmap(await (await fetch(url)).blob());
      const c = new OffscreenCanvas(bmp.width, bmp.height).getContext('2d');
      c.drawImage(bmp, 0, 0);
      return c.getImageData(0, 0, bmp.width, bmp.height);
    };
    const up = await window.pgp.Upscaler.load('/osediff/manifest.json', {});
    const input = await decode('/t/input.png');
    const units = [];
    const out = await up.upscale(input, { scale: 4, seed: 7, onProgress: (d, t, s) => units.push(s) });
    const ref = await decode('/t/osediff.png');
    let sum = 0, max = 0;
    for (let i = 0; i < out.data.length; i++) {
      const d = Math.abs(out.data[i] - ref.data[i]);
      sum += d; max = Math.max(max, d);
    }
    const oneStep = up.oneStep;
    up.free();
    return { w: out.width, h: out.height, mean: sum / out.data.length, max, units, oneStep };
  });
  assert(r.w === 96 && r.h === 64, JSON.stringify(r));
  assert(r.oneStep, 'the bundle is not one-step by default');
  assert(r.units.filter((u) => u.startsWith('step')).length === 1, `units: ${r.units}`);
  assert(r.mean <= 1 && r.max <= MAX_DIFF, `|Δ| mean ${r.mean}/255, max ${r.max}/255`);
  console.log(`     OSEDiff |Δ| browser vs native: mean ${r.mean.toFixed(4)}/255, max ${r.max}/255`);
});

await test('(b) an RGBA input keeps its alpha', async () => {
  const r = await page.evaluate(async (settings) => {
    const img = new ImageData(12, 8);
    for (let y = 0; y < 8; y++) for (let x = 0; x < 12; x++) {
      const p = 4 * (y * 12 + x);
      img.data.set([x * 20, y * 30, 90, x * 21], p);
    }
    const up = await window.pgp.Upscaler.load('/models/manifest.json', {});
    const out = await up.upscale(img, { ...settings, tile: 16 });
    up.free();
    const alpha = [];
    for (let x = 0; x < out.width; x++) alpha.push(out.data[4 * x + 3]);
    return { w: out.width, h: out.height, alpha };
  }, settings);
  assert(r.w === 24 && r.h === 16, JSON.stringify(r));
  assert(r.alpha[0] < 10 && r.alpha[23] > 200, `alpha row: ${r.alpha}`);
});

await test('(c) abort rejects with AbortError within one unit; the next run succeeds', async () => {
  const r = await page.evaluate(async (settings) => {
    const up = await window.pgp.Upscaler.load('/models/manifest.json', {});
    const img = new ImageData(24, 16);
    const ctrl = new AbortController();
    let calls = 0, name = null;
    try {
      await up.upscale(img, { ...settings, signal: ctrl.signal,
        onProgress: (done) => { calls = done; if (done === 5) ctrl.abort(); } });
    } catch (e) { name = e.name; }
    const again = await up.upscale(img, settings);
    up.free();
    return { name, calls, w: again.width };
  }, settings);
  assert(r.name === 'AbortError', `rejected with ${r.name}`);
  assert(r.calls === 5, `${r.calls} units ran; the abort came after 5`);
  assert(r.w === 48, `the next run gave width ${r.w}`);
});

await test('(d) a wrong bundle URL is an error naming it', async () => {
  const msg = await page.evaluate(async () => {
    try { await window.pgp.Upscaler.load('/nowhere/manifest.json', {}); return 'loaded?!'; }
    catch (e) { return `${e.name}: ${e.message}`; }
  });
  assert(msg.includes('/nowhere') && msg.includes('404'), msg);
});

await test('(e) after a reload the shards come from the cache', async () => {
  await openPage();
  const shardsBefore = requests.filter((p) => p.startsWith('/models/') && p.endsWith('.safetensors')).length;
  const progress = await page.evaluate(async () => {
    const seen = [];
    const up = await window.pgp.Upscaler.load('/models/manifest.json', {
      onProgress: (loaded, total) => seen.push([loaded, total]) });
    up.free();
    return seen;
  });
  const shardsAfter = requests.filter((p) => p.startsWith('/models/') && p.endsWith('.safetensors')).length;
  assert(shardsBefore > 0, 'no shard was ever fetched');
  assert(shardsAfter === shardsBefore, `${shardsAfter - shardsBefore} shard requests after the reload`);
  const last = progress[progress.length - 1];
  assert(last && last[0] === last[1] && last[1] > 0, `progress ${JSON.stringify(progress)}`);
});

await test('(f) the page: open a file, upscale, download the PNG', async () => {
  await openPage();
  const loadError = await loadOnPage(page);
  assert(loadError === '', loadError);
  await page.setInputFiles('#file', join(root, 'tests/pipeline/input.png'));
  await page.fill('#steps', '2');
  await page.fill('#tile', '32');
  await page.waitForFunction(() => !document.querySelector('#run').disabled);
  await page.focus('#run');
  await page.keyboard.press('Enter');  // keyboard-usable
  await page.waitForSelector('#download:not([hidden])', { timeout: 300000 });
  const [download] = await Promise.all([page.waitForEvent('download'), page.click('#download')]);
  const file = join(work, 'download.png');
  await download.saveAs(file);
  const png = readFileSync(file);
  assert(png.subarray(1, 4).toString() === 'PNG', 'not a PNG');
  const w = png.readUInt32BE(16), h = png.readUInt32BE(20);
  assert(w === 48 && h === 32, `downloaded ${w}×${h}`);
  assert((await page.textContent('#status')).startsWith('Done'), await page.textContent('#status'));
});

await test('(g) a bundle folder opened from disk loads and runs', async () => {
  await openPage();
  const before = requests.filter((p) => p.startsWith('/models/')).length;
  await page.setInputFiles('#folder', bundle);
  await page.waitForFunction(() => document.querySelector('#status').textContent.includes('Model loaded')
    || document.querySelector('#error').textContent !== '', null, { timeout: 120000 });
  assert((await page.textContent('#error')) === '', await page.textContent('#error'));
  const after = requests.filter((p) => p.startsWith('/models/')).length;
  assert(after === before, `${after - before} requests to /models/ for a local folder`);
  await page.setInputFiles('#file', join(root, 'tests/pipeline/input.png'));
  await page.fill('#steps', '1');
  await page.fill('#tile', '32');
  await page.click('#run');
  await page.waitForSelector('#download:not([hidden])', { timeout: 300000 });
  const status = await page.textContent('#status');
  assert(status.startsWith('Done: 48×32'), status);
});

await test('(j) the npm package: packed, imported, UpscalerJS-style calls equal the native binary', async () => {
  const pkg = JSON.parse(readFileSync(join(packed, 'package.json'), 'utf8'));
  assert(pkg.exports['.'].import === './index.js' && pkg.types === './index.d.ts', JSON.stringify(pkg.exports));
  for (const f of ['index.js', 'index.d.ts', 'pkg/pgp_web_bg.wasm', 'pkg/pgp_web.js']) {
    assert(existsSync(join(packed, f)), `the package lacks ${f}`);
  }
  const r = await page.evaluate(async (settings) => {
    const { Upscaler } = await import('/node_modules/pgp-wgpu/index.js');
    const up = await Upscaler.load('/models/manifest.json');
    const fractions = [];
    // patchSize is in input pixels: 16 × scale 2 = the 32-pixel tile of the reference.
    const out = await up.upscale('/t/input.png', { scale: settings.scale, steps: settings.steps,
      seed: settings.seed, patchSize: 16, padding: 4, progress: (f) => fractions.push(f) });
    const url = await up.upscale('/t/input.png', { ...settings, output: 'base64' });
    const bmp = await createImageBitmap(await (await fetch('/t/native.png')).blob());
    const c = new OffscreenCanvas(bmp.width, bmp.height).getContext('2d');
    c.drawImage(bmp, 0, 0);
    const ref = c.getImageData(0, 0, bmp.width, bmp.height);
    let max = 0;
    for (let i = 0; i < ref.data.length; i++) max = Math.max(max, Math.abs(out.data[i] - ref.data[i]));
    const abort = new AbortController();
    abort.abort();
    const aborted = await up.upscale('/t/input.png', { ...settings, signal: abort.signal })
      .then(() => 'resolved', (e) => e.name);
    up.free();
    return { w: out.width, h: out.height, max, fractions, url: url.slice(0, 22), aborted };
  }, settings);
  assert(r.w === 48 && r.h === 32, JSON.stringify(r));
  assert(r.max <= MAX_DIFF, `max |Δ| ${r.max}/255 against native`);
  assert(r.fractions.length > 3 && r.fractions.at(-1) === 1
    && r.fractions.every((f, i) => i === 0 || f >= r.fractions[i - 1]), JSON.stringify(r.fractions));
  assert(r.url === 'data:image/png;base64,', r.url);
  assert(r.aborted === 'AbortError', r.aborted);
});

await test('(k) SwiftShader is named a software renderer; an adapter without timestamp-query gets a clear error', async () => {
  // Headless Chromium's adapter is SwiftShader: the page says so, and how to get the GPU.
  await openPage();
  const loadError = await loadOnPage(page);
  assert(loadError === '', loadError);
  const gpuText = await page.textContent('#gpu');
  assert(gpuText.includes('software renderer') && gpuText.includes('chrome://gpu'), gpuText);
  const r = await page.evaluate(async () => {
    const up = await window.pgp.Upscaler.load('/models/manifest.json', {});
    const result = { software: up.softwareAdapter, name: up.adapterName };
    up.free();
    return result;
  });
  assert(r.software && r.name !== '', JSON.stringify(r));

  // The adapter lists no timestamp-query (as Firefox on some platforms): cubecl 0.11 would
  // panic on wasm without it, so loading must fail with a message, the module intact.
  const hidden = await context.newPage();
  const errors = [];
  hidden.on('pageerror', (e) => errors.push(e.message));
  await hidden.addInitScript(() => {
    const features = Object.getOwnPropertyDescriptor(GPUAdapter.prototype, 'features').get;
    Object.defineProperty(GPUAdapter.prototype, 'features', {
      get() { return new Set([...features.call(this)].filter((f) => f !== 'timestamp-query')); },
    });
  });
  await hidden.goto(`${origin}/`);
  await hidden.waitForFunction(() => window.pgp !== undefined, null, { timeout: 60000 });
  const error = await loadOnPage(hidden);
  assert(error.includes('timestamp-query') && error.includes('another browser'), error);
  // Still alive: a second attempt gets the same answer, not a dead instance.
  const again = await hidden.evaluate(() => window.pgp.Upscaler.load('/models/manifest.json', {})
    .then(() => 'loaded', (e) => String(e.message ?? e)));
  await hidden.close();
  assert(again.includes('timestamp-query'), again);
  assert(errors.length === 0, `page errors: ${errors}`);
});

await test('(h) without WebGPU the page says so and offers no model loading', async () => {
  const bare = await context.newPage();
  await bare.addInitScript(() => { delete Navigator.prototype.gpu; });
  await bare.goto(`${origin}/`);
  const text = await bare.textContent('#gpu');
  assert(text.includes('no WebGPU'), text);
  assert(await bare.isDisabled('#load'), 'the Load button is enabled');
  await bare.close();
});

await browser.close();
server.close();
rmSync(work, { recursive: true, force: true });
console.log(`${passed} passed, ${failed} failed`);
process.exit(failed ? 1 : 0);
