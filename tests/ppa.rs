//! The pruning analysis end to end on the tiny fixture: `analyze` (measures, report, figures,
//! resuming), `prune` (rules, checkpoint, config), then `convert` and `upscale` of the result.

mod support;

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

use pgp_core::torch_pickle::TorchCheckpoint;
use pgp_core::weights::decode_f32;
use serde_json::Value;
use support::{bin, bundle, convert, hub, root, scratch, text};

/// The decoder block the identity test silences.
const IDENTITY: &str = "up_blocks.0.attentions.1.transformer_blocks.1";

/// FaithDiff.bin's tensors (`key → (dtype, shape, bytes)`).
fn fixture_tensors() -> BTreeMap<String, (safetensors::Dtype, Vec<usize>, Vec<u8>)> {
    let path = hub().join("FaithDiff.bin");
    let file = std::io::BufReader::new(std::fs::File::open(&path).unwrap());
    let mut ckpt = TorchCheckpoint::open(path.display().to_string(), file).unwrap();
    let names: Vec<String> = ckpt.tensors().into_iter().map(|t| t.name).collect();
    names
        .into_iter()
        .map(|n| {
            let (d, s, b) = ckpt.read(&n).unwrap();
            (n, (d, s, b))
        })
        .collect()
}

fn write_safetensors(
    path: &Path,
    tensors: &BTreeMap<String, (safetensors::Dtype, Vec<usize>, Vec<u8>)>,
) {
    let views: Vec<_> = tensors
        .iter()
        .map(|(k, (d, s, b))| {
            (
                k.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

fn read_json(path: &Path) -> Value {
    serde_json::from_slice(&std::fs::read(path).unwrap()).unwrap()
}

/// A folder with the pipeline fixture's input and a mirrored copy.
fn images(dir: &Path) -> PathBuf {
    let images = dir.join("images");
    std::fs::create_dir_all(&images).unwrap();
    let input = root().join("tests/pipeline/input.png");
    std::fs::copy(&input, images.join("a.png")).unwrap();
    image::open(&input)
        .unwrap()
        .fliph()
        .save(images.join("b.png"))
        .unwrap();
    images
}

fn analyze(model: &Path, images: &Path, out: &Path, steps: &str) -> std::process::Output {
    bin()
        .args([
            "analyze", "--device", "cpu", "-t", "32", "--steps", steps, "--model",
        ])
        .arg(model)
        .arg("--images")
        .arg(images)
        .arg("-o")
        .arg(out)
        .output()
        .unwrap()
}

/// `prune` with `args` (the rule and options) on `model` by `report` into `out`.
fn prune(model: &Path, report: &Path, out: &Path, args: &[&str]) -> std::process::Output {
    bin()
        .arg("prune")
        .args(args)
        .arg("--model")
        .arg(model)
        .arg("--report")
        .arg(report)
        .arg("-o")
        .arg(out)
        .output()
        .unwrap()
}

/// `convert` of what `prune` wrote into `pruned` (its checkpoint and UNet config) into `out`.
fn convert_pruned(pruned: &Path, out: &Path, extra: &[&str]) {
    let cfg = pruned.join("unet_config.json");
    let mut args = extra.to_vec();
    args.extend(["--unet-config", cfg.to_str().unwrap(), "-q"]);
    let o = convert(out, &pruned.join("unet.safetensors"), &args);
    assert!(o.status.success(), "{}", text(&o));
}

fn upscale(model: &Path, out: &Path) {
    let o = bin()
        .args([
            "upscale", "--device", "cpu", "--steps", "2", "-t", "32", "-q", "-i",
        ])
        .arg(root().join("tests/pipeline/input.png"))
        .arg("-o")
        .arg(out)
        .arg("--model")
        .arg(model)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", text(&o));
}

/// Two JSON values equal but for floats within 1e-5 (relative): a resumed analysis recomputes
/// some images, and the CPU backend's threaded sums may round differently.
fn assert_close(a: &Value, b: &Value) {
    match (a, b) {
        (Value::Number(x), Value::Number(y)) => {
            let (x, y) = (x.as_f64().unwrap(), y.as_f64().unwrap());
            assert!(
                (x - y).abs() <= 1e-5 * x.abs().max(y.abs()).max(1e-6),
                "{x} vs {y}"
            );
        }
        (Value::Array(x), Value::Array(y)) => {
            assert_eq!(x.len(), y.len());
            x.iter().zip(y).for_each(|(x, y)| assert_close(x, y));
        }
        (Value::Object(x), Value::Object(y)) => {
            assert_eq!(x.keys().collect::<Vec<_>>(), y.keys().collect::<Vec<_>>());
            x.iter().for_each(|(k, v)| assert_close(v, &y[k]));
        }
        _ => assert_eq!(a, b),
    }
}

fn fine<'a>(report: &'a Value, name: &str) -> &'a Value {
    report["fine"]
        .as_array()
        .unwrap()
        .iter()
        .find(|e| e["name"] == name)
        .unwrap_or_else(|| panic!("no fine entry {name}"))
}

#[test]
fn an_identity_block_measures_zero_is_pruned_first_and_the_result_upscales() {
    let dir = scratch("ppa_identity");
    // The fixture with one decoder block made an exact identity: its three residual branches
    // (self-attention, cross-attention, feed-forward) end in zeroed projections.
    let mut tensors = fixture_tensors();
    for proj in ["attn1.to_out.0", "attn2.to_out.0", "ff.net.2"] {
        for p in ["weight", "bias"] {
            let (_, _, bytes) = tensors
                .get_mut(&format!("{IDENTITY}.{proj}.{p}"))
                .expect("the fixture has the block");
            bytes.fill(0);
        }
    }
    let ckpt = dir.join("identity.safetensors");
    write_safetensors(&ckpt, &tensors);
    let model = dir.join("bundle");
    let o = convert(&model, &ckpt, &["--dtype", "f32", "-q"]);
    assert!(o.status.success(), "{}", text(&o));

    // A folder with two images and a broken one: the broken one is reported, the rest kept.
    let images = images(&dir);
    std::fs::write(images.join("c.png"), b"not a png").unwrap();
    let report_dir = dir.join("report");
    let o = analyze(&model, &images, &report_dir, "3");
    assert!(!o.status.success(), "a broken image fails the run");
    assert!(text(&o).contains("c.png"), "{}", text(&o));
    let report = read_json(&report_dir.join("report.json"));
    assert_eq!(report["images"], 2);
    assert_eq!(report["image_names"], serde_json::json!(["a.png", "b.png"]));
    assert_eq!(report["steps"], 3);
    let modules: Vec<&str> = report["coarse"]
        .as_array()
        .unwrap()
        .iter()
        .map(|c| c["module"].as_str().unwrap())
        .collect();
    assert_eq!(
        modules,
        [
            "down_blocks.0",
            "down_blocks.1",
            "down_blocks.2",
            "mid_block",
            "up_blocks.0",
            "up_blocks.1",
            "up_blocks.2"
        ]
    );
    for c in report["coarse"].as_array().unwrap() {
        // One value per pair of adjacent steps, each a real change.
        assert_eq!(c["phi_cos"].as_array().unwrap().len(), 2, "{c}");
        assert!(c["phi_cos"][0].as_f64().unwrap() > 1e-6, "{c}");
    }
    // 12 decoder blocks (3 + 3 attentions of depth 2), one value per step.
    let blocks = report["fine"].as_array().unwrap();
    assert_eq!(blocks.len(), 12);
    let identity = fine(&report, IDENTITY);
    assert!(
        identity["phi_cos"].as_f64().unwrap().abs() < 1e-6,
        "{identity}"
    );
    assert!(
        identity["psi_kl"].as_f64().unwrap().abs() < 1e-6,
        "{identity}"
    );
    for b in blocks.iter().filter(|b| b["name"] != IDENTITY) {
        assert!(b["phi_cos"].as_f64().unwrap() > 1e-4, "{b}");
        assert!(b["psi_kl"].as_f64().unwrap() > 1e-6, "{b}");
        assert_eq!(b["phi_cos_per_step"].as_array().unwrap().len(), 3);
    }
    for name in ["coarse", "fine"] {
        let png = image::open(report_dir.join(format!("{name}.png"))).unwrap();
        assert!(png.width() >= 1000, "{name}.png");
        let svg = std::fs::read_to_string(report_dir.join(format!("{name}.svg"))).unwrap();
        assert!(svg.contains("<svg") && svg.contains("ΨKL"), "{name}.svg");
    }

    // Resuming: finished images are not run again; a missing one is.
    std::fs::remove_file(images.join("c.png")).unwrap();
    std::fs::remove_file(report_dir.join("images/b.png.json")).unwrap();
    let resumes_one = || {
        let o = analyze(&model, &images, &report_dir, "3");
        assert!(o.status.success(), "{}", text(&o));
        let t = text(&o);
        assert!(t.contains("1 of 2 images were measured before"), "{t}");
    };
    resumes_one();
    assert_close(&read_json(&report_dir.join("report.json")), &report);
    // An image replaced under the same name is measured again.
    std::fs::copy(images.join("b.png"), images.join("a.png")).unwrap();
    resumes_one();
    // Other settings measure again.
    let o = analyze(&model, &images, &report_dir, "2");
    assert!(o.status.success(), "{}", text(&o));
    assert!(!text(&o).contains("measured before"), "{}", text(&o));
    assert_eq!(read_json(&report_dir.join("report.json"))["steps"], 2);

    // Keep one block per decoder module: the identity is the one its module loses.
    let pruned = dir.join("pruned");
    let o = prune(
        &model,
        &report_dir.join("report.json"),
        &pruned,
        &["--keep-top-k", "1", "-q"],
    );
    assert!(o.status.success(), "{}", text(&o));
    let summary = read_json(&pruned.join("prune.json"));
    let module = summary["modules"]
        .as_array()
        .unwrap()
        .iter()
        .find(|m| m["module"] == "up_blocks.0.attentions.1")
        .unwrap();
    assert_eq!(module["keep"], serde_json::json!([0]));
    assert!(
        summary["pruned"]
            .as_array()
            .unwrap()
            .contains(&Value::from(IDENTITY))
    );
    let cfg = read_json(&pruned.join("unet_config.json"));
    assert_eq!(
        cfg["transformer_layers_per_block"],
        serde_json::json!([1, 1, 1])
    );
    assert_eq!(cfg["mid_transformer_layers_per_block"], 1);
    assert_eq!(
        cfg["reverse_transformer_layers_per_block"],
        serde_json::json!([[1, 1, 1], [1, 1, 1], [1, 1, 1]])
    );
    let after = summary["after"]["unet_params"].as_u64().unwrap();
    assert!(after < summary["before"]["unet_params"].as_u64().unwrap());
    assert_eq!(summary["after"]["model"]["transformer_blocks"], 11);
    // The checkpoint keeps FaithDiff's keys; the kept block 0 keeps its weights.
    let bytes = std::fs::read(pruned.join("unet.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    assert!(st.tensor(&format!("{IDENTITY}.norm1.weight")).is_err());
    let key = "up_blocks.0.attentions.1.transformer_blocks.0.attn1.to_q.weight";
    assert_eq!(st.tensor(key).unwrap().data(), tensors[key].2.as_slice());
    assert!(st.tensor("denoise_encoder.conv_in.weight").is_ok());
    assert!(
        st.names().iter().any(|n| n.starts_with("peam.0.")),
        "a new PEAM"
    );

    // It converts as PGP-DiffSR (a new PEAM) and upscales.
    let converted = dir.join("pgp.bundle");
    convert_pruned(&pruned, &converted, &["--arch", "pgp"]);
    let out = dir.join("out.png");
    upscale(&converted, &out);
    let input = image::open(root().join("tests/pipeline/input.png")).unwrap();
    let img = image::open(&out).unwrap();
    assert_eq!(
        (img.width(), img.height()),
        (2 * input.width(), 2 * input.height())
    );

    // A report of another bundle of the same architecture is applied, with a warning.
    let other = dir.join("pruned-other");
    let o = prune(
        &bundle("f32"),
        &report_dir.join("report.json"),
        &other,
        &["--keep-top-k", "1"],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert!(
        text(&o).contains("made with another bundle"),
        "{}",
        text(&o)
    );
    assert_eq!(
        read_json(&other.join("prune.json"))["report_made_with_this_bundle"],
        false
    );
    assert_eq!(summary["report_made_with_this_bundle"], true);

    // Bad requests: a file that is not a report, an existing output, a malformed rule.
    let o = prune(
        &bundle("f32"),
        &root().join("tests/conformance/unet_plain/case.json"),
        &dir.join("x"),
        &["--keep-top-k", "1"],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("not an analyze report"), "{}", text(&o));
    let o = prune(
        &model,
        &report_dir.join("report.json"),
        &pruned,
        &["--threshold", "0.2,1.0"],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("already exists"), "{}", text(&o));
    let o = prune(
        &model,
        &report_dir.join("report.json"),
        &dir.join("y"),
        &["--threshold", "0.2"],
    );
    assert!(!o.status.success());
    assert!(text(&o).contains("PHI,KL"), "{}", text(&o));
    assert!(!dir.join("y").exists());
}

#[test]
fn pruning_nothing_reproduces_the_model_exactly() {
    let dir = scratch("ppa_keep_all");
    let model = bundle("f32");
    let images = images(&dir);
    std::fs::remove_file(images.join("b.png")).unwrap();
    let report = dir.join("report");
    let o = analyze(&model, &images, &report, "2");
    assert!(o.status.success(), "{}", text(&o));
    // Every depth of the fixture is at most 2: these keep every block.
    let pruned = dir.join("pruned");
    let o = prune(
        &model,
        &report.join("report.json"),
        &pruned,
        &[
            "--keep-top-k",
            "2",
            "--coarse-depth",
            "2",
            "--peam",
            "none",
            "-q",
        ],
    );
    assert!(o.status.success(), "{}", text(&o));
    assert_eq!(
        read_json(&pruned.join("prune.json"))["pruned"],
        serde_json::json!([])
    );
    // The checkpoint holds FaithDiff.bin's tensors, unchanged.
    let bytes = std::fs::read(pruned.join("unet.safetensors")).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let original = fixture_tensors();
    assert_eq!(st.len(), original.len());
    for (k, (dtype, shape, bytes)) in &original {
        let t = st.tensor(k).unwrap();
        assert_eq!(t.shape(), shape.as_slice(), "{k}");
        let values = |d, b| decode_f32(d, b).unwrap();
        assert_eq!(values(t.dtype(), t.data()), values(*dtype, bytes), "{k}");
    }
    let converted = dir.join("bundle");
    convert_pruned(&pruned, &converted, &["--dtype", "f32"]);
    let (a, b) = (dir.join("a.png"), dir.join("b.png"));
    upscale(&model, &a);
    upscale(&converted, &b);
    let (a, b) = (image::open(&a).unwrap(), image::open(&b).unwrap());
    assert_eq!(a.as_bytes(), b.as_bytes(), "the outputs differ");
}
