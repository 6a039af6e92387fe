//! The monitor's report as one self-contained HTML page: the verdicts, alerts, live quality and
//! A/B verdicts as tables, and per feature a bar chart of the reference's distribution beside
//! the window's (inline SVG; no script, no external asset), so it opens from S3 or disk anywhere.

use std::fmt::Write;

use mlops_domain::drift::Histogram;

use crate::{MonitorReport, VersionDrift};

/// Escapes text for HTML.
fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

/// The page.
pub fn render(report: &MonitorReport) -> String {
    let mut out = String::with_capacity(64 * 1024);
    let title = format!(
        "{} monitoring, {} to {}",
        report.model,
        report.from.format("%Y-%m-%d %H:%M"),
        report.until.format("%Y-%m-%d %H:%M UTC")
    );
    let _ = write!(
        out,
        "<!doctype html><html lang=\"en\"><head><meta charset=\"utf-8\">\
         <meta name=\"viewport\" content=\"width=device-width, initial-scale=1\">\
         <title>{t}</title><style>{STYLE}</style></head><body><h1>{t}</h1>\
         <p>{} logged predictions, {} with labels{}.</p>",
        report.records,
        report.labelled,
        if report.unreadable > 0 {
            format!(", {} unreadable lines skipped", report.unreadable)
        } else {
            String::new()
        },
        t = esc(&title)
    );
    if !report.alerts.is_empty() {
        out.push_str("<h2>Alerts</h2><ul class=\"alerts\">");
        for a in &report.alerts {
            let _ = write!(out, "<li>{}</li>", esc(&a.summary));
        }
        out.push_str("</ul>");
    }
    if !report.ab.is_empty() {
        out.push_str("<h2>A/B verdicts</h2><table><tr><th>challenger</th><th>champion</th><th>rows</th><th>mean loss</th><th>decision</th><th>always-valid p</th><th>rows still needed</th></tr>");
        for ab in &report.ab {
            let v = &ab.verdict;
            let _ = write!(
                out,
                "<tr><td>{}</td><td>{}</td><td>{} / {}</td><td>{:.4} / {:.4} ({})</td><td>{:?}</td><td>{:.4}</td><td>{}</td></tr>",
                esc(&ab.challenger),
                esc(&ab.champion),
                ab.rows.1,
                ab.rows.0,
                ab.mean_loss.1,
                ab.mean_loss.0,
                esc(&ab.loss),
                v.decision,
                v.p_value,
                v.rows_still_needed.map_or("-".into(), |n| n.to_string())
            );
        }
        out.push_str("</table>");
    }
    for v in &report.versions {
        version(&mut out, v);
    }
    out.push_str("</body></html>\n");
    out
}

fn version(out: &mut String, v: &VersionDrift) {
    let d = &v.drift;
    let _ = write!(
        out,
        "<h2>Version {}</h2><p>{} rows; {} of {} features drifted ({:.0} %; data-set drift at {:.0} %): <b>{}</b>.</p>",
        v.version,
        d.rows,
        d.drifted_features,
        d.features.len(),
        d.drifted_share * 100.0,
        d.drift_share * 100.0,
        if d.drifted { "drift" } else { "no drift" }
    );
    if let Some(a) = &v.attribution {
        let names = |top: &[(String, f64)]| {
            top.iter()
                .map(|(f, x)| format!("{} ({x:.3})", esc(f)))
                .collect::<Vec<_>>()
                .join(", ")
        };
        let _ = write!(
            out,
            "<p>Feature attributions: nDCG {:.3} against training (drift below {}) over {} explained rows{}.<br>Largest mean |contribution| in training: {}<br>In the window: {}</p>",
            a.ndcg,
            a.threshold,
            a.rows,
            if a.drifted { ", <b>drifted</b>" } else { "" },
            names(&a.reference_top),
            names(&a.current_top)
        );
    }
    if v.quality
        .values()
        .any(|q| !q.metrics.is_empty() || !q.estimated.is_empty())
    {
        out.push_str("<table><tr><th>variant</th><th>labelled / rows</th><th>metric</th><th>value</th><th>95 % interval</th><th>test split</th></tr>");
        for (variant, q) in &v.quality {
            for (name, e) in &q.metrics {
                let _ = write!(
                    out,
                    "<tr><td>{}</td><td>{} / {}</td><td>{}</td><td>{:.4}</td><td>{:.4} – {:.4}</td><td>{}</td></tr>",
                    esc(variant),
                    q.labelled,
                    q.rows,
                    esc(name),
                    e.value,
                    e.low,
                    e.high,
                    v.test_metrics
                        .get(name)
                        .map_or("-".into(), |t| format!("{t:.4}"))
                );
            }
            for (name, e) in &q.estimated {
                let _ = write!(
                    out,
                    "<tr><td>{}</td><td>– / {}</td><td>estimated {}</td><td>{e:.4}</td><td>-</td><td>{}</td></tr>",
                    esc(variant),
                    q.rows,
                    esc(name),
                    v.test_metrics
                        .get(name)
                        .map_or("-".into(), |t| format!("{t:.4}"))
                );
            }
        }
        out.push_str("</table>");
    }
    out.push_str("<table><tr><th>feature</th><th>test</th><th>score</th><th>threshold</th><th>drifted</th><th>PSI</th><th>missing</th><th>outside</th></tr>");
    for f in d.features.iter().chain(&d.prediction) {
        let _ = write!(
            out,
            "<tr class=\"{}\"><td>{}</td><td>{:?}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{:.1} %</td><td>{:.1} %</td></tr>",
            if f.drifted { "drifted" } else { "" },
            esc(&f.feature),
            f.test,
            f.score.map_or("-".into(), |s| format!("{s:.4}")),
            f.threshold,
            if f.drifted { "yes" } else { "no" },
            f.psi.map_or("-".into(), |p| format!("{p:.3}")),
            f.missing_share * 100.0,
            f.out_of_range_share.or(f.unseen_share).unwrap_or(0.0) * 100.0
        );
    }
    out.push_str("</table><p class=\"legend\"><span class=\"ref\">■</span> training reference <span class=\"cur\">■</span> this window (share of present values per bar)</p><div class=\"charts\">");
    for h in &v.histograms {
        let drifted = d
            .features
            .iter()
            .chain(&d.prediction)
            .any(|f| f.feature == h.feature && f.drifted);
        chart(out, h, drifted);
    }
    out.push_str("</div>");
}

/// Reference (grey) and window (blue) shares per bar, as an SVG.
fn chart(out: &mut String, h: &Histogram, drifted: bool) {
    let (w, ht, pad) = (320.0, 140.0, 18.0);
    let n = h.labels.len().max(1) as f64;
    let top = h
        .reference
        .iter()
        .chain(&h.current)
        .copied()
        .fold(0.0f64, f64::max)
        .max(1e-9);
    let slot = (w - 2.0 * pad) / n;
    let _ = write!(
        out,
        "<figure><figcaption>{}{}</figcaption><svg viewBox=\"0 0 {w} {ht}\" role=\"img\" aria-label=\"{} reference and window distributions\">",
        esc(&h.feature),
        if drifted { " <b>(drifted)</b>" } else { "" },
        esc(&h.feature)
    );
    for (i, label) in h.labels.iter().enumerate() {
        let x = pad + i as f64 * slot;
        let bar = |share: f64| (ht - 2.0 * pad) * share / top;
        let (r, c) = (bar(h.reference[i]), bar(h.current[i]));
        let _ = write!(
            out,
            "<rect class=\"ref\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{r:.1}\"><title>{} reference {:.1} %</title></rect>\
             <rect class=\"cur\" x=\"{:.1}\" y=\"{:.1}\" width=\"{:.1}\" height=\"{c:.1}\"><title>{} window {:.1} %</title></rect>",
            x,
            ht - pad - r,
            slot * 0.45,
            esc(label),
            h.reference[i] * 100.0,
            x + slot * 0.45,
            ht - pad - c,
            slot * 0.45,
            esc(label),
            h.current[i] * 100.0
        );
    }
    let _ = write!(
        out,
        "<text x=\"{pad}\" y=\"{:.0}\">{}</text><text x=\"{:.0}\" y=\"{:.0}\" text-anchor=\"end\">{}</text></svg></figure>",
        ht - 4.0,
        esc(h.labels.first().map_or("", String::as_str)),
        w - pad,
        ht - 4.0,
        esc(h.labels.last().map_or("", String::as_str))
    );
}

const STYLE: &str = "body{font:14px/1.4 system-ui,sans-serif;margin:1rem;max-width:1100px}\
table{border-collapse:collapse;margin:.5rem 0}td,th{border:1px solid #ccc;padding:.2rem .5rem;text-align:left}\
tr.drifted{background:#fde8e8}.alerts li{color:#a00}.charts{display:flex;flex-wrap:wrap;gap:.5rem}\
figure{margin:0;width:320px;max-width:100%}svg{width:100%;height:auto;background:#fafafa}\
rect.ref{fill:#9aa0a6}rect.cur{fill:#1a73e8}.legend .ref{color:#9aa0a6}.legend .cur{color:#1a73e8}text{font-size:9px;fill:#444}";

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn text_is_escaped() {
        assert_eq!(
            esc("<a href=\"x\">&</a>"),
            "&lt;a href=&quot;x&quot;&gt;&amp;&lt;/a&gt;"
        );
    }
}
