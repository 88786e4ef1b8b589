//! TCC over HTTP, one rule at a time, in one process: what
//! `tcc::http::participant` answers (the barrier's rulings, the handler's
//! errors, requests that are not the protocol's), and what `Remote` makes
//! of each status (done, refused for good, failed for now), saved in and
//! rebuilt from the log.

use std::sync::Arc;
use std::sync::atomic::{AtomicU32, Ordering};
use std::time::Duration;

use axum::Router;
use axum::http::StatusCode;
use axum::routing::post;
use serde_json::{Value, json};
use sqlx::SqlitePool;
use tcc::http::{Call, PhaseError, Remote, participant};
use tcc::{ErrorKind, Orchestrator, Recoverable, Resources, RetryPolicy, Service, TransactionId};

async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let at = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{at}")
}

/// A participant whose Try refuses a quantity over 10 and whose handlers
/// count their runs, on an in-memory SQLite database.
async fn counted() -> (String, Arc<[AtomicU32; 3]>) {
    let db = SqlitePool::connect("sqlite::memory:").await.unwrap();
    tcc::barrier::sqlx::sqlite::migrate(&db).await.unwrap();
    let runs: Arc<[AtomicU32; 3]> = Arc::new(Default::default());
    let (r0, r1, r2) = (runs.clone(), runs.clone(), runs.clone());
    let router = participant(
        db,
        move |_, call: Call<Value>| {
            r0[0].fetch_add(1, Ordering::Relaxed);
            Box::pin(async move {
                match call.body["quantity"].as_i64() {
                    Some(q) if q > 10 => Err(PhaseError::refused(format!("{q} is too many"))),
                    _ => Ok(()),
                }
            })
        },
        move |_, _: Call<Value>| {
            r1[1].fetch_add(1, Ordering::Relaxed);
            Box::pin(async { Ok(()) })
        },
        move |_, _: Call<Value>| {
            r2[2].fetch_add(1, Ordering::Relaxed);
            Box::pin(async { Ok(()) })
        },
    );
    (serve(Router::new().nest("/p", router)).await, runs)
}

/// Sends `phase` of `id` with `body`; the status and the answer's JSON.
async fn send(base: &str, id: &str, phase: &str, body: &str) -> (StatusCode, Value) {
    let answer = reqwest::Client::new()
        .post(format!("{base}/p/{phase}"))
        .header("TCC-Transaction-Id", id)
        .header("TCC-Service", "stock")
        .header("TCC-Phase", phase)
        .body(body.to_owned())
        .send()
        .await
        .unwrap();
    let status = StatusCode::from_u16(answer.status().as_u16()).unwrap();
    (status, answer.json().await.unwrap())
}

fn runs(counts: &[AtomicU32; 3]) -> [u32; 3] {
    counts.each_ref().map(|n| n.load(Ordering::Relaxed))
}

#[tokio::test]
async fn the_participant_answers_each_ruling_of_the_barrier_without_running_the_handler_twice() {
    let (base, counts) = counted().await;
    let id = TransactionId::generate().to_string();
    let body = r#"{"quantity": 1}"#;
    assert_eq!(
        send(&base, &id, "try", body).await,
        (StatusCode::OK, json!({"outcome": "ran"}))
    );
    assert_eq!(
        send(&base, &id, "try", body).await,
        (StatusCode::OK, json!({"outcome": "duplicate"}))
    );
    assert_eq!(
        send(&base, &id, "confirm", body).await.1,
        json!({"outcome": "ran"})
    );
    assert_eq!(
        send(&base, &id, "confirm", body).await.1,
        json!({"outcome": "duplicate"})
    );
    let (status, answer) = send(&base, &id, "cancel", body).await;
    assert_eq!(
        status,
        StatusCode::CONFLICT,
        "a Cancel after the Confirm: {answer}"
    );
    assert!(
        answer["error"].as_str().unwrap().contains("confirmed"),
        "{answer}"
    );
    assert_eq!(runs(&counts), [1, 1, 0]);

    // An empty cancel, then its late Try: refused, the handler never run.
    let late = TransactionId::generate().to_string();
    assert_eq!(
        send(&base, &late, "cancel", body).await,
        (StatusCode::OK, json!({"outcome": "empty_cancel"}))
    );
    let (status, answer) = send(&base, &late, "try", body).await;
    assert_eq!(status, StatusCode::CONFLICT, "{answer}");
    // A Confirm with no Try.
    let (status, _) = send(
        &base,
        &TransactionId::generate().to_string(),
        "confirm",
        body,
    )
    .await;
    assert_eq!(status, StatusCode::CONFLICT);
    assert_eq!(runs(&counts), [1, 1, 0]);

    // A handler's refusal: 409, its message, the barrier's row rolled back
    // (its Cancel is then an empty one).
    let refused = TransactionId::generate().to_string();
    let (status, answer) = send(&base, &refused, "try", r#"{"quantity": 11}"#).await;
    assert_eq!(
        (status, answer),
        (StatusCode::CONFLICT, json!({"error": "11 is too many"}))
    );
    assert_eq!(
        send(&base, &refused, "cancel", body).await.1,
        json!({"outcome": "empty_cancel"})
    );
}

#[tokio::test]
async fn a_request_that_is_not_the_protocols_is_refused_with_400_naming_what_is_wrong() {
    let (base, counts) = counted().await;
    let client = reqwest::Client::new();
    let id = TransactionId::generate().to_string();
    // The headers sent, the path, and what the answer must say.
    type Case<'a> = (&'a [(&'a str, &'a str)], &'a str, &'a str);
    let cases: [Case; 6] = [
        (
            &[("TCC-Service", "stock"), ("TCC-Phase", "try")],
            "try",
            "TCC-Transaction-Id",
        ),
        (
            &[
                ("TCC-Transaction-Id", "xyz"),
                ("TCC-Service", "stock"),
                ("TCC-Phase", "try"),
            ],
            "try",
            "not a transaction id",
        ),
        (
            &[("TCC-Transaction-Id", &id), ("TCC-Phase", "try")],
            "try",
            "TCC-Service",
        ),
        (
            &[("TCC-Transaction-Id", &id), ("TCC-Service", "stock")],
            "try",
            "TCC-Phase",
        ),
        (
            &[
                ("TCC-Transaction-Id", &id),
                ("TCC-Service", "stock"),
                ("TCC-Phase", "commit"),
            ],
            "try",
            "not `try`, `confirm` or `cancel`",
        ),
        (
            &[
                ("TCC-Transaction-Id", &id),
                ("TCC-Service", "stock"),
                ("TCC-Phase", "confirm"),
            ],
            "try",
            "another phase's path",
        ),
    ];
    for (headers, path, says) in cases {
        let mut request = client.post(format!("{base}/p/{path}")).body("{}");
        for (name, value) in headers {
            request = request.header(*name, *value);
        }
        let answer = request.send().await.unwrap();
        assert_eq!(answer.status().as_u16(), 400, "{headers:?}");
        let answer: Value = answer.json().await.unwrap();
        let error = answer["error"].as_str().unwrap();
        assert!(error.contains(says), "{headers:?}: {error}");
    }
    let (status, answer) = send(&base, &id, "try", "not json").await;
    assert_eq!(status, StatusCode::BAD_REQUEST);
    assert!(
        answer["error"].as_str().unwrap().contains("body"),
        "{answer}"
    );
    assert_eq!(runs(&counts), [0, 0, 0], "no handler ran");
}

/// A participant that answers each phase with the statuses in `script`,
/// one per call (the last repeats), and counts the calls.
async fn scripted(script: &'static [u16]) -> (String, Arc<AtomicU32>) {
    let calls = Arc::new(AtomicU32::new(0));
    let counted = calls.clone();
    let answer = move || {
        let calls = counted.clone();
        async move {
            let n = calls.fetch_add(1, Ordering::Relaxed) as usize;
            let status = script[n.min(script.len() - 1)];
            (
                StatusCode::from_u16(status).unwrap(),
                format!(r#"{{"error": "scripted {status}"}}"#),
            )
        }
    };
    let router = Router::new()
        .route("/p/try", post(|| async { StatusCode::OK }))
        .route("/p/confirm", post(answer.clone()))
        .route("/p/cancel", post(answer));
    (serve(router).await, calls)
}

fn retries() -> RetryPolicy {
    RetryPolicy::default()
        .with_max_retries(5)
        .with_initial_interval(Duration::from_millis(1))
}

#[tokio::test]
async fn a_refusal_is_permanent_and_a_failure_for_now_is_retried() {
    let client = reqwest::Client::new();
    // 503, 408 and 429 are tried again, until the 200.
    let (base, calls) = scripted(&[503, 408, 429, 200]).await;
    let remote = Remote::new("p", format!("{base}/p"), json!({}), &client);
    Orchestrator::new([Service::from(remote)])
        .retry(retries())
        .orchestrate()
        .await
        .unwrap();
    assert_eq!(calls.load(Ordering::Relaxed), 4);

    // 409: not tried again; the error names the URL, the status and what
    // the participant said.
    let (base, calls) = scripted(&[409]).await;
    let remote = Remote::new("p", format!("{base}/p"), json!({}), &client);
    let error = Orchestrator::new([Service::from(remote)])
        .retry(retries())
        .orchestrate()
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::ConfirmFailed);
    assert_eq!(calls.load(Ordering::Relaxed), 1);
    let text = error.to_string();
    assert!(
        text.contains(&format!(
            "POST {base}/p/confirm answered 409 Conflict: scripted 409"
        )),
        "{text}"
    );

    // No one listening: the Try fails, naming the URL; its Cancel (the
    // Try may have arrived) is tried again until the retries run out.
    let port = std::net::TcpListener::bind("127.0.0.1:0")
        .unwrap()
        .local_addr()
        .unwrap()
        .port();
    let remote = Remote::new(
        "p",
        format!("http://127.0.0.1:{port}/p"),
        json!({}),
        &client,
    );
    let error = Orchestrator::new([Service::from(remote)])
        .retry(retries())
        .orchestrate()
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::CancelFailed, "{error}");
    let text = error.to_string();
    assert!(
        text.contains(&format!("POST http://127.0.0.1:{port}/p/try failed")),
        "{text}"
    );
    assert!(
        text.contains(&format!("POST http://127.0.0.1:{port}/p/cancel failed")),
        "{text}"
    );
}

#[tokio::test]
async fn a_remote_is_saved_and_rebuilt_with_the_provided_client() {
    let client = reqwest::Client::new();
    let remote = Remote::new("stock", "http://stock/s", json!({"quantity": 2}), &client)
        .header("x-tenant", "acme");
    let saved = remote.save().unwrap();
    let mut resources = Resources::default();
    let missing = Remote::rebuild(&saved, &resources).unwrap_err();
    assert!(missing.to_string().contains("Client"), "{missing}");
    assert!(missing.to_string().contains("provide"), "{missing}");
    resources.insert(client).unwrap();
    let rebuilt = Remote::rebuild(&saved, &resources).unwrap();
    assert_eq!(rebuilt.save().unwrap(), saved);
    assert_eq!(rebuilt.url(), "http://stock/s");
    let damaged = Remote::rebuild(br#"{"url": 3}"#, &resources).unwrap_err();
    assert!(damaged.to_string().contains("name"), "{damaged}");
}

/// A participant whose Confirm is redirected elsewhere, where a GET would
/// answer 200: the Confirm is not taken for done; it is refused for good,
/// naming the redirect.
#[tokio::test]
async fn a_redirected_phase_is_refused_not_taken_for_done() {
    let router = Router::new()
        .route("/p/try", post(|| async { StatusCode::OK }))
        .route(
            "/p/confirm",
            post(|| async { axum::response::Redirect::to("/elsewhere") }),
        )
        .route("/p/cancel", post(|| async { StatusCode::OK }))
        .route(
            "/elsewhere",
            axum::routing::get(|| async { "a login page" }),
        );
    let base = serve(router).await;
    let client = reqwest::Client::new();
    let remote = Remote::new("p", format!("{base}/p"), json!({}), &client);
    let error = Orchestrator::new([Service::from(remote)])
        .retry(retries())
        .orchestrate()
        .await
        .unwrap_err();
    assert_eq!(error.kind(), ErrorKind::ConfirmFailed);
    assert!(error.to_string().contains("was redirected to"), "{error}");
}

/// A service named in any text reaches the barrier under that name; a base
/// URL with a query string keeps it, the phase added to the path.
#[tokio::test]
async fn a_name_in_any_text_and_a_base_url_with_a_query_are_sent_as_they_are() {
    let seen = Arc::new(std::sync::Mutex::new(Vec::new()));
    let record = seen.clone();
    let router = Router::new().route(
        "/p/{phase}",
        post(move |branch: tcc::http::Branch, uri: axum::http::Uri| {
            let record = record.clone();
            async move {
                let query = uri.query().unwrap_or("").to_owned();
                record.lock().unwrap().push((
                    branch.service_name().to_owned(),
                    branch.phase(),
                    query,
                ));
                StatusCode::OK
            }
        }),
    );
    let base = serve(router).await;
    let client = reqwest::Client::new();
    let remote = Remote::new(
        "lager-ø",
        format!("{base}/p?tenant=acme"),
        json!({}),
        &client,
    )
    .header("TCC-Service", "someone else");
    Orchestrator::new([Service::from(remote)])
        .orchestrate()
        .await
        .unwrap();
    let seen = seen.lock().unwrap().clone();
    let expected = [tcc::Phase::Try, tcc::Phase::Confirm]
        .map(|phase| ("lager-ø".to_owned(), phase, "tenant=acme".to_owned()));
    assert_eq!(seen, expected);
}
