//! Who is calling. Every call to the job and worker services is made by an
//! [`Identity`], a name and a [`Role`], proven either by a bearer token
//! (`authorization: Bearer TOKEN`) listed in the coordinator's tokens file
//! ([`Tokens`]) or by a client certificate signed by the coordinator's CA
//! (the name is its Common Name, the role its Organization, as Kubernetes
//! reads certificates). The job service takes clients and admins, the worker
//! service workers only; each refuses the other's credentials. A coordinator
//! with neither tokens nor client certificates trusts every caller.

use std::path::Path;

use tonic::metadata::MetadataValue;
use tonic::service::Interceptor;
use tonic::{Request, Status};
use tracing::warn;

use crate::identity::{Identity, Role};

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
    /// A line of a tokens file is malformed.
    #[error("the tokens file {file}, line {line}: {problem}")]
    Line {
        /// The file.
        file: String,
        /// The line (1-based; 0 for the whole file).
        line: usize,
        /// What is wrong and how to fix it.
        problem: String,
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

/// The caller of `request`, as [`Authenticate`] proved it; an anonymous
/// admin where no authentication ran (the services are then open).
pub fn caller<T>(request: &Request<T>) -> Identity {
    request
        .extensions()
        .get::<Identity>()
        .cloned()
        .unwrap_or_else(Identity::anonymous)
}

/// The coordinator's tokens file: one line per token, `TOKEN,NAME,ROLE`
/// (the shape of a Kubernetes static token file), ROLE one of `client`,
/// `admin`, `worker`; `#` starts a comment.
pub struct Tokens {
    entries: Vec<(Token, Identity)>,
}

impl std::fmt::Debug for Tokens {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        // Never print the secrets.
        write!(f, "Tokens({} entries)", self.entries.len())
    }
}

impl Tokens {
    /// The tokens in `path`.
    ///
    /// # Errors
    /// If the file can't be read, or a line is malformed.
    pub fn from_file(path: &Path) -> Result<Self, TokenError> {
        let text = std::fs::read_to_string(path).map_err(|source| TokenError::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    /// Tokens from the text of a tokens file read from `from`.
    ///
    /// # Errors
    /// If a line is malformed, a token repeats, or there are none.
    pub fn parse(text: &str, from: &str) -> Result<Self, TokenError> {
        let mut entries: Vec<(Token, Identity)> = Vec::new();
        for (n, line) in text.lines().enumerate() {
            let line = line.trim();
            if line.is_empty() || line.starts_with('#') {
                continue;
            }
            let bad = |problem: String| TokenError::Line {
                file: from.to_string(),
                line: n + 1,
                problem,
            };
            let fields: Vec<&str> = line.split(',').map(str::trim).collect();
            let [token, name, role] = fields[..] else {
                return Err(bad(format!("{} fields; give TOKEN,NAME,ROLE", fields.len())));
            };
            let token = Token::new(token, &format!("on line {} of {from}", n + 1))?;
            if name.is_empty() || name.len() > 128 || !name.bytes().all(|b| b.is_ascii_graphic()) {
                return Err(bad("the name is empty, longer than 128 or not printable ASCII".into()));
            }
            let role = Role::parse(role)
                .ok_or_else(|| bad(format!("role {role:?} is not client, admin, worker or metrics")))?;
            if entries.iter().any(|(t, _)| *t == token) {
                return Err(bad("this token is already listed; give each identity its own".into()));
            }
            entries.push((
                token,
                Identity {
                    name: name.to_string(),
                    role,
                },
            ));
        }
        if entries.is_empty() {
            return Err(TokenError::Line {
                file: from.to_string(),
                line: 0,
                problem: "it lists no tokens; give one TOKEN,NAME,ROLE line per identity".into(),
            });
        }
        Ok(Tokens { entries })
    }

    /// The identity whose token an `authorization` header value carries
    /// (`Bearer TOKEN`).
    pub fn identify(&self, header: &[u8]) -> Option<&Identity> {
        // Compare with every token, so timing does not tell which matched.
        let mut found = None;
        for (token, identity) in &self.entries {
            if constant_time_eq(header, token.header().as_bytes()) {
                found = Some(identity);
            }
        }
        found
    }
}

/// Byte equality whose time does not depend on where the bytes differ.
fn constant_time_eq(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

/// The Organization of a client certificate that makes it a worker's.
pub const WORKER_ORGANIZATION: &str = "wmr:worker";
/// The Organization of a client certificate that makes it an admin's.
pub const ADMIN_ORGANIZATION: &str = "wmr:admin";

/// The identity in a client certificate (DER): its Common Name (or, without
/// one, its first DNS name) and the role its Organization names.
fn certificate_identity(der: &[u8]) -> Option<Identity> {
    let (_, cert) = x509_parser::parse_x509_certificate(der).ok()?;
    let subject = cert.subject();
    let common_name = subject.iter_common_name().next().and_then(|a| a.as_str().ok());
    let dns_name = cert.subject_alternative_name().ok().flatten().and_then(|san| {
        san.value.general_names.iter().find_map(|n| match n {
            x509_parser::extensions::GeneralName::DNSName(d) => Some(*d),
            _ => None,
        })
    });
    let name = common_name.or(dns_name)?.to_string();
    let organizations: Vec<&str> = subject.iter_organization().filter_map(|a| a.as_str().ok()).collect();
    let role = if organizations.contains(&WORKER_ORGANIZATION) {
        Role::Worker
    } else if organizations.contains(&ADMIN_ORGANIZATION) {
        Role::Admin
    } else {
        Role::Client
    };
    Some(Identity { name, role })
}

/// Which service a call is for.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Api {
    /// The job service: clients and admins.
    Jobs,
    /// The worker service: workers.
    Workers,
}

impl Api {
    fn name(self) -> &'static str {
        match self {
            Api::Jobs => "JobService",
            Api::Workers => "WorkerService",
        }
    }

    fn admits(self, role: Role) -> bool {
        match self {
            Api::Jobs => matches!(role, Role::Client | Role::Admin),
            Api::Workers => role == Role::Worker,
        }
    }
}

/// Server side: proves who calls, refuses strangers and the wrong role, and
/// puts the caller's [`Identity`] in the request for the service.
#[derive(Clone, Debug)]
pub struct Authenticate {
    /// The tokens file, if the coordinator has one.
    pub tokens: Option<std::sync::Arc<Tokens>>,
    /// Whether every connection presents a client certificate (mutual TLS).
    pub certificates: bool,
    /// Which service this guards.
    pub service: Api,
}

impl Authenticate {
    fn identify(&self, request: &Request<()>) -> Result<Option<Identity>, &'static str> {
        let given = request.metadata().get("authorization").map(|v| v.as_bytes());
        if let (Some(tokens), Some(given)) = (&self.tokens, given) {
            return tokens.identify(given).cloned().map(Some).ok_or("a wrong token");
        }
        if self.certificates {
            let certs = request.peer_certs();
            let first = certs.as_ref().and_then(|c| c.first());
            return first
                .and_then(|c| certificate_identity(c.as_ref()))
                .map(Some)
                .ok_or("a client certificate without a name");
        }
        match self.tokens {
            Some(_) => Err("no token"),
            None => Ok(None),
        }
    }
}

impl Interceptor for Authenticate {
    fn call(&mut self, mut request: Request<()>) -> Result<Request<()>, Status> {
        let service = self.service.name();
        let peer = request
            .remote_addr()
            .map_or_else(|| "an unknown peer".to_string(), |a| a.to_string());
        let identity = match self.identify(&request) {
            Ok(Some(identity)) => identity,
            // An open coordinator: every caller may do anything.
            Ok(None) => return Ok(request),
            Err(what) => {
                warn!(service, %peer, "refused a call with {what}");
                return Err(Status::unauthenticated(format!(
                    "the coordinator refused the call: {what}; give your token with WMR_TOKEN or --token-file"
                )));
            }
        };
        if !self.service.admits(identity.role) {
            warn!(service, %peer, name = %identity.name, role = ?identity.role, "refused a call with the wrong role");
            let fix = match self.service {
                Api::Jobs => "use a client token; worker tokens only run tasks",
                Api::Workers => "use a worker token; client tokens cannot run tasks",
            };
            return Err(Status::permission_denied(format!(
                "the coordinator refused the call: {} holds a {:?} credential, which {service} does not take; {fix}",
                identity.name, identity.role
            )));
        }
        request.extensions_mut().insert(identity);
        Ok(request)
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

    fn header(token: &str) -> Request<()> {
        let mut r = Request::new(());
        r.metadata_mut()
            .insert("authorization", format!("Bearer {token}").parse().expect("header"));
        r
    }

    #[test]
    fn tokens_name_identities_and_each_service_takes_only_its_role() {
        let tokens = Tokens::parse(
            "# comment\nc-tok, alice, client\n\nw-tok,pool,worker\na-tok,ops,admin\n",
            "tokens.csv",
        )
        .expect("valid");
        assert_eq!(format!("{tokens:?}"), "Tokens(3 entries)");
        let tokens = std::sync::Arc::new(tokens);
        let mut jobs = Authenticate {
            tokens: Some(tokens.clone()),
            certificates: false,
            service: Api::Jobs,
        };
        let mut workers = Authenticate {
            service: Api::Workers,
            ..jobs.clone()
        };
        let alice = jobs.call(header("c-tok")).expect("a client on the job service");
        assert_eq!(
            caller(&alice),
            Identity {
                name: "alice".into(),
                role: Role::Client
            }
        );
        assert!(caller(&alice).may_see("alice") && !caller(&alice).may_see("bob"));
        let ops = jobs.call(header("a-tok")).expect("an admin on the job service");
        assert!(caller(&ops).may_see("bob"));
        let worker = workers.call(header("w-tok")).expect("a worker on the worker service");
        assert_eq!(caller(&worker).role, Role::Worker);
        // Each service refuses the other's credentials.
        let refused = jobs.call(header("w-tok")).expect_err("worker token on jobs");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        assert!(
            refused.message().contains("use a client token"),
            "{}",
            refused.message()
        );
        let refused = workers.call(header("c-tok")).expect_err("client token on workers");
        assert_eq!(refused.code(), tonic::Code::PermissionDenied);
        // Strangers.
        let refused = jobs.call(header("nope")).expect_err("wrong token");
        assert_eq!(refused.code(), tonic::Code::Unauthenticated);
        assert!(refused.message().contains("a wrong token"), "{}", refused.message());
        let refused = jobs.call(Request::new(())).expect_err("no token");
        assert!(refused.message().contains("no token"), "{}", refused.message());
        // An open coordinator takes anything, as an anonymous admin.
        let mut open = Authenticate {
            tokens: None,
            certificates: false,
            service: Api::Jobs,
        };
        let anyone = open.call(Request::new(())).expect("open");
        assert_eq!(caller(&anyone).role, Role::Admin);
    }

    #[test]
    fn a_malformed_tokens_file_names_the_line_and_the_fix() {
        let e = Tokens::parse("a,b\n", "t.csv").expect_err("two fields").to_string();
        assert_eq!(e, "the tokens file t.csv, line 1: 2 fields; give TOKEN,NAME,ROLE");
        let e = Tokens::parse("t,n,root\n", "t.csv").expect_err("bad role").to_string();
        assert!(
            e.contains("line 1: role \"root\" is not client, admin, worker or metrics"),
            "{e}"
        );
        let e = Tokens::parse("t,a,client\nt,b,worker\n", "t.csv")
            .expect_err("repeated")
            .to_string();
        assert!(e.contains("line 2: this token is already listed"), "{e}");
        assert!(Tokens::parse("# nothing\n", "t.csv").is_err());
    }

    #[test]
    fn certificates_name_their_holder_and_role() {
        let key = rcgen::KeyPair::generate().expect("key");
        let mut params = rcgen::CertificateParams::new(vec!["w1.example".to_string()]).expect("params");
        params.distinguished_name.push(rcgen::DnType::CommonName, "worker-1");
        params
            .distinguished_name
            .push(rcgen::DnType::OrganizationName, WORKER_ORGANIZATION);
        let cert = params.self_signed(&key).expect("cert");
        assert_eq!(
            certificate_identity(cert.der()),
            Some(Identity {
                name: "worker-1".into(),
                role: Role::Worker
            })
        );
        // No CN: the DNS name; no role Organization: a client.
        let mut params = rcgen::CertificateParams::new(vec!["alice.example".to_string()]).expect("params");
        params.distinguished_name = rcgen::DistinguishedName::new();
        let cert = params.self_signed(&key).expect("cert");
        assert_eq!(
            certificate_identity(cert.der()),
            Some(Identity {
                name: "alice.example".into(),
                role: Role::Client
            })
        );
        assert_eq!(certificate_identity(b"not a certificate"), None);
    }

    #[test]
    fn tokens_are_checked_exactly_and_never_printed() {
        let token = Token::new(" s3cret\n", "test").expect("valid");
        assert_eq!(format!("{token:?}"), "Token(..)");
        assert!(Token::new("  ", "test").is_err());
        assert!(Token::new("has space", "test").is_err());
        let sent = SendToken(Some(token)).call(Request::new(())).expect("adds the header");
        assert_eq!(
            sent.metadata().get("authorization").map(|v| v.as_bytes()),
            Some(&b"Bearer s3cret"[..])
        );
    }
}
