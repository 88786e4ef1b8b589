//! The coordinator's side: `Remote`, a participant called over HTTP.

use std::fmt;
use std::time::Duration;

use super::{PHASE, SERVICE, TRANSACTION_ID, is_refusal};
use crate::error::BoxError;
use crate::{Context, Permanent, Phase, Recoverable, Resources, TccService};

/// How long one request of a [`Remote`] may take unless set: as long as
/// an attempt at a Confirm or Cancel ([`DEFAULT_ATTEMPT_TIMEOUT`](crate::DEFAULT_ATTEMPT_TIMEOUT)).
const DEFAULT_TIMEOUT: Duration = crate::DEFAULT_ATTEMPT_TIMEOUT;

/// A participant in another service, called over HTTP (see
/// [the protocol](super#the-protocol)): each phase is a `POST` to its base
/// URL followed by the phase, with the transaction's headers and the JSON
/// body given here.
///
/// Recoverable: its name, URL, body and headers are saved in the
/// transaction log before its Try, so recovery calls it again after a crash
/// with nothing registered but its kind (`log.register::<Remote>()`) and a
/// `reqwest::Client` provided as a resource (`log.provide(client)`), which
/// every `Remote` rebuilt shares. Connections are reused through that
/// client; give the same client to the `Remote`s you build.
///
/// Each request is bounded by its own timeout ([`Remote::timeout`], 30 s
/// unless set; a Try too, which the engine bounds only when `try_timeout`
/// is set), and each attempt by the transaction's `try_timeout` and
/// `attempt_timeout`; a refusal (409, and every 4xx but 408 and 429) is
/// [`Permanent`], so a Confirm or Cancel is not retried; anything else
/// (5xx, 408, 429, a connection refused or lost) is retried. Errors name the
/// URL, the status and what the participant said.
///
/// ```no_run
/// use serde_json::json;
/// use tcc::http::Remote;
/// use tcc::{tcc, TransactionLog};
///
/// # async fn order(log: &TransactionLog, client: &reqwest::Client) -> Result<(), tcc::Error> {
/// let order = json!({ "item": "book", "quantity": 2 });
/// tcc! {
///     log = log;
///     Remote::new("stock", "http://127.0.0.1:3001/stock", order.clone(), client),
///     Remote::new("payments", "http://127.0.0.1:3002/payments", json!({ "amount": 30 }), client),
/// }
/// .await?;
/// # Ok(())
/// # }
/// ```
#[derive(Clone)]
pub struct Remote {
    saved: Saved,
    client: reqwest::Client,
}

/// What the log keeps of a [`Remote`], as a JSON object:
/// `{"name", "url", "body", "headers": [[name, value], ...]}`.
#[derive(Clone, Debug)]
struct Saved {
    name: String,
    url: String,
    body: serde_json::Value,
    headers: Vec<(String, String)>,
    /// How long one request may take.
    timeout: Duration,
}

impl Saved {
    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "url": self.url,
            "body": self.body,
            "headers": self.headers,
            "timeout_ms": u64::try_from(self.timeout.as_millis()).unwrap_or(u64::MAX),
        })
    }

    fn from_json(data: &[u8]) -> Result<Saved, BoxError> {
        let mut json: serde_json::Value = serde_json::from_slice(data)?;
        let text = |field: &str| match json.get(field).and_then(|value| value.as_str()) {
            Some(text) => Ok(text.to_owned()),
            None => Err(format!("a saved Remote has no text `{field}`")),
        };
        let (name, url) = (text("name")?, text("url")?);
        let body = json
            .get_mut("body")
            .map(serde_json::Value::take)
            .unwrap_or_default();
        let headers = match json.get("headers") {
            None => Vec::new(),
            Some(headers) => serde_json::from_value(headers.clone())?,
        };
        let timeout = match json.get("timeout_ms") {
            None => DEFAULT_TIMEOUT,
            Some(ms) => Duration::from_millis(
                ms.as_u64()
                    .ok_or("a saved Remote's `timeout_ms` is not a number of milliseconds")?,
            ),
        };
        Ok(Saved {
            name,
            url,
            body,
            headers,
            timeout,
        })
    }
}

impl Remote {
    /// The participant named `name` in the transaction (the `TCC-Service`
    /// header: with the transaction's id, the key of its barrier row), at
    /// the base URL `url`, sent `body` in each phase, through `client`.
    pub fn new(
        name: impl Into<String>,
        url: impl Into<String>,
        body: serde_json::Value,
        client: &reqwest::Client,
    ) -> Self {
        Remote {
            saved: Saved {
                name: name.into(),
                url: url.into(),
                body,
                headers: Vec::new(),
                timeout: DEFAULT_TIMEOUT,
            },
            client: client.clone(),
        }
    }

    /// How long one request may take before it is given up (a Try then
    /// fails, a Confirm or Cancel is tried again): 30 s unless set. Saved in
    /// the log with the rest.
    pub fn timeout(mut self, timeout: Duration) -> Self {
        self.saved.timeout = timeout;
        self
    }

    /// Sends the header `name: value` with each phase too (saved in the log
    /// with the rest: keep secrets out of it).
    pub fn header(mut self, name: impl Into<String>, value: impl Into<String>) -> Self {
        self.saved.headers.push((name.into(), value.into()));
        self
    }

    /// The base URL.
    pub fn url(&self) -> &str {
        &self.saved.url
    }

    /// The URL of `phase`: the base URL with the phase appended to its path
    /// (a query string stays a query string); a base URL that cannot take a
    /// path is refused for good.
    fn phase_url(&self, phase: Phase) -> Result<reqwest::Url, BoxError> {
        let refused = |why: &str| {
            Permanent::new(format!(
                "the base URL {:?} of `{}` {why}",
                self.saved.url, self.saved.name
            ))
        };
        let mut url = reqwest::Url::parse(&self.saved.url)
            .map_err(|error| refused(&format!("is not a URL: {error}")))?;
        if !matches!(url.scheme(), "http" | "https") {
            return Err(refused("is not http:// or https://").into());
        }
        url.path_segments_mut()
            .map_err(|()| refused("cannot take a path"))?
            .pop_if_empty()
            .push(phase.as_str());
        Ok(url)
    }

    /// Calls `phase`: Ok on a 2xx answer from the URL called (a redirect is
    /// refused: a participant answers its phases itself).
    async fn call(&self, phase: Phase) -> Result<(), BoxError> {
        let target = self.phase_url(phase)?;
        let url = target.to_string();
        let id = Context::current()
            .map(|context| context.transaction_id())
            .ok_or_else(|| {
                Permanent::new(format!(
                    "POST {url}: a Remote's phase runs only inside a transaction"
                ))
            })?;
        let fail = |what: String| RemoteError {
            url: url.clone(),
            what,
        };
        let mut request = self
            .client
            .post(target.clone())
            .timeout(self.saved.timeout)
            .body(self.saved.body.to_string());
        for (name, value) in &self.saved.headers {
            request = request.header(name, value);
        }
        // A header that cannot be sent never will be.
        let cannot = |error: &dyn std::fmt::Display| {
            Permanent::new(fail(format!("cannot be sent: {error}")))
        };
        let mut request = request.build().map_err(|error| cannot(&error))?;
        // The protocol's headers last, in place of any of the same name.
        let headers = request.headers_mut();
        let protocol = [
            (TRANSACTION_ID, id.to_string()),
            (SERVICE, self.saved.name.clone()),
            (PHASE, phase.as_str().to_owned()),
            ("content-type", "application/json".to_owned()),
        ];
        for (name, value) in protocol {
            let value = reqwest::header::HeaderValue::from_str(&value).map_err(|e| cannot(&e))?;
            headers.insert(name, value);
        }
        let response = self.client.execute(request).await.map_err(|error| {
            // A request reqwest cannot make (https:// with no TLS built in)
            // never will be made.
            let permanent = error.is_builder();
            let error = fail(format!("failed: {}", crate::error::Chain(&error)));
            match permanent {
                true => BoxError::from(Permanent::new(error)),
                false => BoxError::from(error),
            }
        })?;
        if response.url() != &target {
            let error = fail(format!(
                "was redirected to {}: a participant answers its phases at its own URL",
                response.url()
            ));
            return Err(Permanent::new(error).into());
        }
        let status = response.status();
        if status.is_success() {
            return Ok(());
        }
        // What the participant said, best effort: the body of a connection
        // lost now is not worth failing the answer for.
        let said = response.text().await.unwrap_or_default();
        let error = fail(format!("answered {status}{}", said_of(&said)));
        match is_refusal(status.as_u16()) {
            true => Err(Permanent::new(error).into()),
            false => Err(error.into()),
        }
    }
}

/// `": why"` from an error body, `{"error": "why"}` or text, cut short;
/// nothing from an empty one.
fn said_of(body: &str) -> String {
    const LONGEST: usize = 500;
    let said = serde_json::from_str::<serde_json::Value>(body)
        .ok()
        .and_then(|json| json.get("error")?.as_str().map(str::to_owned))
        .unwrap_or_else(|| body.trim().to_owned());
    if said.is_empty() {
        return String::new();
    }
    let cut = match said.char_indices().nth(LONGEST) {
        Some((at, _)) => format!("{}…", &said[..at]),
        None => said,
    };
    format!(": {cut}")
}

/// A phase of a [`Remote`] that did not succeed: the URL, and the status
/// and what the participant said, or why no answer came.
#[derive(Debug)]
struct RemoteError {
    url: String,
    what: String,
}

impl fmt::Display for RemoteError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "POST {} {}", self.url, self.what)
    }
}

impl std::error::Error for RemoteError {}

impl fmt::Debug for Remote {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("Remote")
            .field("name", &self.saved.name)
            .field("url", &self.saved.url)
            .finish_non_exhaustive()
    }
}

impl TccService for Remote {
    fn service_name(&self) -> &str {
        &self.saved.name
    }

    async fn try_phase(&self) -> Result<(), BoxError> {
        self.call(Phase::Try).await
    }

    async fn confirm(&self) -> Result<(), BoxError> {
        self.call(Phase::Confirm).await
    }

    async fn cancel(&self) -> Result<(), BoxError> {
        self.call(Phase::Cancel).await
    }
}

impl Recoverable for Remote {
    const KIND: &'static str = "tcc::http::Remote";

    fn save(&self) -> Result<Vec<u8>, BoxError> {
        Ok(serde_json::to_vec(&self.saved.to_json())?)
    }

    fn rebuild(data: &[u8], resources: &Resources) -> Result<Self, BoxError> {
        Ok(Remote {
            saved: Saved::from_json(data)?,
            client: resources.get::<reqwest::Client>()?.clone(),
        })
    }
}
