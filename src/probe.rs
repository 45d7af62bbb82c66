//! `tokengate probe`: a health check for containers, with no curl in the image.

use anyhow::{bail, Context};
use std::net::SocketAddr;
use std::time::Duration;
use tokio::io::{AsyncReadExt, AsyncWriteExt};

/// Asks the server at `addr` for `path` and succeeds on a 200 answer.
pub async fn probe(addr: SocketAddr, path: &str) -> anyhow::Result<()> {
    let check = async {
        let mut stream = tokio::net::TcpStream::connect(addr)
            .await
            .with_context(|| format!("cannot connect to {addr}"))?;
        let request = format!("GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n");
        stream.write_all(request.as_bytes()).await?;
        let mut answer = Vec::new();
        stream.read_to_end(&mut answer).await?;
        let text = String::from_utf8_lossy(&answer);
        let status = text.lines().next().unwrap_or_default().to_owned();
        if status.split_whitespace().nth(1) != Some("200") {
            bail!("{path} answered {status:?}");
        }
        Ok(())
    };
    tokio::time::timeout(Duration::from_secs(5), check)
        .await
        .context("no answer within 5 seconds")?
}

/// The address to probe for a listen address: loopback when it listens on all interfaces.
pub fn local_addr(listen: SocketAddr) -> SocketAddr {
    let ip = match listen.ip() {
        ip if ip.is_unspecified() && ip.is_ipv4() => std::net::Ipv4Addr::LOCALHOST.into(),
        ip if ip.is_unspecified() => std::net::Ipv6Addr::LOCALHOST.into(),
        ip => ip,
    };
    SocketAddr::new(ip, listen.port())
}
