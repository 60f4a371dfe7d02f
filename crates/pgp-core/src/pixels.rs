//! Images as the engine takes and returns them: 8-bit RGB, RGBA or BGRA (Krita's and most
//! editors' byte order), 16-bit RGB or RGBA, rows of any stride in, tightly packed rows out, in
//! the input's format.
//!
//! The model sees 8-bit RGB (as FaithDiff does). Alpha never goes through the model: it is
//! upscaled with the same Lanczos filter (Pillow-exact for 8 bits, in floating point for 16)
//! and reattached. A 16-bit image's colour is reduced to 8 bits for the model, and its output
//! keeps the float precision of the decoder and the colour fix.

use crate::error::{Error, Result};
use crate::pipeline::image::{RgbImage, resize_lanczos, resize_lanczos_plane};

/// How pixels are laid out.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum PixelFormat {
    /// `[r, g, b]`, one byte each.
    Rgb8,
    /// `[r, g, b, a]`, one byte each, alpha not premultiplied.
    Rgba8,
    /// `[b, g, r, a]`, one byte each, alpha not premultiplied (Krita's `BGRA U8`, Qt's
    /// `ARGB32` on little-endian machines, Windows DIBs).
    Bgra8,
    /// `[r, g, b]`, a little-endian `u16` each.
    Rgb16,
    /// `[r, g, b, a]`, a little-endian `u16` each (native order on every supported target),
    /// alpha not premultiplied.
    Rgba16,
}

impl PixelFormat {
    /// Bytes per pixel.
    pub fn bytes_per_pixel(self) -> usize {
        match self {
            Self::Rgb8 => 3,
            Self::Rgba8 | Self::Bgra8 => 4,
            Self::Rgb16 => 6,
            Self::Rgba16 => 8,
        }
    }

    /// 16 bits per channel: the output keeps the decoder's float precision.
    pub fn is_16_bit(self) -> bool {
        matches!(self, Self::Rgb16 | Self::Rgba16)
    }
}

/// A borrowed input image: `height` rows of `width` pixels, row `y` starting at byte
/// `y · stride`.
#[derive(Clone, Copy, Debug)]
pub struct ImageView<'a> {
    data: &'a [u8],
    width: usize,
    height: usize,
    stride: usize,
    format: PixelFormat,
}

impl<'a> ImageView<'a> {
    /// Checks the sizes: both sides positive, `stride ≥ width · bytes per pixel`, and `data`
    /// holding every row (the last one need not be padded to the stride).
    pub fn new(
        data: &'a [u8],
        width: usize,
        height: usize,
        stride: usize,
        format: PixelFormat,
    ) -> Result<Self> {
        let row = width
            .checked_mul(format.bytes_per_pixel())
            .ok_or_else(|| Error::input("image width overflows"))?;
        if width == 0 || height == 0 {
            return Err(Error::input(format!(
                "an image of {width}×{height} is empty"
            )));
        }
        if stride < row {
            return Err(Error::input(format!(
                "a stride of {stride} bytes is shorter than a row of {width} {format:?} pixels \
                 ({row} bytes)"
            )));
        }
        let needed = stride
            .checked_mul(height - 1)
            .and_then(|n| n.checked_add(row))
            .ok_or_else(|| Error::input("image size overflows"))?;
        if data.len() < needed {
            return Err(Error::input(format!(
                "a {width}×{height} {format:?} image with a stride of {stride} needs {needed} \
                 bytes, got {}",
                data.len()
            )));
        }
        Ok(Self {
            data,
            width,
            height,
            stride,
            format,
        })
    }

    /// Tightly packed rows.
    pub fn packed(
        data: &'a [u8],
        width: usize,
        height: usize,
        format: PixelFormat,
    ) -> Result<Self> {
        Self::new(
            data,
            width,
            height,
            width.saturating_mul(format.bytes_per_pixel()),
            format,
        )
    }

    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.width
    }
    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.height
    }
    /// The pixel format.
    pub fn format(&self) -> PixelFormat {
        self.format
    }

    fn rows(&self) -> impl Iterator<Item = &'a [u8]> + '_ {
        let row = self.width * self.format.bytes_per_pixel();
        (0..self.height).map(move |y| &self.data[y * self.stride..y * self.stride + row])
    }
}

/// An output image, rows tightly packed.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Image {
    /// Width in pixels.
    pub width: usize,
    /// Height in pixels.
    pub height: usize,
    /// The input's format.
    pub format: PixelFormat,
    /// `height · width · bytes per pixel` bytes.
    pub data: Vec<u8>,
}

/// 16 → 8 bits, rounded.
fn to_u8(v: u16) -> u8 {
    ((u32::from(v) * 255 + 32767) / 65535) as u8
}

fn u16_at(b: &[u8], i: usize) -> u16 {
    u16::from_le_bytes([b[2 * i], b[2 * i + 1]])
}

/// An alpha channel, kept at its own depth.
#[derive(Clone, Debug)]
pub(crate) enum Alpha {
    U8(Vec<u8>),
    U16(Vec<u16>),
}

/// An input split into what the model sees and its alpha.
pub(crate) struct Split {
    pub rgb: RgbImage,
    pub alpha: Option<Alpha>,
}

impl Split {
    pub fn new(view: &ImageView) -> Result<Self> {
        let n = view.width * view.height;
        let mut rgb = Vec::with_capacity(n * 3);
        let alpha = match view.format {
            PixelFormat::Rgb8 => {
                view.rows().for_each(|r| rgb.extend_from_slice(r));
                None
            }
            PixelFormat::Rgba8 => {
                let mut a = Vec::with_capacity(n);
                for px in view.rows().flat_map(|r| r.chunks_exact(4)) {
                    rgb.extend_from_slice(&px[..3]);
                    a.push(px[3]);
                }
                Some(Alpha::U8(a))
            }
            PixelFormat::Bgra8 => {
                let mut a = Vec::with_capacity(n);
                for px in view.rows().flat_map(|r| r.chunks_exact(4)) {
                    rgb.extend_from_slice(&[px[2], px[1], px[0]]);
                    a.push(px[3]);
                }
                Some(Alpha::U8(a))
            }
            PixelFormat::Rgb16 => {
                for px in view.rows().flat_map(|r| r.chunks_exact(6)) {
                    rgb.extend((0..3).map(|c| to_u8(u16_at(px, c))));
                }
                None
            }
            PixelFormat::Rgba16 => {
                let mut a = Vec::with_capacity(n);
                for px in view.rows().flat_map(|r| r.chunks_exact(8)) {
                    rgb.extend((0..3).map(|c| to_u8(u16_at(px, c))));
                    a.push(u16_at(px, 3));
                }
                Some(Alpha::U16(a))
            }
        };
        Ok(Self {
            rgb: RgbImage::new(view.width, view.height, rgb)?,
            alpha,
        })
    }
}

impl Alpha {
    /// The alpha upscaled to `width × height` with the pipeline's Lanczos filter.
    pub fn resize(&self, from: (usize, usize), to: (usize, usize)) -> Result<Alpha> {
        Ok(match self {
            // Pillow's 8-bit path works on RGB: run the plane through it as grey.
            Alpha::U8(a) => {
                let grey = RgbImage::new(from.0, from.1, a.iter().flat_map(|&v| [v; 3]).collect())?;
                let out = resize_lanczos(&grey, to.0, to.1)?;
                Alpha::U8(out.data.chunks_exact(3).map(|p| p[0]).collect())
            }
            Alpha::U16(a) => {
                let plane: Vec<f32> = a.iter().map(|&v| f32::from(v)).collect();
                let out = resize_lanczos_plane(&plane, from, to)?;
                Alpha::U16(
                    out.iter()
                        .map(|&v| v.round().clamp(0.0, 65535.0) as u16)
                        .collect(),
                )
            }
        })
    }
}

/// The planar float image a 16-bit output is made from.
fn unit16(unit: Option<&[f32]>, n: usize) -> Result<&[f32]> {
    unit.filter(|u| u.len() == 3 * n)
        .ok_or_else(|| Error::input("16-bit output needs the float image of the right size"))
}

/// `[0, 1]` → a little-endian `u16`, rounded.
fn q16(x: f32) -> [u8; 2] {
    ((x.clamp(0.0, 1.0) * 65535.0).round() as u16).to_le_bytes()
}

/// Assembles the output in `format`: colour from `rgb` (8 bits) or, for 16-bit output, from
/// `unit` (planar `[3, H, W]` values in `[0, 1]`), alpha reattached.
pub(crate) fn assemble(
    format: PixelFormat,
    rgb: RgbImage,
    unit: Option<&[f32]>,
    alpha: Option<Alpha>,
) -> Result<Image> {
    let (width, height) = (rgb.width, rgb.height);
    let n = width * height;
    let data = match (format, alpha) {
        (PixelFormat::Rgb8, None) => rgb.data,
        (PixelFormat::Rgba8, Some(Alpha::U8(a))) => rgb
            .data
            .chunks_exact(3)
            .zip(a)
            .flat_map(|(px, a)| [px[0], px[1], px[2], a])
            .collect(),
        (PixelFormat::Bgra8, Some(Alpha::U8(a))) => rgb
            .data
            .chunks_exact(3)
            .zip(a)
            .flat_map(|(px, a)| [px[2], px[1], px[0], a])
            .collect(),
        (PixelFormat::Rgba16, Some(Alpha::U16(a))) => {
            let unit = unit16(unit, n)?;
            (0..n)
                .flat_map(|i| {
                    [
                        q16(unit[i]),
                        q16(unit[n + i]),
                        q16(unit[2 * n + i]),
                        a[i].to_le_bytes(),
                    ]
                })
                .flatten()
                .collect()
        }
        (PixelFormat::Rgb16, None) => {
            let unit = unit16(unit, n)?;
            (0..n)
                .flat_map(|i| [q16(unit[i]), q16(unit[n + i]), q16(unit[2 * n + i])])
                .flatten()
                .collect()
        }
        (format, _) => {
            return Err(Error::input(format!(
                "alpha does not match the output format {format:?}"
            )));
        }
    };
    Ok(Image {
        width,
        height,
        format,
        data,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn views_check_stride_and_length() {
        let data = vec![0u8; 2 * 10 + 8];
        assert!(ImageView::new(&data, 2, 3, 10, PixelFormat::Rgba8).is_ok());
        assert!(ImageView::new(&data, 2, 3, 7, PixelFormat::Rgba8).is_err());
        assert!(ImageView::new(&data[..27], 2, 3, 10, PixelFormat::Rgba8).is_err());
        assert!(ImageView::new(&data, 0, 3, 10, PixelFormat::Rgba8).is_err());
        assert!(ImageView::new(&data, usize::MAX, 1, 10, PixelFormat::Rgba16).is_err());
    }

    #[test]
    fn split_reads_strided_rows_and_16_bit_channels() {
        // 1×2 RGBA16 with a 12-byte stride (4 padding bytes after row 0).
        let px = |r: u16, g: u16, b: u16, a: u16| -> Vec<u8> {
            [r, g, b, a].iter().flat_map(|v| v.to_le_bytes()).collect()
        };
        let mut data = px(65535, 0, 257, 1000);
        data.extend_from_slice(&[9; 4]);
        data.extend(px(128, 65535, 32896, 65535));
        let view = ImageView::new(&data, 1, 2, 12, PixelFormat::Rgba16).unwrap();
        let s = Split::new(&view).unwrap();
        assert_eq!(s.rgb.data, [255, 0, 1, 0, 255, 128]);
        match s.alpha {
            Some(Alpha::U16(a)) => assert_eq!(a, [1000, 65535]),
            _ => panic!("16-bit alpha"),
        }
    }

    #[test]
    fn bgra_and_rgb16_are_read_in_their_order() {
        let bgra = [10u8, 20, 30, 40, 50, 60, 70, 80];
        let s = Split::new(&ImageView::packed(&bgra, 2, 1, PixelFormat::Bgra8).unwrap()).unwrap();
        assert_eq!(s.rgb.data, [30, 20, 10, 70, 60, 50]);
        let Some(Alpha::U8(a)) = &s.alpha else {
            panic!("8-bit alpha")
        };
        assert_eq!(a, &[40, 80]);
        let out = assemble(PixelFormat::Bgra8, s.rgb, None, s.alpha).unwrap();
        assert_eq!(out.data, bgra);
        let rgb16: Vec<u8> = [65535u16, 0, 257]
            .iter()
            .flat_map(|v| v.to_le_bytes())
            .collect();
        let s = Split::new(&ImageView::packed(&rgb16, 1, 1, PixelFormat::Rgb16).unwrap()).unwrap();
        assert_eq!(s.rgb.data, [255, 0, 1]);
        assert!(s.alpha.is_none());
        let out = assemble(PixelFormat::Rgb16, s.rgb, Some(&[1.0, 0.0, 0.5]), None).unwrap();
        assert_eq!(out.data, [255, 255, 0, 0, 0, 128]);
    }

    #[test]
    fn alpha_resizes_at_its_own_depth() {
        let a8 = Alpha::U8(vec![0, 255, 255, 0]);
        let Alpha::U8(up) = a8.resize((2, 2), (4, 4)).unwrap() else {
            panic!()
        };
        assert_eq!(up.len(), 16);
        let flat = Alpha::U16(vec![40000; 6]);
        let Alpha::U16(up) = flat.resize((3, 2), (6, 4)).unwrap() else {
            panic!()
        };
        assert!(up.iter().all(|&v| v == 40000), "{up:?}");
    }
}
