//! Launching `shaders/flash_attention.wgsl`.

use burn::backend::wgpu::{
    CubeTensor, KernelSource, SourceKernel, SourceTemplate, into_contiguous,
};
use burn::tensor::{DType, Shape};
use burn_cubecl::cubecl::prelude::KernelId;
use burn_cubecl::cubecl::server::KernelArguments;
use burn_cubecl::cubecl::{CubeCount, CubeDim};

/// The shader text, as checked by the naga test.
pub const SOURCE: &str = include_str!("../../../../shaders/flash_attention.wgsl");

/// Invocations (query rows) per workgroup.
pub const TILE_Q: usize = 64;
/// f32 values of workgroup memory the K and V tiles may use (WebGPU's default 16 KiB, less
/// the launch parameters).
const TILE_FLOATS: usize = 4080;
/// Largest head dims the kernel takes (the register arrays grow with them).
pub const MAX_HEAD_DIM: usize = 128;

/// One compiled variant.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash)]
pub struct FlashAttention {
    /// Head dim of q and k.
    pub d: usize,
    /// Head dim of v.
    pub dv: usize,
    /// Keys per tile.
    pub tile_k: usize,
    /// f16 inputs and output (else f32).
    pub f16: bool,
}

impl FlashAttention {
    /// The variant for these head dims.
    pub fn new(d: usize, dv: usize, f16: bool) -> Self {
        Self {
            d,
            dv,
            tile_k: (TILE_FLOATS / (4 * (d.div_ceil(4) + dv.div_ceil(4)))).clamp(1, 64),
            f16,
        }
    }

    /// The shader text with its template values filled in (the per-dimension blocks unrolled).
    pub fn template(&self) -> SourceTemplate {
        let (d4, dv4) = (self.d.div_ceil(4), self.dv.div_ceil(4));
        let lines =
            |n: usize, f: &dyn Fn(usize) -> String| (0..n).map(f).collect::<Vec<_>>().join("\n");
        let score = (0..d4)
            .map(|i| format!("dot(q{i}, k_tile[kb + {i}u])"))
            .collect::<Vec<_>>()
            .join(" + ");
        SourceTemplate::new(SOURCE)
            .register("enable_f16", if self.f16 { "enable f16;" } else { "" })
            .register("elem", if self.f16 { "f16" } else { "f32" })
            .register("d", self.d.to_string())
            .register("dv", self.dv.to_string())
            .register("d4", d4.to_string())
            .register("dv4", dv4.to_string())
            .register("tile_q", TILE_Q.to_string())
            .register("tile_k", self.tile_k.to_string())
            .register("tile_k_d4", (self.tile_k * d4).to_string())
            .register("tile_k_dv4", (self.tile_k * dv4).to_string())
            .register(
                "q_init",
                lines(d4, &|i| {
                    format!("    let q{i} = load_q(q_row, {i}u) * scale;")
                }),
            )
            .register(
                "acc_init",
                lines(dv4, &|i| format!("    var a{i} = vec4<f32>(0.0);")),
            )
            .register("score", score)
            .register(
                "acc_update",
                lines(dv4, &|i| {
                    format!("                a{i} = a{i} * correction + p * v_tile[vb + {i}u];")
                }),
            )
            .register(
                "store",
                lines(dv4, &|i| {
                    format!("        store4(bh * s + row, {i}u, a{i} * inv);")
                }),
            )
    }
}

impl KernelSource for FlashAttention {
    fn source(&self) -> SourceTemplate {
        self.template()
    }

    fn id(&self) -> KernelId {
        KernelId::new::<Self>().info(*self)
    }

    fn lang(&self) -> &'static str {
        "wgsl"
    }
}

/// Whether the kernel takes these head dims.
pub fn supports(d: usize, dv: usize) -> bool {
    (1..=MAX_HEAD_DIM).contains(&d) && (1..=MAX_HEAD_DIM).contains(&dv)
}

/// Runs the kernel: `q` `[B, H, S, D]`, `k` `[B, H, Skv, D]`, `v` `[B, H, Skv, Dv]`.
pub fn launch(q: CubeTensor, k: CubeTensor, v: CubeTensor, causal: bool) -> CubeTensor {
    let (qs, ks, vs) = (
        q.meta.shape().clone(),
        k.meta.shape().clone(),
        v.meta.shape().clone(),
    );
    let [b, h, s, d] = [qs[0], qs[1], qs[2], qs[3]];
    let (skv, dv) = (ks[2], vs[3]);
    assert!(
        ks[0] == b && ks[1] == h && ks[3] == d && vs[0] == b && vs[1] == h && vs[2] == skv,
        "flash_attention: q {qs:?}, k {ks:?}, v {vs:?} do not fit together"
    );
    assert!(
        supports(d, dv),
        "flash_attention: head dims {d}/{dv} over {MAX_HEAD_DIM}"
    );
    let dtype = q.dtype;
    let f16 = match dtype {
        DType::F32 => false,
        DType::F16 => true,
        other => panic!("flash_attention: {other:?} inputs (f32 or f16)"),
    };
    let (q, k, v) = (into_contiguous(q), into_contiguous(k), into_contiguous(v));
    let out_shape = Shape::from(vec![b, h, s, dv]);
    let out = burn_cubecl::ops::numeric::empty_device_contiguous_dtype(
        q.client.clone(),
        q.device.clone(),
        out_shape,
        dtype,
    );
    if out.meta.shape().num_elements() == 0 {
        return out;
    }
    let bh = b * h;
    let scale = 1.0f32 / (d as f32).sqrt();
    let info = [
        bh as u32,
        s as u32,
        skv as u32,
        u32::from(causal),
        scale.to_bits(),
    ];
    let info = q.client.create_from_slice(bytemuck::cast_slice(&info));
    let count = CubeCount::Static(
        s.div_ceil(TILE_Q) as u32,
        bh.min(65535) as u32,
        bh.div_ceil(65535) as u32,
    );
    q.client.launch(
        Box::new(SourceKernel::new(
            FlashAttention::new(d, dv, f16),
            CubeDim::new_1d(TILE_Q as u32),
        )),
        count,
        KernelArguments::new().with_buffers(vec![
            q.handle.clone().binding(),
            k.handle.clone().binding(),
            v.handle.clone().binding(),
            out.handle.clone().binding(),
            info.binding(),
        ]),
    );
    out
}
