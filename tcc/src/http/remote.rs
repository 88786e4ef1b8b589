//! The coordinator's side: `Remote`, a participant called over HTTP.

use std::fmt;

use super::{PHASE, SERVICE, TRANSACTION_ID, is_refusal};
use crate::error::BoxError;
use crate::{Context, Permanent, Phase, Recoverable, Resources, TccService};

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
/// Each attempt is bounded by the transaction's `try_timeout` and
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
}

impl Saved {
    fn to_json(&self) -> serde_json::Value {
        serde_json::json!({
            "name": self.name,
            "url": self.url,
            "body": self.body,
            "headers": self.headers,
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
        Ok(Saved {
            name,
            url,
            body,
            headers,
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
            },
            client: client.clone(),
        }
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

    /// Calls `phase`: Ok on a 2xx answer.
    async fn call(&self, phase: Phase) -> Result<(), BoxError> {
        let url = format!(
            "{}/{}",
            self.saved.url.trim_end_matches('/'),
            phase.as_str()
        );
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
            .post(&url)
            .header(TRANSACTION_ID, id.to_string())
            .header(SERVICE, &self.saved.name)
            .header(PHASE, phase.as_str())
            .header("content-type", "application/json")
            .body(self.saved.body.to_string());
        for (name, value) in &self.saved.headers {
            request = request.header(name, value);
        }
        let request = request
            .build()
            // A URL or header that cannot be sent never will be.
            .map_err(|error| Permanent::new(fail(format!("cannot be sent: {error}"))))?;
        let response = self
            .client
            .execute(request)
            .await
            .map_err(|error| fail(format!("failed: {}", crate::error::Chain(&error))))?;
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
