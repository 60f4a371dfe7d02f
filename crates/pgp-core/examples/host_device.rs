//! An application that owns its wgpu device runs the upscaler on it and gets the result as a
//! buffer on that device, without a read-back, as well as the pixels.
//!
//! ```sh
//! cargo run --example host_device -- BUNDLE [WIDTH HEIGHT]
//! ```
//!
//! What a host does:
//! 1. Create its instance, adapter, device and queue with the `wgpu` that burn re-exports
//!    (`pgp_core::burn::tensor::wgpu::wgpu`, so the versions match), requesting the adapter's
//!    own features and limits: cubecl reads the adapter's features (f16, subgroups) and
//!    compiles for them, so the device must have them.
//! 2. `Gpu::from_wgpu(WgpuSetup { .. })`: burn's runtime then submits to the host's queue.
//!    cubecl takes over the device's uncaptured-error and device-lost callbacks (a wgpu error
//!    panics the engine's call; a lost device makes later calls fail), and natively parks a poll
//!    thread that polls the device while the engine waits on it.
//! 3. Hand the pixels over: here from the host's own buffer, mapped for reading, with a
//!    256-byte row stride as texture copies produce (the pre-upscale is Pillow's Lanczos, on
//!    the host).
//! 4. `job.keep_gpu_image()`, run, then `GpuImage::copy_to_buffer` into the host's buffer:
//!    `height × width` pixels of four f32 (RGBA in [0, 1], 16 bytes a pixel, rows packed).
//!
//! The example checks the buffer against the 8-bit pixels and exits non-zero on a mismatch.

use pgp_core::burn::tensor::wgpu::{WgpuSetup, wgpu};
use pgp_core::{DirSource, Gpu, ImageView, Options, PixelFormat, TileSize, Upscaler};

fn map_read(device: &wgpu::Device, buffer: &wgpu::Buffer) -> Vec<u8> {
    let slice = buffer.slice(..);
    slice.map_async(wgpu::MapMode::Read, |r| r.expect("mapping the buffer"));
    device
        .poll(wgpu::PollType::wait_indefinitely())
        .expect("waiting for the device");
    let bytes = slice.get_mapped_range().expect("mapped").to_vec();
    buffer.unmap();
    bytes
}

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().collect();
    let Some(bundle) = args.get(1) else {
        return Err("usage: host_device BUNDLE [WIDTH HEIGHT]".into());
    };
    let (w, h): (u32, u32) = match (args.get(2), args.get(3)) {
        (Some(w), Some(h)) => (w.parse()?, h.parse()?),
        _ => (24, 16),
    };

    // 1. The host's own device.
    let instance = wgpu::Instance::default();
    let adapter = pollster::block_on(instance.request_adapter(&Default::default()))?;
    let (device, queue) = pollster::block_on(
        adapter.request_device(&wgpu::DeviceDescriptor {
            label: Some("host"),
            required_features: adapter
                .features()
                .difference(wgpu::Features::MAPPABLE_PRIMARY_BUFFERS),
            required_limits: adapter.limits(),
            experimental_features: wgpu::ExperimentalFeatures::disabled(),
            memory_hints: wgpu::MemoryHints::MemoryUsage,
            trace: wgpu::Trace::Off,
        }),
    )?;
    println!("host device: {}", adapter.get_info().name);

    // 2. The engine on it.
    let gpu = Gpu::from_wgpu(WgpuSetup {
        instance: instance.clone(),
        adapter: adapter.clone(),
        device: device.clone(),
        queue: queue.clone(),
        backend: adapter.get_info().backend,
    })?;
    let upscaler = pollster::block_on(Upscaler::load(&DirSource::new(bundle), &gpu, &mut |_| {}))?;

    // 3. An RGBA8 test card in the host's buffer, rows 256-byte aligned.
    let stride = (4 * w).next_multiple_of(wgpu::COPY_BYTES_PER_ROW_ALIGNMENT);
    let mut card = vec![0u8; (stride * h) as usize];
    for y in 0..h {
        for x in 0..w {
            let p = (y * stride + 4 * x) as usize;
            card[p..p + 4].copy_from_slice(&[
                (x * 255 / w) as u8,
                (y * 255 / h) as u8,
                ((x ^ y) * 16) as u8,
                if (x / 4 + y / 4) % 2 == 0 { 255 } else { 128 },
            ]);
        }
    }
    let input = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("host image"),
        size: card.len() as u64,
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    queue.write_buffer(&input, 0, &card);
    queue.submit([]);
    let pixels = map_read(&device, &input);
    let view = ImageView::new(
        &pixels,
        w as usize,
        h as usize,
        stride as usize,
        PixelFormat::Rgba8,
    )?;

    // 4. Run, keep the result on the device, copy it into the host's buffer.
    let options = Options {
        steps: 2,
        tile: TileSize::Auto,
        ..upscaler.default_options()
    };
    let mut job = upscaler.start(view, options)?;
    job.keep_gpu_image();
    while let Some(event) = pollster::block_on(job.next()) {
        let event = event?;
        println!("{:>3}/{} {:?}", event.done, event.total, event.unit);
    }
    let on_device = job.take_gpu_image().ok_or("no image on the device")?;
    let image = job.into_image()?;
    let output = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("host result"),
        size: on_device.byte_len(),
        usage: wgpu::BufferUsages::STORAGE
            | wgpu::BufferUsages::COPY_DST
            | wgpu::BufferUsages::COPY_SRC,
        mapped_at_creation: false,
    });
    on_device.copy_to_buffer(&device, &queue, &output, 0)?;
    println!(
        "result: {}×{} RGBA f32 in the host's buffer ({} bytes)",
        on_device.width(),
        on_device.height(),
        on_device.byte_len()
    );

    // Check (reading back only to verify): the buffer holds what the 8-bit pixels came from.
    let staging = device.create_buffer(&wgpu::BufferDescriptor {
        label: Some("check"),
        size: on_device.byte_len(),
        usage: wgpu::BufferUsages::MAP_READ | wgpu::BufferUsages::COPY_DST,
        mapped_at_creation: false,
    });
    let mut encoder = device.create_command_encoder(&Default::default());
    encoder.copy_buffer_to_buffer(&output, 0, &staging, 0, on_device.byte_len());
    queue.submit([encoder.finish()]);
    let floats: Vec<f32> = map_read(&device, &staging)
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect();
    let mut worst = 0f32;
    for (i, (&f, &b)) in floats.iter().zip(&image.data).enumerate() {
        let expected = if i % 4 == 3 {
            f32::from(b) / 255.0
        } else {
            // The 8-bit colour is the float colour truncated (torchvision's ToPILImage).
            (f.clamp(0.0, 1.0) * 255.0).floor()
        };
        let got = if i % 4 == 3 { f } else { f32::from(b) };
        worst = worst.max((expected - got).abs());
    }
    if image.data.len() != floats.len() || worst > 1e-6 {
        return Err(format!("the device buffer does not match the pixels (worst {worst})").into());
    }
    println!(
        "the buffer matches the {}×{} RGBA8 pixels",
        image.width, image.height
    );
    Ok(())
}
