//! The engine's one way in, shared by the `pgp-wgpu` binary, the web page and the C ABI:
//! a [`Gpu`](crate::Gpu), a bundle read through a [`ShardSource`], an [`Upscaler`], and
//! [`Job`]s that do one unit of GPU work per [`Job::next`].
//!
//! ```no_run
//! # async fn demo(pixels: &[u8], w: usize, h: usize) -> pgp_core::Result<()> {
//! use pgp_core::{DirSource, Gpu, GpuOptions, ImageView, PixelFormat, Upscaler};
//! let gpu = Gpu::new(&GpuOptions::default()).await?;
//! let upscaler = Upscaler::load(&DirSource::new("faithdiff.bundle"), &gpu, &mut |_| {}).await?;
//! let input = ImageView::packed(pixels, w, h, PixelFormat::Rgba8)?;
//! let mut job = upscaler.start(input, upscaler.default_options())?;
//! while let Some(event) = job.next().await {
//!     let event = event?;
//!     println!("{}/{}", event.done, event.total);
//! }
//! let image = job.into_image()?; // RGBA8, 2× the input
//! # Ok(()) }
//! ```

use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use burn::tensor::{DType, FloatDType, Tensor, TensorData};

use crate::bundle::{Bundle, LoadProgress, Parts};
use crate::device::Gpu;
use crate::error::{Error, Result};
use crate::families::{Family, sd21};
use crate::gpu_io::GpuImage;
use crate::models::probe::Probe;
use crate::pipeline::run::{Event, Ledger, Models, Options, Run, Stages, TextEncoders};
use crate::pipeline::tiling::TileLimits;
use crate::pixels::{Alpha, Image, ImageView, PixelFormat, Split, assemble};
use crate::precision::Precision;
use crate::source::ShardSource;
use crate::tokenizer::ClipTokenizer;

/// Bytes of one value of `dtype`.
fn elem_bytes(dtype: FloatDType) -> u64 {
    DType::from(dtype).size() as u64
}

/// How an [`Upscaler`] loads its bundle.
#[derive(Clone, Debug, Default)]
#[non_exhaustive]
pub struct LoadOptions {
    /// The precision the networks compute in (`Auto`: f16 where the device has it).
    pub precision: Precision,
}

impl LoadOptions {
    /// Options with this precision.
    pub fn with_precision(mut self, precision: Precision) -> Self {
        self.precision = precision;
        self
    }
}

/// The networks of a bundle, by family.
enum Nets {
    FaithDiff(Box<Models>),
    Sd21(Box<sd21::Models>),
}

/// A run of either family.
enum Runs<'a> {
    FaithDiff(Box<Run<'a>>),
    Sd21(Box<sd21::Run<'a>>),
}

impl Runs<'_> {
    fn ledger(&self) -> &Ledger {
        match self {
            Runs::FaithDiff(run) => run.ledger(),
            Runs::Sd21(run) => run.ledger(),
        }
    }
    fn ledger_mut(&mut self) -> &mut Ledger {
        match self {
            Runs::FaithDiff(run) => run.ledger_mut(),
            Runs::Sd21(run) => run.ledger_mut(),
        }
    }
}

/// A loaded model on one [`Gpu`]: run any number of jobs, one after the other.
pub struct Upscaler {
    gpu: Gpu,
    models: Nets,
    arch: String,
    family: Family,
    one_step: bool,
    dtype: FloatDType,
    /// Bytes on the device of the image networks' weights, and of the text encoders' while
    /// they are loaded.
    image_bytes: u64,
    text_bytes: u64,
}

impl Upscaler {
    /// Reads a bundle through `source`, one shard at a time (each uploaded to `gpu` before the
    /// next is read), and builds its networks (without the text encoders: the empty prompt's
    /// embeddings are cached in the bundle; see [`Upscaler::load_text_encoders`]).
    pub async fn load(
        source: &impl ShardSource,
        gpu: &Gpu,
        on_progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<Self> {
        Self::load_with(source, gpu, &LoadOptions::default(), on_progress).await
    }

    /// [`Upscaler::load`] with options (the precision).
    pub async fn load_with(
        source: &impl ShardSource,
        gpu: &Gpu,
        options: &LoadOptions,
        on_progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<Self> {
        let device = gpu.device();
        let dtype = options.precision.resolve(device)?;
        let bundle = Bundle::stream(source, device, dtype, Parts::Image, on_progress).await?;
        let models = match bundle.manifest.family {
            Family::FaithDiff => Nets::FaithDiff(Box::new(Models {
                unet: bundle.unet(device)?,
                denoise_encoder: bundle.denoise_encoder(device)?,
                vae: bundle.vae(device)?,
                empty_prompt: bundle.empty_prompt(device)?,
                text: None,
                prompts: Vec::new(),
                scheduler: bundle.scheduler()?,
                one_step: bundle.one_step_recipe()?,
            })),
            Family::Sd21 => {
                let mut vae = bundle.vae(device)?;
                vae.set_tiling_at(sd21::VAE_TILE_PX);
                Nets::Sd21(Box::new(sd21::Models {
                    unet: bundle.plain_unet(device)?,
                    vae,
                    empty_prompt: bundle.empty_prompt_embeds(device)?,
                    text: None,
                    prompts: Vec::new(),
                    scheduler: bundle.scheduler()?,
                    recipe: bundle.one_step_recipe()?,
                }))
            }
        };
        Ok(Self {
            gpu: gpu.clone(),
            arch: bundle.manifest.arch.clone(),
            family: bundle.manifest.family,
            // The SD2.1 family's models are one-step models.
            one_step: bundle.manifest.one_step || bundle.manifest.family == Family::Sd21,
            image_bytes: bundle.values() * elem_bytes(dtype),
            text_bytes: 0,
            models,
            dtype,
        })
    }

    /// Loads the CLIP text encoders (from the same bundle), which a non-empty prompt needs.
    pub async fn load_text_encoders(
        &mut self,
        source: &impl ShardSource,
        on_progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<()> {
        if self.has_text_encoders() {
            return Ok(());
        }
        let device = self.gpu.device();
        let bundle = Bundle::stream(source, device, self.dtype, Parts::Text, on_progress).await?;
        let pads = &bundle.manifest.pad_tokens;
        self.text_bytes = bundle.values() * elem_bytes(self.dtype);
        match &mut self.models {
            Nets::FaithDiff(m) => {
                m.text = Some(TextEncoders {
                    first: (
                        bundle.text_encoder(device, false)?,
                        ClipTokenizer::new(&pads[0])?,
                    ),
                    second: (
                        bundle.text_encoder(device, true)?,
                        ClipTokenizer::new(&pads[1])?,
                    ),
                })
            }
            Nets::Sd21(m) => {
                m.text = Some((
                    bundle.text_encoder(device, false)?,
                    ClipTokenizer::new(&pads[0])?,
                ))
            }
        }
        Ok(())
    }

    /// Encodes `prompt` once and keeps only its embeddings: the text encoders are read from
    /// `source` for it and released right after (1.6 GB in f16), unless
    /// [`Upscaler::load_text_encoders`] already holds them. Jobs with this prompt then use the
    /// cached embeddings. The empty prompt needs nothing (the bundle caches it).
    pub async fn prepare_prompt(
        &mut self,
        source: &impl ShardSource,
        prompt: &str,
        on_progress: &mut dyn FnMut(LoadProgress),
    ) -> Result<()> {
        let cached = match &self.models {
            Nets::FaithDiff(m) => m.prompts.iter().any(|(p, _)| p == prompt),
            Nets::Sd21(m) => m.prompts.iter().any(|(p, _)| p == prompt),
        };
        if prompt.is_empty() || cached {
            return Ok(());
        }
        let kept = self.has_text_encoders();
        if !kept {
            self.load_text_encoders(source, on_progress).await?;
        }
        // Encoded and awaited before the encoders go, whether it succeeds or not.
        let encoded: Result<()> = async {
            match &mut self.models {
                Nets::FaithDiff(m) => {
                    let text = m.text.as_ref().expect("loaded above");
                    let (embeds, pooled) = text.encode(prompt)?;
                    crate::device::settle(&pooled).await?;
                    m.prompts.push((prompt.to_string(), (embeds, pooled)));
                }
                Nets::Sd21(m) => {
                    let text = m.text.as_ref().expect("loaded above");
                    let embeds = sd21::encode(text, prompt)?;
                    crate::device::settle(&embeds).await?;
                    m.prompts.push((prompt.to_string(), embeds));
                }
            }
            Ok(())
        }
        .await;
        if !kept {
            match &mut self.models {
                Nets::FaithDiff(m) => m.text = None,
                Nets::Sd21(m) => m.text = None,
            }
            self.text_bytes = 0;
        }
        encoded
    }

    /// Whether prompts can be used (text encoders loaded).
    pub fn has_text_encoders(&self) -> bool {
        match &self.models {
            Nets::FaithDiff(m) => m.text.is_some(),
            Nets::Sd21(m) => m.text.is_some(),
        }
    }

    /// The bundle's model family.
    pub fn family(&self) -> Family {
        self.family
    }

    /// Whether a run with `options` conditions on its prompt, so that the text encoders (or a
    /// prepared prompt) are needed: a non-empty prompt, except in the FaithDiff family's
    /// one-step mode (no CFG); the SD2.1 family's one-step models use it.
    pub fn uses_prompt(&self, options: &Options) -> bool {
        !options.prompt.is_empty() && (self.family == Family::Sd21 || !options.one_step)
    }

    /// The architecture the bundle was converted as (`faithdiff`, `pgp-coarse`, `pgp`).
    pub fn arch(&self) -> &str {
        &self.arch
    }

    /// The dtype the networks compute in (what [`Precision`] resolved to on this device).
    pub fn dtype(&self) -> FloatDType {
        self.dtype
    }

    /// Bytes of weights this upscaler holds on the device.
    pub fn weights_bytes(&self) -> u64 {
        self.image_bytes + self.text_bytes
    }

    /// Whether the bundle is a one-step (S1) model.
    pub fn is_one_step(&self) -> bool {
        self.one_step
    }

    /// The device.
    pub fn gpu(&self) -> &Gpu {
        &self.gpu
    }

    /// The options a caller gets by default: FaithDiff's recipe, or the one-step mode for a
    /// one-step (S1) bundle.
    pub fn default_options(&self) -> Options {
        Options {
            one_step: self.one_step,
            ..Options::default()
        }
    }

    /// Starts a job: checks the image and the options and prepares the run on the host; the
    /// GPU work happens in [`Job::next`] / [`Job::finish`]. Dropping the job abandons it.
    pub fn start<'a>(&'a self, input: ImageView<'_>, options: Options) -> Result<Job<'a>> {
        let split = Split::new(&input)?;
        let keep_unit = input.format().is_16_bit();
        let limits = TileLimits {
            buffer_bytes: self.gpu.info().max_buffer_bytes,
            budget_bytes: options.max_memory,
            weights_bytes: self.weights_bytes(),
            elem_bytes: elem_bytes(self.dtype),
        };
        let (device, rgb) = (self.gpu.device(), &split.rgb);
        let run = match &self.models {
            Nets::FaithDiff(m) => Runs::FaithDiff(Box::new(Run::new(
                m, device, rgb, &options, limits, keep_unit,
            )?)),
            Nets::Sd21(m) => Runs::Sd21(Box::new(sd21::Run::new(
                m, device, rgb, &options, limits, keep_unit,
            )?)),
        };
        let to = (
            input.width() * options.scale,
            input.height() * options.scale,
        );
        let alpha = split
            .alpha
            .map(|a| a.resize((input.width(), input.height()), to))
            .transpose()?;
        Ok(Job {
            run,
            alpha,
            format: input.format(),
            output: None,
            gpu_output: None,
            over: false,
        })
    }
}

/// Stops a job from another thread or callback: [`Job::finish`] checks it before each unit.
#[derive(Clone, Debug, Default)]
pub struct CancelToken(Arc<AtomicBool>);

impl CancelToken {
    /// A token not yet tripped.
    pub fn new() -> Self {
        Self::default()
    }
    /// Asks the job to stop before its next unit of work.
    pub fn cancel(&self) {
        self.0.store(true, Ordering::SeqCst);
    }
    /// Whether [`CancelToken::cancel`] was called.
    pub fn is_cancelled(&self) -> bool {
        self.0.load(Ordering::SeqCst)
    }
}

/// One upscale in progress.
pub struct Job<'a> {
    run: Runs<'a>,
    alpha: Option<Alpha>,
    format: PixelFormat,
    output: Option<Image>,
    gpu_output: Option<GpuImage>,
    over: bool,
}

impl Job<'_> {
    /// Runs the next unit of work (LQ encode, prompt, start latent, one UNet tile of one step,
    /// one VAE decode tile, colour fix) and returns once the device has finished it; `None`
    /// when the job is done ([`Job::into_image`] then has the result). After an error the job
    /// is over.
    pub async fn next(&mut self) -> Option<Result<Event>> {
        self.next_probed(None).await
    }

    /// [`Job::next`], showing the UNet's features to `probe` (the pruning analysis,
    /// [`crate::ppa`]).
    pub async fn next_probed(&mut self, probe: Option<&mut dyn Probe>) -> Option<Result<Event>> {
        if self.over {
            return None;
        }
        let next = match &mut self.run {
            Runs::FaithDiff(run) => run.next_probed(probe).await,
            Runs::Sd21(_) if probe.is_some() => Some(Err(Error::input(
                "the pruning analysis measures FaithDiff-family models only",
            ))),
            Runs::Sd21(run) => run.next().await,
        };
        let r = match next {
            Some(r) => r,
            None => {
                self.over = true;
                return self.assemble().err().map(Err);
            }
        };
        self.over = r.is_err();
        Some(r)
    }

    fn assemble(&mut self) -> Result<()> {
        let out = self
            .run
            .ledger_mut()
            .take_output()
            .ok_or_else(|| Error::input("the job ended without a result"))?;
        if let Some(rgb) = out.tensor {
            let [_, _, h, w] = rgb.dims();
            let device = rgb.device();
            let alpha: Vec<f32> = match &self.alpha {
                Some(Alpha::U8(a)) => a.iter().map(|&v| f32::from(v) / 255.0).collect(),
                Some(Alpha::U16(a)) => a.iter().map(|&v| f32::from(v) / 65535.0).collect(),
                None => vec![1.0; w * h],
            };
            let alpha = Tensor::<4>::from_data(TensorData::new(alpha, [1, 1, h, w]), &device);
            let rgba = Tensor::cat(vec![rgb, alpha], 1)
                .reshape([4, h, w])
                .permute([1, 2, 0]);
            self.gpu_output = Some(GpuImage { tensor: rgba });
        }
        self.output = Some(assemble(
            self.format,
            out.image,
            out.unit.as_deref(),
            self.alpha.take(),
        )?);
        Ok(())
    }

    /// Units in the whole job.
    pub fn total(&self) -> u32 {
        self.run.ledger().total()
    }

    /// Keeps the result on the device as well ([`Job::take_gpu_image`]), for hosts that draw it
    /// with their own wgpu device.
    pub fn keep_gpu_image(&mut self) {
        self.run.ledger_mut().keep_tensor();
    }

    /// The result on the device (after the job is done, when [`Job::keep_gpu_image`] was
    /// called before).
    pub fn take_gpu_image(&mut self) -> Option<GpuImage> {
        self.gpu_output.take()
    }

    /// Testing the out-of-memory retry: UNet tiles larger than `px` fail as on a device that
    /// cannot allocate them.
    #[doc(hidden)]
    pub fn fail_tiles_over(&mut self, px: usize) {
        if let Runs::FaithDiff(run) = &mut self.run {
            run.fail_tiles_over(px);
        }
    }

    /// Keeps the pipeline's intermediate tensors (for parity checks and debugging).
    pub fn record_stages(&mut self) {
        self.run.ledger_mut().record_stages();
    }

    /// The intermediate tensors, when recorded.
    pub fn stages(&self) -> Option<&Stages> {
        self.run.ledger().stages()
    }

    /// The result, once [`Job::next`] has returned `None`.
    pub fn into_image(self) -> Result<Image> {
        self.output
            .ok_or_else(|| Error::input("the job has not finished"))
    }

    /// Runs every remaining unit, calling `on_event` after each; stops with
    /// [`Error::Cancelled`] as soon as `cancel` is tripped (checked before every unit).
    pub async fn finish(
        mut self,
        on_event: &mut dyn FnMut(Event),
        cancel: &CancelToken,
    ) -> Result<Image> {
        loop {
            if cancel.is_cancelled() {
                return Err(Error::Cancelled);
            }
            match self.next().await {
                Some(event) => on_event(event?),
                None => return self.into_image(),
            }
        }
    }
}
