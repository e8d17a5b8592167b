//! The shape every background worker shares: `run_once` does one unit of work against the
//! store and says whether there was any; the loop around it is thin and stops on the
//! shutdown token between units, so a claimed batch is always finished or left to its lease.

/// What one `run_once` did.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Outcome {
    /// Handled this many items.
    Worked(u64),
    /// Nothing was due.
    Idle,
}

impl Outcome {
    pub fn count(self) -> u64 {
        match self {
            Self::Worked(n) => n,
            Self::Idle => 0,
        }
    }
}
