//! What the integration tests of `serve` share: an in-process server on a loopback port and
//! a private PKI for its TLS tests.

use std::net::SocketAddr;
use std::sync::Arc;

use tonic::transport::Channel;
use wbuild_remote::{RemoteError, ServeConfig, TlsConfig, serve};
use wbuild_store::Store;

/// `serve` over a fresh store in a temporary directory, on `127.0.0.1` and a free port, in
/// its own tokio runtime. Dropping it stops the server and checks that it stopped cleanly.
pub struct Server {
    pub rt: tokio::runtime::Runtime,
    pub addr: SocketAddr,
    #[allow(dead_code)]
    pub store: Arc<Store>,
    /// The token the server was configured with.
    #[allow(dead_code)]
    pub token: Option<String>,
    stop: Option<tokio::sync::oneshot::Sender<()>>,
    done: Option<tokio::task::JoinHandle<Result<(), RemoteError>>>,
    _dir: tempfile::TempDir,
}

impl Server {
    pub fn start(config: ServeConfig) -> Server {
        let dir = tempfile::tempdir().unwrap();
        let store = Arc::new(Store::open(dir.path()).unwrap());
        let rt = tokio::runtime::Runtime::new().unwrap();
        let listener = rt
            .block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))
            .unwrap();
        let addr = listener.local_addr().unwrap();
        let token = config.token.clone();
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let done = rt.spawn(serve(store.clone(), listener, config, async {
            let _ = rx.await;
        }));
        Server {
            rt,
            addr,
            store,
            token,
            stop: Some(tx),
            done: Some(done),
            _dir: dir,
        }
    }

    /// A plain-text channel to the server.
    #[allow(dead_code)]
    pub fn channel(&self) -> Channel {
        self.rt
            .block_on(
                Channel::from_shared(format!("http://{}", self.addr))
                    .unwrap()
                    .connect(),
            )
            .unwrap()
    }
}

impl Drop for Server {
    fn drop(&mut self) {
        if let Some(tx) = self.stop.take() {
            let _ = tx.send(());
        }
        if let Some(done) = self.done.take() {
            let r = self.rt.block_on(done).unwrap();
            // A test that already failed reports its own panic, not a second one.
            if !std::thread::panicking() {
                assert!(r.is_ok(), "{r:?}");
            }
        }
    }
}

/// A CA and, signed by it, a server certificate for `server_names` and a client certificate,
/// as PEM (certificate, key) pairs.
#[allow(dead_code)]
pub struct Pki {
    pub ca_pem: String,
    pub server: (String, String),
    pub client: (String, String),
}

#[allow(dead_code)]
impl Pki {
    pub fn new(server_names: &[&str]) -> Pki {
        use rcgen::{
            BasicConstraints, CertificateParams, CertifiedIssuer, DnType, ExtendedKeyUsagePurpose,
            IsCa, KeyPair,
        };
        let mut ca_params = CertificateParams::new(Vec::<String>::new()).unwrap();
        ca_params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
        ca_params
            .distinguished_name
            .push(DnType::CommonName, "wbuild test CA");
        let ca = CertifiedIssuer::self_signed(ca_params, KeyPair::generate().unwrap()).unwrap();
        let leaf = |names: Vec<String>, usage| {
            let key = KeyPair::generate().unwrap();
            let mut p = CertificateParams::new(names).unwrap();
            p.extended_key_usages = vec![usage];
            let cert = p.signed_by(&key, &ca).unwrap();
            (cert.pem(), key.serialize_pem())
        };
        Pki {
            ca_pem: ca.pem(),
            server: leaf(
                server_names.iter().map(|&n| n.to_owned()).collect(),
                ExtendedKeyUsagePurpose::ServerAuth,
            ),
            client: leaf(vec!["client".into()], ExtendedKeyUsagePurpose::ClientAuth),
        }
    }

    /// The server side of TLS with the server certificate; with `client_ca`, it requires a
    /// client certificate signed by this CA.
    pub fn server_tls(&self, client_ca: bool) -> TlsConfig {
        TlsConfig {
            cert_pem: self.server.0.clone().into_bytes(),
            key_pem: self.server.1.clone().into_bytes(),
            client_ca_pem: client_ca.then(|| self.ca_pem.clone().into_bytes()),
        }
    }
}
