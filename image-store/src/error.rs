//! The image store's one error type. Every variant carries a finished message, so errors
//! can be cloned to every caller of a de-duplicated pull; cri-server maps variants to codes.

#[derive(Debug, Clone, thiserror::Error)]
pub enum Error {
    /// The text is not an image reference berth understands.
    #[error("invalid image reference {reference:?}: {reason}")]
    InvalidReference { reference: String, reason: String },
    /// Invalid input other than a reference (credentials, an import path, ...).
    #[error("{0}")]
    InvalidArgument(String),
    /// The image (or a manifest/blob it names) does not exist where it was looked up.
    #[error("{0}")]
    NotFound(String),
    /// The registry refused the credentials (or demanded some).
    #[error("{0}")]
    Unauthorized(String),
    /// The registry could not be reached or answered with a server error.
    #[error("{0}")]
    Registry(String),
    /// Content did not match its digest, size or DiffID.
    #[error("{0}")]
    Verification(String),
    /// A layer tried to write outside its directory, or broke a rule of the format.
    #[error("unsafe layer {layer}: {reason}")]
    UnsafeLayer { layer: String, reason: String },
    /// A size or count limit was exceeded.
    #[error("{0}")]
    LimitExceeded(String),
    /// Valid, but not something berth handles (media type, platform, schema 1, ...).
    #[error("{0}")]
    Unsupported(String),
    /// Local storage failed (disk full, permissions, metadata store).
    #[error("{0}")]
    Storage(String),
}

pub type Result<T> = std::result::Result<T, Error>;

impl Error {
    pub(crate) fn storage(context: impl std::fmt::Display, e: impl std::fmt::Display) -> Self {
        Error::Storage(format!("{context}: {e}"))
    }
}

impl From<meta_store::Error> for Error {
    fn from(e: meta_store::Error) -> Self {
        Error::Storage(e.to_string())
    }
}
