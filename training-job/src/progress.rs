//! Progress bars on standard error (hidden when it is not a terminal).

use indicatif::{ProgressBar, ProgressStyle};

/// A spinner for work of unknown length.
#[cfg(feature = "train")]
pub fn spinner(message: &str) -> ProgressBar {
    let bar = ProgressBar::new_spinner();
    bar.set_message(message.to_string());
    bar.enable_steady_tick(std::time::Duration::from_millis(120));
    bar
}

/// A bar over a known number of steps.
#[cfg(feature = "train")]
pub fn steps(total: u64, message: &str) -> ProgressBar {
    let bar = ProgressBar::new(total);
    bar.set_style(
        ProgressStyle::with_template("{spinner} [{elapsed_precise}] {bar:30} {pos}/{len} {msg}")
            .expect("valid template"),
    );
    bar.set_message(message.to_string());
    bar.enable_steady_tick(std::time::Duration::from_millis(200));
    bar
}

/// A bar over bytes (downloads).
pub fn bytes(total: Option<u64>, message: &str) -> ProgressBar {
    let bar = ProgressBar::new(total.unwrap_or(0));
    bar.set_style(
        ProgressStyle::with_template("{spinner} {bytes}/{total_bytes} {bytes_per_sec} {msg}")
            .expect("valid template"),
    );
    bar.set_message(message.to_string());
    bar
}

/// Prints a line above `bar`, or plainly on standard error when the bar is hidden (not a
/// terminal: AWS Batch and CI logs), so that the log has it either way.
#[cfg(feature = "train")]
pub fn line(bar: &ProgressBar, text: String) {
    if bar.is_hidden() {
        eprintln!("{text}");
    } else {
        bar.println(text);
    }
}
