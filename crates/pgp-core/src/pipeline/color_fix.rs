//! Colour correction of the decoded image towards the Lanczos-upscaled input (pipeline.md
//! step 9), as FaithDiff's `utils/color_fix.py` (from StableSR) computes it on `[0, 1]` images.

use burn::tensor::module::conv2d;
use burn::tensor::ops::{ConvOptions, PadMode};
use burn::tensor::{Tensor, TensorData};

use crate::error::{Error, Result};

/// Which correction to apply.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum ColorFix {
    /// Per-channel mean and standard deviation (FaithDiff's default).
    #[default]
    Adain,
    /// High frequencies of the output, low frequencies of the reference.
    Wavelet,
    /// No correction.
    None,
}

impl ColorFix {
    /// Parses `adain`, `wavelet` or `none`.
    pub fn parse(name: &str) -> Result<Self> {
        match name {
            "adain" => Ok(Self::Adain),
            "wavelet" => Ok(Self::Wavelet),
            "none" => Ok(Self::None),
            other => Err(Error::config(format!(
                "unknown colour fix `{other}` (known: adain, wavelet, none)"
            ))),
        }
    }

    /// Corrects `target` towards `source` (both `[B, 3, H, W]` in `[0, 1]`), then clamps.
    pub fn apply(self, target: Tensor<4>, source: Tensor<4>) -> Result<Tensor<4>> {
        if target.dims() != source.dims() {
            return Err(Error::input(format!(
                "colour fix needs equal shapes, got {:?} and {:?}",
                target.dims(),
                source.dims()
            )));
        }
        let out = match self {
            Self::Adain => adain(target, source),
            Self::Wavelet => wavelet(target, source),
            Self::None => target,
        };
        Ok(out.clamp(0.0, 1.0))
    }
}

/// Mean and standard deviation per channel (unbiased variance + 1e-5, then sqrt).
fn mean_std(x: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
    let [b, c, h, w] = x.dims();
    let flat = x.reshape([b, c, h * w]);
    let var = flat.clone().var(2) + 1e-5;
    (
        flat.mean_dim(2).reshape([b, c, 1, 1]),
        var.sqrt().reshape([b, c, 1, 1]),
    )
}

/// Adaptive instance normalisation of `content` to the statistics of `style` (no clamp).
pub fn adain(content: Tensor<4>, style: Tensor<4>) -> Tensor<4> {
    let (sm, ss) = mean_std(style);
    let (cm, cs) = mean_std(content.clone());
    (content - cm) / cs * ss + sm
}

/// The 3×3 binomial blur at dilation `radius` with replicate padding, per channel.
fn wavelet_blur(x: Tensor<4>, radius: usize) -> Tensor<4> {
    let c = x.dims()[1];
    let k = [1.0f32, 2.0, 1.0, 2.0, 4.0, 2.0, 1.0, 2.0, 1.0].map(|v| v / 16.0);
    let kernel: Vec<f32> = (0..c).flat_map(|_| k).collect();
    let kernel = Tensor::<4>::from_data(TensorData::new(kernel, [c, 1, 3, 3]), &x.device());
    let padded = x.pad([(radius, radius), (radius, radius)], PadMode::Edge);
    let options = ConvOptions {
        stride: [1, 1],
        padding: [(0, 0), (0, 0)],
        dilation: [radius, radius],
        groups: c,
    };
    conv2d(padded, kernel, None, options)
}

/// (high, low) frequencies after 5 levels of dilated blurs.
fn decompose(mut x: Tensor<4>) -> (Tensor<4>, Tensor<4>) {
    let mut high = x.zeros_like();
    for i in 0..5 {
        let low = wavelet_blur(x.clone(), 1 << i);
        high = high + (x - low.clone());
        x = low;
    }
    (high, x)
}

/// High frequencies of `content` plus low frequencies of `style` (no clamp).
pub fn wavelet(content: Tensor<4>, style: Tensor<4>) -> Tensor<4> {
    decompose(content).0 + decompose(style).1
}

#[cfg(all(test, feature = "cpu"))]
mod tests {
    use super::*;
    use crate::conformance::rel_l2;
    use crate::weights::WeightFile;
    use burn::tensor::Device;

    #[test]
    fn matches_faithdiffs_color_fix() {
        let bytes = include_bytes!("../../../../tests/image/color_fix.safetensors");
        let f = WeightFile::from_bytes("color_fix", bytes.to_vec()).unwrap();
        let device = Device::flex();
        for case in ["a", "b"] {
            let t = f.tensor::<4>(&format!("target_{case}"), &device).unwrap();
            let s = f.tensor::<4>(&format!("source_{case}"), &device).unwrap();
            for (name, out) in [
                ("adain", adain(t.clone(), s.clone())),
                ("wavelet", wavelet(t.clone(), s.clone())),
            ] {
                let got = out.into_data().try_to_vec::<f32>().unwrap();
                let (expected, _) = f.f32_data(&format!("{name}_{case}")).unwrap();
                let err = rel_l2(&got, &expected);
                assert!(err < 1e-5, "{name} {case}: {err}");
            }
        }
    }

    #[test]
    fn apply_clamps_and_checks_shapes() {
        let device = Device::flex();
        let t = Tensor::<4>::full([1, 3, 4, 4], 2.0, &device);
        let out = ColorFix::None.apply(t.clone(), t.clone()).unwrap();
        assert_eq!(out.max().into_scalar::<f32>(), 1.0);
        let other = Tensor::<4>::zeros([1, 3, 4, 5], &device);
        assert!(ColorFix::Adain.apply(t, other).is_err());
        assert!(ColorFix::parse("histogram").is_err());
    }
}
