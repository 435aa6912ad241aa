//! References (`oci://host[:port]/repo/path[:tag][@sha256:<hex>]`) and the name grammars
//! of registries, repositories, tags and digests.

use std::fmt;
use std::net::{Ipv4Addr, Ipv6Addr};

use super::error::{OciError, invalid};

/// Longest repository name accepted (clients SHOULD limit names to 255 characters).
const MAX_REPOSITORY_LEN: usize = 255;
/// Longest tag (per the spec's tag regex).
const MAX_TAG_LEN: usize = 128;

pub(super) const REFERENCE_FORMAT: &str =
    "oci://host[:port]/repository[:tag][@sha256:<64 hex digits>]";

/// `oci://host[:port]/repo/path[:tag][@sha256:hex]`
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Reference {
    pub registry: String,
    pub repository: String,
    pub tag: Option<String>,
    pub digest: Option<String>,
}

impl Reference {
    /// Parses `oci://host[:port]/repo/path[:tag][@sha256:hex]`.
    ///
    /// The repository must follow the OCI name grammar (lowercase `[a-z0-9]` components
    /// joined by `.`, `_`, `__` or dashes, separated by `/`), the tag the spec's
    /// `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}` and the digest `sha256:<64 lowercase hex>`.
    /// When neither tag nor digest is given both stay `None`: callers decide the default.
    pub fn parse(s: &str) -> Result<Reference, OciError> {
        let err = |reason: ReferenceError| OciError::InvalidReference {
            input: s.to_string(),
            reason,
        };
        let Some(rest) = s.strip_prefix("oci://") else {
            return Err(err(match s.split_once("://") {
                Some((scheme, _)) => ReferenceError::Scheme(scheme.to_string()),
                None => ReferenceError::NoScheme,
            }));
        };
        let Some((registry, path)) = rest.split_once('/') else {
            return Err(err(if rest.is_empty() {
                ReferenceError::Empty
            } else {
                ReferenceError::NoRepository(rest.to_string())
            }));
        };
        if registry.is_empty() {
            return Err(err(ReferenceError::NoRegistry));
        }
        parse_registry(registry).map_err(|error| {
            err(ReferenceError::Registry {
                registry: registry.to_string(),
                error,
            })
        })?;

        let (name_and_tag, digest) = match path.split_once('@') {
            Some((n, d)) => {
                check_digest(d).map_err(|error| {
                    err(ReferenceError::Digest {
                        digest: d.to_string(),
                        error,
                    })
                })?;
                (n, Some(d.to_string()))
            }
            None => (path, None),
        };
        let (repository, tag) = match name_and_tag.split_once(':') {
            Some((r, t)) => {
                check_tag(t).map_err(|error| {
                    err(ReferenceError::Tag {
                        tag: t.to_string(),
                        error,
                    })
                })?;
                (r, Some(t.to_string()))
            }
            None => (name_and_tag, None),
        };
        check_repository(repository).map_err(|error| {
            err(ReferenceError::Repository {
                repository: repository.to_string(),
                error,
            })
        })?;
        Ok(Reference {
            registry: registry.to_string(),
            repository: repository.to_string(),
            tag,
            digest,
        })
    }

    /// The manifest reference to use in URLs: the digest if present, else the tag.
    pub fn manifest_ref(&self) -> Option<&str> {
        self.digest.as_deref().or(self.tag.as_deref())
    }
}

impl fmt::Display for Reference {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "oci://{}/{}", self.registry, self.repository)?;
        if let Some(tag) = &self.tag {
            write!(f, ":{tag}")?;
        }
        if let Some(digest) = &self.digest {
            write!(f, "@{digest}")?;
        }
        Ok(())
    }
}

impl std::str::FromStr for Reference {
    type Err = OciError;
    fn from_str(s: &str) -> Result<Reference, OciError> {
        Reference::parse(s)
    }
}

/// Host part of a registry address.
#[derive(Debug, PartialEq, Eq)]
pub(super) enum Host<'a> {
    Name(&'a str),
    V4(Ipv4Addr),
    V6(Ipv6Addr),
}

impl Host<'_> {
    pub(super) fn is_loopback(&self) -> bool {
        match self {
            Host::Name(n) => n.eq_ignore_ascii_case("localhost"),
            Host::V4(a) => a.is_loopback(),
            Host::V6(a) => a.is_loopback(),
        }
    }
}

/// Why a registry, repository, tag, digest or media type is not valid.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum InvalidName {
    #[error("IPv6 address is missing its closing ']'")]
    Ipv6Unclosed,
    #[error("{0:?} is not a valid IPv6 address")]
    Ipv6(String),
    #[error("unexpected {0:?} after the IPv6 address")]
    AfterIpv6(String),
    #[error("the host is empty")]
    EmptyHost,
    #[error(
        "host {0:?} is not a valid host name (letters, digits, '-' and '.' only) or IP address"
    )]
    HostName(String),
    #[error("port {0:?} is not a number between 1 and 65535")]
    Port(String),
    #[error("give host[:port] without a scheme (e.g. 127.0.0.1:5000)")]
    RegistryScheme,
    #[error("the repository name is empty")]
    EmptyRepository,
    #[error("is {0} characters long, more than the {MAX_REPOSITORY_LEN} allowed")]
    RepositoryTooLong(usize),
    #[error("must be lowercase (repository names allow only {REPOSITORY_CHARS})")]
    Uppercase,
    #[error("contains {0:?}; repository names allow only {REPOSITORY_CHARS}")]
    RepositoryChar(char),
    #[error("has an empty path component (leading, trailing or doubled '/')")]
    EmptyComponent,
    #[error("component {0:?} must start and end with a lowercase letter or digit")]
    ComponentEnds(String),
    #[error(
        "component {component:?} has the separator {separator:?}; letters and digits may be \
         joined only by one '.', one or two '_', or any number of '-'"
    )]
    Separator {
        component: String,
        separator: String,
    },
    #[error("the tag is empty")]
    EmptyTag,
    #[error("is {0} characters long, more than the {MAX_TAG_LEN} allowed")]
    TagTooLong(usize),
    #[error("must start with a letter, digit or '_'")]
    TagStart,
    #[error("contains {0:?}; tags allow only letters, digits, '.', '_' and '-'")]
    TagChar(char),
    #[error("must be sha256:<64 lowercase hex digits>")]
    DigestForm,
    #[error("unsupported algorithm {0:?}: only sha256 digests are supported")]
    DigestAlgorithm(String),
    #[error("has {0} hex digits after \"sha256:\", expected 64")]
    DigestLength(usize),
    #[error("contains {0:?}, which is not a hex digit")]
    NotHex(char),
    #[error("hex digits must be lowercase")]
    UppercaseHex,
    #[error("must be a non-empty type/subtype without spaces")]
    MediaType,
}

/// Why a reference string is not `oci://host[:port]/repository[:tag][@digest]`.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
pub enum ReferenceError {
    #[error("unsupported scheme {0:?}: bundle references start with \"oci://\"")]
    Scheme(String),
    #[error("missing the \"oci://\" scheme")]
    NoScheme,
    #[error("missing the registry host and repository")]
    Empty,
    #[error("missing the repository after the registry {0:?}")]
    NoRepository(String),
    #[error("missing the registry host before the repository")]
    NoRegistry,
    #[error("registry {registry:?}: {error}")]
    Registry {
        registry: String,
        error: InvalidName,
    },
    #[error("digest {digest:?}: {error}")]
    Digest { digest: String, error: InvalidName },
    #[error("tag {tag:?}: {error}")]
    Tag { tag: String, error: InvalidName },
    #[error("repository {repository:?}: {error}")]
    Repository {
        repository: String,
        error: InvalidName,
    },
}

/// What repository names may hold.
const REPOSITORY_CHARS: &str = "lowercase letters, digits, '.', '_', '-' and '/'";

/// Splits `host[:port]` / `[v6]:port` and checks both parts.
pub(super) fn parse_registry(s: &str) -> Result<(Host<'_>, Option<u16>), InvalidName> {
    let (host, port) = if let Some(rest) = s.strip_prefix('[') {
        let Some((addr, after)) = rest.split_once(']') else {
            return Err(InvalidName::Ipv6Unclosed);
        };
        let addr: Ipv6Addr = addr
            .parse()
            .map_err(|_| InvalidName::Ipv6(addr.to_string()))?;
        let port = match after {
            "" => None,
            _ => match after.strip_prefix(':') {
                Some(p) => Some(p),
                None => return Err(InvalidName::AfterIpv6(after.to_string())),
            },
        };
        (Host::V6(addr), port)
    } else {
        let (host, port) = match s.split_once(':') {
            Some((h, p)) => (h, Some(p)),
            None => (s, None),
        };
        if host.is_empty() {
            return Err(InvalidName::EmptyHost);
        }
        let host = if let Ok(v4) = host.parse::<Ipv4Addr>() {
            Host::V4(v4)
        } else {
            for label in host.split('.') {
                if label.is_empty()
                    || label.starts_with('-')
                    || label.ends_with('-')
                    || !label
                        .bytes()
                        .all(|b| b.is_ascii_alphanumeric() || b == b'-')
                {
                    return Err(InvalidName::HostName(host.to_string()));
                }
            }
            Host::Name(host)
        };
        (host, port)
    };
    let port = match port {
        None => None,
        Some(p) => match p.parse::<u16>() {
            Ok(n) if n != 0 && p.bytes().all(|b| b.is_ascii_digit()) => Some(n),
            _ => return Err(InvalidName::Port(p.to_string())),
        },
    };
    Ok((host, port))
}

/// OCI repository name grammar:
/// `[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*(\/[a-z0-9]+((\.|_|__|-+)[a-z0-9]+)*)*`.
fn check_repository(repo: &str) -> Result<(), InvalidName> {
    if repo.is_empty() {
        return Err(InvalidName::EmptyRepository);
    }
    if repo.len() > MAX_REPOSITORY_LEN {
        return Err(InvalidName::RepositoryTooLong(repo.len()));
    }
    if repo.chars().any(|c| c.is_ascii_uppercase()) {
        return Err(InvalidName::Uppercase);
    }
    if let Some(c) = repo
        .chars()
        .find(|&c| !(c.is_ascii_lowercase() || c.is_ascii_digit() || "._-/".contains(c)))
    {
        return Err(InvalidName::RepositoryChar(c));
    }
    for component in repo.split('/') {
        if component.is_empty() {
            return Err(InvalidName::EmptyComponent);
        }
        let bytes = component.as_bytes();
        let alnum = |b: u8| b.is_ascii_lowercase() || b.is_ascii_digit();
        if !alnum(bytes[0]) || !alnum(bytes[bytes.len() - 1]) {
            return Err(InvalidName::ComponentEnds(component.to_string()));
        }
        let mut i = 0;
        while i < bytes.len() {
            if alnum(bytes[i]) {
                i += 1;
                continue;
            }
            let start = i;
            while i < bytes.len() && !alnum(bytes[i]) {
                i += 1;
            }
            let sep = &component[start..i];
            if !(sep == "." || sep == "_" || sep == "__" || sep.bytes().all(|b| b == b'-')) {
                return Err(InvalidName::Separator {
                    component: component.to_string(),
                    separator: sep.to_string(),
                });
            }
        }
    }
    Ok(())
}

/// Tag grammar: `[a-zA-Z0-9_][a-zA-Z0-9._-]{0,127}`.
fn check_tag(tag: &str) -> Result<(), InvalidName> {
    if tag.is_empty() {
        return Err(InvalidName::EmptyTag);
    }
    if tag.len() > MAX_TAG_LEN {
        return Err(InvalidName::TagTooLong(tag.len()));
    }
    let first = tag.as_bytes()[0];
    if !(first.is_ascii_alphanumeric() || first == b'_') {
        return Err(InvalidName::TagStart);
    }
    if let Some(c) = tag
        .chars()
        .find(|&c| !(c.is_ascii_alphanumeric() || "._-".contains(c)))
    {
        return Err(InvalidName::TagChar(c));
    }
    Ok(())
}

/// `sha256:<64 lowercase hex>`.
fn check_digest(digest: &str) -> Result<(), InvalidName> {
    let Some((algorithm, hex)) = digest.split_once(':') else {
        return Err(InvalidName::DigestForm);
    };
    if algorithm != "sha256" {
        return Err(InvalidName::DigestAlgorithm(algorithm.to_string()));
    }
    if hex.len() != 64 {
        return Err(InvalidName::DigestLength(hex.len()));
    }
    if let Some(c) = hex.chars().find(|c| !c.is_ascii_hexdigit()) {
        return Err(InvalidName::NotHex(c));
    }
    if hex.bytes().any(|b| b.is_ascii_uppercase()) {
        return Err(InvalidName::UppercaseHex);
    }
    Ok(())
}

pub(super) fn validate_repository(repo: &str) -> Result<(), OciError> {
    check_repository(repo).map_err(|r| invalid("repository", repo, r))
}

pub(super) fn validate_digest(digest: &str) -> Result<(), OciError> {
    check_digest(digest).map_err(|r| invalid("digest", digest, r))
}

/// A manifest reference: a digest when it contains ':', else a tag.
pub(super) fn validate_manifest_ref(reference: &str) -> Result<bool, OciError> {
    if reference.contains(':') {
        check_digest(reference).map_err(|r| invalid("manifest digest", reference, r))?;
        Ok(true)
    } else {
        check_tag(reference).map_err(|r| invalid("tag", reference, r))?;
        Ok(false)
    }
}

pub(super) fn check_registry_arg(registry: &str) -> Result<Host<'_>, OciError> {
    if registry.contains("://") {
        return Err(invalid("registry", registry, InvalidName::RegistryScheme));
    }
    let (host, _port) = parse_registry(registry).map_err(|r| invalid("registry", registry, r))?;
    Ok(host)
}

#[cfg(test)]
mod tests {
    use super::*;

    const D: &str = "sha256:0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef";

    fn parse_err(s: &str) -> String {
        match Reference::parse(s) {
            Ok(r) => panic!("{s:?} parsed as {r:?}"),
            Err(e) => e.to_string(),
        }
    }

    fn assert_err(s: &str, needles: &[&str]) {
        let msg = parse_err(s);
        assert!(
            msg.contains(&format!("{s:?}")),
            "error does not name the input: {msg}"
        );
        for needle in needles {
            assert!(
                msg.contains(needle),
                "error for {s:?} lacks {needle:?}: {msg}"
            );
        }
    }

    fn round_trip(s: &str) -> Reference {
        let r = Reference::parse(s).unwrap_or_else(|e| panic!("{e}"));
        assert_eq!(r.to_string(), s);
        assert_eq!(Reference::parse(&r.to_string()).unwrap(), r);
        r
    }

    #[test]
    fn parses_tag() {
        let r = round_trip("oci://localhost:5000/wbuild/toolchains/clang:18.1.8");
        assert_eq!(
            r,
            Reference {
                registry: "localhost:5000".into(),
                repository: "wbuild/toolchains/clang".into(),
                tag: Some("18.1.8".into()),
                digest: None,
            }
        );
        assert_eq!(r.manifest_ref(), Some("18.1.8"));
    }

    #[test]
    fn parses_digest_and_tag_plus_digest() {
        let r = round_trip(&format!("oci://127.0.0.1:5000/a/b@{D}"));
        assert_eq!(r.tag, None);
        assert_eq!(r.digest.as_deref(), Some(D));
        assert_eq!(r.manifest_ref(), Some(D));

        let r = round_trip(&format!("oci://127.0.0.1/a:v1@{D}"));
        assert_eq!(r.registry, "127.0.0.1");
        assert_eq!(r.tag.as_deref(), Some("v1"));
        assert_eq!(r.manifest_ref(), Some(D), "digest wins over the tag");
    }

    #[test]
    fn parses_without_tag_or_digest() {
        let r = round_trip("oci://registry.example.com/wasi-tools");
        assert_eq!(r.registry, "registry.example.com");
        assert_eq!(r.repository, "wasi-tools");
        assert_eq!(r.tag, None);
        assert_eq!(r.digest, None);
        assert_eq!(r.manifest_ref(), None);
    }

    #[test]
    fn parses_ports_ipv6_and_nested_repositories() {
        let r = round_trip("oci://[::1]:5000/x/y/z/w:latest");
        assert_eq!(r.registry, "[::1]:5000");
        assert_eq!(r.repository, "x/y/z/w");
        round_trip("oci://[::1]/x");
        round_trip("oci://my-registry.local:65535/a.b/c_d/e__f/g--h/i-j:_Tag.1-x");
        let max_tag = format!("oci://h/r:{}", "a".repeat(128));
        round_trip(&max_tag);
        let s: Reference = "oci://h/r:t".parse().unwrap();
        assert_eq!(s.tag.as_deref(), Some("t"));
    }

    #[test]
    fn rejects_bad_schemes_and_hosts() {
        assert_err("localhost:5000/a:b", &["missing the \"oci://\" scheme"]);
        assert_err("https://localhost/a", &["unsupported scheme \"https\""]);
        assert_err("docker://localhost/a", &["unsupported scheme \"docker\""]);
        assert_err("oci:///repo:tag", &["missing the registry host"]);
        assert_err("oci://", &["missing the registry host and repository"]);
        assert_err("oci://localhost:5000", &["missing the repository"]);
        assert_err("oci://localhost:5000/", &["repository \"\"", "empty"]);
        assert_err("oci://local_host/a", &["not a valid host name"]);
        assert_err("oci://localhost:0/a", &["port \"0\""]);
        assert_err("oci://localhost:99999/a", &["port \"99999\""]);
        assert_err("oci://localhost:+5/a", &["port \"+5\""]);
        assert_err("oci://[::1/a", &["closing ']'"]);
        assert_err("oci://[zz]:5/a", &["not a valid IPv6 address"]);
    }

    #[test]
    fn rejects_bad_repositories() {
        assert_err(
            "oci://localhost/Wbuild/clang:1",
            &["repository \"Wbuild/clang\"", "lowercase"],
        );
        assert_err("oci://localhost/a//b", &["empty path component"]);
        assert_err("oci://localhost/a/:t", &["empty path component"]);
        assert_err("oci://localhost/-a", &["must start and end"]);
        assert_err("oci://localhost/a.", &["must start and end"]);
        assert_err("oci://localhost/a..b", &["separator \"..\""]);
        assert_err("oci://localhost/a___b", &["separator \"___\""]);
        assert_err("oci://localhost/a.-b", &["separator \".-\""]);
        assert_err("oci://localhost/a b", &["contains ' '"]);
        let long = format!("oci://localhost/{}", "a".repeat(256));
        assert_err(&long, &["more than the 255 allowed"]);
    }

    #[test]
    fn rejects_bad_tags_and_digests() {
        assert_err("oci://localhost/a:", &["tag \"\"", "empty"]);
        assert_err("oci://localhost/a:.x", &["must start with"]);
        assert_err("oci://localhost/a:x:y", &["contains ':'"]);
        assert_err(
            &format!("oci://h/r:{}", "a".repeat(129)),
            &["more than the 128 allowed"],
        );
        assert_err("oci://localhost/a@", &["digest \"\""]);
        assert_err(
            "oci://localhost/a@sha256:abc",
            &["has 3 hex digits", "expected 64"],
        );
        assert_err(
            &format!(
                "oci://localhost/a@{}",
                D.to_uppercase().replace("SHA256", "sha256")
            ),
            &["lowercase"],
        );
        assert_err(
            &format!("oci://localhost/a@{}", D.replace('0', "g")),
            &["'g'", "not a hex digit"],
        );
        assert_err(
            &format!("oci://localhost/a@sha512:{}", "0".repeat(128)),
            &["only sha256 digests are supported"],
        );
        assert_err(&format!("oci://localhost/a@{}", &D[7..]), &["sha256:<64"]);
    }
}
