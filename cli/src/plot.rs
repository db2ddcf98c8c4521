//! The RSS-over-time chart of `shoal wake --plot`, drawn with plotters as SVG.

use std::path::Path;

use plotters::prelude::*;

/// Draws `samples` (seconds, RSS KiB) with a vertical marker at each phase.
pub fn rss(
    path: &Path,
    samples: &[(f64, u64)],
    phases: &[(f64, &str)],
    title: &str,
) -> anyhow::Result<()> {
    let root = SVGBackend::new(path, (900, 480)).into_drawing_area();
    root.fill(&WHITE)?;
    let max_t = samples.last().map_or(1.0, |s| s.0).max(0.1);
    let max_mb = samples.iter().map(|s| s.1).max().unwrap_or(1) as f64 / 1024.0 * 1.15;
    let mut chart = ChartBuilder::on(&root)
        .caption(title, ("sans-serif", 20))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..max_t, 0f64..max_mb)?;
    chart
        .configure_mesh()
        .x_desc("seconds")
        .y_desc("RSS (MiB)")
        .draw()?;
    chart.draw_series(LineSeries::new(
        samples.iter().map(|(t, kb)| (*t, *kb as f64 / 1024.0)),
        &BLUE,
    ))?;
    for (t, name) in phases {
        chart.draw_series(LineSeries::new([(*t, 0.0), (*t, max_mb)], RED.mix(0.5)))?;
        chart.draw_series(std::iter::once(Text::new(
            (*name).to_owned(),
            (*t, max_mb * 0.95),
            ("sans-serif", 14),
        )))?;
    }
    root.present()?;
    Ok(())
}
