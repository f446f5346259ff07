//! TLS: the certificates `cairn cert` makes (`rcgen`) and the `rustls` configurations a node
//! serves and dials with when started with `--certs-dir`.
//!
//! A certs dir holds `ca.crt` (the cluster's CA), `node.crt`/`node.key` (this node: server
//! and client authentication, named by every host it is reached at) and, for clients,
//! `client.USER.crt`/`.key`. `ca.key` signs new certificates; `cairn cert` writes it there
//! too, and it belongs somewhere safer once the nodes have theirs (`--ca-key`).
//!
//! pgwire and HTTP present `node.crt` and accept a client certificate from the CA if one is
//! offered; between nodes both ends must present one (mutual TLS), so a process without a
//! certificate of the cluster's CA can neither join nor send a Raft message.

use rcgen::{
    BasicConstraints, CertificateParams, DistinguishedName, DnType, ExtendedKeyUsagePurpose, IsCa,
    Issuer, KeyPair, KeyUsagePurpose,
};
use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::path::{Path, PathBuf};
use std::sync::Arc;
use tokio_rustls::rustls;

pub const CA_CERT: &str = "ca.crt";
pub const CA_KEY: &str = "ca.key";
pub const NODE_CERT: &str = "node.crt";
pub const NODE_KEY: &str = "node.key";

/// Certificates are valid this long from when they are made.
const VALID_DAYS: i64 = 5 * 365;

fn io(path: &Path, e: impl std::fmt::Display) -> anyhow::Error {
    anyhow::anyhow!("{}: {e}", path.display())
}

/// Write `text` to a new file (never over an existing one); keys readable by the owner only.
fn write_new(path: &Path, text: &str, secret: bool) -> anyhow::Result<()> {
    use std::io::Write;
    let mut options = std::fs::OpenOptions::new();
    options.write(true).create_new(true);
    #[cfg(unix)]
    if secret {
        use std::os::unix::fs::OpenOptionsExt;
        options.mode(0o600);
    }
    let _ = secret;
    let mut file = options.open(path).map_err(|e| {
        if e.kind() == std::io::ErrorKind::AlreadyExists {
            anyhow::anyhow!(
                "{} exists already; remove it first to make a new one",
                path.display()
            )
        } else {
            io(path, e)
        }
    })?;
    file.write_all(text.as_bytes()).map_err(|e| io(path, e))?;
    file.sync_all().map_err(|e| io(path, e))
}

fn read(path: &Path) -> anyhow::Result<String> {
    std::fs::read_to_string(path).map_err(|e| io(path, e))
}

fn validity(params: &mut CertificateParams) {
    let now = time::OffsetDateTime::now_utc();
    params.not_before = now - time::Duration::hours(1);
    params.not_after = now + time::Duration::days(VALID_DAYS);
}

/// `cairn cert create-ca`: a new CA in `dir` (its key at `ca_key`).
pub fn create_ca(dir: &Path, ca_key: &Path) -> anyhow::Result<PathBuf> {
    std::fs::create_dir_all(dir).map_err(|e| io(dir, e))?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(Vec::<String>::new())?;
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Cairn");
    name.push(DnType::CommonName, "Cairn CA");
    params.distinguished_name = name;
    params.is_ca = IsCa::Ca(BasicConstraints::Unconstrained);
    params.key_usages = vec![KeyUsagePurpose::KeyCertSign, KeyUsagePurpose::CrlSign];
    validity(&mut params);
    let cert = params.self_signed(&key)?;
    write_new(ca_key, &key.serialize_pem(), true)?;
    let path = dir.join(CA_CERT);
    write_new(&path, &cert.pem(), false)?;
    Ok(path)
}

/// A certificate signed by the CA in `dir`, for `common_name` and `hosts`, written to
/// `<stem>.crt` and `<stem>.key` there.
fn issue(
    dir: &Path,
    ca_key: &Path,
    stem: &str,
    common_name: &str,
    hosts: &[String],
    usages: Vec<ExtendedKeyUsagePurpose>,
) -> anyhow::Result<PathBuf> {
    let signing = KeyPair::from_pem(&read(ca_key)?).map_err(|e| io(ca_key, e))?;
    let ca_path = dir.join(CA_CERT);
    let issuer =
        Issuer::from_ca_cert_pem(&read(&ca_path)?, signing).map_err(|e| io(&ca_path, e))?;
    let key = KeyPair::generate()?;
    let mut params = CertificateParams::new(hosts.to_vec())
        .map_err(|e| anyhow::anyhow!("host names {hosts:?}: {e}"))?;
    let mut name = DistinguishedName::new();
    name.push(DnType::OrganizationName, "Cairn");
    name.push(DnType::CommonName, common_name);
    params.distinguished_name = name;
    params.key_usages = vec![
        KeyUsagePurpose::DigitalSignature,
        KeyUsagePurpose::KeyEncipherment,
    ];
    params.extended_key_usages = usages;
    params.use_authority_key_identifier_extension = true;
    validity(&mut params);
    let cert = params.signed_by(&key, &issuer)?;
    write_new(&dir.join(format!("{stem}.key")), &key.serialize_pem(), true)?;
    let path = dir.join(format!("{stem}.crt"));
    write_new(&path, &cert.pem(), false)?;
    Ok(path)
}

/// `cairn cert create-node HOSTS...`: this node's certificate, good for serving clients and
/// other nodes at each of `hosts` and for presenting to other nodes.
pub fn create_node(dir: &Path, ca_key: &Path, hosts: &[String]) -> anyhow::Result<PathBuf> {
    if hosts.is_empty() {
        anyhow::bail!("name at least one host (name or IP address) the node is reached at");
    }
    issue(
        dir,
        ca_key,
        "node",
        "node",
        hosts,
        vec![
            ExtendedKeyUsagePurpose::ServerAuth,
            ExtendedKeyUsagePurpose::ClientAuth,
        ],
    )
}

/// `cairn cert create-client USER`: a client certificate for `user`.
pub fn create_client(dir: &Path, ca_key: &Path, user: &str) -> anyhow::Result<PathBuf> {
    let valid = !user.is_empty()
        && user
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || c == '_' || c == '-' || c == '.');
    if !valid {
        anyhow::bail!("a user name is letters, digits, '_', '-' and '.' (got {user:?})");
    }
    issue(
        dir,
        ca_key,
        &format!("client.{user}"),
        user,
        &[],
        vec![ExtendedKeyUsagePurpose::ClientAuth],
    )
}

/// The TLS settings of a node started with `--certs-dir`.
#[derive(Clone)]
pub struct Tls {
    /// For pgwire and HTTP: the node's certificate; a client certificate of the CA is
    /// checked if offered.
    pub clients: Arc<rustls::ServerConfig>,
    /// For other nodes' connections: a certificate of the CA is required.
    pub peers: Arc<rustls::ServerConfig>,
    /// For connecting to other nodes: their certificate must be the CA's, and this node
    /// presents its own.
    pub dial: Arc<rustls::ClientConfig>,
    /// `node.crt` as read: SCRAM's channel binding (SCRAM-SHA-256-PLUS) hashes it.
    pub cert_pem: Vec<u8>,
}

impl std::fmt::Debug for Tls {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("Tls")
    }
}

fn provider() -> Arc<rustls::crypto::CryptoProvider> {
    Arc::new(rustls::crypto::ring::default_provider())
}

impl Tls {
    /// Load `ca.crt`, `node.crt` and `node.key` from `dir`.
    pub fn load(dir: &Path) -> anyhow::Result<Tls> {
        let ca_path = dir.join(CA_CERT);
        let cert_path = dir.join(NODE_CERT);
        let key_path = dir.join(NODE_KEY);
        let mut roots = rustls::RootCertStore::empty();
        for cert in CertificateDer::pem_file_iter(&ca_path).map_err(|e| io(&ca_path, e))? {
            roots
                .add(cert.map_err(|e| io(&ca_path, e))?)
                .map_err(|e| io(&ca_path, e))?;
        }
        if roots.is_empty() {
            anyhow::bail!("{}: no certificate", ca_path.display());
        }
        let chain: Vec<CertificateDer<'static>> = CertificateDer::pem_file_iter(&cert_path)
            .map_err(|e| io(&cert_path, e))?
            .collect::<Result<_, _>>()
            .map_err(|e| io(&cert_path, e))?;
        let key = PrivateKeyDer::from_pem_file(&key_path).map_err(|e| io(&key_path, e))?;
        let roots = Arc::new(roots);
        let optional =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .allow_unauthenticated()
                .build()?;
        let required =
            rustls::server::WebPkiClientVerifier::builder_with_provider(roots.clone(), provider())
                .build()?;
        let server = |verifier| -> anyhow::Result<Arc<rustls::ServerConfig>> {
            let mut config = rustls::ServerConfig::builder_with_provider(provider())
                .with_safe_default_protocol_versions()?
                .with_client_cert_verifier(verifier)
                .with_single_cert(chain.clone(), key.clone_key())
                .map_err(|e| io(&cert_path, e))?;
            config.alpn_protocols = vec![b"http/1.1".to_vec()];
            Ok(Arc::new(config))
        };
        let clients = server(optional)?;
        let mut peers = (*server(required)?).clone();
        peers.alpn_protocols.clear();
        let dial = rustls::ClientConfig::builder_with_provider(provider())
            .with_safe_default_protocol_versions()?
            .with_root_certificates(roots)
            .with_client_auth_cert(chain.clone(), key.clone_key())
            .map_err(|e| io(&cert_path, e))?;
        Ok(Tls {
            cert_pem: std::fs::read(&cert_path).map_err(|e| io(&cert_path, e))?,
            clients,
            peers: Arc::new(peers),
            dial: Arc::new(dial),
        })
    }

    /// The name a peer's certificate must carry when dialed at `addr` (`host:port`).
    pub fn server_name(addr: &str) -> std::io::Result<ServerName<'static>> {
        let host = match addr.rsplit_once(':') {
            Some((host, _)) => host.trim_start_matches('[').trim_end_matches(']'),
            None => addr,
        };
        ServerName::try_from(host.to_string())
            .map_err(|e| std::io::Error::new(std::io::ErrorKind::InvalidInput, e))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_ca_issues_node_and_client_certificates_that_load() {
        let dir = tempfile::tempdir().unwrap();
        let ca_key = dir.path().join(CA_KEY);
        create_ca(dir.path(), &ca_key).unwrap();
        create_node(dir.path(), &ca_key, &["n1".into(), "127.0.0.1".into()]).unwrap();
        create_client(dir.path(), &ca_key, "ann").unwrap();
        assert!(dir.path().join("client.ann.crt").exists());
        Tls::load(dir.path()).unwrap();
        // Never over an existing file.
        let again = create_ca(dir.path(), &ca_key).unwrap_err().to_string();
        assert!(again.contains("exists already"), "{again}");
        assert!(create_client(dir.path(), &ca_key, "a b").is_err());
        assert!(create_node(dir.path(), &ca_key, &[]).is_err());
        #[cfg(unix)]
        {
            use std::os::unix::fs::PermissionsExt;
            let mode = std::fs::metadata(&ca_key).unwrap().permissions().mode();
            assert_eq!(mode & 0o777, 0o600);
        }
    }

    #[test]
    fn peer_names_come_from_the_dialed_address() {
        assert_eq!(
            Tls::server_name("n2:7000").unwrap(),
            ServerName::try_from("n2").unwrap()
        );
        assert!(matches!(
            Tls::server_name("[::1]:7000").unwrap(),
            ServerName::IpAddress(_)
        ));
    }
}
