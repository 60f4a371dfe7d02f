//! Launching the phase exchange. Power-of-two sides up to 512 (latent tiles: 128, 64, ...) take
//! the FFT path (`shaders/fft_*.wgsl`), three dispatches of in-workgroup radix-2 FFTs: rows of
//! F and H together, columns with the exchange and the inverse, inverse real rows. Any other
//! size takes the direct path (`shaders/phase_*.wgsl`), four dispatches of exact-index DFT
//! sums. Both handle every plane of the batch at once, with intermediate spectra of
//! `planes × h × (w/2 + 1)` complex values.

use burn::backend::wgpu::{
    CubeTensor, KernelSource, SourceKernel, SourceTemplate, into_contiguous,
};
use burn::tensor::{DType, Shape};
use burn_cubecl::cubecl::prelude::KernelId;
use burn_cubecl::cubecl::server::KernelArguments;
use burn_cubecl::cubecl::{CubeCount, CubeDim};
use burn_cubecl::ops::numeric::empty_device_contiguous_dtype;

/// The four passes, in order, as `(name, WGSL)`.
pub const PASSES: [(&str, &str); 4] = [
    (
        "phase_rows",
        include_str!("../../../../shaders/phase_rows.wgsl"),
    ),
    (
        "phase_columns",
        include_str!("../../../../shaders/phase_columns.wgsl"),
    ),
    (
        "phase_columns_inverse",
        include_str!("../../../../shaders/phase_columns_inverse.wgsl"),
    ),
    (
        "phase_rows_inverse",
        include_str!("../../../../shaders/phase_rows_inverse.wgsl"),
    ),
];

/// The FFT path's three passes, in order.
pub const FFT_PASSES: [(&str, &str); 3] = [
    (
        "fft_rows",
        include_str!("../../../../shaders/fft_rows.wgsl"),
    ),
    (
        "fft_columns",
        include_str!("../../../../shaders/fft_columns.wgsl"),
    ),
    (
        "fft_rows_inverse",
        include_str!("../../../../shaders/fft_rows_inverse.wgsl"),
    ),
];

/// The FFT helpers the FFT passes add to [`COMMON`].
pub const FFT_COMMON: &str = include_str!("../../../../shaders/fft_common.wgsl");

/// Longest side the FFT path takes (its two workgroup buffers of 512 complex values).
pub const FFT_MAX: usize = 512;

/// Whether a side takes the FFT path.
pub fn fft_size(n: usize) -> bool {
    n.is_power_of_two() && n <= FFT_MAX
}

/// What every pass shares (the twiddle table, the parameters), pasted in as `{{ common }}`.
pub const COMMON: &str = include_str!("../../../../shaders/phase_common.wgsl");

/// One pass: the `index`-th of [`FFT_PASSES`] or of [`PASSES`]. Sizes come in the info buffer,
/// so one compilation serves every shape.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct PhasePass {
    /// From the FFT path.
    pub fft: bool,
    /// Position in its path.
    pub index: usize,
}

impl KernelSource for PhasePass {
    fn source(&self) -> SourceTemplate {
        let passes: &[(&str, &str)] = if self.fft { &FFT_PASSES } else { &PASSES };
        SourceTemplate::new(passes[self.index].1)
            .register("common", COMMON)
            .register("fft", FFT_COMMON)
    }

    fn id(&self) -> KernelId {
        KernelId::new::<Self>().info(*self)
    }

    fn lang(&self) -> &'static str {
        "wgsl"
    }
}

const GROUP: usize = 64;

fn groups(invocations: usize) -> CubeCount {
    let g = invocations.div_ceil(GROUP).max(1);
    CubeCount::Static(g.min(65535) as u32, g.div_ceil(65535) as u32, 1)
}

/// Runs the four passes: `f` (phase donor) and `h` (amplitude donor), both `[B, C, h, w]` f32.
pub fn launch(f: CubeTensor, h: CubeTensor) -> CubeTensor {
    let shape = h.meta.shape().clone();
    assert_eq!(
        f.meta.shape(),
        &shape,
        "phase_exchange: F and H differ in shape"
    );
    assert_eq!(h.dtype, DType::F32, "phase_exchange: f32 only");
    let n = shape.num_dims();
    let (rows, w) = (shape[n - 2], shape[n - 1]);
    let planes = shape.num_elements() / (rows * w).max(1);
    let wf = w / 2 + 1;
    let (f, h) = (into_contiguous(f), into_contiguous(h));
    let (client, device) = (h.client.clone(), h.device.clone());
    let out = empty_device_contiguous_dtype(client.clone(), device.clone(), shape, DType::F32);
    if planes * rows * w == 0 {
        return out;
    }
    let spectrum = || {
        empty_device_contiguous_dtype(
            client.clone(),
            device.clone(),
            Shape::from(vec![planes, rows, wf, 2]),
            DType::F32,
        )
    };
    let (rf, rh, z) = (spectrum(), spectrum(), spectrum());
    let info = [planes as u32, rows as u32, w as u32, wf as u32];
    let info = client.create_from_slice(bytemuck::cast_slice(&info));
    let launch = |fft: bool, index: usize, count: CubeCount, buffers: Vec<&CubeTensor>| {
        let mut bindings: Vec<_> = buffers.iter().map(|t| t.handle.clone().binding()).collect();
        bindings.push(info.clone().binding());
        client.launch(
            Box::new(SourceKernel::new(
                PhasePass { fft, index },
                CubeDim::new_1d(GROUP as u32),
            )),
            count,
            KernelArguments::new().with_buffers(bindings),
        );
    };
    if fft_size(rows) && fft_size(w) {
        // One workgroup per row or per column.
        let per = |n: usize| CubeCount::Static(n.min(65535) as u32, n.div_ceil(65535) as u32, 1);
        launch(true, 0, per(planes * rows), vec![&f, &h, &rf, &rh]);
        launch(true, 1, per(planes * wf), vec![&rf, &rh, &z]);
        launch(true, 2, per(planes * rows), vec![&z, &out]);
        return out;
    }
    let run = |index: usize, invocations: usize, buffers: Vec<&CubeTensor>| {
        launch(false, index, groups(invocations), buffers);
    };
    let spectra = planes * rows * wf;
    run(0, spectra, vec![&f, &h, &rf, &rh]);
    run(1, spectra, vec![&rf, &rh, &z]);
    // The row spectrum of F is no longer needed: it takes the inverse column DFT.
    run(2, spectra, vec![&z, &rf]);
    run(3, planes * rows * w, vec![&rf, &out]);
    out
}
