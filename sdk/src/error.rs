//! The error type method authors return; the SDK turns it into an [`crate::abi::PluginError`]
//! that names the method and the call.

use std::fmt;

/// An error inside a method: a message, with conversions from the errors methods meet
/// (libtorch, JSON, host refusals).
#[derive(Debug, Clone)]
pub struct Error {
    pub(crate) kind: crate::abi::ErrorKind,
    pub(crate) message: String,
}

/// Result type of method code.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// An error with this message.
    pub fn msg(message: impl fmt::Display) -> Self {
        Self { kind: crate::abi::ErrorKind::Failed, message: message.to_string() }
    }

    /// The call is not part of this method's role (e.g. `loss` on an adapter).
    pub fn unsupported(call: &str) -> Self {
        Self { kind: crate::abi::ErrorKind::Unsupported, message: format!("this method does not implement `{call}`") }
    }

    /// The error's message.
    pub fn message(&self) -> &str {
        &self.message
    }
}

impl fmt::Display for Error {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(&self.message)
    }
}

impl std::error::Error for Error {}

impl From<tch::TchError> for Error {
    fn from(e: tch::TchError) -> Self {
        Self::msg(format!("libtorch: {e}"))
    }
}

impl From<serde_json::Error> for Error {
    fn from(e: serde_json::Error) -> Self {
        Self::msg(format!("JSON: {e}"))
    }
}

impl From<crate::abi::PluginError> for Error {
    fn from(e: crate::abi::PluginError) -> Self {
        Self { kind: crate::abi::ErrorKind::Host, message: e.message.into_string() }
    }
}

impl From<String> for Error {
    fn from(message: String) -> Self {
        Self::msg(message)
    }
}

impl From<&str> for Error {
    fn from(message: &str) -> Self {
        Self::msg(message)
    }
}
