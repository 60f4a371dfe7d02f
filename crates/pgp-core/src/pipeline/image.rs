//! Host-side RGB images and the pipeline's pixel steps: Pillow's exact Lanczos resize,
//! edge-replicating pad to a multiple of 8, and the conversions to and from `[-1, 1]` tensors.

use burn::tensor::{Device, Tensor, TensorData};

use crate::error::{Error, Result};

/// An 8-bit RGB image, rows top to bottom, pixels `[r, g, b]`.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct RgbImage {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// `height · width · 3` bytes.
    pub data: Vec<u8>,
}

impl RgbImage {
    /// Wraps pixel data, checking its length.
    pub fn new(width: usize, height: usize, data: Vec<u8>) -> Result<Self> {
        if data.len() != width * height * 3 || width == 0 || height == 0 {
            return Err(Error::input(format!(
                "an RGB image of {width}×{height} needs {} bytes, got {}",
                width * height * 3,
                data.len()
            )));
        }
        Ok(Self {
            width,
            height,
            data,
        })
    }
}

const PRECISION_BITS: u32 = 32 - 8 - 2;

fn sinc(x: f64) -> f64 {
    if x == 0.0 {
        1.0
    } else {
        let x = x * std::f64::consts::PI;
        x.sin() / x
    }
}

fn lanczos(x: f64) -> f64 {
    if (-3.0..3.0).contains(&x) {
        sinc(x) * sinc(x / 3.0)
    } else {
        0.0
    }
}

/// Pillow's `bicubic_filter` (a = −0.5).
fn bicubic(x: f64) -> f64 {
    let a = -0.5;
    let x = x.abs();
    if x < 1.0 {
        ((a + 2.0) * x - (a + 3.0)) * x * x + 1.0
    } else if x < 2.0 {
        (((x - 5.0) * x + 8.0) * x - 4.0) * a
    } else {
        0.0
    }
}

/// A Pillow resampling filter.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Filter {
    /// `Image.LANCZOS` (support 3).
    Lanczos,
    /// `Image.BICUBIC` (support 2; Pillow's default for RGB images).
    Bicubic,
}

impl Filter {
    fn support(self) -> f64 {
        match self {
            Self::Lanczos => 3.0,
            Self::Bicubic => 2.0,
        }
    }
    fn weight(self, x: f64) -> f64 {
        match self {
            Self::Lanczos => lanczos(x),
            Self::Bicubic => bicubic(x),
        }
    }
}

/// Pillow's `precompute_coeffs` for one axis: for each output position, the first input index
/// and the normalised weights.
fn filter_coefficients(filter: Filter, in_size: usize, out_size: usize) -> Vec<(usize, Vec<f64>)> {
    let scale = in_size as f64 / out_size as f64;
    let filterscale = scale.max(1.0);
    let support = filter.support() * filterscale;
    (0..out_size)
        .map(|xx| {
            let center = (xx as f64 + 0.5) * scale;
            let ss = 1.0 / filterscale;
            let xmin = ((center - support + 0.5) as i64).max(0) as usize;
            let xmax = ((center + support + 0.5) as i64).min(in_size as i64) as usize;
            let mut k: Vec<f64> = (xmin..xmax)
                .map(|x| filter.weight((x as f64 - center + 0.5) * ss))
                .collect();
            let ww: f64 = k.iter().sum();
            if ww != 0.0 {
                k.iter_mut().for_each(|w| *w /= ww);
            }
            (xmin, k)
        })
        .collect()
}

/// [`filter_coefficients`] in Pillow's fixed point (`normalize_coeffs_8bpc`).
fn coefficients(filter: Filter, in_size: usize, out_size: usize) -> Vec<(usize, Vec<i32>)> {
    filter_coefficients(filter, in_size, out_size)
        .into_iter()
        .map(|(xmin, k)| {
            let fixed = k
                .iter()
                .map(|&w| {
                    let v = w * f64::from(1u32 << PRECISION_BITS);
                    (if w < 0.0 { v - 0.5 } else { v + 0.5 }) as i32
                })
                .collect();
            (xmin, fixed)
        })
        .collect()
}

/// The same Lanczos filter on one plane of floats (row-major `height · width`), without
/// Pillow's fixed point and 8-bit intermediate: for 16-bit channels. No clamping.
pub fn resize_lanczos_plane(
    plane: &[f32],
    from: (usize, usize),
    to: (usize, usize),
) -> Result<Vec<f32>> {
    resize_plane(plane, from, to, Filter::Lanczos)
}

/// [`resize_lanczos_plane`] with any of Pillow's filters.
pub fn resize_plane(
    plane: &[f32],
    (w0, h0): (usize, usize),
    (width, height): (usize, usize),
    filter: Filter,
) -> Result<Vec<f32>> {
    if width == 0 || height == 0 || plane.len() != w0 * h0 || plane.is_empty() {
        return Err(Error::input("cannot resize an empty or mis-sized plane"));
    }
    let horiz = filter_coefficients(filter, w0, width);
    let mut mid = Vec::with_capacity(h0 * width);
    for y in 0..h0 {
        let row = &plane[y * w0..(y + 1) * w0];
        for (xmin, k) in &horiz {
            let acc: f64 = k
                .iter()
                .enumerate()
                .map(|(i, &w)| f64::from(row[xmin + i]) * w)
                .sum();
            mid.push(acc);
        }
    }
    let mut out = Vec::with_capacity(height * width);
    for (ymin, k) in filter_coefficients(filter, h0, height) {
        for x in 0..width {
            let acc: f64 = k
                .iter()
                .enumerate()
                .map(|(i, &w)| mid[(ymin + i) * width + x] * w)
                .sum();
            out.push(acc as f32);
        }
    }
    Ok(out)
}

fn clip8(acc: i64) -> u8 {
    (acc >> PRECISION_BITS).clamp(0, 255) as u8
}

/// `Image.resize((width, height), Image.LANCZOS)` exactly as Pillow computes it: separable,
/// horizontal pass first, 22-bit fixed-point weights, 8-bit intermediate.
pub fn resize_lanczos(img: &RgbImage, width: usize, height: usize) -> Result<RgbImage> {
    resize(img, width, height, Filter::Lanczos)
}

/// `Image.resize((width, height), filter)` exactly as Pillow computes it (see
/// [`resize_lanczos`]); the same size is a copy, as in Pillow.
pub fn resize(img: &RgbImage, width: usize, height: usize, filter: Filter) -> Result<RgbImage> {
    if width == 0 || height == 0 {
        return Err(Error::input("cannot resize to an empty image"));
    }
    let (w0, h0) = (img.width, img.height);
    let round = 1i64 << (PRECISION_BITS - 1);
    let vert = coefficients(filter, h0, height);
    // Rows the vertical pass reads (Pillow only resamples those horizontally).
    let (first, last) = (vert[0].0, vert[height - 1].0 + vert[height - 1].1.len());
    let mid: Vec<u8> = if width != w0 {
        let horiz = coefficients(filter, w0, width);
        let mut out = Vec::with_capacity((last - first) * width * 3);
        for y in first..last {
            let row = &img.data[y * w0 * 3..(y + 1) * w0 * 3];
            for (xmin, k) in &horiz {
                for c in 0..3 {
                    let acc = k.iter().enumerate().fold(round, |acc, (i, &w)| {
                        acc + i64::from(row[(xmin + i) * 3 + c]) * i64::from(w)
                    });
                    out.push(clip8(acc));
                }
            }
        }
        out
    } else {
        img.data[first * w0 * 3..last * w0 * 3].to_vec()
    };
    if height == h0 {
        return RgbImage::new(width, height, mid);
    }
    let mut out = Vec::with_capacity(height * width * 3);
    for (ymin, k) in &vert {
        for x in 0..width * 3 {
            let acc = k.iter().enumerate().fold(round, |acc, (i, &w)| {
                acc + i64::from(mid[(ymin - first + i) * width * 3 + x]) * i64::from(w)
            });
            out.push(clip8(acc));
        }
    }
    RgbImage::new(width, height, out)
}

/// Pads bottom and right by repeating the edge pixels until both sides are multiples of `m`.
pub fn pad_to_multiple(img: &RgbImage, m: usize) -> RgbImage {
    let (w, h) = (img.width.div_ceil(m) * m, img.height.div_ceil(m) * m);
    let mut data = Vec::with_capacity(w * h * 3);
    for y in 0..h {
        let sy = y.min(img.height - 1);
        for x in 0..w {
            let sx = x.min(img.width - 1);
            data.extend_from_slice(&img.data[(sy * img.width + sx) * 3..][..3]);
        }
    }
    RgbImage {
        width: w,
        height: h,
        data,
    }
}

/// The top-left `width × height` of an image.
pub fn crop(img: &RgbImage, width: usize, height: usize) -> RgbImage {
    let mut data = Vec::with_capacity(width * height * 3);
    for y in 0..height.min(img.height) {
        data.extend_from_slice(&img.data[y * img.width * 3..][..width.min(img.width) * 3]);
    }
    RgbImage {
        width: width.min(img.width),
        height: height.min(img.height),
        data,
    }
}

/// `[1, 3, H, W]` with `x/127.5 − 1` (the VAE's `[-1, 1]` input).
pub fn to_signed_tensor(img: &RgbImage, device: &Device) -> Tensor<4> {
    let (w, h) = (img.width, img.height);
    let mut planar = vec![0f32; 3 * w * h];
    for (i, px) in img.data.chunks_exact(3).enumerate() {
        for c in 0..3 {
            planar[c * w * h + i] = f32::from(px[c]) / 127.5 - 1.0;
        }
    }
    Tensor::from_data(TensorData::new(planar, [1, 3, h, w]), device)
}

/// `[1, 3, H, W]` with `x/255` (`ToTensor`, the colour fix's range).
pub fn to_unit_tensor(img: &RgbImage, device: &Device) -> Tensor<4> {
    (to_signed_tensor(img, device) + 1.0) / 2.0
}

/// Planar `[3, H, W]` floats → interleaved u8 with `to_u8` per value.
fn planar_to_rgb(
    planar: &[f32],
    width: usize,
    height: usize,
    to_u8: impl Fn(f32) -> u8,
) -> Result<RgbImage> {
    let n = width * height;
    if planar.len() != 3 * n {
        return Err(Error::input("planar data does not match the image size"));
    }
    let mut data = vec![0u8; 3 * n];
    for c in 0..3 {
        for i in 0..n {
            data[i * 3 + c] = to_u8(planar[c * n + i]);
        }
    }
    RgbImage::new(width, height, data)
}

/// Planar `[3, H, W]` values in `[-1, 1]` → u8 by `round(255·(x/2 + 0.5))` after clamping,
/// as diffusers' image post-processing does.
pub fn from_signed(planar: &[f32], width: usize, height: usize) -> Result<RgbImage> {
    planar_to_rgb(planar, width, height, |x| {
        (255.0 * (x.clamp(-1.0, 1.0) / 2.0 + 0.5)).round() as u8
    })
}

/// Planar `[3, H, W]` values in `[0, 1]` → u8 as torchvision's `ToPILImage` does after the
/// colour fix: clamp, `·255`, truncate.
pub fn from_unit(planar: &[f32], width: usize, height: usize) -> Result<RgbImage> {
    planar_to_rgb(planar, width, height, |x| (x.clamp(0.0, 1.0) * 255.0) as u8)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn lanczos_matches_pillow_exactly() {
        matches_pillow(
            include_bytes!("../../../../tests/image/lanczos.safetensors"),
            Filter::Lanczos,
        );
    }

    #[test]
    fn bicubic_matches_pillow_exactly() {
        matches_pillow(
            include_bytes!("../../../../tests/image/bicubic.safetensors"),
            Filter::Bicubic,
        );
    }

    fn matches_pillow(bytes: &[u8], filter: Filter) {
        let st = safetensors::SafeTensors::deserialize(bytes).unwrap();
        let mut checked = 0;
        for i in 0.. {
            let Ok(input) = st.tensor(&format!("in_{i}")) else {
                break;
            };
            let output = st.tensor(&format!("out_{i}")).unwrap();
            let (s, o) = (input.shape(), output.shape());
            let img = RgbImage::new(s[1], s[0], input.data().to_vec()).unwrap();
            let got = resize(&img, o[1], o[0], filter).unwrap();
            let diff = got
                .data
                .iter()
                .zip(output.data())
                .filter(|(a, b)| a != b)
                .count();
            assert_eq!(diff, 0, "case {i}: {s:?} → {o:?}, {diff} bytes differ");
            checked += 1;
        }
        assert!(checked >= 8);
    }

    #[test]
    fn padding_repeats_the_edges_and_crop_undoes_it() {
        let img = RgbImage::new(2, 1, vec![1, 2, 3, 4, 5, 6]).unwrap();
        let p = pad_to_multiple(&img, 8);
        assert_eq!((p.width, p.height), (8, 8));
        assert_eq!(&p.data[..9], &[1, 2, 3, 4, 5, 6, 4, 5, 6]);
        assert_eq!(&p.data[7 * 8 * 3..7 * 8 * 3 + 6], &[1, 2, 3, 4, 5, 6]);
        assert_eq!(crop(&p, 2, 1), img);
    }

    #[test]
    fn u8_conversions_follow_diffusers_and_torchvision() {
        let img = from_signed(&[-1.0, 0.0, 1.0, 2.0, -0.999, 0.5], 2, 1).unwrap();
        assert_eq!(img.data, vec![0, 255, 0, 128, 255, 191]);
        let img = from_unit(&[0.999, 0.5, 1.5, -1.0, 0.0039, 0.0041], 2, 1).unwrap();
        assert_eq!(img.data, vec![254, 255, 0, 127, 0, 1]);
        assert!(RgbImage::new(2, 2, vec![0; 11]).is_err());
    }
}
