//! Byte streams to the services benchwarden talks to or stands in front
//! of: where they are (a Unix socket, plain TCP, or TLS), how `DOCKER_HOST`
//! names the Docker daemon, and (in [`http`]) just enough HTTP/1.1 to proxy
//! byte for byte.

pub(crate) mod http;

use std::path::PathBuf;
use std::sync::Arc;

use tokio::io::{AsyncRead, AsyncWrite};
use tokio::net::{TcpStream, UnixStream};

pub(crate) type BoxRead = Box<dyn AsyncRead + Send + Unpin>;
pub(crate) type BoxWrite = Box<dyn AsyncWrite + Send + Unpin>;

/// Where requests go.
#[derive(Debug, Clone)]
pub(crate) enum Upstream {
    Unix(PathBuf),
    /// `host:port`, plain TCP.
    Tcp(String),
    /// `host:port` over TLS, verified against the platform's roots for `server_name`.
    Tls {
        address: String,
        server_name: String,
    },
}

impl PartialEq for Upstream {
    fn eq(&self, other: &Self) -> bool {
        format!("{self:?}") == format!("{other:?}")
    }
}

impl Eq for Upstream {}

impl Upstream {
    pub(crate) async fn connect(&self) -> std::io::Result<(BoxRead, BoxWrite)> {
        match self {
            Upstream::Unix(path) => {
                let (read, write) = UnixStream::connect(path).await?.into_split();
                Ok((Box::new(read), Box::new(write)))
            }
            Upstream::Tcp(address) => {
                let stream = TcpStream::connect(address).await?;
                stream.set_nodelay(true)?;
                let (read, write) = stream.into_split();
                Ok((Box::new(read), Box::new(write)))
            }
            Upstream::Tls { address, server_name } => {
                use rustls_platform_verifier::ConfigVerifierExt;
                let stream = TcpStream::connect(address).await?;
                stream.set_nodelay(true)?;
                let config = rustls::ClientConfig::with_platform_verifier().map_err(std::io::Error::other)?;
                let name =
                    rustls::pki_types::ServerName::try_from(server_name.clone()).map_err(std::io::Error::other)?;
                let tls = tokio_rustls::TlsConnector::from(Arc::new(config)).connect(name, stream).await?;
                let (read, write) = tokio::io::split(tls);
                Ok((Box::new(read), Box::new(write)))
            }
        }
    }
}

/// The Docker daemon's address as `DOCKER_HOST` gives it (resolved once, in
/// settings), and whether `DOCKER_TLS_VERIFY` asks for TLS.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct DockerEndpoint {
    /// `unix://…`, `tcp://…`, `ssh://…`, as given.
    pub(crate) address: String,
    pub(crate) tls: bool,
}

impl DockerEndpoint {
    pub(crate) const DEFAULT_SOCKET: &'static str = "unix:///var/run/docker.sock";

    /// From the values of `DOCKER_HOST` and `DOCKER_TLS_VERIFY`; an unset or
    /// empty `DOCKER_HOST` is the default socket.
    pub fn new(docker_host: Option<&str>, tls_verify: Option<&str>) -> Self {
        let address = docker_host.filter(|host| !host.is_empty()).unwrap_or(Self::DEFAULT_SOCKET);
        DockerEndpoint { address: address.to_string(), tls: tls_verify.is_some_and(|value| !value.is_empty()) }
    }

    /// A plain stream to the daemon; `None` for what only the client library
    /// speaks (TLS, ssh).
    pub(crate) fn upstream(&self) -> Option<Upstream> {
        if let Some(path) = self.address.strip_prefix("unix://") {
            return Some(Upstream::Unix(PathBuf::from(path)));
        }
        if self.tls {
            return None;
        }
        self.address
            .strip_prefix("tcp://")
            .or_else(|| self.address.strip_prefix("http://"))
            .map(|rest| Upstream::Tcp(rest.trim_end_matches('/').to_string()))
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn addresses_map_to_upstreams() {
        let endpoint = |host: &str| DockerEndpoint::new(Some(host), None);
        assert_eq!(
            endpoint("unix:///var/run/docker.sock").upstream(),
            Some(Upstream::Unix("/var/run/docker.sock".into()))
        );
        assert_eq!(endpoint("tcp://127.0.0.1:2375").upstream(), Some(Upstream::Tcp("127.0.0.1:2375".into())));
        assert_eq!(endpoint("ssh://host").upstream(), None);
        assert_eq!(DockerEndpoint::new(Some("tcp://h:2376"), Some("1")).upstream(), None);
        assert_eq!(DockerEndpoint::new(None, None).address, DockerEndpoint::DEFAULT_SOCKET);
        assert_eq!(DockerEndpoint::new(Some(""), Some("")).address, DockerEndpoint::DEFAULT_SOCKET);
    }
}
