//! What the tool prints: tables aligned for a terminal, times as ages ("3m
//! ago"); or, with `--json`, one JSON object per line, times as RFC 3339.

use std::io::Write;
use std::time::{Duration, SystemTime};

use serde::Serialize;
use tcc::Phase;
use tcc::admin::{ChangeJson, PhaseJson, SummaryJson, TransactionJson};

use crate::orphans::Orphan;

/// Writes a line to stdout; a closed stdout (`tcc list | head -1`) ends
/// the output quietly rather than panic, as `println!` would.
macro_rules! say {
    () => {
        put!("\n")
    };
    ($($arg:tt)*) => {
        put!("{}\n", format_args!($($arg)*))
    };
}

/// [`say!`] without the newline.
macro_rules! put {
    ($($arg:tt)*) => {{
        use std::io::Write as _;
        let _ = write!(std::io::stdout().lock(), $($arg)*);
    }};
}

/// The longest text a table cell shows; `--json` has all of it.
const CELL: usize = 72;

/// Where the commands print.
pub struct Out {
    json: bool,
    now: SystemTime,
}

impl Out {
    pub fn new(json: bool) -> Self {
        Out {
            json,
            now: SystemTime::now(),
        }
    }

    /// A remark for the person, on stderr.
    pub fn note(&mut self, line: &str) {
        let _ = writeln!(std::io::stderr(), "note: {line}");
    }

    pub fn transactions(&mut self, transactions: &[TransactionJson]) {
        if self.json {
            transactions.iter().for_each(json_line);
            return;
        }
        if transactions.is_empty() {
            say!("no transactions match");
            return;
        }
        let rows = transactions
            .iter()
            .map(|t| {
                vec![
                    t.id.clone(),
                    state(t),
                    self.age(t.started_at.as_deref()),
                    services(t),
                    attempts(t),
                    last_error(t),
                ]
            })
            .collect();
        put!(
            "{}",
            table(
                &["ID", "STATE", "AGE", "SERVICES", "ATTEMPTS", "LAST ERROR"],
                rows
            )
        );
    }

    pub fn transaction(&mut self, t: &TransactionJson) {
        if self.json {
            json_line(t);
            return;
        }
        say!("transaction {}", t.id);
        let mut facts = vec![("state", state(t))];
        let mut time = |label: &'static str, at: &Option<String>| {
            if let Some(at) = at {
                facts.push((label, format!("{} ({at})", self.age(Some(at)))));
            }
        };
        time("started", &t.started_at);
        time("decided", &t.decided_at);
        let ended = match t.status.as_str() {
            "needs_repair" => "gave up",
            _ => "finished",
        };
        time(ended, &t.ended_at);
        if let Some(resolution) = &t.resolution {
            facts.push((
                "resolved",
                format!("by {}: {}", clean(&resolution.by), clean(&resolution.note)),
            ));
        }
        if let Some(damage) = &t.damage {
            facts.push(("damage", clean(damage)));
        }
        let width = facts
            .iter()
            .map(|(label, _)| label.len())
            .max()
            .unwrap_or(0);
        for (label, value) in facts {
            say!("  {label:<width$}  {value}");
        }
        if !t.participants.is_empty() {
            say!();
            let rows = t
                .participants
                .iter()
                .map(|p| {
                    let mut row = vec![clean(&p.name), clean(&p.kind)];
                    for phase in [Phase::Try, Phase::Confirm, Phase::Cancel] {
                        row.push(phase_cell(p.phase(phase)));
                    }
                    row.push(p.data.as_deref().map_or_else(|| "(binary)".into(), cell));
                    row
                })
                .collect();
            let headers = ["SERVICE", "KIND", "TRY", "CONFIRM", "CANCEL", "DATA"];
            put!("{}", indent(&table(&headers, rows)));
        } else if t.status == "done" {
            say!("  (a finished transaction's outcome keeps no participants)");
        }
        if t.status == "needs_repair" {
            say!();
            say!(
                "  once its cause is fixed: tcc retry {id}; once repaired by hand: tcc resolve {id} --note TEXT",
                id = t.id
            );
        }
    }

    pub fn change(&mut self, change: &ChangeJson) {
        if self.json {
            json_line(change);
            return;
        }
        say!("{}", change.message);
        say!("now: {}", state(&change.transaction));
    }

    pub fn summary(&mut self, summary: &SummaryJson) {
        if self.json {
            json_line(summary);
            return;
        }
        let mut rows = vec![
            ("undecided", summary.undecided.to_string()),
            ("decided", summary.decided.to_string()),
            ("needs repair", summary.needs_repair.to_string()),
            ("unreadable", summary.unreadable.to_string()),
            ("done", format!("{} (outcomes kept)", summary.done)),
        ];
        let oldest = |oldest: &Option<tcc::admin::OldestJson>| match oldest {
            Some(oldest) => format!(
                "{}, begun {}",
                oldest.id,
                self.age(Some(&oldest.started_at))
            ),
            None => "none".into(),
        };
        rows.push(("oldest unfinished", oldest(&summary.oldest_unfinished)));
        rows.push(("oldest needs repair", oldest(&summary.oldest_needs_repair)));
        rows.push((
            "size",
            summary
                .bytes
                .map_or_else(|| "(in memory)".into(), human_bytes),
        ));
        let width = rows.iter().map(|(label, _)| label.len()).max().unwrap_or(0);
        for (label, value) in rows {
            say!("{label:<width$}  {value}");
        }
    }

    pub fn orphans(&mut self, orphans: &[Orphan], older_than: Duration) {
        if self.json {
            orphans.iter().for_each(json_line);
            return;
        }
        let age = humantime::format_duration(older_than);
        if orphans.is_empty() {
            say!("no reservation older than {age} is left without a transaction in the log");
            return;
        }
        let rows = orphans
            .iter()
            .map(|o| {
                vec![
                    cell(&o.transaction_id),
                    cell(&o.service),
                    o.state.to_owned(),
                    ago(Duration::from_secs(o.age_seconds)),
                    o.log.clone(),
                    o.advice.to_owned(),
                ]
            })
            .collect();
        put!(
            "{}",
            table(
                &[
                    "TRANSACTION",
                    "SERVICE",
                    "STATE",
                    "HELD FOR",
                    "THE LOG SAYS",
                    "WHAT TO DO"
                ],
                rows
            )
        );
        say!();
        say!(
            "{} reservation(s) held longer than {age} by transactions the log does not hold as unfinished: no coordinator will ever release them.",
            orphans.len()
        );
        say!(
            "See to each by hand in the participant's database (run the phase the advice names, as its Confirm or Cancel would), then set its barrier row to `confirmed` or `cancelled`."
        );
    }

    /// "3m ago" for an RFC 3339 time, "-" for none.
    fn age(&self, at: Option<&str>) -> String {
        let Some(at) = at.and_then(|at| humantime::parse_rfc3339(at).ok()) else {
            return "-".into();
        };
        ago(self.now.duration_since(at).unwrap_or_default())
    }
}

fn json_line<T: Serialize>(value: &T) {
    match serde_json::to_string(value) {
        Ok(line) => say!("{line}"),
        Err(error) => {
            let _ = writeln!(std::io::stderr(), "tcc: cannot print JSON: {error}");
        }
    }
}

/// An age as a person reads it: the largest unit only.
pub fn ago(age: Duration) -> String {
    let secs = age.as_secs();
    match secs {
        0..60 => format!("{secs}s ago"),
        60..3600 => format!("{}m ago", secs / 60),
        3600..86_400 => format!("{}h ago", secs / 3600),
        _ => format!("{}d ago", secs / 86_400),
    }
}

fn human_bytes(bytes: u64) -> String {
    const UNITS: [&str; 4] = ["KiB", "MiB", "GiB", "TiB"];
    if bytes < 1024 {
        return format!("{bytes} bytes");
    }
    let mut size = bytes as f64;
    let mut unit = "bytes";
    for next in UNITS {
        if size < 1024.0 {
            break;
        }
        size /= 1024.0;
        unit = next;
    }
    format!("{size:.1} {unit} ({bytes} bytes)")
}

/// Where a transaction stands, in words.
fn state(t: &TransactionJson) -> String {
    let decision = t
        .decision
        .map(|d| {
            format!(
                " ({})",
                if d == tcc::Decision::Confirm {
                    "confirm"
                } else {
                    "cancel"
                }
            )
        })
        .unwrap_or_default();
    match t.status.as_str() {
        "needs_repair" => format!("needs repair{decision}"),
        "done" if t.resolution.is_some() => format!("done{decision}, resolved by hand"),
        other => format!("{}{decision}", other.replace('_', " ")),
    }
}

fn services(t: &TransactionJson) -> String {
    if t.participants.is_empty() {
        return "-".into();
    }
    let names: Vec<&str> = t.participants.iter().map(|p| p.name.as_str()).collect();
    cell(&names.join(","))
}

/// The phase a transaction is in: Try until decided, then the one that
/// carries its decision out.
fn current_phase(t: &TransactionJson) -> Phase {
    match t.decision {
        None => Phase::Try,
        Some(tcc::Decision::Confirm) => Phase::Confirm,
        Some(tcc::Decision::Cancel) => Phase::Cancel,
    }
}

fn attempts(t: &TransactionJson) -> String {
    if t.participants.is_empty() {
        return "-".into();
    }
    // The most any participant made: the one stuck, for a transaction that
    // needs repair.
    let phase = current_phase(t);
    let most = t
        .participants
        .iter()
        .map(|p| p.phase(phase).attempts)
        .max()
        .unwrap_or(0);
    most.to_string()
}

fn last_error(t: &TransactionJson) -> String {
    if let Some(damage) = &t.damage {
        return cell(damage);
    }
    let phase = current_phase(t);
    t.participants
        .iter()
        .find_map(|p| {
            let progress = p.phase(phase);
            let error = progress
                .last_error
                .as_deref()
                .filter(|_| !progress.succeeded)?;
            Some(cell(&format!("{}: {error}", p.name)))
        })
        .unwrap_or_else(|| "-".into())
}

fn phase_cell(progress: &PhaseJson) -> String {
    let attempts = match progress.attempts {
        0 => String::new(),
        1 => " (1 attempt)".into(),
        n => format!(" ({n} attempts)"),
    };
    match (&progress.last_error, progress.succeeded) {
        (_, true) => format!("ok{attempts}"),
        (Some(error), false) => cell(&format!("failed{attempts}: {error}")),
        (None, false) if progress.attempts > 0 => format!("failed{attempts}"),
        (None, false) => "-".into(),
    }
}

/// Text for one line: control characters (a newline in an error) as spaces.
fn clean(text: &str) -> String {
    text.chars()
        .map(|c| if c.is_control() { ' ' } else { c })
        .collect()
}

/// Text for a table cell: one line, at most [`CELL`] characters.
fn cell(text: &str) -> String {
    let text = clean(text);
    if text.chars().count() <= CELL {
        return text;
    }
    let mut short: String = text.chars().take(CELL - 1).collect();
    short.push('…');
    short
}

/// `rows` under `headers`, each column as wide as its widest cell, two
/// spaces apart; the last column is not padded.
fn table(headers: &[&str], rows: Vec<Vec<String>>) -> String {
    let mut widths: Vec<usize> = headers.iter().map(|h| h.chars().count()).collect();
    for row in &rows {
        for (width, cell) in widths.iter_mut().zip(row) {
            *width = (*width).max(cell.chars().count());
        }
    }
    let mut out = String::new();
    let headers = headers.iter().map(|h| h.to_string()).collect();
    for row in std::iter::once(headers).chain(rows) {
        let last = row.len().saturating_sub(1);
        let mut line = String::new();
        for (i, (cell, width)) in row.iter().zip(&widths).enumerate() {
            if i == last {
                line.push_str(cell);
            } else {
                let pad = width - cell.chars().count();
                line.push_str(cell);
                line.push_str(&" ".repeat(pad + 2));
            }
        }
        out.push_str(line.trim_end());
        out.push('\n');
    }
    out
}

fn indent(text: &str) -> String {
    text.lines().map(|line| format!("  {line}\n")).collect()
}
