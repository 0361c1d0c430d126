//! Terminal progress for the library's long jobs: a bar per downloaded file
//! ([`TerminalDownload`], the CLI's [`DownloadProgress`]).

use std::time::Duration;

use indicatif::{ProgressBar, ProgressStyle};

use crate::model::hub::DownloadProgress;

/// A terminal progress bar per file on stderr (hidden when stderr is not a terminal), for the
/// CLI. Files that were already cached leave no bar behind.
#[derive(Debug, Default)]
pub struct TerminalDownload {
    bar: Option<ProgressBar>,
    moved: u64,
}

impl TerminalDownload {
    /// No bar yet; one appears per file.
    pub fn new() -> Self {
        Self::default()
    }
}

impl DownloadProgress for TerminalDownload {
    fn file_started(&mut self, name: &str, bytes: Option<u64>) {
        if let Some(old) = self.bar.take() {
            old.finish_and_clear();
        }
        let bar = match bytes {
            Some(total) => ProgressBar::new(total).with_style(
                ProgressStyle::with_template(
                    "{msg} [{bar:30}] {bytes}/{total_bytes} {bytes_per_sec} eta {eta}",
                )
                .unwrap_or_else(|_| ProgressStyle::default_bar())
                .progress_chars("=> "),
            ),
            None => {
                let bar = ProgressBar::new_spinner().with_style(
                    ProgressStyle::with_template("{spinner} {msg} {bytes} {bytes_per_sec}")
                        .unwrap_or_else(|_| ProgressStyle::default_spinner()),
                );
                bar.enable_steady_tick(Duration::from_millis(120));
                bar
            }
        };
        bar.set_message(name.to_owned());
        self.moved = 0;
        self.bar = Some(bar);
    }

    fn advanced(&mut self, bytes: u64) {
        self.moved += bytes;
        if let Some(bar) = &self.bar {
            bar.inc(bytes);
        }
    }

    fn file_done(&mut self, _name: &str) {
        if let Some(bar) = self.bar.take() {
            if self.moved > 0 {
                bar.finish();
            } else {
                bar.finish_and_clear();
            }
        }
    }
}

impl Drop for TerminalDownload {
    fn drop(&mut self) {
        // A bar still open means the download stopped half way: leave it where it stopped.
        if let Some(bar) = self.bar.take() {
            bar.abandon();
        }
    }
}
