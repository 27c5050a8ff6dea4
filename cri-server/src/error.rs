//! The error boundary: handlers return `CriError`, and this file alone decides which gRPC
//! code each domain error becomes. The kubelet acts on codes (NotFound in particular), so
//! they must not be chosen ad hoc at call sites.

use tonic::{Code, Status};

#[derive(Debug, thiserror::Error)]
pub enum CriError {
    #[error("{0}")]
    NotFound(String),
    #[error("{0}")]
    InvalidArgument(String),
    #[error("{0}")]
    AlreadyExists(String),
    #[error("{0}")]
    FailedPrecondition(String),
    #[error("{0} is not implemented by berth yet")]
    Unimplemented(&'static str),
    #[error("{0}")]
    DeadlineExceeded(String),
    #[error("{0}")]
    Unavailable(String),
    #[error("{0}")]
    ResourceExhausted(String),
    #[error("{0}")]
    Internal(String),
}

pub type CriResult<T> = Result<T, CriError>;

/// Runs blocking work (file I/O, forks, syscalls that must not stall a tokio worker) on the
/// blocking pool. A worker that panicked is an internal error, mapped here once.
pub async fn blocking<T: Send + 'static>(
    work: impl FnOnce() -> T + Send + 'static,
) -> CriResult<T> {
    tokio::task::spawn_blocking(work)
        .await
        .map_err(|e| CriError::Internal(format!("blocking worker: {e}")))
}

impl CriError {
    pub fn code(&self) -> Code {
        match self {
            CriError::NotFound(_) => Code::NotFound,
            CriError::InvalidArgument(_) => Code::InvalidArgument,
            CriError::AlreadyExists(_) => Code::AlreadyExists,
            CriError::FailedPrecondition(_) => Code::FailedPrecondition,
            CriError::Unimplemented(_) => Code::Unimplemented,
            CriError::DeadlineExceeded(_) => Code::DeadlineExceeded,
            CriError::Unavailable(_) => Code::Unavailable,
            CriError::ResourceExhausted(_) => Code::ResourceExhausted,
            CriError::Internal(_) => Code::Internal,
        }
    }
}

impl From<CriError> for Status {
    fn from(e: CriError) -> Status {
        Status::new(e.code(), e.to_string())
    }
}

impl From<meta_store::Error> for CriError {
    fn from(e: meta_store::Error) -> CriError {
        CriError::Internal(e.to_string())
    }
}

impl From<sandbox::pod::PodError> for CriError {
    fn from(e: sandbox::pod::PodError) -> CriError {
        use sandbox::pod::PodError as E;
        use sandbox::pod::namespaces::NamespaceError;
        match e {
            E::NotFound(_) => CriError::NotFound(e.to_string()),
            E::InvalidArgument(_) | E::Namespaces(NamespaceError::Sysctl(_)) => {
                CriError::InvalidArgument(e.to_string())
            }
            E::AlreadyExists(_) => CriError::AlreadyExists(e.to_string()),
            E::NetworkNotReady(_) => CriError::FailedPrecondition(e.to_string()),
            E::Cni(_) | E::Namespaces(_) | E::Io { .. } | E::Store(_) => {
                CriError::Internal(e.to_string())
            }
        }
    }
}

impl From<image_store::Error> for CriError {
    fn from(e: image_store::Error) -> CriError {
        use image_store::Error as E;
        let msg = e.to_string();
        match e {
            E::InvalidReference { .. } | E::InvalidArgument(_) => CriError::InvalidArgument(msg),
            E::NotFound(_) => CriError::NotFound(msg),
            E::Registry(_) => CriError::Unavailable(msg),
            E::Unauthorized(_)
            | E::Verification(_)
            | E::UnsafeLayer { .. }
            | E::LimitExceeded(_)
            | E::Unsupported(_) => CriError::FailedPrecondition(msg),
            E::Storage(_) => CriError::Internal(msg),
        }
    }
}

impl From<sandbox::container::ContainerError> for CriError {
    fn from(e: sandbox::container::ContainerError) -> CriError {
        use sandbox::container::ContainerError as E;
        match e {
            E::Spec(_) => CriError::InvalidArgument(e.to_string()),
            E::NotFound(_) => CriError::NotFound(e.to_string()),
            E::NotRunning => CriError::FailedPrecondition(e.to_string()),
            E::ExecTimeout(_) => CriError::DeadlineExceeded(e.to_string()),
            _ => CriError::Internal(e.to_string()),
        }
    }
}

impl From<streaming::Error> for CriError {
    fn from(e: streaming::Error) -> CriError {
        use streaming::{Error as E, RuntimeError as R};
        match e {
            E::InvalidArgument(_) => CriError::InvalidArgument(e.to_string()),
            E::Runtime(R::NotFound(m)) => CriError::NotFound(m),
            E::Runtime(R::FailedPrecondition(m)) => CriError::FailedPrecondition(m),
            E::Runtime(R::Unsupported(m)) => CriError::FailedPrecondition(m),
            E::TooManyRequests(_) => CriError::Unavailable(e.to_string()),
            _ => CriError::Internal(e.to_string()),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn not_found_is_not_found() {
        let s: Status = CriError::NotFound("pod sandbox \"abc\" not found".into()).into();
        assert_eq!(s.code(), Code::NotFound);
        assert_eq!(s.message(), "pod sandbox \"abc\" not found");
    }

    #[test]
    fn unimplemented_names_the_rpc() {
        let s: Status = CriError::Unimplemented("CheckpointContainer").into();
        assert_eq!(s.code(), Code::Unimplemented);
        assert!(s.message().contains("CheckpointContainer"));
    }

    #[test]
    fn every_kind_has_its_own_code() {
        let cases = [
            (
                CriError::InvalidArgument(String::new()),
                Code::InvalidArgument,
            ),
            (CriError::AlreadyExists(String::new()), Code::AlreadyExists),
            (
                CriError::FailedPrecondition(String::new()),
                Code::FailedPrecondition,
            ),
            (
                CriError::DeadlineExceeded(String::new()),
                Code::DeadlineExceeded,
            ),
            (CriError::Unavailable(String::new()), Code::Unavailable),
            (
                CriError::ResourceExhausted(String::new()),
                Code::ResourceExhausted,
            ),
            (CriError::Internal(String::new()), Code::Internal),
        ];
        for (e, code) in cases {
            assert_eq!(Status::from(e).code(), code);
        }
    }

    #[test]
    fn image_not_found_is_not_found() {
        let e: CriError = image_store::Error::NotFound("image \"x\" not found".into()).into();
        assert_eq!(e.code(), Code::NotFound);
        let e: CriError = image_store::Error::Storage("disk full".into()).into();
        assert_eq!(e.code(), Code::Internal);
    }

    #[test]
    fn store_failures_are_internal() {
        let e: CriError = meta_store::Error::Storage("disk on fire".into()).into();
        assert_eq!(e.code(), Code::Internal);
    }
}
