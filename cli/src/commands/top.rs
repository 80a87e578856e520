//! `nexus top`: a terminal view of a running system from its `/metrics`, refreshed every
//! second — rates and latencies of the last second (from the `nexus_live_*` gauges of the
//! per-second ring), projection and relay lags, dead letters — like `nats top` or `kubectl top`.
//!
//! `--json` prints one sample and exits; `--once` prints one screen as plain text. Each scrape
//! also reads the ring's peaks since the previous scrape, so run it beside Prometheus knowing
//! that both share the "since the previous scrape" window of the `_peak` gauges.

use std::collections::BTreeMap;
use std::time::Duration;

use clap::Args;
use ratatui::Frame;
use ratatui::layout::{Constraint, Layout};
use ratatui::style::{Modifier, Style};
use ratatui::text::Line;
use ratatui::widgets::{Block, Paragraph, Row, Table};
use serde::Serialize;

use super::Outcome;
use crate::http::{self, Http};
use crate::output;

/// Longest wait for one scrape.
const SCRAPE_TIMEOUT: Duration = Duration::from_secs(5);

#[derive(Debug, Args)]
pub(crate) struct TopArgs {
    /// A service of the system (its `/metrics` is read), e.g. the command service of `nexus up`.
    #[arg(default_value = "http://127.0.0.1:8080")]
    url: String,
    /// Print one sample as JSON and exit.
    #[arg(long, conflicts_with = "once")]
    json: bool,
    /// Print one screen as plain text and exit.
    #[arg(long)]
    once: bool,
    /// Seconds between refreshes.
    #[arg(long, default_value_t = 1, value_parser = clap::value_parser!(u64).range(1..=60))]
    interval: u64,
}

pub(crate) fn run(args: TopArgs) -> anyhow::Result<Outcome> {
    let runtime = super::tokio_runtime()?;
    let url = http::url(&args.url, &["metrics"], &[])?;
    let client = Http::new(SCRAPE_TIMEOUT)?;
    let scrape = || runtime.block_on(scrape(&client, &url));
    if args.json {
        output::json(&scrape()?)?;
        return Ok(Outcome::Clean);
    }
    if args.once {
        let sample = scrape()?;
        let width = 100;
        let height = 17 + sample.projections.len() as u16 + sample.relays.len() as u16;
        let backend = ratatui::backend::TestBackend::new(width, height);
        let mut terminal = ratatui::Terminal::new(backend)?;
        terminal.draw(|frame| draw(frame, &args.url, Ok(&sample)))?;
        let buffer = terminal.backend().buffer();
        let mut text = String::new();
        for y in 0..buffer.area.height {
            let line: String = (0..buffer.area.width)
                .map(|x| buffer[(x, y)].symbol())
                .collect();
            text.push_str(line.trim_end());
            text.push('\n');
        }
        output::line(text.trim_end())?;
        return Ok(Outcome::Clean);
    }
    let mut terminal = ratatui::init();
    let result = (|| -> anyhow::Result<()> {
        loop {
            let sample = scrape();
            terminal.draw(|frame| draw(frame, &args.url, sample.as_ref()))?;
            let until = std::time::Instant::now() + Duration::from_secs(args.interval);
            while let Some(left) = until.checked_duration_since(std::time::Instant::now()) {
                if ratatui::crossterm::event::poll(left)?
                    && let ratatui::crossterm::event::Event::Key(key) =
                        ratatui::crossterm::event::read()?
                {
                    use ratatui::crossterm::event::{KeyCode, KeyModifiers};
                    let ctrl_c = key.code == KeyCode::Char('c')
                        && key.modifiers.contains(KeyModifiers::CONTROL);
                    if ctrl_c || matches!(key.code, KeyCode::Char('q') | KeyCode::Esc) {
                        return Ok(());
                    }
                }
            }
        }
    })();
    ratatui::restore();
    result?;
    Ok(Outcome::Clean)
}

/// One reading of a system's metrics.
#[derive(Debug, Default, Serialize)]
pub(crate) struct Sample {
    /// Counts in the last complete second, by series (commands, command_errors, …).
    per_second: BTreeMap<String, f64>,
    /// The highest one-second count since the previous scrape, by series.
    peak_per_second: BTreeMap<String, f64>,
    /// Latency quantiles (0.5, 0.95, 0.99) of the last complete second, in seconds.
    latency_seconds: BTreeMap<String, BTreeMap<String, f64>>,
    /// Each projection's lag and dead letters.
    projections: Vec<Consumer>,
    /// Each relay's lag.
    relays: Vec<Consumer>,
    /// Totals since the process started.
    totals: BTreeMap<String, f64>,
}

/// A consumer's position against the log.
#[derive(Debug, Default, Serialize)]
struct Consumer {
    name: String,
    lag_seconds: f64,
    #[serde(skip_serializing_if = "Option::is_none")]
    lag_events: Option<f64>,
    #[serde(skip_serializing_if = "Option::is_none")]
    dead_letters: Option<f64>,
}

async fn scrape(client: &Http, url: &reqwest::Url) -> anyhow::Result<Sample> {
    let answer = client.send(reqwest::Method::GET, url, None).await?;
    anyhow::ensure!(
        answer.status.is_success(),
        "{} answered {}",
        http::shown(url),
        answer.status
    );
    Ok(sample(&String::from_utf8_lossy(&answer.body)))
}

/// One series of a Prometheus text exposition.
#[derive(Debug, PartialEq)]
struct Series {
    name: String,
    labels: BTreeMap<String, String>,
    value: f64,
}

/// The series of a Prometheus text exposition (comments skipped, malformed lines ignored).
fn parse(text: &str) -> Vec<Series> {
    text.lines()
        .filter(|line| !line.starts_with('#') && !line.trim().is_empty())
        .filter_map(parse_line)
        .collect()
}

fn parse_line(line: &str) -> Option<Series> {
    let (head, value) = match line.find('{') {
        Some(_) => {
            let close = line.rfind('}')?;
            (&line[..=close], line[close + 1..].trim())
        }
        None => line.split_once(' ')?,
    };
    let value = value.split_whitespace().next()?;
    let value = match value {
        "+Inf" => f64::INFINITY,
        "-Inf" => f64::NEG_INFINITY,
        other => other.parse().ok()?,
    };
    let (name, labels) = match head.split_once('{') {
        Some((name, rest)) => (name, parse_labels(rest.strip_suffix('}')?)?),
        None => (head.trim(), BTreeMap::new()),
    };
    Some(Series {
        name: name.to_owned(),
        labels,
        value,
    })
}

fn parse_labels(text: &str) -> Option<BTreeMap<String, String>> {
    let mut labels = BTreeMap::new();
    let mut rest = text.trim_start_matches(',');
    while !rest.is_empty() {
        let (key, after) = rest.split_once("=\"")?;
        let mut value = String::new();
        let mut chars = after.char_indices();
        let end = loop {
            let (i, c) = chars.next()?;
            match c {
                '\\' => match chars.next()?.1 {
                    'n' => value.push('\n'),
                    other => value.push(other),
                },
                '"' => break i,
                other => value.push(other),
            }
        };
        labels.insert(key.trim().to_owned(), value);
        rest = after[end + 1..].trim_start_matches(',');
    }
    Some(labels)
}

/// What `nexus top` shows, from one exposition.
fn sample(text: &str) -> Sample {
    let mut sample = Sample::default();
    let mut projections: BTreeMap<String, Consumer> = BTreeMap::new();
    let mut relays: BTreeMap<String, Consumer> = BTreeMap::new();
    let label = |s: &Series, key: &str| s.labels.get(key).cloned().unwrap_or_default();
    for s in parse(text) {
        match s.name.as_str() {
            "nexus_live_per_second" => {
                sample.per_second.insert(label(&s, "series"), s.value);
            }
            "nexus_live_per_second_peak" => {
                sample.peak_per_second.insert(label(&s, "series"), s.value);
            }
            "nexus_live_latency_seconds" => {
                sample
                    .latency_seconds
                    .entry(label(&s, "series"))
                    .or_default()
                    .insert(
                        format!("p{}", quantile_name(&label(&s, "quantile"))),
                        s.value,
                    );
            }
            "nexus_projection_lag_seconds" => {
                let p = projections.entry(label(&s, "projection")).or_default();
                p.lag_seconds = s.value;
            }
            "nexus_projection_lag_events" => {
                projections
                    .entry(label(&s, "projection"))
                    .or_default()
                    .lag_events = Some(s.value);
            }
            "nexus_projection_dead_letters" => {
                projections
                    .entry(label(&s, "projection"))
                    .or_default()
                    .dead_letters = Some(s.value);
            }
            "nexus_relay_lag_seconds" => {
                relays.entry(label(&s, "relay")).or_default().lag_seconds = s.value;
            }
            "nexus_commands_total"
            | "nexus_events_appended_total"
            | "nexus_projection_events_total"
            | "nexus_queries_total"
            | "nexus_projection_dead_letters_total"
            | "nexus_relay_published_total" => {
                *sample.totals.entry(s.name.clone()).or_default() += s.value;
            }
            _ => {}
        }
    }
    for (name, mut consumer) in projections {
        consumer.name = name;
        sample.projections.push(consumer);
    }
    for (name, mut consumer) in relays {
        consumer.name = name;
        sample.relays.push(consumer);
    }
    sample
}

fn quantile_name(q: &str) -> String {
    match q {
        "0.5" => "50".to_owned(),
        "0.95" => "95".to_owned(),
        "0.99" => "99".to_owned(),
        other => other.to_owned(),
    }
}

fn seconds(value: f64) -> String {
    if value == 0.0 {
        "0".to_owned()
    } else if value < 0.001 {
        format!("{:.0} µs", value * 1e6)
    } else if value < 1.0 {
        format!("{:.1} ms", value * 1e3)
    } else {
        format!("{value:.2} s")
    }
}

fn draw(frame: &mut Frame<'_>, url: &str, sample: Result<&Sample, &anyhow::Error>) {
    let bold = Style::default().add_modifier(Modifier::BOLD);
    let sample = match sample {
        Ok(sample) => sample,
        Err(err) => {
            frame.render_widget(
                Paragraph::new(format!(
                    "nexus top {url}\n\ncannot read the metrics: {err:#}"
                ))
                .block(Block::bordered().title("nexus top")),
                frame.area(),
            );
            return;
        }
    };
    let consumers = sample.projections.len() + sample.relays.len();
    let [header, rates, latency, lags] = Layout::vertical([
        Constraint::Length(1),
        Constraint::Length(8),
        Constraint::Length(5),
        Constraint::Length(consumers as u16 + 3),
    ])
    .areas(frame.area());
    frame.render_widget(
        Line::styled(
            format!(
                "nexus top {url}  ·  {}  ·  q quits",
                chrono::Utc::now().format("%H:%M:%S")
            ),
            bold,
        ),
        header,
    );
    let rows = [
        "commands",
        "command_errors",
        "events_appended",
        "events_projected",
        "queries",
    ]
    .into_iter()
    .map(|series| {
        Row::new([
            series.replace('_', " "),
            format!(
                "{:.0}",
                sample.per_second.get(series).copied().unwrap_or(0.0)
            ),
            format!(
                "{:.0}",
                sample.peak_per_second.get(series).copied().unwrap_or(0.0)
            ),
        ])
    });
    frame.render_widget(
        Table::new(
            rows,
            [
                Constraint::Length(18),
                Constraint::Length(12),
                Constraint::Length(12),
            ],
        )
        .header(Row::new(["per second", "last second", "peak"]).style(bold))
        .block(Block::bordered().title("rates")),
        rates,
    );
    let rows = ["command", "query"].into_iter().map(|series| {
        let q = sample.latency_seconds.get(series);
        let get = |k: &str| seconds(q.and_then(|q| q.get(k)).copied().unwrap_or(0.0));
        Row::new([series.to_owned(), get("p50"), get("p95"), get("p99")])
    });
    frame.render_widget(
        Table::new(
            rows,
            [
                Constraint::Length(22),
                Constraint::Length(12),
                Constraint::Length(12),
                Constraint::Length(12),
            ],
        )
        .header(Row::new(["latency (last second)", "p50", "p95", "p99"]).style(bold))
        .block(Block::bordered().title("latency")),
        latency,
    );
    let rows = sample
        .projections
        .iter()
        .map(|p| ("projection", p))
        .chain(sample.relays.iter().map(|r| ("relay", r)))
        .map(|(kind, c)| {
            Row::new([
                format!("{kind} {}", c.name),
                seconds(c.lag_seconds),
                c.lag_events.map_or_else(String::new, |e| format!("{e:.0}")),
                c.dead_letters
                    .map_or_else(String::new, |d| format!("{d:.0}")),
            ])
        });
    frame.render_widget(
        Table::new(
            rows,
            [
                Constraint::Length(30),
                Constraint::Length(12),
                Constraint::Length(12),
                Constraint::Length(14),
            ],
        )
        .header(Row::new(["consumer", "lag", "lag events", "dead letters"]).style(bold))
        .block(Block::bordered().title("consumers")),
        lags,
    );
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_series_with_escaped_labels_and_special_values() {
        let series = parse(
            "# TYPE x gauge\nx 1\ny{a=\"b\\\"c\",d=\"e\"} 2.5\nz_bucket{le=\"+Inf\"} +Inf\nbad line here\n",
        );
        assert_eq!(series.len(), 3, "{series:?}");
        assert_eq!(series[1].labels["a"], "b\"c");
        assert_eq!(series[1].labels["d"], "e");
        assert_eq!(series[1].value, 2.5);
        assert!(series[2].value.is_infinite());
    }

    #[test]
    fn a_sample_reads_the_live_gauges_lags_and_totals() {
        let text = "nexus_live_per_second{series=\"commands\"} 42\n\
                    nexus_live_per_second_peak{series=\"commands\"} 50\n\
                    nexus_live_latency_seconds{series=\"command\",quantile=\"0.99\"} 0.004\n\
                    nexus_projection_lag_seconds{projection=\"orders\"} 1.5\n\
                    nexus_projection_dead_letters{projection=\"orders\"} 3\n\
                    nexus_relay_lag_seconds{relay=\"up\"} 0\n\
                    nexus_commands_total{aggregate=\"order\",outcome=\"ok\"} 7\n\
                    nexus_commands_total{aggregate=\"order\",outcome=\"rejected\"} 1\n";
        let sample = sample(text);
        assert_eq!(sample.per_second["commands"], 42.0);
        assert_eq!(sample.peak_per_second["commands"], 50.0);
        assert_eq!(sample.latency_seconds["command"]["p99"], 0.004);
        assert_eq!(sample.projections[0].name, "orders");
        assert_eq!(sample.projections[0].dead_letters, Some(3.0));
        assert_eq!(sample.relays[0].name, "up");
        assert_eq!(sample.totals["nexus_commands_total"], 8.0);
    }
}
