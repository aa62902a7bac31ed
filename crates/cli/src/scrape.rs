//! The HTTP server behind `--metrics-addr`: it answers every request with
//! the current exposition, and is built to stay cheap whatever clients do.
//!
//! - One request per connection (no keep-alive): a scrape is one request.
//! - At most [`MAX_CONNECTIONS`] connections at once; a connection beyond
//!   that is accepted and closed at once, so that neither descriptors nor
//!   the kernel's accept queue fill up with clients that never send.
//! - A connection is closed after [`CONNECTION_TIMEOUT`], answered or not.
//! - An accept error (`EMFILE` when descriptors run out, `ENOBUFS`, …) is
//!   retried after a pause that doubles up to a second, never at once: the
//!   waiting connection keeps the socket readable, and retrying at once
//!   would spin a CPU.

use std::convert::Infallible;
use std::io;
use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Duration;

use http_body_util::Full;
use hyper::body::Bytes;
use hyper::server::conn::http1;
use hyper::service::service_fn;
use hyper::{Request, Response};
use hyper_util::rt::TokioIo;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{OwnedSemaphorePermit, Semaphore};

/// Connections served at once.
pub(crate) const MAX_CONNECTIONS: usize = 64;

/// How long a connection may take, from accept to response.
pub(crate) const CONNECTION_TIMEOUT: Duration = Duration::from_secs(5);

/// The first pause after an accept error; it doubles up to
/// [`MAX_ACCEPT_PAUSE`] while errors go on.
const FIRST_ACCEPT_PAUSE: Duration = Duration::from_millis(10);
const MAX_ACCEPT_PAUSE: Duration = Duration::from_secs(1);

/// The content type of the exposition.
const CONTENT_TYPE: &str = "application/openmetrics-text; version=1.0.0; charset=utf-8";

/// Serves `render()` on `listener` until the process ends; returns at once.
pub(crate) fn spawn<F>(listener: TcpListener, render: F)
where
    F: Fn() -> String + Send + Sync + 'static,
{
    tokio::spawn(accept_loop(listener, Arc::new(render)));
}

async fn accept_loop<F>(listener: TcpListener, render: Arc<F>)
where
    F: Fn() -> String + Send + Sync + 'static,
{
    let slots = Arc::new(Semaphore::new(MAX_CONNECTIONS));
    let mut pause = FIRST_ACCEPT_PAUSE;
    loop {
        match listener.accept().await {
            Ok((stream, peer)) => {
                pause = FIRST_ACCEPT_PAUSE;
                match Arc::clone(&slots).try_acquire_owned() {
                    Ok(slot) => {
                        tokio::spawn(serve(stream, Arc::clone(&render), slot));
                    }
                    Err(_) => {
                        tracing::debug!(%peer, "metrics: too many connections; closing this one");
                        drop(stream);
                    }
                }
            }
            Err(error) => {
                log_accept_error(&error, pause);
                tokio::time::sleep(pause).await;
                pause = (pause * 2).min(MAX_ACCEPT_PAUSE);
            }
        }
    }
}

/// The first error of a run of them is a warning; the rest, while the
/// pause grows, are debug lines.
fn log_accept_error(error: &io::Error, pause: Duration) {
    if pause == FIRST_ACCEPT_PAUSE {
        tracing::warn!(%error, "metrics: cannot accept a connection; retrying with a pause");
    } else {
        tracing::debug!(%error, ?pause, "metrics: still cannot accept a connection");
    }
}

/// Answers one request on `stream`, then closes it; gives up after
/// [`CONNECTION_TIMEOUT`]. Holds `slot` until then.
async fn serve<F>(stream: TcpStream, render: Arc<F>, slot: OwnedSemaphorePermit)
where
    F: Fn() -> String + Send + Sync + 'static,
{
    let service = service_fn(move |_request: Request<hyper::body::Incoming>| {
        let body = render();
        async move {
            let mut response = Response::new(Full::new(Bytes::from(body)));
            response.headers_mut().insert(
                hyper::header::CONTENT_TYPE,
                hyper::header::HeaderValue::from_static(CONTENT_TYPE),
            );
            Ok::<_, Infallible>(response)
        }
    });
    let connection = http1::Builder::new()
        .keep_alive(false)
        .serve_connection(TokioIo::new(stream), service);
    let _ = tokio::time::timeout(CONNECTION_TIMEOUT, connection).await;
    drop(slot);
}

/// Binds `addr` for [`spawn`]; the address it got (the port, when `addr`
/// asked for port 0).
pub(crate) async fn bind(addr: SocketAddr) -> io::Result<(TcpListener, SocketAddr)> {
    let listener = TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    Ok((listener, bound))
}
