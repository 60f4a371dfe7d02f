//! The phase exchange of PEAM (pgp-model.md §2): `irfft2(|rfft2(H)|·exp(i·angle(rfft2(F))))`
//! over the last two axes, for any h and w, composed from plain burn ops.
//!
//! The 2-D DFT is two matrix products with cosine/sine matrices, which is exact for every size
//! (no power-of-two restriction). The full spectrum of a real input is Hermitian, and so is the
//! exchanged spectrum (|X_H| is even, the phase of X_F odd), so the real part of the inverse
//! full DFT equals `irfft2` of the half spectrum.

use std::f64::consts::PI;

use burn::tensor::{Device, Tensor, TensorData};

use crate::error::{Error, Result};

/// `cos(2π·jk/n)` and `sin(2π·jk/n)` as `[1, n, n]` matrices (angles reduced mod n exactly).
fn dft_matrices(n: usize, device: &Device) -> (Tensor<3>, Tensor<3>) {
    let mut c = Vec::with_capacity(n * n);
    let mut s = Vec::with_capacity(n * n);
    for j in 0..n {
        for k in 0..n {
            let a = 2.0 * PI * ((j * k) % n) as f64 / n as f64;
            c.push(a.cos() as f32);
            s.push(a.sin() as f32);
        }
    }
    (
        Tensor::from_data(TensorData::new(c, [1, n, n]), device),
        Tensor::from_data(TensorData::new(s, [1, n, n]), device),
    )
}

fn same_shape(lq: &Tensor<4>, unet: &Tensor<4>) -> Result<()> {
    if lq.dims() != unet.dims() {
        return Err(Error::input(format!(
            "phase exchange needs equal shapes, got {:?} and {:?}",
            lq.dims(),
            unet.dims()
        )));
    }
    Ok(())
}

/// Computes the phase exchange of `lq` (F, the phase donor) and `unet` (H, the amplitude
/// donor), both `[B, C, h, w]`: the WGSL kernels on burn's wgpu runtime, the
/// plain-burn composition elsewhere.
/// Computed in f32 (amplitudes and angles need it); the output has `unet`'s dtype.
pub fn phase_exchange(lq: Tensor<4>, unet: Tensor<4>) -> Result<Tensor<4>> {
    same_shape(&lq, &unet)?;
    let dtype = crate::nn::dtype_of(&unet);
    let f32 = burn::tensor::FloatDType::F32;
    let (lq, unet) = (lq.cast(f32), unet.cast(f32));
    let out = if crate::kernels::available(&unet.device()) {
        crate::kernels::phase_exchange(lq, unet)
    } else {
        reference_phase_exchange(lq, unet)?
    };
    Ok(out.cast(dtype))
}

/// The plain-burn composition (DFT matrix products): the fallback and the kernel's reference.
pub fn reference_phase_exchange(lq: Tensor<4>, unet: Tensor<4>) -> Result<Tensor<4>> {
    same_shape(&lq, &unet)?;
    let [b, c, h, w] = unet.dims();
    let device = unet.device();
    let (ch, sh) = dft_matrices(h, &device);
    let (cw, sw) = dft_matrices(w, &device);
    // Forward DFT of a real [N, h, w]: X = W_h·x·W_w with W = C − iS.
    let fft2 = |x: Tensor<4>| -> (Tensor<3>, Tensor<3>) {
        let x = x.reshape([b * c, h, w]);
        let ar = x.clone().matmul(cw.clone());
        let ai = x.matmul(sw.clone()).neg();
        let xr = ch.clone().matmul(ar.clone()) + sh.clone().matmul(ai.clone());
        let xi = ch.clone().matmul(ai) - sh.clone().matmul(ar);
        (xr, xi)
    };
    let (fr, fi) = fft2(lq);
    let (hr, hi) = fft2(unet);
    let amp = (hr.clone() * hr + hi.clone() * hi).sqrt();
    let mag = (fr.clone() * fr.clone() + fi.clone() * fi.clone()).sqrt();
    // exp(i·angle(X_F)) = X_F/|X_F|, and angle(0) = 0.
    let zero = mag.clone().equal_elem(0.0);
    let safe = mag.mask_fill(zero.clone(), 1.0);
    let ur = (fr / safe.clone()).mask_fill(zero.clone(), 1.0);
    let ui = (fi / safe).mask_fill(zero, 0.0);
    let (yr, yi) = (amp.clone() * ur, amp * ui);
    // Inverse: Re(W_h*·Y·W_w*)/(hw) with W* = C + iS.
    let br = yr.clone().matmul(cw.clone()) - yi.clone().matmul(sw.clone());
    let bi = yr.matmul(sw) + yi.matmul(cw);
    let y = (ch.matmul(br) - sh.matmul(bi)) / (h * w) as f64;
    Ok(y.reshape([b, c, h, w]))
}

#[cfg(all(test, feature = "cpu"))]
mod tests {
    use super::*;
    use crate::conformance::rel_l2;

    /// Direct O(n⁴) reference in f64: full DFT, exchange, inverse, real part.
    fn naive(f: &[f32], g: &[f32], h: usize, w: usize) -> Vec<f32> {
        let dft = |x: &[f32]| -> Vec<(f64, f64)> {
            let mut out = vec![(0.0, 0.0); h * w];
            for u in 0..h {
                for v in 0..w {
                    let (mut re, mut im) = (0.0, 0.0);
                    for y in 0..h {
                        for z in 0..w {
                            let a =
                                -2.0 * PI * ((u * y) as f64 / h as f64 + (v * z) as f64 / w as f64);
                            re += x[y * w + z] as f64 * a.cos();
                            im += x[y * w + z] as f64 * a.sin();
                        }
                    }
                    out[u * w + v] = (re, im);
                }
            }
            out
        };
        let (ff, gg) = (dft(f), dft(g));
        let spec: Vec<(f64, f64)> = ff
            .iter()
            .zip(&gg)
            .map(|(&(fr, fi), &(gr, gi))| {
                let amp = (gr * gr + gi * gi).sqrt();
                let ph = fi.atan2(fr);
                (amp * ph.cos(), amp * ph.sin())
            })
            .collect();
        let mut out = vec![0f32; h * w];
        for y in 0..h {
            for z in 0..w {
                let mut re = 0.0;
                for u in 0..h {
                    for v in 0..w {
                        let a = 2.0 * PI * ((u * y) as f64 / h as f64 + (v * z) as f64 / w as f64);
                        let (sr, si) = spec[u * w + v];
                        re += sr * a.cos() - si * a.sin();
                    }
                }
                out[y * w + z] = (re / (h * w) as f64) as f32;
            }
        }
        out
    }

    #[test]
    fn matches_a_direct_dft_for_odd_and_even_sizes() {
        let device = Device::flex();
        for (h, w) in [(1, 1), (3, 5), (6, 4), (7, 9)] {
            let n = h * w;
            let f: Vec<f32> = (0..n).map(|i| ((i * 37 % 11) as f32 - 5.0) / 3.0).collect();
            let g: Vec<f32> = (0..n).map(|i| ((i * 53 % 13) as f32 - 6.0) / 4.0).collect();
            let ft = Tensor::<4>::from_data(TensorData::new(f.clone(), [1, 1, h, w]), &device);
            let gt = Tensor::<4>::from_data(TensorData::new(g.clone(), [1, 1, h, w]), &device);
            let out = phase_exchange(ft, gt)
                .unwrap()
                .into_data()
                .try_to_vec::<f32>()
                .unwrap();
            let err = rel_l2(&out, &naive(&f, &g, h, w));
            assert!(err < 1e-5, "{h}x{w}: {err}");
        }
    }

    #[test]
    fn zero_phase_donor_keeps_the_amplitude_spectrum_real() {
        // angle(0) = 0: with F = 0 the result is irfft2(|FFT2(H)|), which is symmetric.
        let device = Device::flex();
        let g: Vec<f32> = (0..16).map(|i| i as f32).collect();
        let gt = Tensor::<4>::from_data(TensorData::new(g.clone(), [1, 1, 4, 4]), &device);
        let out = phase_exchange(Tensor::zeros([1, 1, 4, 4], &device), gt)
            .unwrap()
            .into_data()
            .try_to_vec::<f32>()
            .unwrap();
        let expected = naive(&[0.0; 16], &g, 4, 4);
        assert!(rel_l2(&out, &expected) < 1e-5);
    }

    #[test]
    fn shape_mismatch_is_an_error() {
        let device = Device::flex();
        let a = Tensor::<4>::zeros([1, 1, 4, 4], &device);
        let b = Tensor::<4>::zeros([1, 1, 4, 5], &device);
        assert!(phase_exchange(a, b).is_err());
    }
}
