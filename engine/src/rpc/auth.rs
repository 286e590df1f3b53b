//! The cluster's shared token: every call to the job and worker services
//! carries `authorization: Bearer TOKEN`, and the coordinator refuses any
//! call without it, or with another, as UNAUTHENTICATED (and logs it).

use std::path::Path;

use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::{Request, Status};
use tracing::warn;

/// Errors reading a token.
#[derive(Debug, thiserror::Error)]
#[non_exhaustive]
pub enum TokenError {
    /// The file could not be read.
    #[error("can't read the token file {path}: {source}")]
    Read {
        /// The file.
        path: String,
        /// Why.
        #[source]
        source: std::io::Error,
    },
    /// The token is empty or not printable ASCII.
    #[error("the token {from} is empty or has characters other than printable ASCII; use a random ASCII string")]
    Invalid {
        /// Where it came from.
        from: String,
    },
}

/// A shared token.
#[derive(Clone, PartialEq, Eq)]
pub struct Token(String);

impl std::fmt::Debug for Token {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secret.
        f.write_str("Token(..)")
    }
}

impl Token {
    /// A token given as text (from `WMR_TOKEN`, say), trimmed.
    ///
    /// # Errors
    /// If it is empty or not printable ASCII.
    pub fn new(text: &str, from: &str) -> Result<Self, TokenError> {
        let t = text.trim();
        if t.is_empty() || !t.bytes().all(|b| b.is_ascii_graphic()) {
            return Err(TokenError::Invalid { from: from.to_string() });
        }
        Ok(Token(t.to_string()))
    }

    /// The token in `path`.
    ///
    /// # Errors
    /// If the file can't be read or holds no valid token.
    pub fn from_file(path: &Path) -> Result<Self, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::new(&text, &format!("in {}", path.display()))
    }

    /// The token from `--token-file` if given, else from `WMR_TOKEN` if set.
    ///
    /// # Errors
    /// If the one given is unreadable or invalid.
    pub fn from_flag_or_env(file: Option<&Path>) -> Result<Option<Self>, TokenError> {
        match (file, std::env::var("WMR_TOKEN")) {
            (Some(path), _) => Self::from_file(path).map(Some),
            (None, Ok(text)) => Self::new(&text, "in WMR_TOKEN").map(Some),
            (None, Err(_)) => Ok(None),
        }
    }

    fn header(&self) -> String {
        format!("Bearer {}", self.0)
    }
}

/// Byte equality whose time does not depend on where the bytes differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// Server side: refuses calls without the token, when one is configured.
#[derive(Clone, Debug)]
pub struct RequireToken {
    /// The token, or `None` for an open coordinator.
    pub token: Option<Token>,
    /// Which service, for the log.
    pub service: &'static str,
}

impl Interceptor for RequireToken {
    fn call(&mut self, request: Request<()>) -> Result<Request<()>, Status> {
        let Some(token) = &self.token else { return Ok(request) };
        let given = request.metadata().get("authorization").map(|v| v.as_bytes());
        if given.is_some_and(|g| constant_time_eq(g, token.header().as_bytes())) {
            return Ok(request);
        }
        let peer = request
            .remote_addr()
            .map_or_else(|| "an unknown peer".to_string(), |a| a.to_string());
        let what = if given.is_some() { "a wrong token" } else { "no token" };
        warn!(service = self.service, %peer, "refused a call with {what}");
        Err(Status::unauthenticated(format!(
            "the coordinator refused the call: {what}; give the cluster's token with WMR_TOKEN or --token-file"
        )))
    }
}

/// Client side: adds the token to every call.
#[derive(Clone, Debug, Default)]
pub struct SendToken(pub Option<Token>);

impl Interceptor for SendToken {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        if let Some(token) = &self.0 {
            let value: MetadataValue<_> = token
                .header()
                .parse()
                .map_err(|_| Status::invalid_argument("the token is not a valid header value"))?;
            request.metadata_mut().insert("authorization", value);
        }
        Ok(request)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tokens_are_checked_exactly_and_never_printed() {
        let token = Token::new(" s3cret\n", "test").expect("valid");
        assert_eq!(format!("{token:?}"), "Token(..)");
        assert!(Token::new("  ", "test").is_err());
        assert!(Token::new("has space", "test").is_err());
        let mut server = RequireToken {
            token: Some(token.clone()),
            service: "test",
        };
        let mut client = SendToken(Some(token));
        let sent = client.call(Request::new(())).expect("adds the header");
        assert!(server.call(sent).is_ok());
        let wrong = SendToken(Some(Token::new("other", "test").expect("valid"))).call(Request::new(()));
        let refused = server.call(wrong.expect("adds the header")).expect_err("wrong token");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        let refused = server.call(Request::new(())).expect_err("no token");
        assert!(refused.message().contains("no token"), "{}", refused.message());
        // An open coordinator takes anything.
        let mut open = RequireToken {
            token: None,
            service: "test",
        };
        assert!(open.call(Request::new(())).is_ok());
    }
}
