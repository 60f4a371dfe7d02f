//! One function per parser of untrusted input, each taking arbitrary bytes: libFuzzer calls
//! them through `fuzz_targets/` (built by `tools/fuzz.sh`), and `tests/corpus.rs` replays
//! every committed input (`corpus/<target>/`) through them in the ordinary test run. Errors
//! are the expected outcome for most inputs; a panic, an abort, a hang or unbounded memory
//! is a finding.

use std::io::Cursor;
use std::sync::OnceLock;

use pgp_core::bundle::Bundle;
use pgp_core::models::clip::{ClipTextConfig, ClipTextModel};
use pgp_core::models::faithdiff::{FaithDiffConfig, FaithDiffUNet};
use pgp_core::models::peam::PeamConfig;
use pgp_core::models::unet_2d::UNet2DConditionConfig;
use pgp_core::models::vae::{AutoencoderKL, AutoencoderKLConfig, DenoiseEncoder};
use pgp_core::schedulers::euler::{EulerConfig, schedule};
use pgp_core::tokenizer::ClipTokenizer;
use pgp_core::torch_pickle::{TorchCheckpoint, parse_state_dict};
use pgp_core::weights::{TensorSource, WeightFile, wanted_shapes};
use pgp_core::{Gpu, burn::tensor::Device};

/// Every target's name, as the folders under `corpus/`.
pub const TARGETS: [&str; 6] = [
    "pickle",
    "safetensors",
    "manifest",
    "config",
    "tokenizer",
    "image",
];

/// Runs the target `name` on `data`.
pub fn run(name: &str, data: &[u8]) {
    match name {
        "pickle" => pickle(data),
        "safetensors" => safetensors(data),
        "manifest" => manifest(data),
        "config" => config(data),
        "tokenizer" => tokenizer(data),
        "image" => image(data),
        other => panic!("no fuzz target `{other}`"),
    }
}

/// The CPU device module shapes are computed on (no tensor is allocated at full size).
fn device() -> &'static Device {
    static GPU: OnceLock<Gpu> = OnceLock::new();
    GPU.get_or_init(Gpu::cpu).device()
}

/// A torch.save checkpoint (input starting with `PK`: the ZIP archive, every tensor read) or a
/// bare `data.pkl` pickle.
pub fn pickle(data: &[u8]) {
    if data.starts_with(b"PK") {
        if let Ok(mut c) = TorchCheckpoint::open("fuzz", Cursor::new(data)) {
            for t in c.tensors() {
                let _ = c.read(&t.name);
            }
        }
    } else {
        let _ = parse_state_dict("fuzz", data);
    }
}

/// A safetensors file: header, every tensor's range and data, the finiteness check.
pub fn safetensors(data: &[u8]) {
    let Ok(f) = WeightFile::from_bytes("fuzz", data.to_vec()) else {
        return;
    };
    let _ = f.check_finite();
    let keys: Vec<String> = f.keys().map(str::to_string).collect();
    for k in &keys {
        let _ = (f.info(k), f.byte_range(k), f.raw(k));
        let _ = f.f32_data(k);
    }
}

/// A bundle manifest, then every config it holds built into its network's shapes.
pub fn manifest(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    let Ok(m) = Bundle::parse_manifest("fuzz", text) else {
        return;
    };
    if let Ok(unet) = UNet2DConditionConfig::from_json(&m.unet) {
        build_unet(&unet, &m.faithdiff.unwrap_or_default(), m.peam.as_ref());
    }
    vae(&m.vae);
    clip(&m.text_encoder);
    if let Some(te) = &m.text_encoder_2 {
        clip(te);
    }
    scheduler(&m.scheduler);
}

/// One config dict (the first byte picks which: UNet, VAE, CLIP, scheduler, or FaithDiff's and
/// PEAM's on the test fixture's UNet), built into its network's shapes.
pub fn config(data: &[u8]) {
    let Some((&kind, json)) = data.split_first() else {
        return;
    };
    let Ok(value) = serde_json::from_slice::<serde_json::Value>(json) else {
        return;
    };
    match kind % 5 {
        0 => {
            if let Ok(cfg) = UNet2DConditionConfig::from_json(&value) {
                build_unet(&cfg, &FaithDiffConfig::default(), None);
            }
        }
        1 => vae(&value),
        2 => clip(&value),
        3 => scheduler(&value),
        _ => {
            let fd = serde_json::from_value::<FaithDiffConfig>(value["faithdiff"].clone());
            let peam = serde_json::from_value::<PeamConfig>(value["peam"].clone()).ok();
            if let Ok(fd) = fd {
                build_unet(fixture_unet(), &fd, peam.as_ref());
            }
        }
    }
}

fn fixture_unet() -> &'static UNet2DConditionConfig {
    static CFG: OnceLock<UNet2DConditionConfig> = OnceLock::new();
    CFG.get_or_init(|| {
        let json = include_str!("../../tests/hub/sdxl/unet/config.json");
        UNet2DConditionConfig::from_json(&serde_json::from_str(json).expect("fixture JSON"))
            .expect("fixture config")
    })
}

fn build_unet(cfg: &UNet2DConditionConfig, fd: &FaithDiffConfig, peam: Option<&PeamConfig>) {
    let _ = wanted_shapes(device(), |vb| FaithDiffUNet::new(&vb, cfg, fd, peam));
}

fn vae(value: &serde_json::Value) {
    if let Ok(cfg) = AutoencoderKLConfig::from_json(value) {
        let _ = wanted_shapes(device(), |vb| Ok(AutoencoderKL::new(&vb, &cfg)));
        let _ = wanted_shapes(device(), |vb| DenoiseEncoder::new(&vb, &cfg));
    }
}

fn clip(value: &serde_json::Value) {
    if let Ok(cfg) = ClipTextConfig::from_json(value) {
        let _ = wanted_shapes(device(), |vb| ClipTextModel::new(&vb, &cfg, true, true));
    }
}

fn scheduler(value: &serde_json::Value) {
    if let Ok(cfg) = EulerConfig::from_json(value) {
        for steps in [1, 20] {
            let _ = schedule(&cfg, steps);
        }
    }
}

/// A prompt (bytes as lossy UTF-8, at most 4 KiB: longer inputs only slow the fuzzer down,
/// and the long-word regression input is replayed whole by the corpus test) through both
/// SDXL tokenizers.
pub fn tokenizer(data: &[u8]) {
    static TOKENIZERS: OnceLock<(ClipTokenizer, ClipTokenizer)> = OnceLock::new();
    let (a, b) = TOKENIZERS.get_or_init(|| ClipTokenizer::sdxl().expect("the built-in vocabulary"));
    let limit = if cfg!(fuzzing) { 4096 } else { usize::MAX };
    let text = String::from_utf8_lossy(&data[..data.len().min(limit)]);
    for t in [a, b] {
        let e = t.encode(&text);
        assert_eq!(e.ids.len(), 77);
        let _ = t.dropped(&text);
    }
}

/// An input image file, as `upscale` reads it (at most 4 megapixels here).
pub fn image(data: &[u8]) {
    let _ = pgp_wgpu_cli::input::decode(data, 1, 4_000_000);
}
