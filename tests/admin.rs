//! `tcc::admin::router`, mounted under `/tcc` of an axum server on
//! 127.0.0.1, spoken to over real HTTP: each call answers its JSON, each
//! refusal its status (400, 404, 409) with a JSON body saying why, and the
//! calls that change the log change it only for a transaction that needs
//! repair.

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, Ordering};

use axum::Router;
use axum::body::Bytes;
use axum::http::{Method, Request, StatusCode, header};
use http_body_util::{BodyExt, Full};
use hyper_util::rt::TokioIo;
use serde_json::{Value, json};
use tcc::durable::{MemoryLog, Status};
use tcc::{BoxError, RetryPolicy, TccService, TransactionId, TransactionLog};
use tokio::net::{TcpListener, TcpStream};

/// A participant whose Confirm fails while `down` is set.
struct Desk {
    down: Arc<AtomicBool>,
}

impl TccService for Desk {
    fn service_name(&self) -> &str {
        "desk"
    }
    async fn try_phase(&self) -> Result<(), BoxError> {
        Ok(())
    }
    async fn confirm(&self) -> Result<(), BoxError> {
        match self.down.load(Ordering::SeqCst) {
            true => Err("the desk is down".into()),
            false => Ok(()),
        }
    }
    async fn cancel(&self) -> Result<(), BoxError> {
        Ok(())
    }
}

impl tcc::Recoverable for Desk {
    const KIND: &'static str = "desk";
    fn save(&self) -> Result<Vec<u8>, BoxError> {
        Ok(b"{}".to_vec())
    }
    fn rebuild(_: &[u8], resources: &tcc::Resources) -> Result<Self, BoxError> {
        let down = resources.get::<Arc<AtomicBool>>()?.clone();
        Ok(Desk { down })
    }
}

/// A log holding one transaction that needs repair, served under `/tcc`.
async fn serve() -> (SocketAddr, TransactionLog, TransactionId) {
    let log = TransactionLog::new(MemoryLog::new());
    let down = Arc::new(AtomicBool::new(true));
    log.provide(down.clone())
        .and_then(|log| log.register::<Desk>())
        .unwrap();
    let error = tcc::tcc! {
        log = &log;
        retry = RetryPolicy::immediate(1);
        Desk { down: down.clone() },
    }
    .await
    .unwrap_err();
    let id = error.report().unwrap().transaction_id();
    down.store(false, Ordering::SeqCst);
    let app = Router::new().nest("/tcc", tcc::admin::router(log.clone()));
    let listener = TcpListener::bind("127.0.0.1:0").await.unwrap();
    let address = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, app).await.unwrap() });
    (address, log, id)
}

/// Sends one request; its status and JSON body.
async fn call(server: SocketAddr, method: Method, path: &str, body: &str) -> (StatusCode, Value) {
    let stream = TcpStream::connect(server).await.unwrap();
    let (mut sender, connection) = hyper::client::conn::http1::handshake(TokioIo::new(stream))
        .await
        .unwrap();
    tokio::spawn(connection);
    let request = Request::builder()
        .method(method)
        .uri(path)
        .header(header::HOST, server.to_string())
        .header(header::CONTENT_TYPE, "application/json")
        .body(Full::new(Bytes::from(body.to_owned())))
        .unwrap();
    let response = sender.send_request(request).await.unwrap();
    let status = response.status();
    let body = response.into_body().collect().await.unwrap().to_bytes();
    let value = serde_json::from_slice(&body)
        .unwrap_or_else(|_| panic!("{status}: not JSON: {:?}", String::from_utf8_lossy(&body)));
    (status, value)
}

async fn get(server: SocketAddr, path: &str) -> (StatusCode, Value) {
    call(server, Method::GET, path, "").await
}

/// A refusal: its status, its kind and its message.
fn refusal(answer: (StatusCode, Value), status: StatusCode, kind: &str) -> String {
    assert_eq!(answer.0, status, "{}", answer.1);
    assert_eq!(answer.1["error"], kind, "{}", answer.1);
    answer.1["message"].as_str().unwrap().to_owned()
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn each_call_answers_json_and_each_refusal_its_status() {
    let (server, log, id) = serve().await;

    // list, with and without its filters.
    let (status, listed) = get(server, "/tcc/transactions").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(listed[0]["id"], id.to_string());
    assert_eq!(listed[0]["status"], "needs_repair");
    assert_eq!(
        listed[0]["participants"][0]["confirm"]["last_error"],
        "the desk is down"
    );
    let query = "/tcc/transactions?state=needs-repair&service=desk&older_than=0s&limit=5";
    assert_eq!(get(server, query).await.1, listed);
    let (_, none) = get(server, "/tcc/transactions?state=unfinished").await;
    assert_eq!(none, json!([]));
    let (_, none) = get(server, "/tcc/transactions?older_than=1h").await;
    assert_eq!(none, json!([]));
    for bad in [
        "state=stuck",
        "older_than=soon",
        "limit=many",
        "limit=10001",
    ] {
        let message = refusal(
            get(server, &format!("/tcc/transactions?{bad}")).await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        );
        assert!(!message.is_empty());
    }

    // show, and ids it does not know or cannot read.
    let (status, shown) = get(server, &format!("/tcc/transactions/{id}")).await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(shown, listed[0]);
    let unknown = TransactionId::generate();
    let message = refusal(
        get(server, &format!("/tcc/transactions/{unknown}")).await,
        StatusCode::NOT_FOUND,
        "unknown_transaction",
    );
    assert!(message.contains(&unknown.to_string()), "{message}");
    let message = refusal(
        get(server, "/tcc/transactions/nope").await,
        StatusCode::BAD_REQUEST,
        "bad_request",
    );
    assert!(message.contains("not a transaction id"), "{message}");

    // stats.
    let (status, stats) = get(server, "/tcc/stats").await;
    assert_eq!(status, StatusCode::OK);
    assert_eq!(stats["needs_repair"], 1);
    assert_eq!(stats["oldest_needs_repair"]["id"], id.to_string());
    assert_eq!(stats["bytes"], Value::Null);

    // resolve: a note is required, and well-formed JSON.
    let resolve = format!("/tcc/transactions/{id}/resolve");
    for body in [
        r#"{"by": "ada", "note": ""}"#,
        r#"{"by": "ada"}"#,
        "not json",
    ] {
        refusal(
            call(server, Method::POST, &resolve, body).await,
            StatusCode::BAD_REQUEST,
            "bad_request",
        );
    }
    assert!(matches!(
        log.status(id).await.unwrap().unwrap().status,
        Status::NeedsRepair(_)
    ));

    // retry: marked, decided again; then neither retried nor resolved.
    let retry = format!("/tcc/transactions/{id}/retry");
    let (status, change) = call(server, Method::POST, &retry, "").await;
    assert_eq!(status, StatusCode::OK, "{change}");
    assert!(
        change["message"]
            .as_str()
            .unwrap()
            .contains("marked for retry")
    );
    assert_eq!(change["transaction"]["status"], "decided");
    let message = refusal(
        call(server, Method::POST, &retry, "").await,
        StatusCode::CONFLICT,
        "not_in_repair",
    );
    assert!(message.contains("not in need of repair"), "{message}");
    let note = r#"{"by": "ada", "note": "seen to"}"#;
    refusal(
        call(server, Method::POST, &resolve, note).await,
        StatusCode::CONFLICT,
        "not_in_repair",
    );
    let unknown_retry = format!("/tcc/transactions/{unknown}/retry");
    refusal(
        call(server, Method::POST, &unknown_retry, "").await,
        StatusCode::NOT_FOUND,
        "unknown_transaction",
    );

    // Recovery finishes it, as the router said; a second one is resolved.
    assert_eq!(log.recover().await.unwrap().finished, 1);
    let (_, shown) = get(server, &format!("/tcc/transactions/{id}")).await;
    assert_eq!(shown["status"], "done");
    assert_eq!(shown["decision"], "confirm");
    let down = Arc::new(AtomicBool::new(true));
    let error = tcc::tcc! {
        log = &log;
        retry = RetryPolicy::immediate(0);
        Desk { down },
    }
    .await
    .unwrap_err();
    let second = error.report().unwrap().transaction_id();
    let resolve = format!("/tcc/transactions/{second}/resolve");
    let (status, change) = call(server, Method::POST, &resolve, note).await;
    assert_eq!(status, StatusCode::OK, "{change}");
    assert_eq!(change["transaction"]["status"], "done");
    assert_eq!(
        change["transaction"]["resolution"],
        json!({"by": "ada", "note": "seen to"})
    );
}
