//! The phase exchange three ways on the wgpu device: this project's WGSL kernel, the
//! DFT-matrix composition (`pgp_core::phase::reference_phase_exchange`), and a composition of
//! burn-signal's FFTs (`rfft` along w, `cfft` along h, the exchange, the inverse `cfft` by
//! conjugation, `irfft`), power-of-two sides only as burn-signal requires.

use std::time::Instant;

use burn::tensor::signal::{cfft, irfft, rfft};
use burn::tensor::{Device, DeviceKind, Distribution, Tensor};
use pgp_core::device::read_back;
use pgp_core::kernels;
use pgp_core::phase::reference_phase_exchange;

fn burn_signal_exchange(f: Tensor<4>, h: Tensor<4>) -> Tensor<4> {
    let [_, _, hh, ww] = h.dims();
    let spectrum = |x: Tensor<4>| {
        let (re, im) = rfft(x, 3, None);
        cfft(re, im, 2, None)
    };
    let (fr, fi) = spectrum(f);
    let (hr, hi) = spectrum(h);
    let amp = (hr.clone() * hr + hi.clone() * hi).sqrt();
    let mag = (fr.clone() * fr.clone() + fi.clone() * fi.clone()).sqrt();
    let zero = mag.clone().equal_elem(0.0);
    let scale = amp.clone() / mag.mask_fill(zero.clone(), 1.0);
    let zr = (fr * scale.clone()).mask_where(zero.clone(), amp);
    let zi = (fi * scale).mask_fill(zero, 0.0);
    // Inverse along h by conjugation: ifft(z) = conj(fft(conj(z))) / n.
    let (ar, ai) = cfft(zr, zi.neg(), 2, None);
    irfft(ar / hh as f64, ai.neg() / hh as f64, 3, Some(ww))
}

fn time(runs: usize, f: &dyn Fn() -> Tensor<4>) -> (f64, Vec<f32>) {
    let (first, _) = pollster::block_on(read_back(f())).expect("runs");
    let t = Instant::now();
    for _ in 0..runs {
        pollster::block_on(read_back(f())).expect("runs");
    }
    (t.elapsed().as_secs_f64() * 1e3 / runs as f64, first)
}

fn main() {
    let args: Vec<usize> = std::env::args().skip(1).map(|a| a.parse().expect("numbers")).collect();
    let shape = match args.get(..4) {
        Some(s) => [s[0], s[1], s[2], s[3]],
        None => [1, 320, 128, 128],
    };
    let runs = args.get(4).copied().unwrap_or(3);
    let device = Device::wgpu(DeviceKind::DefaultDevice);
    let n = Distribution::Normal(0.0, 1.0);
    let f = Tensor::<4>::random(shape, n, &device);
    let h = Tensor::<4>::random(shape, n, &device);
    println!("phase exchange {shape:?}, {runs} timed runs after one warm-up, wgpu default adapter");
    let (t_k, k) = time(runs, &|| kernels::phase_exchange(f.clone(), h.clone()));
    let (t_d, d) = time(runs, &|| reference_phase_exchange(f.clone(), h.clone()).unwrap());
    let (t_s, s) = time(runs, &|| burn_signal_exchange(f.clone(), h.clone()));
    let rel = |a: &[f32], b: &[f32]| {
        let num: f64 = a.iter().zip(b).map(|(x, y)| f64::from(x - y).powi(2)).sum();
        let den: f64 = b.iter().map(|y| f64::from(*y).powi(2)).sum();
        (num / den).sqrt()
    };
    println!("  WGSL kernel          {t_k:9.1} ms");
    println!("  DFT-matrix matmuls   {t_d:9.1} ms  (kernel is {:.2}x faster)", t_d / t_k);
    println!("  burn-signal FFTs     {t_s:9.1} ms  (kernel is {:.2}x faster)", t_s / t_k);
    println!("  rel-L2 kernel vs DFT {:.2e}, burn-signal vs DFT {:.2e}", rel(&k, &d), rel(&s, &d));
}
