//! The analysis report's figures, in the style of the paper's Fig. 3: box plots of each coarse
//! module's Φcos and ΨKL between adjacent timesteps (over the steps), and each decoder
//! transformer block's measures (input against output), kept and pruned blocks in two colours.
//! Each is written as PNG and SVG; text uses an embedded font (a subset of DejaVu Sans,
//! `assets/`), so no system font library is needed.

use std::sync::Once;

use anyhow::{Result, anyhow};
use pgp_core::ppa::Report;
use plotters::coord::Shift;
use plotters::coord::cartesian::Cartesian2d;
use plotters::coord::ranged1d::SegmentedCoord;
use plotters::coord::types::{RangedCoordf32, RangedCoordusize};
use plotters::prelude::*;

static FONT: &[u8] = include_bytes!("../assets/DejaVuSans-subset.ttf");
const SANS: &str = "sans-serif";

fn register_font() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font is ours and valid; a failure would show as missing text, not a crash.
        let _ = plotters::style::register_font(SANS, FontStyle::Normal, FONT);
    });
}

/// `down_blocks.1` → `down 1`, `mid_block` → `mid`, `up_blocks.0` → `up 0`.
fn short(module: &str) -> String {
    module
        .replace("down_blocks.", "down ")
        .replace("up_blocks.", "up ")
        .replace("mid_block", "mid")
}

fn err<E: std::fmt::Debug>(e: E) -> anyhow::Error {
    anyhow!("drawing a figure: {e:?}")
}

/// The largest value (at least a small positive one, so an all-zero axis has a height).
fn top(values: impl Iterator<Item = f64>) -> f32 {
    (values.fold(0.0f64, f64::max) * 1.1).max(1e-6) as f32
}

type Chart<'a, DB> =
    ChartContext<'a, DB, Cartesian2d<SegmentedCoord<RangedCoordusize>, RangedCoordf32>>;

/// One panel: a category per label on x, `0..ymax` on y, the mesh drawn.
fn panel_chart<'a, DB: DrawingBackend>(
    area: &'a DrawingArea<DB, Shift>,
    name: &str,
    labels: &[String],
    ymax: f32,
) -> Result<Chart<'a, DB>> {
    let n = labels.len();
    let mut chart = ChartBuilder::on(area)
        .caption(name, (SANS, 18))
        .margin(12)
        .x_label_area_size(36)
        .y_label_area_size(64)
        .build_cartesian_2d((0..n.max(1) - 1).into_segmented(), 0f32..ymax)
        .map_err(err)?;
    chart
        .configure_mesh()
        .disable_x_mesh()
        .x_labels(n.max(1))
        .x_label_formatter(&|v| match v {
            SegmentValue::CenterOf(i) => labels.get(*i).cloned().unwrap_or_default(),
            _ => String::new(),
        })
        .label_style((SANS, 13))
        .y_label_formatter(&|y| format!("{y:.3}"))
        .draw()
        .map_err(err)?;
    Ok(chart)
}

fn coarse<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, r: &Report) -> Result<()> {
    root.fill(&WHITE).map_err(err)?;
    let (title, body) = root.split_vertically(40);
    title
        .titled(
            &format!(
                "Coarse: level outputs between adjacent timesteps ({} images, {} steps)",
                r.images, r.steps
            ),
            (SANS, 20),
        )
        .map_err(err)?;
    let panels = body.split_evenly((1, 2));
    let labels: Vec<String> = r.coarse.iter().map(|c| short(&c.module)).collect();
    for (panel, (name, kl)) in panels.iter().zip([("Φcos", false), ("ΨKL", true)]) {
        let values: Vec<&Vec<f64>> = r
            .coarse
            .iter()
            .map(|c| if kl { &c.psi_kl } else { &c.phi_cos })
            .collect();
        let ymax = top(values.iter().flat_map(|v| v.iter()).copied());
        let mut chart = panel_chart(panel, name, &labels, ymax)?;
        chart
            .draw_series(
                values
                    .iter()
                    .enumerate()
                    .filter(|(_, v)| !v.is_empty())
                    .map(|(i, v)| {
                        Boxplot::new_vertical(
                            SegmentValue::CenterOf(i),
                            &Quartiles::new(v.as_slice()),
                        )
                        .width(24)
                        .whisker_width(0.6)
                        .style(BLUE)
                    }),
            )
            .map_err(err)?;
    }
    root.present().map_err(err)
}

fn fine<DB: DrawingBackend>(root: &DrawingArea<DB, Shift>, r: &Report) -> Result<()> {
    root.fill(&WHITE).map_err(err)?;
    let decision = r.decisions.first();
    let pruned = |name: &str| decision.is_some_and(|d| d.prune.iter().any(|p| p == name));
    let rule = decision.map_or_else(String::new, |d| d.rule.to_string());
    let (title, body) = root.split_vertically(40);
    title
        .titled(
            &format!(
                "Fine: each decoder transformer block, input against output (red: what \"{rule}\" prunes)"
            ),
            (SANS, 20),
        )
        .map_err(err)?;
    // `up_blocks.0.attentions.1.transformer_blocks.0` → `up 0.1` at each module's first block.
    let labels: Vec<String> = r
        .fine
        .iter()
        .map(|e| match e.name.strip_suffix(".transformer_blocks.0") {
            Some(module) => short(module).replace(".attentions.", "."),
            None => String::new(),
        })
        .collect();
    let panels = body.split_evenly((2, 1));
    for (panel, (name, kl)) in panels.iter().zip([("Φcos", false), ("ΨKL", true)]) {
        let pick = |e: &pgp_core::ppa::FineEntry| if kl { e.psi_kl } else { e.phi_cos };
        let ymax = top(r.fine.iter().map(pick));
        let mut chart = panel_chart(panel, name, &labels, ymax)?;
        for (kept, color) in [(true, BLUE), (false, RED)] {
            chart
                .draw_series(
                    r.fine
                        .iter()
                        .enumerate()
                        .filter(|(_, e)| pruned(&e.name) != kept)
                        .map(|(i, e)| {
                            Circle::new(
                                (SegmentValue::CenterOf(i), pick(e) as f32),
                                4,
                                color.filled(),
                            )
                        }),
                )
                .map_err(err)?;
        }
    }
    root.present().map_err(err)
}

/// `coarse.png`, `coarse.svg`, `fine.png` and `fine.svg`, rendered and encoded in memory.
pub fn render_all(r: &Report) -> Result<Vec<(String, Vec<u8>)>> {
    register_font();
    let mut out = Vec::new();
    for (name, size) in [("coarse", (1200u32, 520u32)), ("fine", (1400, 760))] {
        let mut text = String::new();
        let mut pixels = vec![0u8; size.0 as usize * size.1 as usize * 3];
        {
            let svg = SVGBackend::with_string(&mut text, size).into_drawing_area();
            let png = BitMapBackend::with_buffer(&mut pixels, size).into_drawing_area();
            if name == "coarse" {
                coarse(&svg, r)?;
                coarse(&png, r)?;
            } else {
                fine(&svg, r)?;
                fine(&png, r)?;
            }
        }
        let img = image::RgbImage::from_raw(size.0, size.1, pixels).expect("sized buffer");
        let mut encoded = std::io::Cursor::new(Vec::new());
        img.write_to(&mut encoded, image::ImageFormat::Png)
            .map_err(|e| anyhow!("encoding {name}.png: {e}"))?;
        out.push((format!("{name}.svg"), text.into_bytes()));
        out.push((format!("{name}.png"), encoded.into_inner()));
    }
    Ok(out)
}
