//! Hand-written WGSL kernels (`shaders/*.wgsl`) wired into burn's wgpu backend through a
//! backend extension. They run wherever the device is burn's wgpu runtime (which, in this
//! build, always compiles WGSL: native Vulkan / Metal / DX12 and WebGPU); on any other device
//! (burn's CPU backend) the callers use the plain-burn composition, which is also the
//! reference the kernels are tested against.

pub mod attention;
pub mod phase;

use burn::backend::{Backend, Dispatch, DispatchDevice, backend_extension, tensor::FloatTensor};
use burn::tensor::{Device, Shape, Tensor};
use burn_cubecl::CubeBackend;

/// The custom operations.
#[backend_extension(Cube, Fusion)]
pub trait PgpKernels: Backend {
    /// `softmax(q·kᵀ/√D [causal])·v` for `q` `[B, H, S, D]`, `k` `[B, H, Skv, D]`, `v`
    /// `[B, H, Skv, Dv]` → `[B, H, S, Dv]`.
    #[fusion(dtype = q, shape = attention_shape(q, v))]
    fn flash_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        causal: bool,
    ) -> FloatTensor<Self>;

    /// `irfft2(|rfft2(h)|·exp(i·angle(rfft2(f))), s = (h, w))` for `f`, `h` `[B, C, h, w]`.
    #[fusion(dtype = h, shape = h)]
    fn phase_exchange(f: FloatTensor<Self>, h: FloatTensor<Self>) -> FloatTensor<Self>;
}

fn attention_shape(q: &Shape, v: &Shape) -> Shape {
    let mut s = q.clone();
    s[3] = v[3];
    s
}

impl PgpKernels for CubeBackend {
    fn flash_attention(
        q: FloatTensor<Self>,
        k: FloatTensor<Self>,
        v: FloatTensor<Self>,
        causal: bool,
    ) -> FloatTensor<Self> {
        attention::launch(q, k, v, causal)
    }

    fn phase_exchange(f: FloatTensor<Self>, h: FloatTensor<Self>) -> FloatTensor<Self> {
        phase::launch(f, h)
    }
}

/// Whether `device` runs the WGSL kernels: burn's wgpu runtime. Set `PGP_WGPU_KERNELS=off` to
/// use the plain-burn compositions everywhere (for comparisons).
pub fn available(device: &Device) -> bool {
    static OFF: std::sync::OnceLock<bool> = std::sync::OnceLock::new();
    let off = *OFF
        .get_or_init(|| std::env::var("PGP_WGPU_KERNELS").is_ok_and(|v| v == "off" || v == "0"));
    !off && is_wgpu(device)
}

pub(crate) fn is_wgpu(device: &Device) -> bool {
    matches!(
        device.as_dispatch(),
        DispatchDevice::Cube(burn_cubecl::CubeDevice::Wgpu(_))
    )
}

/// The kernel attention on burn tensors (see [`PgpKernels::flash_attention`]).
pub fn flash_attention(q: Tensor<4>, k: Tensor<4>, v: Tensor<4>, causal: bool) -> Tensor<4> {
    Tensor::from_dispatch(Dispatch::flash_attention(
        q.into_dispatch(),
        k.into_dispatch(),
        v.into_dispatch(),
        causal,
    ))
}

/// The kernel phase exchange on burn tensors (see [`PgpKernels::phase_exchange`]).
pub fn phase_exchange(f: Tensor<4>, h: Tensor<4>) -> Tensor<4> {
    Tensor::from_dispatch(Dispatch::phase_exchange(
        f.into_dispatch(),
        h.into_dispatch(),
    ))
}

#[cfg(test)]
mod tests {
    use super::attention::FlashAttention;

    /// Parses and validates a WGSL text with naga, as wgpu will (no GPU needed).
    fn validate(name: &str, text: &str) {
        let module = naga::front::wgsl::parse_str(text)
            .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(text)));
        naga::valid::Validator::new(
            naga::valid::ValidationFlags::all(),
            naga::valid::Capabilities::all(),
        )
        .validate(&module)
        .unwrap_or_else(|e| panic!("{name}: {}", e.emit_to_string(text)));
    }

    #[test]
    #[should_panic(expected = "broken")]
    fn the_validation_catches_a_broken_shader() {
        validate("broken", "fn main( {");
    }

    #[test]
    fn every_phase_pass_is_valid_wgsl() {
        use super::phase::{FFT_PASSES, PASSES, PhasePass};
        use burn::backend::wgpu::KernelSource;
        for (fft, passes) in [(false, &PASSES[..]), (true, &FFT_PASSES[..])] {
            for (index, (name, _)) in passes.iter().enumerate() {
                validate(name, &PhasePass { fft, index }.source().complete());
            }
        }
    }

    #[test]
    fn every_attention_variant_is_valid_wgsl() {
        for (d, dv) in [
            (1, 1),
            (8, 8),
            (16, 16),
            (40, 40),
            (64, 64),
            (80, 80),
            (128, 128),
            (64, 32),
        ] {
            for f16 in [false, true] {
                let k = FlashAttention::new(d, dv, f16);
                validate(&format!("flash_attention {k:?}"), &k.template().complete());
            }
        }
    }
}

/// The kernels against the plain-burn references on lavapipe / the GPU: many shapes, f32 and f16.
#[cfg(test)]
mod parity {
    use burn::tensor::{Distribution, FloatDType, Tensor};

    use crate::attention::reference_attention;
    use crate::conformance::rel_l2;
    use crate::device::read_back;

    #[test]
    fn flash_attention_matches_the_reference_over_many_shapes() {
        let device = burn::tensor::Device::wgpu(burn::tensor::DeviceKind::DefaultDevice);
        let n = Distribution::Normal(0.0, 1.0);
        // (B, H, S, Skv, D, Dv, causal)
        let shapes = [
            (1, 1, 1, 1, 8, 8, false),
            (1, 2, 1, 77, 64, 64, false),
            (2, 3, 77, 77, 64, 64, true),
            (1, 2, 77, 77, 16, 16, true),
            (2, 5, 300, 77, 64, 64, false),
            (1, 2, 1100, 1100, 40, 40, false),
            (1, 1, 130, 257, 80, 80, false),
            (1, 2, 65, 33, 64, 32, false),
            (3, 1, 7, 7, 128, 128, true),
            (3, 1, 7, 5, 128, 128, false),
            (1, 1, 64, 64, 1, 1, false),
            // more (batch × heads) than one dispatch dimension holds
            (65_537, 1, 1, 3, 4, 4, false),
        ];
        let qkv = |b, h, s, skv, d, dv| {
            (
                Tensor::<4>::random([b, h, s, d], n, &device),
                Tensor::<4>::random([b, h, skv, d], n, &device),
                Tensor::<4>::random([b, h, skv, dv], n, &device),
            )
        };
        // The entry point sends what the kernel does not take (a causal mask on non-square
        // attention, head dims over 128) to burn's attention: it agrees with the reference.
        for (s, skv, d, causal) in [(7, 5, 16, true), (9, 9, 160, false)] {
            let (q, k, v) = qkv(1, 2, s, skv, d, d);
            let r = reference_attention(q.clone(), k.clone(), v.clone(), causal);
            let a = crate::attention::attention(q, k, v, causal);
            let (e, _) = pollster::block_on(read_back(r)).unwrap();
            let (g, _) = pollster::block_on(read_back(a)).unwrap();
            assert!(rel_l2(&g, &e) < 1e-5, "fallback for s={s} skv={skv} d={d}");
        }
        for (i, &(b, h, s, skv, d, dv, causal)) in shapes.iter().enumerate() {
            let (q, k, v) = qkv(b, h, s, skv, d, dv);
            let reference = reference_attention(q.clone(), k.clone(), v.clone(), causal);
            let (e, _) = pollster::block_on(read_back(reference)).unwrap();
            let got = super::flash_attention(q.clone(), k.clone(), v.clone(), causal);
            assert_eq!(got.dims(), [b, h, s, dv]);
            let (g, _) = pollster::block_on(read_back(got)).unwrap();
            let err = rel_l2(&g, &e);
            assert!(err < 1e-4, "case {i} {:?}: f32 rel-L2 {err}", shapes[i]);
            if i % 3 == 0 {
                let half = |t: Tensor<4>| t.cast(FloatDType::F16);
                let got = super::flash_attention(half(q), half(k), half(v), causal);
                let (g, _) = pollster::block_on(read_back(got)).unwrap();
                let err = rel_l2(&g, &e);
                assert!(err < 1e-2, "case {i} {:?}: f16 rel-L2 {err}", shapes[i]);
            }
        }
    }
}

#[cfg(test)]
mod phase_parity {
    use burn::tensor::{Distribution, Tensor};

    use crate::device::read_back;
    use crate::phase::reference_phase_exchange;

    #[test]
    fn phase_exchange_matches_the_reference_over_many_shapes() {
        let device = burn::tensor::Device::wgpu(burn::tensor::DeviceKind::DefaultDevice);
        let n = Distribution::Normal(0.0, 1.0);
        for &[b, c, h, w] in &[
            [1, 1, 1, 1],
            [1, 2, 16, 16],
            [2, 3, 7, 10],
            [1, 2, 9, 1],
            [1, 1, 1, 12],
            [1, 4, 33, 17],
            [1, 2, 96, 40],
            [1, 8, 64, 64],
            // the FFT path: power-of-two sides up to 512, square or not, and 1
            [2, 3, 128, 128],
            [1, 2, 32, 8],
            [1, 3, 1, 16],
            [1, 2, 512, 4],
            [1, 1, 2, 2],
            // longer than the twiddle table: computed twiddles
            [1, 1, 3, 2100],
        ] {
            let f = Tensor::<4>::random([b, c, h, w], n, &device);
            let hh = Tensor::<4>::random([b, c, h, w], n, &device);
            let reference = reference_phase_exchange(f.clone(), hh.clone()).unwrap();
            let (e, _) = pollster::block_on(read_back(reference)).unwrap();
            let (g, _) = pollster::block_on(read_back(super::phase_exchange(f, hh))).unwrap();
            let (mut num, mut den) = (0f64, 0f64);
            for (x, y) in g.iter().zip(&e) {
                num += (f64::from(*x) - f64::from(*y)).powi(2);
                den += f64::from(*y).powi(2);
            }
            let err = (num / den.max(1e-30)).sqrt();
            assert!(err < 1e-4, "[{b}, {c}, {h}, {w}]: rel-L2 {err}");
        }
    }
}
