//! The conversion of FaithDiff-family downloads into a bundle: every input checked against the
//! configs before anything is written, the empty prompt encoded once, a LoRA merged into the
//! UNet as it is written, then the shards and the manifest through a [`Writer`]. The caller
//! reads the files (natively from folders, in a page from the visitor's files) and hands over
//! their bytes; this module opens nothing.

use std::collections::BTreeMap;
use std::io::{Read, Seek};

use burn::tensor::{Device, FloatDType};

use super::lora::Lora;
use super::{Checkpoint, Component, Configs, Contents, Manifest, ShardSink, Writer};
use crate::device::read_back;
use crate::error::{Error, Result};
use crate::models::clip::ClipTextModel;
use crate::models::faithdiff::FaithDiffConfig;
use crate::models::peam::PeamConfig;
use crate::models::vae::AutoencoderKLConfig;
use crate::pipeline::run::TextEncoders;
use crate::schedulers::euler::EulerConfig;
use crate::tokenizer::ClipTokenizer;
use crate::weights::{WeightFile, check, decode_f32, load_checked};

/// What a FaithDiff / PGP-DiffSR bundle is made of, as the caller read it.
pub struct FaithDiffInputs<R: Read + Seek> {
    /// The architecture preset's name (`faithdiff`, `pgp-coarse`, `pgp`), for the record.
    pub arch: String,
    /// The UNet's diffusers config (the preset's depths applied, or the user's own).
    pub unet: serde_json::Value,
    /// The PEAM's config (`pgp` models).
    pub peam: Option<PeamConfig>,
    /// `text_encoder/config.json` and `text_encoder_2/config.json`.
    pub text_encoder_configs: [serde_json::Value; 2],
    /// `scheduler/scheduler_config.json`.
    pub scheduler: serde_json::Value,
    /// The VAE's `config.json`.
    pub vae_config: serde_json::Value,
    /// The pad tokens of `tokenizer` and `tokenizer_2`.
    pub pad_tokens: [String; 2],
    /// FaithDiff's checkpoint (UNet keys unprefixed, `denoise_encoder.*`).
    pub checkpoint: Checkpoint<R>,
    /// The two text encoders' weights.
    pub text_encoders: [WeightFile; 2],
    /// The VAE's weights.
    pub vae: WeightFile,
    /// A UNet LoRA to merge; the bundle is then one-step.
    pub lora: Option<Lora>,
    /// Where each part came from, for the manifest.
    pub sources: BTreeMap<String, String>,
    /// Marks the bundle one-step (S1) without a LoRA.
    pub one_step: bool,
}

/// Converts `inputs` into a bundle through `writer` (the CPU `device` encodes the empty
/// prompt); `say` hears each stage. Nothing reaches the writer before every check passed.
pub async fn faithdiff<R: Read + Seek, S: ShardSink>(
    mut inputs: FaithDiffInputs<R>,
    mut writer: Writer<S>,
    device: &Device,
    say: &mut dyn FnMut(&str),
) -> Result<(Manifest, S)> {
    // Configs.
    EulerConfig::from_json(&inputs.scheduler)?;
    let vae_cfg = AutoencoderKLConfig::from_json(&inputs.vae_config)?;
    let fd = FaithDiffConfig {
        lq_channels: *vae_cfg.block_out_channels.last().expect("validated"),
        ..FaithDiffConfig::default()
    };
    let cfg = Configs::from_json(
        &inputs.unet,
        fd.clone(),
        inputs.peam.clone(),
        &inputs.vae_config,
        [&inputs.text_encoder_configs[0], &inputs.text_encoder_configs[1]],
    )?;

    // Weights, checked against the configs before anything is written.
    let ckpt = &mut inputs.checkpoint;
    let name = ckpt.name().to_string();
    let is_denoise = |n: &str| n.starts_with("denoise_encoder.");
    check(&ckpt.shapes(|n| !is_denoise(n)), "", device, |vb| cfg.unet(&vb)).map_err(|e| {
        Error::config(format!(
            "{name} does not fit the `{}` architecture (its UNet and PEAM configs): {e}",
            inputs.arch
        ))
    })?;
    check(&ckpt.shapes(is_denoise), "", device, |vb| {
        cfg.denoise_encoder(&vb)
    })?;
    let te = &inputs.text_encoders;
    let prefixed = [ClipTextModel::has_prefix(&te[0]), ClipTextModel::has_prefix(&te[1])];
    for i in 0..2 {
        check(&te[i], "", device, |vb| cfg.text_encoder(&vb, i, prefixed[i]))?;
    }
    check(&inputs.vae, "", device, |vb| cfg.vae(&vb))?;

    // The empty prompt through both text encoders, once.
    say("encoding the empty prompt");
    let text_encoder = |i: usize| -> Result<(ClipTextModel, ClipTokenizer)> {
        let m = load_checked(&te[i], device, FloatDType::F32, |vb| {
            cfg.text_encoder(&vb, i, prefixed[i])
        })?;
        Ok((m, ClipTokenizer::new(&inputs.pad_tokens[i])?))
    };
    let encoders = TextEncoders {
        first: text_encoder(0)?,
        second: text_encoder(1)?,
    };
    let (prompt, pooled) = encoders.encode("")?;
    drop(encoders);
    let (prompt, prompt_shape) = read_back(prompt).await?;
    let (pooled, pooled_shape) = read_back(pooled).await?;

    // Write.
    say("writing the UNet and the LQ encoder");
    let infos = ckpt.tensors();
    for component in [Component::Unet, Component::DenoiseEncoder] {
        let denoise = component == Component::DenoiseEncoder;
        writer.begin(component)?;
        for (name, ..) in infos.iter().filter(|(n, ..)| is_denoise(n) == denoise) {
            let (dtype, shape, data) = ckpt.read(name)?;
            let key = if denoise {
                name.clone()
            } else {
                format!("unet.{name}")
            };
            if let (Some(l), false) = (inputs.lora.as_mut(), denoise) {
                let mut values = decode_f32(dtype, &data).ok_or_else(|| {
                    Error::input(format!("`{name}`: {dtype:?} is not a float dtype"))
                })?;
                if l.merge(name, &shape, &mut values)? {
                    writer.add_f32(key, shape, &values)?;
                    continue;
                }
            }
            writer.add(key, dtype, shape, &data)?;
        }
    }
    if let Some(l) = &inputs.lora {
        l.check_all_merged()?;
        say(&format!("merged the LoRA's {} modules into the UNet", l.modules()));
    }
    say("writing the VAE and the text encoders");
    writer.begin(Component::Vae)?;
    writer.add_file(&inputs.vae, "vae.", str::to_string)?;
    for (i, component) in [Component::TextEncoder, Component::TextEncoder2]
        .into_iter()
        .enumerate()
    {
        writer.begin(component)?;
        writer.add_file(&te[i], &component.prefix(), |k| {
            if prefixed[i] || k.starts_with("text_projection") {
                k.to_string()
            } else {
                format!("text_model.{k}")
            }
        })?;
    }
    writer.begin(Component::EmptyPrompt)?;
    writer.add_f32("empty_prompt.prompt_embeds".into(), prompt_shape, &prompt)?;
    writer.add_f32("empty_prompt.pooled_prompt_embeds".into(), pooled_shape, &pooled)?;
    let one_step = inputs.one_step || inputs.lora.is_some();
    writer.finish(Contents {
        arch: inputs.arch,
        unet: inputs.unet,
        faithdiff: fd,
        peam: inputs.peam,
        vae: inputs.vae_config,
        text_encoders: inputs.text_encoder_configs,
        pad_tokens: inputs.pad_tokens,
        scheduler: inputs.scheduler,
        sources: inputs.sources,
        one_step,
        recipe: None,
    })
}
