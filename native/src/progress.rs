//! What a run tells whoever reads its stderr: a progress bar on a terminal, one plain line per
//! finished unit of work otherwise (a log file, a parent process), nothing with `-q`. Every
//! line goes out whole in one write, so a parent reading stderr in chunks never sees half of
//! one.

use std::io::{IsTerminal, Write};

use indicatif::{ProgressBar, ProgressStyle};
use pgp_core::Event;

/// Writes `text` and a newline to stderr in one write.
pub fn line(text: &str) {
    let mut s = String::with_capacity(text.len() + 1);
    s.push_str(text);
    s.push('\n');
    // Nothing useful can be done when stderr is gone.
    let _ = std::io::stderr().lock().write_all(s.as_bytes());
}

/// The progress of one job (one image, or one analysed image).
pub enum Progress {
    /// A terminal: `prefix [bar] unit elapsed`, redrawn in place.
    Bar(ProgressBar),
    /// Not a terminal: `prefix: unit (done/total)` per finished unit, no escape codes.
    Lines(String),
    /// `-q`.
    Hidden,
}

impl Progress {
    /// The progress display for stderr as it is (a terminal or not), or none with `quiet`.
    pub fn new(quiet: bool, prefix: String) -> Self {
        if quiet {
            return Self::Hidden;
        }
        if !std::io::stderr().is_terminal() {
            return Self::Lines(prefix);
        }
        let bar = ProgressBar::new(0);
        bar.set_style(
            ProgressStyle::with_template("{prefix} [{bar:30}] {msg} {elapsed_precise}")
                .expect("valid template"),
        );
        bar.set_prefix(prefix);
        Self::Bar(bar)
    }

    /// A unit finished.
    pub fn event(&self, event: &Event) {
        match self {
            Self::Bar(bar) => {
                bar.set_length(u64::from(event.total));
                bar.set_position(u64::from(event.done));
                bar.set_message(event.unit.to_string());
            }
            Self::Lines(prefix) => line(&format!(
                "{prefix}: {} ({}/{})",
                event.unit, event.done, event.total
            )),
            Self::Hidden => {}
        }
    }

    /// A message beside the progress (shown even with `-q`).
    pub fn note(&self, text: &str) {
        match self {
            Self::Bar(bar) => bar.suspend(|| line(text)),
            _ => line(text),
        }
    }

    /// The job ended: the bar is removed.
    pub fn finish(&self) {
        if let Self::Bar(bar) = self {
            bar.finish_and_clear();
        }
    }
}
