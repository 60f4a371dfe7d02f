//! Applying a pruning [`Plan`] (pgp-model.md §3) to a bundle's UNet: a checkpoint in
//! FaithDiff's own key layout (UNet keys unprefixed, `denoise_encoder.*`), the kept transformer
//! blocks renumbered, the diffusers config of the new depths, and a PEAM — the bundle's, a new
//! one initialised as PyTorch initialises a `Conv2d`, or none. The tensors' bytes are the
//! bundle's own, borrowed; [`Pruned::write`] streams them as a safetensors file into the
//! caller's writer.

use std::borrow::Cow;
use std::collections::BTreeMap;

use burn::tensor::Device;
use safetensors::Dtype;
use serde_json::Value;

use crate::bundle::{Bundle, Configs, convert_dtype, storage_dtype};
use crate::error::{Error, Result};
use crate::models::peam::PeamConfig;
use crate::models::unet_2d::{UNet2DConditionConfig, UNet2DConditionModel};
use crate::ppa::{Plan, Report, Rule};
use crate::rng::SplitMix64;
use crate::weights::{VarBuilder, count_params};

/// What to do when the bundle has no PEAM.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PeamInit {
    /// Add one at the default placement, initialised as PyTorch initialises a `Conv2d`
    /// (uniform in ±1/√fan_in, seeded): the module PGP-DiffSR trains during fine-tuning.
    Init(u64),
    /// Add none: the checkpoint converts as `pgp-coarse` (pruned, FaithDiff's fusion only).
    None,
}

/// One tensor of the pruned checkpoint.
pub struct Entry<'a> {
    /// Stored element type.
    pub dtype: Dtype,
    /// Shape.
    pub shape: Vec<usize>,
    /// Raw little-endian bytes: the bundle's, or new ones (a new PEAM).
    pub bytes: Cow<'a, [u8]>,
}

/// A pruned model, ready to be written.
pub struct Pruned<'a> {
    /// The plan applied.
    pub plan: Plan,
    /// The checkpoint, by FaithDiff's key.
    pub checkpoint: BTreeMap<String, Entry<'a>>,
    /// The pruned diffusers UNet config.
    pub unet_config: Value,
    /// The PEAM of the checkpoint, if any.
    pub peam: Option<PeamConfig>,
    /// Where the PEAM came from, in words.
    pub peam_note: String,
    /// The architecture the checkpoint converts as (`pgp` with a PEAM, else `pgp-coarse`).
    pub arch: &'static str,
    /// Parameters of the plain UNet before and after.
    pub unet_params: [u64; 2],
    /// Values in the checkpoint (UNet, fusion, LQ encoder) before and after.
    pub checkpoint_params: [u64; 2],
}

impl Pruned<'_> {
    /// Writes the checkpoint as a safetensors file to `out`, tensor by tensor from the bundle's
    /// bytes (no second copy of the checkpoint in memory): the header (`__metadata__`
    /// `{"format": "pt"}`, every tensor's dtype, shape and byte range, padded to 8 bytes), then
    /// the data in key order.
    pub fn write(&self, out: &mut dyn std::io::Write) -> Result<()> {
        let mut header = serde_json::Map::new();
        header.insert("__metadata__".into(), serde_json::json!({"format": "pt"}));
        let mut offset = 0u64;
        for (key, e) in &self.checkpoint {
            let expected = e.shape.iter().product::<usize>() * e.dtype.bitsize() / 8;
            if e.bytes.len() != expected {
                return Err(Error::input(format!(
                    "`{key}`: {} bytes for {:?} {:?}",
                    e.bytes.len(),
                    e.dtype,
                    e.shape
                )));
            }
            let end = offset + e.bytes.len() as u64;
            header.insert(
                key.clone(),
                serde_json::json!({"dtype": e.dtype, "shape": e.shape, "data_offsets": [offset, end]}),
            );
            offset = end;
        }
        let mut json = serde_json::to_vec(&header)
            .map_err(|e| Error::input(format!("the checkpoint's header: {e}")))?;
        json.resize(json.len().div_ceil(8) * 8, b' ');
        let io = |e: std::io::Error| Error::Source {
            file: "unet.safetensors".into(),
            reason: e.to_string(),
        };
        out.write_all(&(json.len() as u64).to_le_bytes())
            .map_err(io)?;
        out.write_all(&json).map_err(io)?;
        for e in self.checkpoint.values() {
            out.write_all(&e.bytes).map_err(io)?;
        }
        out.flush().map_err(io)
    }
}

/// A new tensor: key, shape, bytes.
type NewTensor = (String, Vec<usize>, Vec<u8>);

/// New PEAM weights (`peam.*`) for `cfg`, placed as `FaithDiffUNet` places them, initialised
/// as PyTorch initialises a `Conv2d`, stored as `dtype`.
fn init_peam(cfg: &Configs, seed: u64, dtype: Dtype, device: &Device) -> Result<Vec<NewTensor>> {
    let shapes = VarBuilder::shapes_only(device);
    cfg.unet(&shapes)?;
    let wanted: BTreeMap<String, Vec<usize>> = shapes
        .wanted()
        .into_iter()
        .filter(|(k, _)| k.starts_with("peam."))
        .collect();
    let mut rng = SplitMix64::new(seed);
    let mut out = Vec::new();
    for (key, shape) in &wanted {
        // A bias takes its weight's fan-in, as in PyTorch's Conv2d.reset_parameters.
        let weight_shape = match key.strip_suffix(".bias") {
            Some(stem) => wanted
                .get(&format!("{stem}.weight"))
                .ok_or_else(|| Error::config(format!("`{key}` has no weight")))?,
            None => shape,
        };
        let fan_in: usize = weight_shape[1..].iter().product();
        let bound = 1.0 / (fan_in.max(1) as f64).sqrt();
        let n: usize = shape.iter().product();
        let values: Vec<u8> = (0..n)
            .flat_map(|_| (((rng.next_f64() * 2.0 - 1.0) * bound) as f32).to_le_bytes())
            .collect();
        out.push((
            key.clone(),
            shape.clone(),
            convert_dtype(key, Dtype::F32, &values, dtype)?,
        ));
    }
    Ok(out)
}

/// Prunes `bundle`'s UNet (read on the host, [`Bundle::read`]) by `report`'s measures: the
/// decoder's blocks by `rule`, the encoder's and the bottleneck's to `coarse_depth`. `device`
/// only holds the placeholders of the shape pass (any device; the CPU's natively).
pub fn prune<'a>(
    bundle: &'a Bundle,
    report: &Report,
    rule: Rule,
    coarse_depth: usize,
    peam: PeamInit,
    device: &Device,
) -> Result<Pruned<'a>> {
    let manifest = &bundle.manifest;
    let cfg = UNet2DConditionConfig::from_json(&manifest.unet)?;
    let layout = cfg.layout()?;
    let plan = Plan::new(&layout, &report.fine, rule, coarse_depth)?;
    let unet_config = plan.apply_to_config(&manifest.unet, &layout)?;
    let new_cfg = UNet2DConditionConfig::from_json(&unet_config)
        .map_err(|e| Error::config(format!("the pruned UNet config is not valid: {e}")))?;
    let dtype = storage_dtype(&manifest.dtype).ok_or_else(|| {
        Error::config(format!(
            "the bundle's dtype `{}` is unknown",
            manifest.dtype
        ))
    })?;

    let src = bundle.source();
    let mut checkpoint = BTreeMap::new();
    let (mut before, mut after) = (0u64, 0u64);
    for key in src.all_keys() {
        let stripped = match key.strip_prefix("unet.") {
            Some(k) => k,
            None if key.starts_with("denoise_encoder.") => key,
            None => continue,
        };
        let (d, shape) = src.info(key).expect("listed key");
        let n = shape.iter().product::<usize>() as u64;
        before += n;
        let Some(new_key) = plan.rename(stripped, "") else {
            continue;
        };
        after += n;
        let bytes = src.raw_bytes(key).ok_or_else(|| {
            Error::input(format!("`{key}`: the bundle's bytes are not on the host"))
        })?;
        checkpoint.insert(
            new_key,
            Entry {
                dtype: d,
                shape: shape.to_vec(),
                bytes: Cow::Borrowed(bytes),
            },
        );
    }
    let (peam_cfg, peam_note) = match (&manifest.peam, peam) {
        (Some(p), _) if p.is_active() => (Some(p.clone()), "copied from the bundle".to_string()),
        (_, PeamInit::Init(seed)) => {
            let p = PeamConfig::default();
            let mut configs = bundle.configs()?;
            configs.unet = new_cfg.clone();
            configs.peam = Some(p.clone());
            for (key, shape, bytes) in init_peam(&configs, seed, dtype, device)? {
                after += shape.iter().product::<usize>() as u64;
                checkpoint.insert(
                    key,
                    Entry {
                        dtype,
                        shape,
                        bytes: Cow::Owned(bytes),
                    },
                );
            }
            (
                Some(p),
                format!(
                    "new, initialised as PyTorch initialises a Conv2d (seed {seed}): train it \
                     during fine-tuning"
                ),
            )
        }
        (_, PeamInit::None) => (None, "none".to_string()),
    };
    let unet_params =
        |c: &UNet2DConditionConfig| count_params(device, |vb| UNet2DConditionModel::new(&vb, c));
    Ok(Pruned {
        arch: if peam_cfg.is_some() {
            "pgp"
        } else {
            "pgp-coarse"
        },
        unet_params: [unet_params(&cfg)?, unet_params(&new_cfg)?],
        checkpoint_params: [before, after],
        plan,
        checkpoint,
        unet_config,
        peam: peam_cfg,
        peam_note,
    })
}
