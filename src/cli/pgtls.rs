//! TLS for Cairn's own PostgreSQL clients (`cairn sql`, `cairn bench`): `tokio-postgres`
//! over `tokio-rustls`, from libpq's connection parameters.
//!
//! `sslrootcert=FILE` in the URL (or key=value string) turns TLS on, verifying the server's
//! certificate against that CA and its name against the host (libpq's `verify-full`);
//! `sslcert`/`sslkey` add a client certificate. Without `sslrootcert` the connection is
//! plain, as before. tokio-postgres does not know these parameters (nor `verify-ca`,
//! `verify-full`), so they are taken out of the string before it parses it.

use rustls_pki_types::pem::PemObject;
use rustls_pki_types::{CertificateDer, PrivateKeyDer, ServerName};
use std::future::Future;
use std::io;
use std::path::PathBuf;
use std::pin::Pin;
use std::sync::Arc;
use std::task::{Context, Poll};
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio_postgres::tls::{ChannelBinding, MakeTlsConnect, TlsConnect};
use tokio_rustls::rustls;

/// How to connect: the parameters tokio-postgres understands, and TLS if asked for.
pub struct Target {
    pub config: tokio_postgres::Config,
    pub tls: Tls,
}

/// A connector for tokio-postgres: plain, or TLS with a client configuration.
#[derive(Clone)]
pub struct Tls(Option<Arc<rustls::ClientConfig>>);

/// Parse a URL or key=value string, taking out the TLS parameters tokio-postgres lacks.
pub fn target(url: &str) -> anyhow::Result<Target> {
    let mut root = None;
    let mut cert = None;
    let mut key = None;
    let mut verify = false;
    let kept = if url.contains("://") {
        let (base, query) = url.split_once('?').unwrap_or((url, ""));
        let mut rest = Vec::new();
        for pair in query.split('&').filter(|p| !p.is_empty()) {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if !take(k, v, &mut root, &mut cert, &mut key, &mut verify) {
                rest.push(pair.to_string());
            }
        }
        if rest.is_empty() {
            base.to_string()
        } else {
            format!("{base}?{}", rest.join("&"))
        }
    } else {
        let mut rest = Vec::new();
        for pair in url.split_whitespace() {
            let (k, v) = pair.split_once('=').unwrap_or((pair, ""));
            if !take(k, v, &mut root, &mut cert, &mut key, &mut verify) {
                rest.push(pair.to_string());
            }
        }
        rest.join(" ")
    };
    let mut config: tokio_postgres::Config = kept.parse()?;
    let Some(root) = root else {
        if verify {
            anyhow::bail!(
                "sslmode=verify-ca or verify-full needs sslrootcert=FILE (the cluster's ca.crt)"
            );
        }
        return Ok(Target {
            config,
            tls: Tls(None),
        });
    };
    let mut roots = rustls::RootCertStore::empty();
    for c in CertificateDer::pem_file_iter(&root)
        .map_err(|e| anyhow::anyhow!("{}: {e}", root.display()))?
    {
        roots.add(c.map_err(|e| anyhow::anyhow!("{}: {e}", root.display()))?)?;
    }
    let builder = rustls::ClientConfig::builder_with_provider(Arc::new(
        rustls::crypto::ring::default_provider(),
    ))
    .with_safe_default_protocol_versions()?
    .with_root_certificates(roots);
    let client = match (cert, key) {
        (Some(cert), Some(key)) => {
            let chain = CertificateDer::pem_file_iter(&cert)
                .map_err(|e| anyhow::anyhow!("{}: {e}", cert.display()))?
                .collect::<Result<Vec<_>, _>>()
                .map_err(|e| anyhow::anyhow!("{}: {e}", cert.display()))?;
            let key = PrivateKeyDer::from_pem_file(&key)
                .map_err(|e| anyhow::anyhow!("{}: {e}", key.display()))?;
            builder.with_client_auth_cert(chain, key)?
        }
        (None, None) => builder.with_no_client_auth(),
        _ => anyhow::bail!("give both sslcert and sslkey, or neither"),
    };
    config.ssl_mode(tokio_postgres::config::SslMode::Require);
    Ok(Target {
        config,
        tls: Tls(Some(Arc::new(client))),
    })
}

/// Record a TLS parameter; false if `k` is not one.
fn take(
    k: &str,
    v: &str,
    root: &mut Option<PathBuf>,
    cert: &mut Option<PathBuf>,
    key: &mut Option<PathBuf>,
    verify: &mut bool,
) -> bool {
    match k {
        "sslrootcert" => *root = Some(PathBuf::from(v)),
        "sslcert" => *cert = Some(PathBuf::from(v)),
        "sslkey" => *key = Some(PathBuf::from(v)),
        "sslmode" if v == "verify-full" || v == "verify-ca" => *verify = true,
        _ => return false,
    }
    true
}

/// Connect to `target` and drive the connection in a task of its own.
pub async fn connect(target: &Target) -> Result<tokio_postgres::Client, tokio_postgres::Error> {
    let (client, connection) = target.config.connect(target.tls.clone()).await?;
    tokio::spawn(async move {
        let _ = connection.await;
    });
    Ok(client)
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> MakeTlsConnect<S> for Tls {
    type Stream = Stream<S>;
    type TlsConnect = Connector;
    type Error = io::Error;

    fn make_tls_connect(&mut self, domain: &str) -> io::Result<Connector> {
        let name = ServerName::try_from(domain.to_string())
            .map_err(|e| io::Error::new(io::ErrorKind::InvalidInput, e))?;
        Ok(Connector {
            config: self.0.clone(),
            name,
        })
    }
}

pub struct Connector {
    config: Option<Arc<rustls::ClientConfig>>,
    name: ServerName<'static>,
}

impl<S: AsyncRead + AsyncWrite + Unpin + Send + 'static> TlsConnect<S> for Connector {
    type Stream = Stream<S>;
    type Error = io::Error;
    type Future = Pin<Box<dyn Future<Output = io::Result<Stream<S>>> + Send>>;

    fn connect(self, stream: S) -> Self::Future {
        Box::pin(async move {
            let config = self.config.ok_or_else(|| {
                io::Error::other("TLS was not configured (give sslrootcert=FILE)")
            })?;
            let tls = tokio_rustls::TlsConnector::from(config)
                .connect(self.name, stream)
                .await?;
            Ok(Stream(Box::new(tls)))
        })
    }
}

/// A TLS connection to a server.
pub struct Stream<S>(Box<tokio_rustls::client::TlsStream<S>>);

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncRead for Stream<S> {
    fn poll_read(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &mut ReadBuf<'_>,
    ) -> Poll<io::Result<()>> {
        Pin::new(self.0.as_mut()).poll_read(cx, buf)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> AsyncWrite for Stream<S> {
    fn poll_write(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        buf: &[u8],
    ) -> Poll<io::Result<usize>> {
        Pin::new(self.0.as_mut()).poll_write(cx, buf)
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.0.as_mut()).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(self.0.as_mut()).poll_shutdown(cx)
    }
}

impl<S: AsyncRead + AsyncWrite + Unpin> tokio_postgres::tls::TlsStream for Stream<S> {
    fn channel_binding(&self) -> ChannelBinding {
        ChannelBinding::none()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn tls_parameters_are_taken_out_of_urls_and_strings() {
        let t = target("postgres://cairn@localhost:5433/cairn?sslmode=verify-full")
            .err()
            .unwrap();
        assert!(t.to_string().contains("sslrootcert"), "{t}");
        let plain = target("postgres://cairn@localhost:5433/cairn?connect_timeout=5").unwrap();
        assert!(plain.tls.0.is_none());
        let missing = target("host=localhost sslrootcert=/nonexistent/ca.crt")
            .err()
            .unwrap();
        assert!(
            missing.to_string().contains("/nonexistent/ca.crt"),
            "{missing}"
        );
    }
}
