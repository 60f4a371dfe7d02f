// Runs the binary as the programs built around realesrgan-ncnn-vulkan / upscayl-bin run it,
// and judges the runs by those programs' own rules (tests/cli.rs starts this script):
// - Upscayl 2.15 (electron/utils/get-arguments.ts, spawn-upscayl.ts, commands/*.ts,
//   renderer/pages/index.tsx): argv without a shell, stderr read in chunks, a chunk containing
//   "Error" or "failed" is a failure (the child is killed; the exit status is never read), a
//   chunk under 10 characters is a progress figure, "Successful" is shown as success, and
//   "Invalid GPU" / "write" / "read" / "tile size" pick its error toast (tested on every chunk);
//   single, batch and double upscale (whose second pass writes its input in place);
// - realesrgan-gui (task.py): stderr line by line, `(\d+[.,]\d+)%` for progress,
//   `^.+? -> .+? done$` for a finished image, and the exit status;
// - the GIMP 3 plug-in gimp_upscale: `-i IN -o OUT -n MODEL` with the binary's folder as cwd,
//   the exit status checked; its model list and Upscayl's from the .param / .bin files.
//
//   node tests/ncnn/callers.mjs APP_DIR MODEL INPUT.png WORK_DIR
// APP_DIR holds upscayl-bin and models/MODEL/ (a bundle); the script exits 1 on a failed check.

import { spawn } from "node:child_process";
import fs from "node:fs";
import path from "node:path";

const [appDir, model, inputPng, work] = process.argv.slice(2);
const bin = path.join(appDir, "upscayl-bin");
const models = path.join(appDir, "models");
let failures = 0;

function check(ok, what, detail = "") {
  console.log(`${ok ? "ok  " : "FAIL"} ${what}${ok ? "" : `\n     ${detail}`}`);
  if (!ok) failures++;
}

// Upscayl's spawn and chunk rules (image-upscayl.ts onData / onClose, index.tsx handleErrors).
function upscayl(args) {
  return new Promise((resolve) => {
    const child = spawn(bin, args.filter((a) => a !== ""), { cwd: undefined, detached: false });
    const run = { chunks: [], failed: false, progress: [], success: false, toasts: [] };
    child.stderr.on("data", (buf) => {
      const data = buf.toString();
      run.chunks.push(data);
      if (data.includes("Error") || data.includes("failed")) {
        child.kill();
        run.failed = true;
      }
      if (data.length > 0 && data.length < 10) run.progress.push(data.trim());
      if (data.includes("Successful")) run.success = true;
      if (data.includes("Invalid GPU")) run.toasts.push("GPU_ERROR");
      else if (data.includes("write") || data.includes("read")) run.toasts.push("READ_WRITE_ERROR");
      else if (data.includes("tile size")) run.toasts.push("TILE_SIZE_ERROR");
    });
    child.on("close", (code) => {
      // Every figure, whether its chunk came alone or merged with the next line.
      const figures = run.chunks.join("").split("\n").filter((l) => /^\d+\.\d\d%$/.test(l));
      resolve({ ...run, code, figures });
    });
  });
}

// realesrgan-gui: lines, two regexes, the exit status.
function realesrganGui(args, cwd) {
  return new Promise((resolve) => {
    const child = spawn(bin, args, { cwd });
    let text = "";
    child.stderr.on("data", (b) => (text += b.toString()));
    child.on("close", (code) => {
      const lines = text.split("\n").filter((l) => l.length > 0);
      resolve({
        code,
        text,
        progress: lines.filter((l) => /(\d+[.,]\d+)%/.test(l)).length,
        done: lines.filter((l) => /^.+? -> .+? done$/m.test(l)).length,
      });
    });
  });
}

function pngSize(file) {
  const b = fs.readFileSync(file);
  if (b.readUInt32BE(0) !== 0x89504e47) return null;
  return [b.readUInt32BE(16), b.readUInt32BE(20)];
}

const isJpeg = (file) => {
  const b = fs.readFileSync(file);
  return b[0] === 0xff && b[1] === 0xd8 && b[b.length - 2] === 0xff && b[b.length - 1] === 0xd9;
};

const clean = (run) => !run.failed && run.toasts.length === 0 && run.code === 0;
const show = (run) => JSON.stringify(run.chunks ?? run.text);

fs.mkdirSync(work, { recursive: true });
const [inW, inH] = pngSize(inputPng);
const modelScale = /x2|2x/i.test(model) ? 2 : /x3|3x/i.test(model) ? 3 : 4;

// Model lists: Upscayl's get-models.ts (any .param or .bin), realesrgan-gui's and the GIMP
// plug-in's (both files).
{
  const files = fs.readdirSync(models);
  const upscaylList = [...new Set(files.filter((f) => /\.(param|bin)$/i.test(f)).map((f) => f.slice(0, f.lastIndexOf("."))))];
  const paired = upscaylList.filter((m) => files.includes(`${m}.param`) && files.includes(`${m}.bin`));
  check(upscaylList.includes(model) && paired.includes(model), "the stubs list the model", files.join(", "));
}

// 1. Single image (getSingleImageArguments; -s only when it differs from the model's scale).
{
  const outFile = path.join(work, `input_upscayl_${modelScale}x_${model}.png`);
  fs.writeFileSync(outFile, "an older result that must be replaced");
  const run = await upscayl(["-i", inputPng, "-o", outFile, "", "", "-m", models, "-n", model, "", "", "-f", "png", "", "", "-c", "0", "", "", ""]);
  check(clean(run), "single: no failure, no error toast, exit 0", show(run));
  check(run.success, "single: a chunk says Successful", show(run));
  check(run.progress.length > 0, "single: progress figures arrive as short chunks", show(run));
  check(run.figures[0] === "0.00%" && run.figures.at(-1) === "100.00%", "single: progress 0.00% … 100.00%", show(run));
  const figures = run.figures.map(parseFloat);
  check(figures.every((v, i) => i === 0 || v >= figures[i - 1]), "single: progress never goes back", show(run));
  const size = pngSize(outFile);
  check(size && size[0] === inW * modelScale && size[1] === inH * modelScale, "single: the output replaced the old file at the model's scale", String(size));
}

// 2. Batch (getBatchArguments): a folder with a stem collision and a .jfif, JPEG output.
{
  const inDir = path.join(work, "batch-in");
  fs.mkdirSync(inDir, { recursive: true });
  fs.copyFileSync(inputPng, path.join(inDir, "a.png"));
  fs.copyFileSync(inputPng, path.join(inDir, "b.png"));
  fs.copyFileSync(path.join(work, "input.jpg"), path.join(inDir, "a.jpg"));
  fs.copyFileSync(path.join(work, "input.jpg"), path.join(inDir, "c.jfif"));
  fs.writeFileSync(path.join(inDir, "notes.txt"), "not an image");
  const outDir = path.join(work, `upscayl_jpg_${model}_3x`);
  fs.mkdirSync(outDir, { recursive: true });
  const run = await upscayl(["-i", inDir, "-o", outDir, "-s", "3", "-m", models, "-n", model, "", "", "-f", "jpg", "", "", "-c", "20", "", "", ""]);
  check(clean(run), "batch: no failure, no error toast, exit 0", show(run));
  const outs = fs.readdirSync(outDir).sort();
  check(JSON.stringify(outs) === JSON.stringify(["a.jpg", "a.png.jpg", "b.jpg", "c.jpg"]), "batch: realesrgan's names (a.jpg, a.png.jpg for the second stem a)", outs.join(", "));
  check(outs.every((f) => isJpeg(path.join(outDir, f))), "batch: every output is a whole JPEG");
  check(run.figures.filter((p) => p === "100.00%").length === 4, "batch: 100.00% once per image", show(run));
}

// 3. Double upscale: pass 1, then pass 2 with the output as its own input (and -w).
{
  const outFile = path.join(work, `double_upscayl_${modelScale}x_${model}.png`);
  const first = await upscayl(["-i", inputPng, "-o", outFile, "", "", "-m", models, "-n", model, "", "", "-f", "png", "", ""]);
  check(clean(first), "double, pass 1: clean", show(first));
  const second = await upscayl(["-i", outFile, "-o", outFile, "", "", "-m", models, "-n", model, "", "", "-f", "png", "-w", "150", "-c", "0", "", "", ""]);
  check(clean(second) && second.success, "double, pass 2 in place: clean", show(second));
  const size = pngSize(outFile);
  const h = Math.round((inH * modelScale * modelScale * 150) / (inW * modelScale * modelScale));
  check(size && size[0] === 150 && size[1] === h, "double: in place, then resized to -w 150", String(size));
}

// 4. Failures Upscayl must see: a bad GPU, a broken image, a missing model. Nothing written.
{
  const outFile = path.join(work, "never.png");
  let run = await upscayl(["-i", inputPng, "-o", outFile, "-m", models, "-n", model, "-g", "97", "-f", "png", "-c", "0"]);
  check(run.failed && run.toasts.includes("GPU_ERROR") && run.code !== 0, "bad -g: failure, Invalid GPU toast, nonzero exit", show(run));
  const broken = path.join(work, "broken.png");
  fs.writeFileSync(broken, fs.readFileSync(inputPng).subarray(0, 60));
  run = await upscayl(["-i", broken, "-o", outFile, "-m", models, "-n", model, "-f", "png", "-c", "0"]);
  check(run.failed && run.code !== 0, "a broken image: failure, nonzero exit", show(run));
  run = await upscayl(["-i", inputPng, "-o", outFile, "-m", models, "-n", "no-such-model", "-f", "png", "-c", "0"]);
  check(run.failed && run.code !== 0, "a missing model: failure, nonzero exit", show(run));
  run = await upscayl(["-i", inputPng, "-o", outFile, "-m", models, "-n", model, "-q"]);
  check(run.failed && run.chunks.join("").includes("Usage:"), "an unknown flag: failure with the usage", show(run));
  check(!fs.existsSync(outFile), "failures wrote nothing");
  check(fs.readdirSync(work).every((f) => !f.includes(".partial") && !f.startsWith(".")), "no partial files left", fs.readdirSync(work).join(", "));
}

// 5. Paths with words a parent reads as outcomes, and realesrgan-gui's rules.
{
  const odd = path.join(work, "thread Error 50% already-read");
  fs.mkdirSync(odd, { recursive: true });
  fs.copyFileSync(inputPng, path.join(odd, "in.png"));
  const run = await upscayl(["-i", path.join(odd, "in.png"), "-o", path.join(odd, "out.png"), "-m", models, "-n", model, "-f", "png", "-c", "0"]);
  check(clean(run) && run.success, "a path holding Error / read / %: still clean", show(run));
  const gui = await realesrganGui(["-v", "-i", path.join(odd, "in.png"), "-o", path.join(work, "gui.png"), "-s", "2", "-z", "2", "-t", "0", "-n", model, "-g", "auto"], appDir);
  check(gui.code === 0 && gui.progress >= 2 && gui.done === 1, "realesrgan-gui: progress lines, one done line, exit 0", gui.text);
}

// 6. The GIMP 3 plug-in: only -i -o -n, cwd = the binary's folder (models/ found there).
{
  const out = path.join(work, "gimp.png");
  const code = await new Promise((resolve) => {
    spawn(bin, ["-i", inputPng, "-o", out, "-n", model], { cwd: appDir, stdio: ["ignore", "pipe", "pipe"] }).on("close", resolve);
  });
  const size = fs.existsSync(out) && pngSize(out);
  check(code === 0 && size && size[0] === inW * modelScale, "GIMP plug-in call: exit 0, the model's scale", `${code} ${size}`);
  // Its stdout stays empty (Upscayl never drains it).
  const stdout = await new Promise((resolve) => {
    let s = "";
    const c = spawn(bin, ["-i", inputPng, "-o", out, "-n", model], { cwd: appDir });
    c.stdout.on("data", (b) => (s += b));
    c.on("close", () => resolve(s));
  });
  check(stdout === "", "nothing on stdout", stdout);
}

console.log(failures === 0 ? "all checks passed" : `${failures} checks failed`);
process.exit(failures === 0 ? 0 : 1);
