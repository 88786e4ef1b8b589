//! The calls of `tcc::admin` sent to a running coordinator's admin router:
//! one HTTP/1 request per connection, through hyper (the workspace's HTTP
//! stack already). Plain HTTP only: an admin router is reached on a private
//! address, or through a tunnel.

use std::time::Duration;

use http_body_util::{BodyExt, Full, Limited};
use hyper::body::Bytes;
use hyper::header::{CONTENT_TYPE, HOST};
use hyper::{Method, Request, StatusCode, Uri};
use hyper_util::rt::TokioIo;
use serde::de::DeserializeOwned;
use tcc::TransactionId;
use tcc::admin::{ChangeJson, Refusal, SummaryJson, TransactionJson};
use tcc::durable::{Filter, Resolution};
use tokio::net::TcpStream;

use crate::{Failure, exit};

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How long a whole exchange may take, once connected.
const EXCHANGE_TIMEOUT: Duration = Duration::from_secs(60);
/// The largest answer read (a listing of the most transactions is far less).
const MAX_ANSWER: usize = 256 << 20;

/// A coordinator's admin router, at `http://host:port/prefix`.
pub struct Remote {
    /// `host:port`, to connect to and for the `Host` header.
    authority: String,
    /// The path it is mounted at, without a trailing slash.
    prefix: String,
    /// The URL as given, for messages.
    shown: String,
}

impl Remote {
    /// The router at `url`, or why `url` cannot be one.
    pub fn new(url: &str) -> Result<Remote, Failure> {
        let bad = |why: &str| {
            let shown: String = url.chars().take(200).collect();
            Failure::new(
                exit::BAD_INPUT,
                format!(
                    "--url {shown}: {why}; give the admin router's address, as http://HOST:PORT/tcc"
                ),
            )
        };
        if url.starts_with("https://") {
            return Err(bad(
                "https is not supported (the tool speaks plain HTTP to a router on a private address: use an SSH tunnel or a local proxy)",
            ));
        }
        if !url.starts_with("http://") {
            return Err(bad("not an http:// URL"));
        }
        let uri: Uri = url.parse().map_err(|_| bad("not a URL"))?;
        if uri.query().is_some() {
            return Err(bad("a URL with a query"));
        }
        let Some(host) = uri.host() else {
            return Err(bad("no host"));
        };
        let port = uri.port_u16().unwrap_or(80);
        Ok(Remote {
            authority: format!("{host}:{port}"),
            prefix: uri.path().trim_end_matches('/').to_owned(),
            shown: url.trim_end_matches('/').to_owned(),
        })
    }

    pub async fn list(&self, filter: &Filter) -> Result<Vec<TransactionJson>, Failure> {
        let mut query = vec![("limit", filter.limit().to_string())];
        if let Some(group) = filter.status() {
            query.push(("state", group.as_str().to_owned()));
        }
        if let Some(service) = filter.service() {
            query.push(("service", service.to_owned()));
        }
        if let Some(age) = filter.older_than() {
            query.push(("older_than", format!("{}ms", age.as_millis())));
        }
        let query: Vec<String> = query
            .iter()
            .map(|(name, value)| format!("{name}={}", encode(value)))
            .collect();
        let path = format!("/transactions?{}", query.join("&"));
        self.call(Method::GET, &path, None).await
    }

    pub async fn show(&self, id: TransactionId) -> Result<TransactionJson, Failure> {
        self.call(Method::GET, &format!("/transactions/{id}"), None)
            .await
    }

    pub async fn retry(&self, id: TransactionId) -> Result<ChangeJson, Failure> {
        self.call(Method::POST, &format!("/transactions/{id}/retry"), None)
            .await
    }

    pub async fn resolve(
        &self,
        id: TransactionId,
        resolution: &Resolution,
    ) -> Result<ChangeJson, Failure> {
        let body = serde_json::to_vec(resolution).map_err(|error| {
            Failure::new(exit::BAD_INPUT, format!("cannot send the note: {error}"))
        })?;
        let path = format!("/transactions/{id}/resolve");
        self.call(Method::POST, &path, Some(body)).await
    }

    pub async fn summary(&self) -> Result<SummaryJson, Failure> {
        self.call(Method::GET, "/stats", None).await
    }

    /// Sends one request to the router and reads its answer: `T` on
    /// success, the router's refusal otherwise.
    async fn call<T: DeserializeOwned>(
        &self,
        method: Method,
        path: &str,
        body: Option<Vec<u8>>,
    ) -> Result<T, Failure> {
        let url = format!("{}{path}", self.shown);
        let unreachable =
            |why: String| Failure::new(exit::UNREACHABLE, format!("cannot reach {url}: {why}"));
        let connect = TcpStream::connect(&self.authority);
        let stream = match tokio::time::timeout(CONNECT_TIMEOUT, connect).await {
            Ok(Ok(stream)) => stream,
            Ok(Err(error)) => return Err(unreachable(error.to_string())),
            Err(_) => {
                return Err(unreachable(format!(
                    "no connection within {} s",
                    CONNECT_TIMEOUT.as_secs()
                )));
            }
        };
        let request = Request::builder()
            .method(method)
            .uri(format!("{}{path}", self.prefix))
            .header(HOST, &self.authority)
            .header(CONTENT_TYPE, "application/json")
            .body(Full::new(Bytes::from(body.unwrap_or_default())))
            .map_err(|error| Failure::new(exit::BAD_INPUT, format!("{url}: {error}")))?;
        let exchange = async {
            let (mut sender, connection) =
                hyper::client::conn::http1::handshake(TokioIo::new(stream)).await?;
            // Driven here, beside the request: the connection ends with it.
            let answer = async {
                let response = sender.send_request(request).await?;
                let status = response.status();
                let body = Limited::new(response.into_body(), MAX_ANSWER)
                    .collect()
                    .await?
                    .to_bytes();
                Ok::<_, Box<dyn std::error::Error + Send + Sync>>((status, body))
            };
            tokio::select! {
                answer = answer => answer,
                closed = connection => Err(match closed {
                    Ok(()) => "the server closed the connection".into(),
                    Err(error) => error.into(),
                }),
            }
        };
        let (status, body) = match tokio::time::timeout(EXCHANGE_TIMEOUT, exchange).await {
            Ok(Ok(answer)) => answer,
            Ok(Err(error)) => return Err(unreachable(error.to_string())),
            Err(_) => {
                return Err(unreachable(format!(
                    "no answer within {} s",
                    EXCHANGE_TIMEOUT.as_secs()
                )));
            }
        };
        if status.is_success() {
            return serde_json::from_slice(&body).map_err(|_| not_the_router(&url, status));
        }
        match serde_json::from_slice::<Refusal>(&body) {
            Ok(refusal) => Err(refusal.into()),
            Err(_) => Err(not_the_router(&url, status)),
        }
    }
}

/// An answer that is not the admin router's JSON.
fn not_the_router(url: &str, status: StatusCode) -> Failure {
    Failure::new(
        exit::UNREACHABLE,
        format!(
            "{url} answered {status}, not with the admin router's JSON: is tcc::admin::router mounted at that prefix?"
        ),
    )
}

/// `value` percent-encoded for a query string: every byte but the
/// unreserved ones.
fn encode(value: &str) -> String {
    let mut out = String::with_capacity(value.len());
    for byte in value.bytes() {
        match byte {
            b'A'..=b'Z' | b'a'..=b'z' | b'0'..=b'9' | b'-' | b'.' | b'_' | b'~' => {
                out.push(byte as char)
            }
            _ => out.push_str(&format!("%{byte:02X}")),
        }
    }
    out
}
