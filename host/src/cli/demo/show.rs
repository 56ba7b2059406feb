//! How the demo talks to the person watching: step headings, narration, aligned tables, and progress bars
//! (indicatif on stderr; hidden when stderr is not a terminal, so piped output stays clean).

use std::time::Duration;

use indicatif::{ProgressBar, ProgressDrawTarget, ProgressStyle};

/// A step heading.
pub(super) fn step(number: usize, total: usize, title: &str) {
    println!();
    println!("━━ Step {number}/{total} · {title}");
}

/// A line of narration.
pub(super) fn say(text: impl AsRef<str>) {
    println!("   {}", text.as_ref());
}

/// A progress bar of `len` items on stderr.
pub(super) fn bar(len: u64, message: &str) -> ProgressBar {
    let bar = ProgressBar::with_draw_target(Some(len), ProgressDrawTarget::stderr());
    let style = ProgressStyle::with_template("   {spinner} {msg:<28} [{bar:30}] {pos}/{len} {elapsed}")
        .unwrap_or_else(|_| ProgressStyle::default_bar())
        .progress_chars("=> ");
    bar.set_style(style);
    bar.set_message(message.to_string());
    bar.enable_steady_tick(Duration::from_millis(120));
    bar
}

/// Prints rows under headers as aligned columns; numbers (cells that parse as one) are right-aligned.
pub(super) fn table(headers: &[&str], rows: &[Vec<String>]) {
    let widths: Vec<usize> = headers
        .iter()
        .enumerate()
        .map(|(i, h)| rows.iter().filter_map(|r| r.get(i)).map(|c| c.chars().count()).max().unwrap_or(0).max(h.len()))
        .collect();
    let line = |cells: Vec<String>| {
        let formatted: Vec<String> = cells
            .iter()
            .zip(&widths)
            .map(|(c, w)| if c.parse::<f64>().is_ok() { format!("{c:>w$}") } else { format!("{c:<w$}") })
            .collect();
        format!("   {}", formatted.join("  ").trim_end())
    };
    println!("{}", line(headers.iter().map(|h| h.to_string()).collect()));
    println!("   {}", widths.iter().map(|w| "─".repeat(*w)).collect::<Vec<_>>().join("  "));
    for row in rows {
        println!("{}", line(row.clone()));
    }
}
