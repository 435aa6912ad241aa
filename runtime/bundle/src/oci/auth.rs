//! Authentication: answering a registry's `WWW-Authenticate` challenges (Basic, or a
//! Bearer token from its realm), and where credentials may be sent.

use std::collections::HashMap;
use std::time::Duration;

use ureq::Body;
use ureq::http::Response;

use super::client::{Client, is_retryable};
use super::credentials::{Credentials, ENV_PASSWORD, ENV_TOKEN, ENV_USERNAME};
use super::error::{OciError, error_details, registry_error, transport};
use super::reference::parse_registry;

/// Largest token-endpoint answer read.
const MAX_TOKEN_RESPONSE: u64 = 1024 * 1024;

#[derive(Default)]
pub(super) struct AuthState {
    /// The scheme the registry asked for (sent preemptively once known).
    scheme: Option<AuthScheme>,
    /// Bearer tokens by scope (`""` for requests without a repository).
    tokens: HashMap<String, String>,
}

#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum AuthScheme {
    Basic,
    Bearer,
}

/// The scope a request on `repository` needs.
pub(super) fn repo_scope(repository: &str, push: bool) -> String {
    let actions = if push { "pull,push" } else { "pull" };
    format!("repository:{repository}:{actions}")
}

pub(super) fn with_auth<B>(
    rb: ureq::RequestBuilder<B>,
    auth: Option<&str>,
) -> ureq::RequestBuilder<B> {
    match auth {
        Some(value) => rb.header("Authorization", value),
        None => rb,
    }
}

fn basic_header(username: &str, password: &str) -> String {
    use base64::Engine as _;
    format!(
        "Basic {}",
        base64::engine::general_purpose::STANDARD.encode(format!("{username}:{password}"))
    )
}

impl Client {
    fn state(&self) -> std::sync::MutexGuard<'_, AuthState> {
        self.auth.lock().unwrap_or_else(|e| e.into_inner())
    }

    /// Whether `url` is on the registry itself (credentials go nowhere else).
    pub(super) fn same_origin(&self, url: &str) -> bool {
        let n = self.base.len();
        url.get(..n)
            .is_some_and(|prefix| prefix.eq_ignore_ascii_case(&self.base))
            && matches!(url.as_bytes().get(n), None | Some(b'/' | b'?'))
    }

    /// The `Authorization` value for a request, once the registry has asked for one.
    pub(super) fn authorization(&self, url: &str, scope: Option<&str>) -> Option<String> {
        if !self.same_origin(url) {
            return None;
        }
        let state = self.state();
        match (state.scheme?, &self.credentials) {
            (AuthScheme::Basic, Some(Credentials::Basic { username, password })) => {
                Some(basic_header(username, password))
            }
            (AuthScheme::Basic, _) => None,
            (AuthScheme::Bearer, Some(Credentials::Bearer(token))) => {
                Some(format!("Bearer {token}"))
            }
            (AuthScheme::Bearer, _) => state
                .tokens
                .get(scope.unwrap_or_default())
                .map(|t| format!("Bearer {t}")),
        }
    }

    /// Sends a request (built by `send` with the `Authorization` value to use), answering
    /// a 401 challenge once: Basic with the credentials, Bearer with a token from the
    /// realm. A connection-level failure is retried once when `idempotent`. A final 401
    /// or 403 is an [`OciError::Unauthorized`].
    pub(super) fn send(
        &self,
        method: &'static str,
        url: &str,
        scope: Option<&str>,
        idempotent: bool,
        mut send: impl FnMut(Option<&str>) -> Result<Response<Body>, ureq::Error>,
    ) -> Result<Response<Body>, OciError> {
        let mut reauthenticated = false;
        loop {
            let auth = self.authorization(url, scope);
            let mut resp = match send(auth.as_deref()) {
                Ok(r) => r,
                Err(e) if idempotent && is_retryable(&e) => {
                    std::thread::sleep(Duration::from_millis(200));
                    send(auth.as_deref()).map_err(|e| transport(method, url, e))?
                }
                Err(e) => return Err(transport(method, url, e)),
            };
            let status = resp.status().as_u16();
            if status == 401
                && !reauthenticated
                && self.same_origin(url)
                && self.authenticate(&resp, scope, auth.as_deref())?
            {
                reauthenticated = true;
                continue;
            }
            if status == 401 || status == 403 {
                return Err(self.unauthorized(method, url, &mut resp, scope));
            }
            return Ok(resp);
        }
    }

    /// Answers a 401's `WWW-Authenticate` challenge: true when the request is worth
    /// retrying with the (new) authorization.
    fn authenticate(
        &self,
        resp: &Response<Body>,
        scope: Option<&str>,
        sent: Option<&str>,
    ) -> Result<bool, OciError> {
        let challenges: Vec<Challenge> = resp
            .headers()
            .get_all("www-authenticate")
            .iter()
            .filter_map(|v| v.to_str().ok())
            .flat_map(parse_challenges)
            .collect();
        if let Some(bearer) = challenges.iter().find(|c| c.scheme == "bearer") {
            if let Some(Credentials::Bearer(_)) = &self.credentials {
                // A static token: useful only if it was not sent yet.
                if sent.is_some() {
                    return Ok(false);
                }
                self.state().scheme = Some(AuthScheme::Bearer);
                return Ok(true);
            }
            let Some(realm) = bearer.param("realm") else {
                return Ok(false);
            };
            // Our scope first (pushes need pull,push), then what the registry names.
            let mut scopes: Vec<&str> = scope.into_iter().collect();
            for s in bearer.param("scope").unwrap_or_default().split_whitespace() {
                if !scopes.contains(&s) {
                    scopes.push(s);
                }
            }
            let token = self.fetch_token(realm, bearer.param("service"), &scopes)?;
            let mut state = self.state();
            state.scheme = Some(AuthScheme::Bearer);
            state
                .tokens
                .insert(scope.unwrap_or_default().to_string(), token);
            return Ok(true);
        }
        if challenges.iter().any(|c| c.scheme == "basic")
            && let Some(Credentials::Basic { .. }) = &self.credentials
            && !sent.is_some_and(|s| s.starts_with("Basic "))
        {
            self.state().scheme = Some(AuthScheme::Basic);
            return Ok(true);
        }
        Ok(false)
    }

    /// `GET <realm>?service=...&scope=...` (Basic credentials if any, else anonymous);
    /// returns the `token` (or `access_token`) of the JSON answer.
    fn fetch_token(
        &self,
        realm: &str,
        service: Option<&str>,
        scopes: &[&str],
    ) -> Result<String, OciError> {
        let secure = realm
            .get(..8)
            .is_some_and(|p| p.eq_ignore_ascii_case("https://"));
        let loopback_http = !self.base.starts_with("https://")
            && realm
                .get(..7)
                .is_some_and(|p| p.eq_ignore_ascii_case("http://"))
            && parse_registry(realm[7..].split(['/', '?']).next().unwrap_or_default())
                .is_ok_and(|(host, _)| host.is_loopback());
        if !(secure || loopback_http) {
            return Err(OciError::Protocol {
                method: "GET",
                url: realm.to_string(),
                reason: "the registry's token realm is not an https URL (plain http is \
                         accepted only for a loopback token server of a loopback registry)"
                    .to_string(),
            });
        }
        let mut url = realm.to_string();
        let mut sep = if realm.contains('?') { '&' } else { '?' };
        for (name, value) in service
            .map(|s| ("service", s))
            .into_iter()
            .chain(scopes.iter().map(|s| ("scope", *s)))
        {
            url.push(sep);
            url.push_str(name);
            url.push('=');
            url.push_str(&query_encode(value));
            sep = '&';
        }
        let auth = match &self.credentials {
            Some(Credentials::Basic { username, password }) => {
                Some(basic_header(username, password))
            }
            _ => None,
        };
        let send = || with_auth(self.agent.get(&url), auth.as_deref()).call();
        let mut resp = match send() {
            Ok(r) => r,
            Err(e) if is_retryable(&e) => {
                std::thread::sleep(Duration::from_millis(200));
                send().map_err(|e| transport("GET", &url, e))?
            }
            Err(e) => return Err(transport("GET", &url, e)),
        };
        let status = resp.status().as_u16();
        if status == 401 || status == 403 {
            let scope = scopes.first().copied();
            return Err(self.unauthorized("GET", &url, &mut resp, scope));
        }
        if !resp.status().is_success() {
            return Err(registry_error("GET", &url, &mut resp));
        }
        let body = resp
            .body_mut()
            .with_config()
            .limit(MAX_TOKEN_RESPONSE)
            .read_to_vec()
            .map_err(|e| transport("GET", &url, e))?;
        #[derive(serde::Deserialize)]
        struct TokenResponse {
            #[serde(default)]
            token: Option<String>,
            #[serde(default)]
            access_token: Option<String>,
        }
        let parsed: TokenResponse =
            serde_json::from_slice(&body).map_err(|_| OciError::Protocol {
                method: "GET",
                url: url.clone(),
                reason: "the token server's answer is not the expected JSON object".to_string(),
            })?;
        parsed
            .token
            .filter(|t| !t.is_empty())
            .or(parsed.access_token.filter(|t| !t.is_empty()))
            .ok_or_else(|| OciError::Protocol {
                method: "GET",
                url,
                reason: "the token server's answer has no \"token\" or \"access_token\""
                    .to_string(),
            })
    }

    /// The error for a final 401/403: names the registry and where credentials come from.
    pub(super) fn unauthorized(
        &self,
        method: &'static str,
        url: &str,
        resp: &mut Response<Body>,
        scope: Option<&str>,
    ) -> OciError {
        let status = resp.status().as_u16();
        let (_, message) = error_details(method, resp);
        let registry = &self.registry;
        let access = match scope {
            Some(s) if s.ends_with("push") => "push",
            _ => "pull",
        };
        let how = format!(
            "set {ENV_USERNAME} and {ENV_PASSWORD} (or {ENV_TOKEN} for a bearer token), or \
             add auths.\"{registry}\".auth (base64 of user:password) to \
             $DOCKER_CONFIG/config.json or ~/.docker/config.json (e.g. with `docker login \
             {registry}`)"
        );
        let advice = match &self.credentials {
            None => format!("no credentials are set for {registry}: {how}"),
            Some(creds) => {
                let source = self
                    .credentials_source
                    .as_deref()
                    .unwrap_or("given to the client");
                let (who, plural) = match creds {
                    Credentials::Basic { username, .. } => (
                        format!("the credentials of user {username:?} ({source})"),
                        true,
                    ),
                    Credentials::Bearer(_) => (format!("the bearer token ({source})"), false),
                };
                if status == 403 {
                    let verb = if plural { "do" } else { "does" };
                    format!(
                        "{who} {verb} not grant {access} access to this repository; to use \
                         other credentials, {how}"
                    )
                } else {
                    let verb = if plural { "were" } else { "was" };
                    format!("{who} {verb} not accepted; check them, or {how}")
                }
            }
        };
        OciError::Unauthorized {
            method,
            url: url.to_string(),
            registry: registry.clone(),
            status,
            message,
            advice,
        }
    }
}

/// One challenge of a `WWW-Authenticate` header: scheme (lowercase) and parameters.
#[derive(Debug, PartialEq, Eq)]
struct Challenge {
    scheme: String,
    params: Vec<(String, String)>,
}

impl Challenge {
    fn param(&self, name: &str) -> Option<&str> {
        self.params
            .iter()
            .find(|(k, _)| k.eq_ignore_ascii_case(name))
            .map(|(_, v)| v.as_str())
    }
}

/// Parses `Bearer realm="https://auth/token",service="registry",scope="repository:r:pull"`
/// (several challenges may share one header: `Basic realm="x", Bearer realm="y"`).
fn parse_challenges(header: &str) -> Vec<Challenge> {
    let s = header.as_bytes();
    let sep = |b: u8| b == b',' || b.is_ascii_whitespace();
    let mut out: Vec<Challenge> = Vec::new();
    let mut i = 0;
    while i < s.len() {
        while i < s.len() && sep(s[i]) {
            i += 1;
        }
        let start = i;
        while i < s.len() && !sep(s[i]) && s[i] != b'=' {
            i += 1;
        }
        if start == i {
            i += 1; // a stray '='
            continue;
        }
        let token = &header[start..i];
        let mut j = i;
        while j < s.len() && s[j] == b' ' {
            j += 1;
        }
        if j < s.len() && s[j] == b'=' {
            j += 1;
            while j < s.len() && s[j] == b' ' {
                j += 1;
            }
            let value = if j < s.len() && s[j] == b'"' {
                j += 1;
                let mut v = Vec::new();
                while j < s.len() && s[j] != b'"' {
                    if s[j] == b'\\' && j + 1 < s.len() {
                        j += 1;
                    }
                    v.push(s[j]);
                    j += 1;
                }
                j += 1; // the closing quote
                String::from_utf8_lossy(&v).into_owned()
            } else {
                let st = j;
                while j < s.len() && !sep(s[j]) {
                    j += 1;
                }
                header[st..j].to_string()
            };
            if let Some(c) = out.last_mut() {
                c.params.push((token.to_ascii_lowercase(), value));
            }
        } else {
            out.push(Challenge {
                scheme: token.to_ascii_lowercase(),
                params: Vec::new(),
            });
        }
        i = j;
    }
    out
}

/// Percent-encodes a query parameter value (everything but RFC 3986 unreserved bytes).
fn query_encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for b in value.bytes() {
        if b.is_ascii_alphanumeric() || b"-._~".contains(&b) {
            out.push(b as char);
        } else {
            out.push_str(&format!("%{b:02X}"));
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn www_authenticate_challenges() {
        let c = parse_challenges(
            r#"Bearer realm="https://auth.example.com/token",service="registry.example.com",scope="repository:a/b:pull,push""#,
        );
        assert_eq!(c.len(), 1);
        assert_eq!(c[0].scheme, "bearer");
        assert_eq!(c[0].param("realm"), Some("https://auth.example.com/token"));
        assert_eq!(c[0].param("Service"), Some("registry.example.com"));
        assert_eq!(c[0].param("scope"), Some("repository:a/b:pull,push"));
        assert_eq!(c[0].param("error"), None);

        let c = parse_challenges(
            r#"Basic realm="Registry \"x\"", Bearer realm=http://h/t , error=insufficient_scope"#,
        );
        assert_eq!(c.len(), 2);
        assert_eq!(c[0].scheme, "basic");
        assert_eq!(c[0].param("realm"), Some("Registry \"x\""));
        assert_eq!(c[1].scheme, "bearer");
        assert_eq!(c[1].param("realm"), Some("http://h/t"));
        assert_eq!(c[1].param("error"), Some("insufficient_scope"));
        assert!(parse_challenges("").is_empty());
        assert_eq!(parse_challenges("Basic")[0].scheme, "basic");

        assert_eq!(
            query_encode("repository:a/b:pull,push x"),
            "repository%3Aa%2Fb%3Apull%2Cpush%20x"
        );
        assert_eq!(query_encode("reg.example-1_~"), "reg.example-1_~");
    }
}
