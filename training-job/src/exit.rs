//! Failures that carry their own exit status, so scripts and AWS Batch can tell them apart from
//! other errors (status 1). Each command documents the statuses it uses.

/// An outcome to report with a specific exit status.
#[derive(Debug)]
pub struct ExitWith {
    /// The process exit status.
    pub code: u8,
    /// What to print on stderr.
    pub message: String,
}

impl std::fmt::Display for ExitWith {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for ExitWith {}
