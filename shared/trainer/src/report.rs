//! Training reports: `report.md` plus PNG plots (feature importance; predicted vs actual and
//! residuals for regression; ROC curve and calibration for classification).

use std::fmt::Write as _;
use std::path::Path;
use std::sync::Once;

use mlops_domain::schema::Task;
use plotters::prelude::*;

use crate::TrainError;
use crate::select::TrainingOutcome;

/// Extra facts shown at the top of the report.
#[derive(Debug, Clone, Default)]
pub struct ReportContext {
    /// Model name.
    pub model_name: String,
    /// Data-set file and hash.
    pub data: String,
    /// Registry version, if registered.
    pub version: Option<u64>,
    /// Tracking run of the selected candidate.
    pub run: Option<String>,
}

fn register_fonts() {
    static ONCE: Once = Once::new();
    ONCE.call_once(|| {
        // The font is compiled in, so reports render on machines without system fonts.
        let _ = plotters::style::register_font(
            "sans-serif",
            FontStyle::Normal,
            dejavu::sans::regular(),
        );
    });
}

fn report_err(path: &Path, e: impl std::fmt::Display) -> TrainError {
    TrainError::Report {
        path: path.display().to_string(),
        message: e.to_string(),
    }
}

/// Writes `report.md` and the plots into `dir`; returns the file names written.
pub fn write_report(
    dir: &Path,
    outcome: &TrainingOutcome,
    context: &ReportContext,
) -> Result<Vec<String>, TrainError> {
    std::fs::create_dir_all(dir).map_err(|e| report_err(dir, e))?;
    register_fonts();
    let best = outcome.best();
    let mut files = Vec::new();

    let importance = best.model.feature_importance()?;
    let mut ranked: Vec<(String, f64)> = best
        .pipeline
        .feature_names
        .iter()
        .cloned()
        .zip(importance)
        .collect();
    ranked.sort_by(|a, b| b.1.total_cmp(&a.1));
    let total: f64 = ranked
        .iter()
        .map(|r| r.1)
        .sum::<f64>()
        .max(f64::MIN_POSITIVE);
    let top: Vec<(String, f64)> = ranked
        .iter()
        .take(15)
        .map(|(n, v)| (n.clone(), v / total))
        .collect();
    plot_importance(&dir.join("feature_importance.png"), &top, best.kind.name())?;
    files.push("feature_importance.png".to_string());

    match outcome.task {
        Task::Regression => {
            plot_predicted_vs_actual(
                &dir.join("predicted_vs_actual.png"),
                &outcome.test_labels,
                &outcome.test_predictions,
            )?;
            plot_residuals(
                &dir.join("residuals.png"),
                &outcome.test_labels,
                &outcome.test_predictions,
            )?;
            files.extend([
                "predicted_vs_actual.png".to_string(),
                "residuals.png".to_string(),
            ]);
        }
        Task::BinaryClassification => {
            plot_roc(
                &dir.join("roc_curve.png"),
                &outcome.test_labels,
                &outcome.test_predictions,
            )?;
            plot_calibration(
                &dir.join("calibration.png"),
                &outcome.test_labels,
                &outcome.test_predictions,
            )?;
            files.extend(["roc_curve.png".to_string(), "calibration.png".to_string()]);
        }
    }

    let mut md = String::new();
    let _ = writeln!(md, "# Training report: {}\n", context.model_name);
    let _ = writeln!(md, "- Task: {}", outcome.task);
    let _ = writeln!(md, "- Data: {}", context.data);
    let _ = writeln!(
        md,
        "- Split: {} training rows (validation carved from them), {} test rows",
        outcome.train_rows,
        outcome.test_labels.len()
    );
    if let Some(v) = context.version {
        let _ = writeln!(md, "- Registered as version {v}");
    }
    if let Some(r) = &context.run {
        let _ = writeln!(md, "- Tracking run: {r}");
    }
    let _ = writeln!(
        md,
        "- Selected: **{}** by {} on {}\n",
        best.name,
        outcome.primary.name(),
        if best.cv_scores.is_empty() {
            "the validation set"
        } else {
            "the cross-validation mean"
        }
    );
    let _ = writeln!(md, "## Candidates\n");
    let _ = writeln!(
        md,
        "| candidate | validation {} | CV mean ± sd | train seconds | best iteration |",
        outcome.primary.name()
    );
    let _ = writeln!(md, "|---|---|---|---|---|");
    for c in &outcome.candidates {
        let cv = if c.cv_scores.is_empty() {
            "–".to_string()
        } else {
            let n = c.cv_scores.len() as f64;
            let m = c.cv_scores.iter().sum::<f64>() / n;
            let sd = (c.cv_scores.iter().map(|s| (s - m) * (s - m)).sum::<f64>()
                / (n - 1.0).max(1.0))
            .sqrt();
            format!("{m:.4} ± {sd:.4}")
        };
        let _ = writeln!(
            md,
            "| {} | {:.4} | {} | {:.2} | {} |",
            c.name,
            c.validation_metrics[outcome.primary.name()],
            cv,
            c.train_seconds,
            c.model
                .best_iteration()
                .map_or("–".into(), |b| b.to_string())
        );
    }
    let _ = writeln!(md, "\n## Test metrics of the selected model\n");
    let _ = writeln!(md, "| metric | value |\n|---|---|");
    for (k, v) in &outcome.test_metrics {
        let _ = writeln!(md, "| {k} | {v:.4} |");
    }
    let _ = writeln!(md, "\n## Feature importance (share of total)\n");
    let _ = writeln!(md, "| feature | share |\n|---|---|");
    for (n, v) in &top {
        let _ = writeln!(md, "| {n} | {v:.3} |");
    }
    let _ = writeln!(md);
    for f in &files {
        let _ = writeln!(md, "![{f}]({f})");
    }
    let md_path = dir.join("report.md");
    std::fs::write(&md_path, md).map_err(|e| report_err(&md_path, e))?;
    files.insert(0, "report.md".into());
    Ok(files)
}

type Canvas<'a> = DrawingArea<BitMapBackend<'a>, plotters::coord::Shift>;

type DrawResult = Result<(), Box<dyn std::error::Error>>;

fn draw(
    path: &Path,
    size: (u32, u32),
    body: impl FnOnce(&Canvas) -> DrawResult,
) -> Result<(), TrainError> {
    let root = BitMapBackend::new(path, size).into_drawing_area();
    root.fill(&WHITE).map_err(|e| report_err(path, e))?;
    body(&root).map_err(|e| report_err(path, e))?;
    root.present().map_err(|e| report_err(path, e))
}

fn plot_importance(path: &Path, top: &[(String, f64)], model: &str) -> Result<(), TrainError> {
    let max = top.iter().map(|t| t.1).fold(0.0, f64::max).max(1e-9);
    let n = top.len().max(1);
    draw(path, (900, 120 + 32 * n as u32), |root| {
        let (labels, bars) = root.split_horizontally(260);
        let mut chart = ChartBuilder::on(&bars)
            .caption(
                format!("Feature importance ({model}, share of gain)"),
                ("sans-serif", 20),
            )
            .margin(10)
            .x_label_area_size(30)
            .build_cartesian_2d(0.0..max * 1.05, 0.0..n as f64)?;
        chart
            .configure_mesh()
            .disable_y_mesh()
            .disable_y_axis()
            .draw()?;
        chart.draw_series(top.iter().enumerate().map(|(i, (_, v))| {
            let y = (n - 1 - i) as f64;
            Rectangle::new([(0.0, y + 0.15), (*v, y + 0.85)], BLUE.mix(0.7).filled())
        }))?;
        let plot_top = 10 + 20 + 10;
        let height = bars.dim_in_pixel().1 as i32 - plot_top - 30 - 10;
        for (i, (name, _)) in top.iter().enumerate() {
            let y = plot_top + ((i as f64 + 0.5) * height as f64 / n as f64) as i32;
            labels.draw(&Text::new(
                name.clone(),
                (250 - 7 * name.len().min(34) as i32, y - 7),
                ("sans-serif", 14),
            ))?;
        }
        Ok(())
    })
}

fn bounds(values: impl Iterator<Item = f64>) -> (f64, f64) {
    let (lo, hi) = values.fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), v| {
        (a.min(v), b.max(v))
    });
    if lo.is_finite() && hi > lo {
        (lo, hi)
    } else {
        (0.0, 1.0)
    }
}

fn plot_predicted_vs_actual(path: &Path, y: &[f64], p: &[f64]) -> Result<(), TrainError> {
    let (lo, hi) = bounds(y.iter().chain(p).copied());
    draw(path, (700, 700), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption("Predicted vs actual (test split)", ("sans-serif", 22))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(lo..hi, lo..hi)?;
        chart
            .configure_mesh()
            .x_desc("actual")
            .y_desc("predicted")
            .draw()?;
        chart.draw_series(
            y.iter()
                .zip(p)
                .map(|(a, b)| Circle::new((*a, *b), 2, BLUE.mix(0.25).filled())),
        )?;
        chart.draw_series(LineSeries::new([(lo, lo), (hi, hi)], RED.stroke_width(2)))?;
        Ok(())
    })
}

fn plot_residuals(path: &Path, y: &[f64], p: &[f64]) -> Result<(), TrainError> {
    let residuals: Vec<(f64, f64)> = y.iter().zip(p).map(|(a, b)| (*b, a - b)).collect();
    let (xlo, xhi) = bounds(residuals.iter().map(|r| r.0));
    let (rlo, rhi) = bounds(residuals.iter().map(|r| r.1));
    draw(path, (800, 500), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(
                "Residuals (actual − predicted) on the test split",
                ("sans-serif", 22),
            )
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(xlo..xhi, rlo..rhi)?;
        chart
            .configure_mesh()
            .x_desc("predicted")
            .y_desc("residual")
            .draw()?;
        chart.draw_series(
            residuals
                .iter()
                .map(|r| Circle::new(*r, 2, BLUE.mix(0.25).filled())),
        )?;
        chart.draw_series(LineSeries::new(
            [(xlo, 0.0), (xhi, 0.0)],
            RED.stroke_width(2),
        ))?;
        Ok(())
    })
}

/// ROC curve points (false-positive rate, true-positive rate), from the highest threshold down.
pub fn roc_points(y: &[f64], p: &[f64]) -> Vec<(f64, f64)> {
    let mut order: Vec<usize> = (0..y.len()).collect();
    order.sort_by(|&a, &b| p[b].total_cmp(&p[a]));
    let pos = y.iter().filter(|&&v| v > 0.5).count().max(1) as f64;
    let neg = (y.len() as f64 - pos).max(1.0);
    let (mut tp, mut fp) = (0.0, 0.0);
    let mut out = vec![(0.0, 0.0)];
    for (k, &i) in order.iter().enumerate() {
        if y[i] > 0.5 {
            tp += 1.0
        } else {
            fp += 1.0
        }
        if k + 1 == order.len() || p[order[k + 1]] != p[i] {
            out.push((fp / neg, tp / pos));
        }
    }
    out
}

fn plot_roc(path: &Path, y: &[f64], p: &[f64]) -> Result<(), TrainError> {
    let points = roc_points(y, p);
    let auc = mlops_domain::metrics::roc_auc(y, p);
    draw(path, (650, 650), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption(
                format!("ROC curve (test split), AUC {auc:.3}"),
                ("sans-serif", 22),
            )
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..1.0, 0.0..1.0)?;
        chart
            .configure_mesh()
            .x_desc("false positive rate")
            .y_desc("true positive rate")
            .draw()?;
        chart.draw_series(LineSeries::new(points, BLUE.stroke_width(2)))?;
        chart.draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], BLACK.mix(0.4)))?;
        Ok(())
    })
}

fn plot_calibration(path: &Path, y: &[f64], p: &[f64]) -> Result<(), TrainError> {
    let bins = 10;
    let mut sum_p = vec![0.0; bins];
    let mut sum_y = vec![0.0; bins];
    let mut count = vec![0usize; bins];
    for (t, q) in y.iter().zip(p) {
        let b = ((q * bins as f64) as usize).min(bins - 1);
        sum_p[b] += q;
        sum_y[b] += t;
        count[b] += 1;
    }
    let points: Vec<(f64, f64)> = (0..bins)
        .filter(|&b| count[b] > 0)
        .map(|b| (sum_p[b] / count[b] as f64, sum_y[b] / count[b] as f64))
        .collect();
    draw(path, (650, 650), |root| {
        let mut chart = ChartBuilder::on(root)
            .caption("Calibration (test split, 10 bins)", ("sans-serif", 22))
            .margin(15)
            .x_label_area_size(40)
            .y_label_area_size(50)
            .build_cartesian_2d(0.0..1.0, 0.0..1.0)?;
        chart
            .configure_mesh()
            .x_desc("mean predicted probability")
            .y_desc("observed positive rate")
            .draw()?;
        chart.draw_series(LineSeries::new(points.clone(), BLUE.stroke_width(2)))?;
        chart.draw_series(points.iter().map(|pt| Circle::new(*pt, 4, BLUE.filled())))?;
        chart.draw_series(LineSeries::new([(0.0, 0.0), (1.0, 1.0)], BLACK.mix(0.4)))?;
        Ok(())
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn roc_points_run_from_origin_to_one() {
        let pts = roc_points(&[1.0, 0.0, 1.0, 0.0], &[0.9, 0.8, 0.7, 0.1]);
        assert_eq!(pts.first(), Some(&(0.0, 0.0)));
        assert_eq!(pts.last(), Some(&(1.0, 1.0)));
        assert_eq!(pts[1], (0.0, 0.5));
    }
}
