//! The Omega experiment's figure, drawn with plotters as SVG: three panels against the
//! service scheduler's t_job (log scale): batch wait, scheduler busyness, conflicts per job.

use std::path::Path;

use plotters::prelude::*;

use crate::sim::{Mode, RunResult};

/// One line of a panel.
struct Line {
    label: String,
    color: RGBColor,
    dashed: bool,
    points: Vec<(f64, f64)>,
}

const COLORS: [RGBColor; 6] = [
    RGBColor(31, 119, 180),
    RGBColor(214, 39, 40),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(148, 103, 189),
    RGBColor(140, 86, 75),
];

/// Values below this are drawn at it (log axes).
const FLOOR: f64 = 0.001;

pub fn draw(path: &Path, results: &[RunResult], t_jobs: &[f64]) -> Result<(), String> {
    let series = |mode: Mode, f: &dyn Fn(&RunResult) -> f64| -> Vec<(f64, f64)> {
        results
            .iter()
            .filter(|r| r.mode == mode)
            .map(|r| (r.t_job_service_s, f(r).max(FLOOR)))
            .collect()
    };
    let mut modes: Vec<Mode> = Vec::new();
    for r in results {
        if !modes.contains(&r.mode) {
            modes.push(r.mode);
        }
    }
    let color = |m: &Mode| COLORS[modes.iter().position(|x| x == m).unwrap_or(0) % COLORS.len()];
    let arch: Vec<Mode> = modes
        .iter()
        .copied()
        .filter(|m| matches!(m, Mode::Offers { .. }) || *m == modes[0])
        .collect();
    let shared: Vec<Mode> = modes
        .iter()
        .copied()
        .filter(|m| matches!(m, Mode::SharedState { .. }))
        .collect();

    let wait: Vec<Line> = arch
        .iter()
        .map(|m| Line {
            label: m.label(),
            color: color(m),
            // The capped line lies on the shared-state one: dashed, so both show.
            dashed: matches!(m, Mode::Offers { cap } if *cap > 0),
            points: series(*m, &|r| r.batch.wait_mean_s),
        })
        .collect();
    let mut busy = Vec::new();
    for m in &arch {
        for (who, dashed, f) in [
            (
                "batch",
                false,
                (|r: &RunResult| r.batch.busyness) as fn(&RunResult) -> f64,
            ),
            ("service", true, |r: &RunResult| r.service.busyness),
        ] {
            busy.push(Line {
                label: format!("{who}: {}", m.label()),
                color: color(m),
                dashed,
                points: series(*m, &f),
            });
        }
    }
    let mut conflicts: Vec<Line> = shared
        .iter()
        .map(|m| Line {
            label: m.label().replace("shared state, ", "service: "),
            color: color(m),
            dashed: false,
            points: series(*m, &|r| r.service.conflicts_per_job()),
        })
        .collect();
    conflicts.push(Line {
        label: "one conflict per job".into(),
        color: RGBColor(150, 150, 150),
        dashed: true,
        points: t_jobs.iter().map(|&t| (t, 1.0)).collect(),
    });

    let x_max = t_jobs.iter().copied().fold(1.0, f64::max) * 2.0;
    let x_min = t_jobs.iter().copied().fold(x_max, f64::min) / 2.0;
    let root = SVGBackend::new(path, (1500, 520)).into_drawing_area();
    root.fill(&WHITE).map_err(|e| e.to_string())?;
    let panels = root.split_evenly((1, 3));
    panel(
        &panels[0],
        "Batch job wait (mean, s)",
        (x_min, x_max),
        true,
        &wait,
    )?;
    panel(
        &panels[1],
        "Scheduler busyness (solid batch, dashed service)",
        (x_min, x_max),
        false,
        &busy,
    )?;
    panel(
        &panels[2],
        "Service conflicts per job",
        (x_min, x_max),
        true,
        &conflicts,
    )?;
    root.present().map_err(|e| e.to_string())
}

fn panel(
    area: &DrawingArea<SVGBackend, plotters::coord::Shift>,
    title: &str,
    x: (f64, f64),
    log_y: bool,
    lines: &[Line],
) -> Result<(), String> {
    let err = |e: DrawingAreaErrorKind<_>| e.to_string();
    let y_max = lines
        .iter()
        .flat_map(|l| l.points.iter().map(|p| p.1))
        .fold(FLOOR * 10.0, f64::max);
    let mut chart = ChartBuilder::on(area);
    chart
        .caption(title, ("sans-serif", 18))
        .margin(12)
        .x_label_area_size(40)
        .y_label_area_size(55);
    let x_desc = "service t_job (s), log scale";
    if log_y {
        let mut c = chart
            .build_cartesian_2d((x.0..x.1).log_scale(), (FLOOR..y_max * 3.0).log_scale())
            .map_err(err)?;
        c.configure_mesh()
            .x_desc(x_desc)
            .y_label_formatter(&|v| format!("{v}"))
            .draw()
            .map_err(err)?;
        for l in lines {
            draw_line(&mut c, l)?;
        }
        legend(&mut c)
    } else {
        let mut c = chart
            // Headroom above 1 for the legend.
            .build_cartesian_2d((x.0..x.1).log_scale(), 0.0..(y_max * 1.75).max(1.75))
            .map_err(err)?;
        c.configure_mesh().x_desc(x_desc).draw().map_err(err)?;
        for l in lines {
            draw_line(&mut c, l)?;
        }
        legend(&mut c)
    }
}

fn draw_line<'a, X, Y>(
    c: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
    l: &Line,
) -> Result<(), String>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    let err = |e: DrawingAreaErrorKind<_>| e.to_string();
    let style = ShapeStyle::from(&l.color).stroke_width(2);
    let color = l.color;
    if l.dashed {
        c.draw_series(DashedLineSeries::new(l.points.iter().copied(), 8, 5, style))
            .map_err(err)?
    } else {
        c.draw_series(LineSeries::new(l.points.iter().copied(), style))
            .map_err(err)?
    }
    .label(l.label.clone())
    .legend(move |(x, y)| {
        PathElement::new(
            vec![(x, y), (x + 20, y)],
            ShapeStyle::from(&color).stroke_width(2),
        )
    });
    c.draw_series(
        l.points
            .iter()
            .map(|&p| Circle::new(p, 3, ShapeStyle::from(&color).filled())),
    )
    .map_err(err)?;
    Ok(())
}

fn legend<'a, X, Y>(
    c: &mut ChartContext<'a, SVGBackend<'a>, Cartesian2d<X, Y>>,
) -> Result<(), String>
where
    X: Ranged<ValueType = f64>,
    Y: Ranged<ValueType = f64>,
{
    c.configure_series_labels()
        .position(SeriesLabelPosition::UpperLeft)
        .background_style(WHITE.mix(0.85))
        .border_style(BLACK)
        .label_font(("sans-serif", 12))
        .draw()
        .map_err(|e| e.to_string())
}
