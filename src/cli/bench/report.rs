//! `cairn bench report`: the JSON results of several runs (`--json`, e.g. from
//! `scripts/bench-compare`) → a Markdown section with medians, min–max over rounds and the
//! Cairn/peer ratios, and SVG plots (throughput against clients; latency percentiles).

use super::Report;
use anyhow::{bail, Context};
use plotters::prelude::*;
use std::collections::BTreeMap;
use std::fmt::Write as _;
use std::path::{Path, PathBuf};

#[derive(Debug, Clone, clap::Args)]
pub struct ReportArgs {
    /// Directory of result files (`*.json`, as written by `--json`).
    #[arg(long)]
    pub results: PathBuf,
    /// Where to write `compare.md` and the plots.
    #[arg(long)]
    pub out: PathBuf,
    /// Link prefix of the plots in the Markdown (relative to where it is read).
    #[arg(long, default_value = "")]
    pub link_prefix: String,
}

fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return 0.0;
    }
    v.sort_by(|a, b| a.total_cmp(b));
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

fn min_max(v: &[f64]) -> (f64, f64) {
    let min = v.iter().cloned().fold(f64::INFINITY, f64::min);
    let max = v.iter().cloned().fold(f64::NEG_INFINITY, f64::max);
    (min, max)
}

/// Runs of one workload: system → clients → rounds.
type Runs = BTreeMap<String, BTreeMap<usize, Vec<Report>>>;

fn load(dir: &Path) -> anyhow::Result<BTreeMap<String, Runs>> {
    let mut by_workload: BTreeMap<String, Runs> = BTreeMap::new();
    let entries = std::fs::read_dir(dir).with_context(|| format!("reading {}", dir.display()))?;
    for entry in entries {
        let path = entry?.path();
        if path.extension().and_then(|e| e.to_str()) != Some("json") {
            continue;
        }
        let text = std::fs::read_to_string(&path)?;
        let r: Report =
            serde_json::from_str(&text).with_context(|| format!("parsing {}", path.display()))?;
        by_workload
            .entry(r.workload.clone())
            .or_default()
            .entry(r.system.clone())
            .or_default()
            .entry(r.clients)
            .or_default()
            .push(r);
    }
    if by_workload.is_empty() {
        bail!("no result files in {}", dir.display());
    }
    Ok(by_workload)
}

const COLORS: [RGBColor; 4] = [
    RGBColor(31, 119, 180),
    RGBColor(255, 127, 14),
    RGBColor(44, 160, 44),
    RGBColor(214, 39, 40),
];

fn plot_throughput(path: &Path, workload: &str, runs: &Runs) -> anyhow::Result<()> {
    let clients: Vec<usize> = runs
        .values()
        .flat_map(|c| c.keys().cloned())
        .collect::<std::collections::BTreeSet<_>>()
        .into_iter()
        .collect();
    let top = runs
        .values()
        .flat_map(|c| {
            c.values()
                .map(|rs| median(rs.iter().map(|r| r.ops_per_s).collect()))
        })
        .fold(1.0, f64::max);
    let root = SVGBackend::new(path, (640, 400)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{workload}: throughput (median of rounds)"),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(
            0f64..(clients.len() as f64 - 0.5).max(0.5),
            0f64..top * 1.15,
        )?;
    chart
        .configure_mesh()
        .x_labels(clients.len().max(1))
        .x_label_formatter(&|x| {
            clients
                .get(x.round() as usize)
                .map(|c| c.to_string())
                .unwrap_or_default()
        })
        .x_desc("clients")
        .y_desc("ops/s")
        .draw()?;
    for (i, (system, by_clients)) in runs.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<(f64, f64)> = clients
            .iter()
            .enumerate()
            .filter_map(|(x, c)| {
                by_clients
                    .get(c)
                    .map(|rs| (x as f64, median(rs.iter().map(|r| r.ops_per_s).collect())))
            })
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(system.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart.draw_series(points.iter().map(|p| Circle::new(*p, 4, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

fn plot_latency(path: &Path, workload: &str, runs: &Runs, clients: usize) -> anyhow::Result<()> {
    let labels = ["p50", "p90", "p99", "p99.9"];
    let series: Vec<(String, Vec<f64>)> = runs
        .iter()
        .filter_map(|(system, by_clients)| {
            let rs = by_clients.get(&clients)?;
            let m = |f: fn(&Report) -> f64| median(rs.iter().map(f).collect());
            Some((
                system.clone(),
                vec![
                    m(|r| r.p50_ms),
                    m(|r| r.p90_ms),
                    m(|r| r.p99_ms),
                    m(|r| r.p999_ms),
                ],
            ))
        })
        .collect();
    let top = series
        .iter()
        .flat_map(|(_, v)| v.iter().cloned())
        .fold(0.01, f64::max);
    let root = SVGBackend::new(path, (640, 400)).into_drawing_area();
    root.fill(&WHITE)?;
    let mut chart = ChartBuilder::on(&root)
        .caption(
            format!("{workload}: latency at {clients} clients (median of rounds)"),
            ("sans-serif", 20),
        )
        .margin(15)
        .x_label_area_size(40)
        .y_label_area_size(60)
        .build_cartesian_2d(0f64..3.5, (0.01f64..top * 2.0).log_scale())?;
    chart
        .configure_mesh()
        .x_labels(4)
        .x_label_formatter(&|x| labels.get(x.round() as usize).unwrap_or(&"").to_string())
        .x_desc("percentile")
        .y_desc("ms (log)")
        .draw()?;
    for (i, (system, values)) in series.iter().enumerate() {
        let color = COLORS[i % COLORS.len()];
        let points: Vec<(f64, f64)> = values
            .iter()
            .enumerate()
            .map(|(x, v)| (x as f64, v.max(0.01)))
            .collect();
        chart
            .draw_series(LineSeries::new(points.clone(), color.stroke_width(2)))?
            .label(system.clone())
            .legend(move |(x, y)| PathElement::new(vec![(x, y), (x + 20, y)], color));
        chart.draw_series(points.iter().map(|p| Circle::new(*p, 4, color.filled())))?;
    }
    chart
        .configure_series_labels()
        .background_style(WHITE.mix(0.8))
        .border_style(BLACK)
        .draw()?;
    root.present()?;
    Ok(())
}

/// Write `compare.md` and the plots; the Markdown text.
pub fn report(args: &ReportArgs) -> anyhow::Result<String> {
    let by_workload = load(&args.results)?;
    std::fs::create_dir_all(&args.out)?;
    let mut md = String::new();
    for (workload, runs) in &by_workload {
        let params = runs
            .values()
            .flat_map(|c| c.values())
            .flatten()
            .map(|r| r.params.clone())
            .next()
            .unwrap_or_default();
        let rounds = runs
            .values()
            .flat_map(|c| c.values().map(Vec::len))
            .max()
            .unwrap_or(0);
        writeln!(md, "### `{workload}` ({params}), {rounds} rounds\n")?;
        writeln!(
            md,
            "| clients | system | ops/s median | min–max | p50 ms | p99 ms | p99.9 ms | errors | server CPU s (per node) | peak MiB (per node) | client CPU s |"
        )?;
        writeln!(md, "|---:|---|---:|---:|---:|---:|---:|---:|---|---|---:|")?;
        let clients: std::collections::BTreeSet<usize> =
            runs.values().flat_map(|c| c.keys().cloned()).collect();
        for c in &clients {
            for (system, by_clients) in runs {
                let Some(rs) = by_clients.get(c) else {
                    continue;
                };
                let tput: Vec<f64> = rs.iter().map(|r| r.ops_per_s).collect();
                let (lo, hi) = min_max(&tput);
                let m = |f: fn(&Report) -> f64| median(rs.iter().map(f).collect());
                let nodes = rs[0].servers.len();
                let per_node = |f: fn(&super::ServerUsage) -> f64| -> String {
                    (0..nodes)
                        .map(|i| {
                            let v: Vec<f64> =
                                rs.iter().filter_map(|r| r.servers.get(i).map(f)).collect();
                            format!("{:.1}", median(v))
                        })
                        .collect::<Vec<_>>()
                        .join(" / ")
                };
                writeln!(
                    md,
                    "| {c} | {system} | {:.0} | {lo:.0}–{hi:.0} | {:.2} | {:.2} | {:.2} | {} | {} | {} | {:.1} |",
                    median(tput.clone()),
                    m(|r| r.p50_ms),
                    m(|r| r.p99_ms),
                    m(|r| r.p999_ms),
                    rs.iter().map(|r| r.errors).sum::<u64>(),
                    per_node(|s| s.cpu_s),
                    per_node(|s| s.peak_rss_mib),
                    m(|r| r.client_cpu_s),
                )?;
            }
        }
        // Cairn against each peer, per client count.
        if let Some(cairn) = runs.get("cairn") {
            writeln!(md)?;
            for (peer, by_clients) in runs.iter().filter(|(s, _)| s.as_str() != "cairn") {
                let ratios: Vec<String> = clients
                    .iter()
                    .filter_map(|c| {
                        let a = median(cairn.get(c)?.iter().map(|r| r.ops_per_s).collect());
                        let b = median(by_clients.get(c)?.iter().map(|r| r.ops_per_s).collect());
                        (b > 0.0).then(|| format!("{:.2} at {c}", a / b))
                    })
                    .collect();
                writeln!(md, "Cairn/{peer} throughput: {}.  ", ratios.join(", "))?;
            }
        }
        let tput = format!("{workload}-throughput.svg");
        plot_throughput(&args.out.join(&tput), workload, runs)?;
        let mid = clients
            .iter()
            .cloned()
            .find(|c| *c >= 16)
            .or_else(|| clients.iter().next_back().cloned())
            .unwrap_or(1);
        let lat = format!("{workload}-latency.svg");
        plot_latency(&args.out.join(&lat), workload, runs, mid)?;
        writeln!(
            md,
            "\n![{workload} throughput]({p}{tput}) ![{workload} latency]({p}{lat})\n",
            p = args.link_prefix
        )?;
    }
    std::fs::write(args.out.join("compare.md"), &md)?;
    Ok(md)
}
