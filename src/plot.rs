//! The run's progress chart: training loss, and evaluation WER / CER, against optimiser steps,
//! as an SVG (plotters' SVG backend writes text as `<text>` elements, so no font files are
//! needed).

use crate::error::{Error, Result};
use plotters::prelude::*;
use std::ops::Range;
use std::path::Path;

const SIZE: (u32, u32) = (900, 700);

/// Axis ranges around the finite points of some series, with a little headroom; a unit range
/// when there is nothing to show yet.
fn bounds(series: &[&[(u64, f64)]]) -> (Range<f64>, Range<f64>) {
    let pts = || {
        series
            .iter()
            .flat_map(|s| s.iter())
            .filter(|(_, y)| y.is_finite())
    };
    let (mut x0, mut x1, mut y0, mut y1) = (f64::MAX, f64::MIN, f64::MAX, f64::MIN);
    for &(x, y) in pts() {
        x0 = x0.min(x as f64);
        x1 = x1.max(x as f64);
        y0 = y0.min(y);
        y1 = y1.max(y);
    }
    if x0 > x1 {
        return (0.0..1.0, 0.0..1.0);
    }
    if x1 - x0 < 1.0 {
        x1 = x0 + 1.0;
    }
    // Losses and error rates are non-negative: start the axis at 0 unless data goes below.
    y0 = y0.min(0.0);
    if y1 - y0 < 1e-9 {
        y1 = y0 + 1.0;
    }
    (x0..x1, y0..y1 + 0.05 * (y1 - y0))
}

fn finite(s: &[(u64, f64)]) -> Vec<(f64, f64)> {
    s.iter()
        .filter(|(_, y)| y.is_finite())
        .map(|&(x, y)| (x as f64, y))
        .collect()
}

/// A series: legend name, points, colour.
type Line<'a> = (&'a str, &'a [(u64, f64)], RGBColor);
type Panel<'a> = DrawingArea<SVGBackend<'a>, plotters::coord::Shift>;

fn panel(
    area: &Panel<'_>,
    title: &str,
    y_label: &str,
    lines: &[Line<'_>],
) -> std::result::Result<(), Box<dyn std::error::Error>> {
    let all: Vec<&[(u64, f64)]> = lines.iter().map(|l| l.1).collect();
    let (xr, yr) = bounds(&all);
    let mut chart = ChartBuilder::on(area)
        .caption(title, ("sans-serif", 22))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(xr, yr)?;
    chart
        .configure_mesh()
        .x_desc("step")
        .y_desc(y_label)
        .label_style(("sans-serif", 14))
        .axis_desc_style(("sans-serif", 16))
        .draw()?;
    for &(name, points, color) in lines {
        chart
            .draw_series(LineSeries::new(finite(points), color.stroke_width(2)))?
            .label(name)
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .label_font(("sans-serif", 14))
        .draw()?;
    Ok(())
}

/// Draws training loss (top) and evaluation WER and CER (bottom) against steps into an SVG at
/// `path`, replacing it atomically (written to a temporary file, then renamed). Non-finite
/// points are left out; empty series give empty axes.
pub fn training_plot(
    path: &Path,
    train: &[(u64, f64)],
    eval_wer: &[(u64, f64)],
    eval_cer: &[(u64, f64)],
) -> Result<()> {
    let err = |msg: String| Error::File {
        path: path.display().to_string(),
        msg,
    };
    let mut svg = String::new();
    {
        let root = SVGBackend::with_string(&mut svg, SIZE).into_drawing_area();
        let draw = || -> std::result::Result<(), Box<dyn std::error::Error>> {
            root.fill(&WHITE)?;
            let halves = root.split_evenly((2, 1));
            panel(
                &halves[0],
                "training loss",
                "loss",
                &[("loss", train, RGBColor(31, 119, 180))],
            )?;
            panel(
                &halves[1],
                "evaluation",
                "error rate",
                &[
                    ("WER", eval_wer, RGBColor(214, 39, 40)),
                    ("CER", eval_cer, RGBColor(44, 160, 44)),
                ],
            )?;
            root.present()?;
            Ok(())
        };
        draw().map_err(|e| err(format!("cannot draw the plot: {e}")))?;
    }
    // A full disk leaves no empty temporary file behind.
    crate::files::write_atomic_io(path, svg.as_bytes()).map_err(|e| {
        let tmp = crate::files::temporary(path);
        err(format!("cannot write {}: {e}", tmp.display()))
    })
}
