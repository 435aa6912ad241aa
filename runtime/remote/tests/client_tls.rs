//! The client against `serve` over TLS and with a token: `grpcs://` with a private CA, a
//! server whose certificate the client must not trust, client certificates, and writes with
//! and without credentials (token file, `authorization` header). What an attacker on the
//! path or with a stolen certificate could try: impersonate the server with a certificate
//! from another CA (refused before any credential is sent), serve plain text to a `grpcs://`
//! client (no downgrade), connect without the client certificate the server requires.

mod common;

use std::path::{Path, PathBuf};

use wbuild_remote::grpc::action_cache_client::ActionCacheClient;
use wbuild_remote::{ClientError, ConnectOptions, RemoteCache, ServeConfig, reapi};
use wbuild_store::Digest;

use common::Server;

const TOKEN: &str = "client-tls-test-token";

impl Server {
    fn tls_url(&self) -> String {
        format!("grpcs://127.0.0.1:{}", self.addr.port())
    }
}

/// A CA, a server certificate for `localhost` and `127.0.0.1`, and a client certificate,
/// written as PEM files.
struct Pki {
    dir: tempfile::TempDir,
    certs: common::Pki,
}

impl Pki {
    fn new() -> Pki {
        let certs = common::Pki::new(&["localhost", "127.0.0.1"]);
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("ca.pem"), &certs.ca_pem).unwrap();
        std::fs::write(dir.path().join("client.pem"), &certs.client.0).unwrap();
        std::fs::write(dir.path().join("client.key"), &certs.client.1).unwrap();
        std::fs::write(dir.path().join("token"), format!("{TOKEN}\n")).unwrap();
        std::fs::write(dir.path().join("wrong-token"), "not-the-token\n").unwrap();
        Pki { dir, certs }
    }

    fn path(&self, name: &str) -> PathBuf {
        self.dir.path().join(name)
    }

    /// A TLS server with the token; with `client_ca`, it requires a client certificate.
    fn server(&self, client_ca: bool, token_for_reads: bool) -> Server {
        Server::start(ServeConfig {
            token: Some(TOKEN.into()),
            require_token_for_reads: token_for_reads,
            tls: Some(self.certs.server_tls(client_ca)),
            ..Default::default()
        })
    }

    /// Options trusting this CA, plus `more`.
    fn trusting(&self, more: ConnectOptions) -> ConnectOptions {
        ConnectOptions {
            ca: Some(self.path("ca.pem")),
            ..more
        }
    }

    fn token(&self) -> ConnectOptions {
        ConnectOptions {
            token_file: Some(self.path("token")),
            ..Default::default()
        }
    }

    fn client_cert(&self) -> ConnectOptions {
        ConnectOptions {
            client_cert: Some(self.path("client.pem")),
            client_key: Some(self.path("client.key")),
            ..Default::default()
        }
    }
}

fn connect(url: &str, options: &ConnectOptions) -> Result<RemoteCache, ClientError> {
    RemoteCache::connect_with(url, "", options)
}

/// Uploads a blob and records an action result naming it: the writes a build makes.
fn write_result(remote: &RemoteCache, tag: &str) -> Result<Digest, ClientError> {
    let f = remote.function();
    let blob = format!("output of {tag}\n").into_bytes();
    let out = Digest::of(f, &blob);
    remote.upload(&[(out, blob)])?;
    let action = Digest::of(f, format!("action {tag}").as_bytes());
    let result = reapi::ActionResult {
        output_files: vec![reapi::OutputFile {
            path: "out.txt".into(),
            digest: Some(out.to_proto()),
            ..Default::default()
        }],
        ..Default::default()
    };
    remote.update_action_result(&action, &result)?;
    Ok(action)
}

/// The error of a connection that must fail.
fn refused(r: Result<RemoteCache, ClientError>, what: &str) -> ClientError {
    match r {
        Ok(_) => panic!("{what}: the connection succeeded"),
        Err(e) => e,
    }
}

fn assert_asks_for_credentials(e: &ClientError) {
    let msg = e.to_string();
    assert!(
        msg.contains("--remote-token-file") && msg.contains("--remote-header"),
        "{msg}"
    );
    assert!(!msg.contains(TOKEN), "{msg}");
}

#[test]
fn grpcs_with_the_ca_works_and_without_it_the_error_names_the_url_and_the_flag() {
    let pki = Pki::new();
    let s = pki.server(false, false);
    let url = s.tls_url();
    let remote = connect(&url, &pki.trusting(pki.token())).unwrap();
    let action = write_result(&remote, "ca").unwrap();
    let got = remote.get_action_result(&action, &[]).unwrap().unwrap();
    assert_eq!(got.output_files[0].path, "out.txt");
    assert!(
        s.store.has(
            &Digest::from_proto(
                remote.function(),
                got.output_files[0].digest.as_ref().unwrap()
            )
            .unwrap()
        )
    );

    // Mozilla's roots alone do not vouch for a private CA.
    let e = refused(connect(&url, &pki.token()), "untrusted server");
    let msg = e.to_string();
    assert!(matches!(e, ClientError::Connect { .. }), "{e:?}");
    assert!(msg.contains(&url) && msg.contains("--remote-ca"), "{msg}");
    assert!(!msg.contains(TOKEN), "{msg}");

    // A server with a certificate from another CA (an impostor on the path) is refused
    // though the client trusts a CA.
    let stranger = Pki::new();
    let e = refused(
        connect(&url, &stranger.trusting(stranger.token())),
        "impostor",
    );
    assert!(e.to_string().contains("--remote-ca"), "{e}");
}

#[test]
fn grpcs_does_not_fall_back_to_plain_text() {
    let plain = Server::start(ServeConfig {
        allow_anonymous_writes: true,
        ..Default::default()
    });
    let pki = Pki::new();
    let url = plain.tls_url();
    let e = refused(
        connect(&url, &pki.trusting(pki.token())),
        "plain-text server",
    );
    assert!(e.to_string().contains(&url), "{e}");
    // The same server answers grpc://.
    connect(
        &format!("grpc://127.0.0.1:{}", plain.addr.port()),
        &ConnectOptions::default(),
    )
    .unwrap();
}

#[test]
fn a_required_client_certificate_works_when_given_and_fails_when_not() {
    let pki = Pki::new();
    let s = pki.server(true, false);
    let url = s.tls_url();
    let with_cert = ConnectOptions {
        token_file: Some(pki.path("token")),
        ..pki.trusting(pki.client_cert())
    };
    let remote = connect(&url, &with_cert).unwrap();
    write_result(&remote, "mtls").unwrap();

    let e = refused(
        connect(&url, &pki.trusting(pki.token())),
        "no client certificate",
    );
    let msg = e.to_string();
    assert!(msg.contains("--remote-client-cert"), "{msg}");

    // A client certificate from another CA is refused too.
    let stranger = Pki::new();
    let foreign = ConnectOptions {
        client_cert: Some(stranger.path("client.pem")),
        client_key: Some(stranger.path("client.key")),
        ..pki.trusting(pki.token())
    };
    assert!(connect(&url, &foreign).is_err());

    // A key that is not a key is named, before anything is sent.
    std::fs::write(pki.path("bad.key"), "not a key").unwrap();
    let bad = ConnectOptions {
        client_key: Some(pki.path("bad.key")),
        ..with_cert.clone()
    };
    let e = refused(connect(&url, &bad), "bad key");
    assert!(matches!(e, ClientError::Options(_)), "{e:?}");
    assert!(e.to_string().contains("bad.key"), "{e}");
}

#[test]
fn writes_need_the_token_file_and_fail_without_it_with_a_clear_error() {
    let pki = Pki::new();
    let s = pki.server(false, false);
    let url = s.tls_url();
    let remote = connect(&url, &pki.trusting(pki.token())).unwrap();
    write_result(&remote, "token").unwrap();

    // Reads are anonymous on this server: connecting works, writes do not.
    let anonymous = connect(&url, &pki.trusting(ConnectOptions::default())).unwrap();
    let f = anonymous.function();
    let blob = b"anonymous write".to_vec();
    let d = Digest::of(f, &blob);
    let e = anonymous.upload(&[(d, blob)]).unwrap_err();
    assert_asks_for_credentials(&e);
    assert!(!s.store.has(&d));
    let e = anonymous
        .update_action_result(
            &Digest::of(f, b"anonymous action"),
            &reapi::ActionResult::default(),
        )
        .unwrap_err();
    assert_asks_for_credentials(&e);

    // A wrong token is PERMISSION_DENIED, with the same advice.
    let wrong = ConnectOptions {
        token_file: Some(pki.path("wrong-token")),
        ..pki.trusting(ConnectOptions::default())
    };
    let Ok(with_wrong_token) = connect(&url, &wrong) else {
        panic!("reads are anonymous: connecting with a wrong token works");
    };
    let e = write_result(&with_wrong_token, "wrong").unwrap_err();
    assert_asks_for_credentials(&e);
}

#[test]
fn an_authorization_header_works_like_the_token_file() {
    let pki = Pki::new();
    let s = pki.server(false, true);
    let url = s.tls_url();
    let header = ConnectOptions {
        headers: vec![
            ("x-wbuild-team".into(), "infra".into()),
            ("authorization".into(), format!("Bearer {TOKEN}")),
        ],
        ..pki.trusting(ConnectOptions::default())
    };
    let remote = connect(&url, &header).unwrap();
    let action = write_result(&remote, "header").unwrap();
    assert!(remote.get_action_result(&action, &[]).unwrap().is_some());
    assert_eq!(remote.header_names(), ["x-wbuild-team", "authorization"]);

    // This server wants the token for reads too: even GetCapabilities at connect.
    let e = refused(
        connect(&url, &pki.trusting(ConnectOptions::default())),
        "no token for reads",
    );
    assert_asks_for_credentials(&e);

    // The channel handed to other services (the worker's Bots client) carries the
    // credentials too.
    let f = remote.function();
    let other = Digest::of(f, b"over the shared channel");
    remote
        .runtime()
        .block_on(
            ActionCacheClient::new(remote.channel()).update_action_result(
                reapi::UpdateActionResultRequest {
                    action_digest: Some(other.to_proto()),
                    action_result: Some(reapi::ActionResult::default()),
                    digest_function: f.to_reapi(),
                    ..Default::default()
                },
            ),
        )
        .unwrap();
    assert!(remote.get_action_result(&other, &[]).unwrap().is_some());
}

#[test]
fn unusable_options_are_named_before_anything_is_sent() {
    let pki = Pki::new();
    let s = pki.server(false, false);
    let url = s.tls_url();
    let cases: Vec<(ConnectOptions, &str)> = vec![
        (
            ConnectOptions {
                headers: vec![("x-bad".into(), "two\nlines".into())],
                ..pki.trusting(ConnectOptions::default())
            },
            "x-bad",
        ),
        (
            ConnectOptions {
                token_file: Some(pki.path("missing-token")),
                ..pki.trusting(ConnectOptions::default())
            },
            "missing-token",
        ),
        (
            ConnectOptions {
                ca: Some(pki.path("token")),
                ..Default::default()
            },
            "token",
        ),
        (
            ConnectOptions {
                ca: Some(Path::new("/nonexistent/ca.pem").into()),
                ..Default::default()
            },
            "/nonexistent/ca.pem",
        ),
    ];
    for (options, named) in cases {
        let e = refused(connect(&url, &options), "unusable options");
        assert!(matches!(e, ClientError::Options(_)), "{e:?}");
        assert!(e.to_string().contains(named), "{named}: {e}");
        assert!(!e.to_string().contains("lines"), "{e}");
    }
}
