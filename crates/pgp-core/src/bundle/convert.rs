//! The conversion of FaithDiff-family downloads into a bundle: every input checked against the
//! configs before anything is written, the empty prompt encoded once, a LoRA merged into the
//! UNet as it is written, then the shards and the manifest through a [`Writer`]. The caller
//! reads the files (natively from folders, in a page from the visitor's files) and hands over
//! their bytes; this module opens nothing.

use std::collections::BTreeMap;
use std::io::{Read, Seek};

use burn::tensor::{Device, FloatDType};
use safetensors::Dtype;

use super::lora::Lora;
use super::{Checkpoint, Component, Configs, Contents, Manifest, ShardSink, Writer};
use crate::device::read_back;
use crate::error::{Error, Result};
use crate::families::Family;
use crate::models::clip::ClipTextModel;
use crate::models::faithdiff::FaithDiffConfig;
use crate::models::peam::PeamConfig;
use crate::models::vae::AutoencoderKLConfig;
use crate::pipeline::one_step::{OneStep, X0};
use crate::pipeline::run::TextEncoders;
use crate::schedulers::euler::EulerConfig;
use crate::tokenizer::ClipTokenizer;
use crate::weights::{TensorSource, WeightFile, check, decode_f32, load_checked};

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
        Family::FaithDiff,
        &inputs.unet,
        fd.clone(),
        inputs.peam.clone(),
        &inputs.vae_config,
        &[
            &inputs.text_encoder_configs[0],
            &inputs.text_encoder_configs[1],
        ],
    )?;

    // Weights, checked against the configs before anything is written.
    let ckpt = &mut inputs.checkpoint;
    let name = ckpt.name().to_string();
    let is_denoise = |n: &str| n.starts_with("denoise_encoder.");
    check(&ckpt.shapes(|n| !is_denoise(n)), "", device, |vb| {
        cfg.unet(&vb)
    })
    .map_err(|e| {
        Error::config(format!(
            "{name} does not fit the `{}` architecture (its UNet and PEAM configs): {e}",
            inputs.arch
        ))
    })?;
    check(&ckpt.shapes(is_denoise), "", device, |vb| {
        cfg.denoise_encoder(&vb)
    })?;
    let te = &inputs.text_encoders;
    let prefixed = [
        ClipTextModel::has_prefix(&te[0]),
        ClipTextModel::has_prefix(&te[1]),
    ];
    for i in 0..2 {
        check(&te[i], "", device, |vb| {
            cfg.text_encoder(&vb, i, prefixed[i])
        })?;
    }
    check(&inputs.vae, "", device, |vb| cfg.vae(&vb))?;

    // A LoRA's text-encoder modules merged first (named by the bundle's keys), so that the
    // cached empty prompt is the merged encoders'.
    if let Some(l) = inputs.lora.as_mut() {
        for (i, c) in [Component::TextEncoder, Component::TextEncoder2]
            .into_iter()
            .enumerate()
        {
            let prefix = c.prefix();
            if l.module_paths().any(|m| m.starts_with(&prefix)) {
                let merged = merged_file(&inputs.text_encoders[i], l, |k| {
                    format!("{prefix}{}", te_key(prefixed[i], k))
                })?;
                inputs.text_encoders[i] = merged;
            }
        }
    }
    let te = &inputs.text_encoders;

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

    say("writing the VAE and the text encoders");
    writer.begin(Component::Vae)?;
    writer.add_file(&inputs.vae, "vae.", str::to_string)?;
    for (i, component) in [Component::TextEncoder, Component::TextEncoder2]
        .into_iter()
        .enumerate()
    {
        writer.begin(component)?;
        writer.add_file(&te[i], &component.prefix(), |k| te_key(prefixed[i], k))?;
    }
    if let Some(l) = &inputs.lora {
        l.check_all_merged()?;
        say(&format!("merged the LoRA's {} modules", l.modules()));
    }
    writer.begin(Component::EmptyPrompt)?;
    writer.add_f32("empty_prompt.prompt_embeds".into(), prompt_shape, &prompt)?;
    writer.add_f32(
        "empty_prompt.pooled_prompt_embeds".into(),
        pooled_shape,
        &pooled,
    )?;
    let one_step = inputs.one_step || inputs.lora.is_some();
    writer.finish(Contents {
        family: Family::FaithDiff,
        arch: inputs.arch,
        unet: inputs.unet,
        faithdiff: Some(fd),
        peam: inputs.peam,
        vae: inputs.vae_config,
        text_encoders: inputs.text_encoder_configs.into(),
        pad_tokens: inputs.pad_tokens.into(),
        scheduler: inputs.scheduler,
        sources: inputs.sources,
        one_step,
        recipe: None,
    })
}

/// What an SD2.1 one-step model adds to SD2.1-base: LoRAs merged into the UNet and the VAE,
/// base weights it trained (OSEDiff's `conv_in`), and its recipe.
pub struct Adapters {
    /// The architecture's name for the manifest (`osediff`).
    pub arch: String,
    /// The UNet's LoRA (every adapter group).
    pub unet: Lora,
    /// UNet weights that replace SD2.1's (`conv_in.weight` …): dtype, shape, bytes.
    pub unet_replace: BTreeMap<String, (Dtype, Vec<usize>, Vec<u8>)>,
    /// The VAE's LoRA (OSEDiff: its encoder and `quant_conv`).
    pub vae: Option<Lora>,
    /// Where its file came from, for the manifest's `sources`.
    pub source: (String, String),
    /// Its one-step recipe; `None`: the standard one (the last training timestep, x0 by DDPM).
    pub recipe: Option<OneStep>,
}

/// OSEDiff's `osediff.pkl` as its `save_model` writes it: `state_dict_unet` (PEFT keys of the
/// adapters `default_encoder`, `default_decoder`, `default_others`, and the trained
/// `conv_in.base_layer.*`), `state_dict_vae` (adapter `default_encoder`), `rank_unet`,
/// `rank_vae` and the lists of adapted modules, which are checked against the state dicts.
/// OSEDiff's `LoraConfig` sets no alpha, so PEFT's default (8) applies: scale 8 / r.
pub fn osediff<R: Read + Seek>(ckpt: &mut Checkpoint<R>) -> Result<Adapters> {
    const PEFT_ALPHA: f32 = 8.0;
    let name = ckpt.name().to_string();
    let Checkpoint::Pickle(pickle) = &*ckpt else {
        return Err(Error::input(format!(
            "{name}: OSEDiff's weights are a torch.save file (osediff.pkl)"
        )));
    };
    let meta = pickle.metadata().clone();
    let int = |key: &str| -> Result<usize> {
        meta.get(key)
            .and_then(|m| m.as_int())
            .and_then(|v| usize::try_from(v).ok())
            .ok_or_else(|| Error::input(format!("{name}: no integer `{key}`: not an osediff.pkl")))
    };
    let ranks = [int("rank_unet")?, int("rank_vae")?];
    let mut unet_lora = Vec::new();
    let mut vae_lora = Vec::new();
    let mut unet_replace = BTreeMap::new();
    for (key, ..) in ckpt.tensors() {
        let (dtype, shape, bytes) = ckpt.read(&key)?;
        let f32s = |what: &str| {
            decode_f32(dtype, &bytes)
                .ok_or_else(|| Error::input(format!("{name}: `{key}` is {dtype:?}, not {what}")))
        };
        if let Some(k) = key.strip_prefix("state_dict_unet.") {
            if k.contains(".lora_") {
                unet_lora.push((k.to_string(), f32s("a float LoRA tensor")?, shape));
            } else {
                let base = k.replace(".base_layer.", ".");
                if unet_replace
                    .insert(base.clone(), (dtype, shape, bytes))
                    .is_some()
                {
                    return Err(Error::input(format!("{name}: `{base}` is given twice")));
                }
            }
        } else if let Some(k) = key.strip_prefix("state_dict_vae.") {
            if !k.contains(".lora_") {
                return Err(Error::input(format!(
                    "{name}: `{key}` is not a LoRA tensor (OSEDiff trains only LoRAs in the VAE)"
                )));
            }
            vae_lora.push((k.to_string(), f32s("a float LoRA tensor")?, shape));
        } else {
            return Err(Error::input(format!(
                "{name}: unexpected tensor `{key}` (an osediff.pkl holds state_dict_unet and \
                 state_dict_vae)"
            )));
        }
    }
    let rank_of = |t: &[(String, Vec<f32>, Vec<usize>)]| {
        t.iter()
            .find(|(k, ..)| k.contains(".lora_A."))
            .map(|(_, _, s)| s[0])
    };
    for (what, t, r) in [("unet", &unet_lora, ranks[0]), ("vae", &vae_lora, ranks[1])] {
        if let Some(found) = rank_of(t)
            && found != r
        {
            return Err(Error::input(format!(
                "{name}: rank_{what} is {r}, its LoRA matrices have rank {found}"
            )));
        }
    }
    let unet = Lora::from_tensors(
        &format!("{name} (UNet)"),
        unet_lora,
        1.0,
        None,
        Some(PEFT_ALPHA),
    )?;
    let vae = if vae_lora.is_empty() {
        None
    } else {
        Some(Lora::from_tensors(
            &format!("{name} (VAE)"),
            vae_lora,
            1.0,
            None,
            Some(PEFT_ALPHA),
        )?)
    };
    // Every module the lists name has its adapter in the state dict.
    for (list, lora) in [
        ("unet_lora_encoder_modules", Some(&unet)),
        ("unet_lora_decoder_modules", Some(&unet)),
        ("unet_lora_others_modules", Some(&unet)),
        ("vae_lora_encoder_modules", vae.as_ref()),
    ] {
        let names = meta
            .get(list)
            .and_then(|m| m.as_strings())
            .ok_or_else(|| Error::input(format!("{name}: no list `{list}`: not an osediff.pkl")))?;
        let have: std::collections::BTreeSet<&str> =
            lora.map(|l| l.module_paths().collect()).unwrap_or_default();
        if let Some(missing) = names.iter().find(|n| !have.contains(**n)) {
            return Err(Error::input(format!(
                "{name}: `{list}` names `{missing}`, which has no LoRA in the state dict"
            )));
        }
    }
    Ok(Adapters {
        arch: "osediff".into(),
        unet,
        unet_replace,
        vae,
        source: ("osediff".into(), name),
        recipe: None,
    })
}

/// PiSA-SR's `pisa_sr.pkl` as its `save_model` writes it: `state_dict_unet` with the PEFT keys of
/// the pixel and semantic adapter groups (`default_{encoder,decoder,others}_{pix,sem}`),
/// `lora_rank_unet_pix`, `lora_rank_unet_sem` and the six lists of adapted modules. Both groups
/// are merged at weight 1 (its default mode: W0 + Δpix + Δsem, alpha 8 over each group's rank);
/// the recipe is one UNet call at t = 1 and x0 = z − ε̂; the VAE has no adapter.
pub fn pisa<R: Read + Seek>(ckpt: &mut Checkpoint<R>) -> Result<Adapters> {
    const PEFT_ALPHA: f32 = 8.0;
    let name = ckpt.name().to_string();
    let Checkpoint::Pickle(pickle) = &*ckpt else {
        return Err(Error::input(format!(
            "{name}: PiSA-SR's weights are a torch.save file (pisa_sr.pkl)"
        )));
    };
    let meta = pickle.metadata().clone();
    let mut lora = Vec::new();
    for (key, ..) in ckpt.tensors() {
        let Some(k) = key
            .strip_prefix("state_dict_unet.")
            .filter(|k| k.contains(".lora_"))
        else {
            return Err(Error::input(format!(
                "{name}: unexpected tensor `{key}` (a pisa_sr.pkl holds the UNet's LoRAs in \
                 state_dict_unet)"
            )));
        };
        let (dtype, shape, bytes) = ckpt.read(&key)?;
        let values = decode_f32(dtype, &bytes)
            .ok_or_else(|| Error::input(format!("{name}: `{key}` is {dtype:?}, not a float")))?;
        lora.push((k.to_string(), values, shape));
    }
    for group in ["pix", "sem"] {
        let key = format!("lora_rank_unet_{group}");
        let rank = meta.get(&key).and_then(|m| m.as_int()).ok_or_else(|| {
            Error::input(format!("{name}: no integer `{key}`: not a pisa_sr.pkl"))
        })?;
        let adapter = format!(".lora_A.default_encoder_{group}.");
        if let Some((_, _, s)) = lora.iter().find(|(k, ..)| k.contains(&adapter))
            && s[0] as i64 != rank
        {
            return Err(Error::input(format!(
                "{name}: {key} is {rank}, its LoRA matrices have rank {}",
                s[0]
            )));
        }
    }
    let unet = Lora::from_tensors(&format!("{name} (UNet)"), lora, 1.0, None, Some(PEFT_ALPHA))?;
    for group in ["pix", "sem"] {
        for part in ["encoder", "decoder", "others"] {
            let list = format!("unet_lora_{part}_modules_{group}");
            let names = meta
                .get(&list)
                .and_then(|m| m.as_strings())
                .ok_or_else(|| {
                    Error::input(format!("{name}: no list `{list}`: not a pisa_sr.pkl"))
                })?;
            let have: std::collections::BTreeSet<&str> = unet.module_paths().collect();
            if let Some(missing) = names.iter().find(|n| !have.contains(**n)) {
                return Err(Error::input(format!(
                    "{name}: `{list}` names `{missing}`, which has no LoRA in the state dict"
                )));
            }
        }
    }
    Ok(Adapters {
        arch: "pisa-sr".into(),
        unet,
        unet_replace: BTreeMap::new(),
        vae: None,
        source: ("pisa".into(), name),
        recipe: Some(OneStep {
            timestep: 1,
            x0: X0::Residual,
        }),
    })
}

/// An SD2.1-base diffusers folder's parts, as the caller read them.
pub struct Sd21Inputs {
    /// `unet/config.json`.
    pub unet_config: serde_json::Value,
    /// `vae/config.json`.
    pub vae_config: serde_json::Value,
    /// `text_encoder/config.json`.
    pub text_encoder_config: serde_json::Value,
    /// `scheduler/scheduler_config.json` (PNDM / DDPM / Euler: only the betas are used).
    pub scheduler: serde_json::Value,
    /// The tokenizer's pad token (SD 2.x: `!`).
    pub pad_token: String,
    /// The UNet's weights.
    pub unet: WeightFile,
    /// The VAE's weights.
    pub vae: WeightFile,
    /// The text encoder's weights.
    pub text_encoder: WeightFile,
    /// Where each part came from, for the manifest.
    pub sources: BTreeMap<String, String>,
}

/// The scheduler classes whose `scaled_linear` betas an SD2.1 one-step model uses.
const SD21_SCHEDULERS: [&str; 4] = [
    "PNDMScheduler",
    "DDPMScheduler",
    "DDIMScheduler",
    "EulerDiscreteScheduler",
];

/// Converts SD2.1-base with a one-step model's `adapters` into a bundle (the SD2.1 family)
/// through `writer`; the CPU `device` encodes the empty prompt. Every check runs before the
/// first shard is written.
pub async fn sd21<S: ShardSink>(
    mut inputs: Sd21Inputs,
    mut adapters: Adapters,
    mut writer: Writer<S>,
    device: &Device,
    say: &mut dyn FnMut(&str),
) -> Result<(Manifest, S)> {
    // Only the training betas matter: one UNet call, no sampler.
    let class = inputs.scheduler["_class_name"].as_str().unwrap_or("");
    if !SD21_SCHEDULERS.contains(&class) {
        return Err(Error::config(format!(
            "scheduler `{class}`: an SD2.1 folder's scheduler is one of {}",
            SD21_SCHEDULERS.join(", ")
        )));
    }
    let mut scheduler = inputs.scheduler.clone();
    if let Some(o) = scheduler.as_object_mut() {
        o.insert("_class_name".into(), "EulerDiscreteScheduler".into());
        for k in [
            "clip_sample",
            "set_alpha_to_one",
            "skip_prk_steps",
            "variance_type",
            "thresholding",
        ] {
            o.remove(k);
        }
    }
    let sched = EulerConfig::from_json(&scheduler)?;
    let recipe = adapters.recipe.unwrap_or_else(|| OneStep::standard(&sched));
    recipe.validate(&sched)?;
    let cfg = Configs::from_json(
        Family::Sd21,
        &inputs.unet_config,
        FaithDiffConfig::default(),
        None,
        &inputs.vae_config,
        &[&inputs.text_encoder_config],
    )?;
    if let Some(kind) = &cfg.unet.addition_embed_type {
        return Err(Error::config(format!(
            "the UNet has added embeddings (`{kind}`: an SDXL UNet); SD2.1's has no added \
             embeddings"
        )));
    }
    let cross = cfg.unet.layout()?.cross;
    let hidden = cfg.text[0].hidden_size;
    if cross.iter().any(|&c| c != hidden) {
        return Err(Error::config(format!(
            "the UNet attends to {cross:?}-wide text, the text encoder gives {hidden}"
        )));
    }
    check(&inputs.unet, "", device, |vb| cfg.plain_unet(&vb))?;
    check(&inputs.vae, "", device, |vb| cfg.vae(&vb))?;
    let te = &inputs.text_encoder;
    let prefixed = ClipTextModel::has_prefix(te);
    check(te, "", device, |vb| cfg.text_encoder(&vb, 0, prefixed))?;
    for (key, (_, shape, _)) in &adapters.unet_replace {
        match inputs.unet.info(key) {
            Some((_, s)) if s == shape.as_slice() => {}
            Some((_, s)) => {
                return Err(Error::input(format!(
                    "{}: `{key}` is {shape:?}, SD2.1's is {s:?}",
                    adapters.source.1
                )));
            }
            None => {
                return Err(Error::input(format!(
                    "{}: `{key}` replaces no weight of SD2.1's UNet",
                    adapters.source.1
                )));
            }
        }
    }

    say("encoding the empty prompt");
    let text = (
        load_checked(te, device, FloatDType::F32, |vb| {
            cfg.text_encoder(&vb, 0, prefixed)
        })?,
        ClipTokenizer::new(&inputs.pad_token)?,
    );
    let empty = crate::families::sd21::encode(&text, "")?;
    drop(text);
    let (empty, empty_shape) = read_back(empty).await?;

    say("writing the UNet, the VAE and the text encoder");
    writer.begin(Component::Unet)?;
    let keys: Vec<String> = inputs.unet.keys().map(str::to_string).collect();
    for key in &keys {
        let (dtype, shape, bytes) = match adapters.unet_replace.remove(key) {
            Some(t) => t,
            None => {
                let (d, s) = inputs.unet.info(key).expect("listed key");
                (d, s.to_vec(), inputs.unet.raw(key)?.to_vec())
            }
        };
        write_merged(
            &mut writer,
            &mut Some(&mut adapters.unet),
            "unet.",
            key,
            dtype,
            shape,
            &bytes,
        )?;
    }
    adapters.unet.check_all_merged()?;
    writer.begin(Component::Vae)?;
    let keys: Vec<String> = inputs.vae.keys().map(str::to_string).collect();
    for key in &keys {
        let (d, s) = inputs.vae.info(key).expect("listed key");
        let (d, s) = (d, s.to_vec());
        let bytes = inputs.vae.raw(key)?.to_vec();
        write_merged(
            &mut writer,
            &mut adapters.vae.as_mut(),
            "vae.",
            key,
            d,
            s,
            &bytes,
        )?;
    }
    if let Some(l) = &adapters.vae {
        l.check_all_merged()?;
    }
    say(&format!(
        "merged {} UNet and {} VAE modules' LoRAs",
        adapters.unet.modules(),
        adapters.vae.as_ref().map_or(0, Lora::modules)
    ));
    writer.begin(Component::TextEncoder)?;
    writer.add_file(te, "text_encoder.", |k| {
        if prefixed {
            k.to_string()
        } else {
            format!("text_model.{k}")
        }
    })?;
    writer.begin(Component::EmptyPrompt)?;
    writer.add_f32("empty_prompt.prompt_embeds".into(), empty_shape, &empty)?;
    inputs.sources.insert(adapters.source.0, adapters.source.1);
    writer.finish(Contents {
        family: Family::Sd21,
        arch: adapters.arch,
        unet: inputs.unet_config,
        faithdiff: None,
        peam: None,
        vae: inputs.vae_config,
        text_encoders: vec![inputs.text_encoder_config],
        pad_tokens: vec![inputs.pad_token],
        scheduler,
        sources: inputs.sources,
        one_step: true,
        recipe: Some(recipe),
    })
}

/// Writes one tensor as `prefix + key`, with `lora`'s update merged in when it adapts it.
fn write_merged<S: ShardSink>(
    writer: &mut Writer<S>,
    lora: &mut Option<&mut Lora>,
    prefix: &str,
    key: &str,
    dtype: Dtype,
    shape: Vec<usize>,
    bytes: &[u8],
) -> Result<()> {
    if let Some(l) = lora.as_deref_mut() {
        let mut values = decode_f32(dtype, bytes)
            .ok_or_else(|| Error::input(format!("`{key}`: {dtype:?} is not a float dtype")))?;
        if l.merge(key, &shape, &mut values)? {
            return writer.add_f32(format!("{prefix}{key}"), shape, &values);
        }
    }
    writer.add(format!("{prefix}{key}"), dtype, shape, bytes)
}

/// A text encoder's key in the bundle, after `text_encoder.`: transformers' `text_model.`
/// prefix added where the file lacks it.
fn te_key(prefixed: bool, k: &str) -> String {
    if prefixed || k.starts_with("text_projection") {
        k.to_string()
    } else {
        format!("text_model.{k}")
    }
}

/// `file` with `lora`'s updates merged (the merged tensors in f32), each tensor's module named
/// by `name(key)`.
fn merged_file(
    file: &WeightFile,
    lora: &mut Lora,
    name: impl Fn(&str) -> String,
) -> Result<WeightFile> {
    let mut tensors = Vec::new();
    for k in file.keys() {
        let (dtype, shape) = file.info(k).expect("listed key");
        let raw = file.raw(k)?;
        let mut merged = None;
        if let Some(mut values) = decode_f32(dtype, raw)
            && lora.merge(&name(k), shape, &mut values)?
        {
            merged = Some(
                values
                    .iter()
                    .flat_map(|v| v.to_le_bytes())
                    .collect::<Vec<u8>>(),
            );
        }
        tensors.push(match merged {
            Some(bytes) => (k.to_string(), Dtype::F32, shape.to_vec(), bytes),
            None => (k.to_string(), dtype, shape.to_vec(), raw.to_vec()),
        });
    }
    let bytes = super::writer::serialize(&tensors)?;
    WeightFile::from_bytes(file.source_name().to_string(), bytes)
}
