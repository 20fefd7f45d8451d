//! The master's one error type, [`MasterError`]. What a command's commit returns is
//! [`CommitError`] (a rejection by the cell, or unavailable), one of its cases.

use std::path::PathBuf;

use crate::committer::CommitError;
use crate::store::StoreError;

/// Why the master could not do something. Each case keeps its cause as its `source`, so
/// `{:#}` (anyhow, the CLI) prints the whole chain, as [`chain`] does.
#[derive(Debug, thiserror::Error)]
pub enum MasterError {
    /// A command did not commit.
    #[error(transparent)]
    Commit(#[from] CommitError),
    /// The store failed.
    #[error(transparent)]
    Store(#[from] StoreError),
    /// The store could not be read when the cell is loaded.
    #[error("loading the store")]
    Load(#[source] StoreError),
    /// The store file could not be opened.
    #[error("opening {}", path.display())]
    Open {
        path: PathBuf,
        #[source]
        cause: StoreError,
    },
    /// The stored state breaks an invariant of the cell: the master does not start on it.
    #[error("stored state violates an invariant: {0}")]
    Invariant(String),
    /// A file, directory or socket the master needs (`what` says which and what for).
    #[error("{what}")]
    Io {
        what: String,
        #[source]
        cause: std::io::Error,
    },
    /// The commit path has stopped for good (a thread of it ended): the master exits.
    #[error("the commit path has stopped")]
    Stopped,
    /// The store is failing (why), and is being reopened.
    #[error("the store is failing: {0}")]
    StoreFailing(String),
    /// An agent message that does not decode.
    #[error("malformed agent message")]
    Malformed(#[source] serde_json::Error),
}

impl MasterError {
    pub(crate) fn io(what: impl Into<String>) -> impl FnOnce(std::io::Error) -> MasterError {
        let what = what.into();
        move |cause| MasterError::Io { what, cause }
    }
}

/// An error and its causes, as `{:#}` of anyhow prints them: `what: why: deeper why`.
pub fn chain(e: &(dyn std::error::Error + 'static)) -> String {
    let mut text = e.to_string();
    let mut source = e.source();
    while let Some(s) = source {
        text.push_str(": ");
        text.push_str(&s.to_string());
        source = s.source();
    }
    text
}
