//! Results that stay on the GPU, for hosts that draw them with their own wgpu device
//! ([`crate::Gpu::from_wgpu`]): the upscaled image as a burn tensor, copied into a buffer of the
//! host's on the GPU, with no read-back.
//!
//! Layout in the host's buffer: `height` rows of `width` pixels, row-major, tightly packed,
//! each pixel four little-endian `f32` — R, G, B, A in `[0, 1]` (16 bytes a pixel, the layout of
//! an `Rgba32Float` texture). Colour is what the 8-bit output is rounded from (sRGB-encoded, as
//! the model works); alpha is the upscaled input alpha, or 1.

use burn::tensor::Tensor;
use burn::tensor::wgpu::wgpu;
use burn_cubecl::cubecl::wgpu::{AutoCompiler, WgpuServer};
use burn_cubecl::kernel::into_contiguous;
use burn_cubecl::{Cube, CubeBackend};

use crate::error::{Error, Result};

/// An upscaled image on the device: a `[height, width, 4]` f32 tensor (see the module docs).
#[derive(Clone, Debug)]
pub struct GpuImage {
    pub(crate) tensor: Tensor<3>,
}

impl GpuImage {
    /// Width in pixels.
    pub fn width(&self) -> usize {
        self.tensor.dims()[1]
    }

    /// Height in pixels.
    pub fn height(&self) -> usize {
        self.tensor.dims()[0]
    }

    /// Bytes the image takes in a buffer: `height · width · 16`.
    pub fn byte_len(&self) -> u64 {
        (self.width() * self.height() * 16) as u64
    }

    /// The tensor, for callers who continue with burn.
    pub fn tensor(&self) -> &Tensor<3> {
        &self.tensor
    }

    /// Records a GPU copy of the image into `dst` at `dst_offset` (a multiple of 4) and submits
    /// it on `queue`, after the engine's own pending work (which is submitted first, to the same
    /// queue). `device` and `queue` are the host's, the ones given to
    /// [`crate::Gpu::from_wgpu`]; `dst` needs `COPY_DST` and [`GpuImage::byte_len`] bytes from
    /// `dst_offset`. Call it on the thread that ran the job (burn orders GPU work per thread).
    pub fn copy_to_buffer(
        &self,
        device: &wgpu::Device,
        queue: &wgpu::Queue,
        dst: &wgpu::Buffer,
        dst_offset: u64,
    ) -> Result<()> {
        let bytes = self.byte_len();
        if !dst_offset.is_multiple_of(4) || dst_offset + bytes > dst.size() {
            return Err(Error::input(format!(
                "the image needs {bytes} bytes at a 4-aligned offset; the buffer has {} from {dst_offset}",
                dst.size()
            )));
        }
        let fusion = self
            .tensor
            .clone()
            .try_into_primitive::<Cube>()
            .map_err(|_| Error::device("the image is not on a wgpu device"))?;
        let mut cube = fusion
            .client
            .clone()
            .resolve_tensor_float::<CubeBackend>(fusion);
        if !cube.is_contiguous() || !cube.is_contiguous_buffer() {
            cube = into_contiguous(cube);
        }
        let resource = cube
            .client
            .get_resource::<WgpuServer<AutoCompiler>>(cube.handle.clone())
            .map_err(|e| Error::device(format!("the image's buffer: {e:?}")))?;
        cube.client
            .flush()
            .map_err(|e| Error::device(format!("submitting the engine's work: {e:?}")))?;
        let src = resource.resource();
        let mut encoder = device.create_command_encoder(&wgpu::CommandEncoderDescriptor {
            label: Some("pgp-wgpu image copy"),
        });
        encoder.copy_buffer_to_buffer(&src.buffer, src.offset, dst, dst_offset, bytes);
        queue.submit([encoder.finish()]);
        // The allocation stays pinned until here, after the submission that reads it.
        drop(resource);
        Ok(())
    }
}
