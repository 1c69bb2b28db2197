//! A webhook receiver on loopback for end-to-end tests: records every
//! request as received (headers and raw body, for Mesa's SDK to verify
//! later) and answers as scripted: a queue of statuses, then 200; or never
//! (it holds the request open) while `hang` is set.

use actix_web::web::{self, Bytes};
use actix_web::{App, HttpRequest, HttpResponse, HttpServer};
use anyhow::{Context, Result};
use std::collections::{BTreeMap, VecDeque};
use std::net::SocketAddr;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex, PoisonError};
use std::time::Duration;

/// One request as it arrived.
#[derive(Debug, Clone)]
pub struct Received {
    /// Lower-cased names.
    pub headers: BTreeMap<String, String>,
    pub body: String,
    /// The status answered (0: none, the request was held open).
    pub answered: u16,
}

#[derive(Default)]
struct State {
    received: Mutex<Vec<Received>>,
    script: Mutex<VecDeque<u16>>,
    hang: AtomicBool,
    flood: AtomicBool,
}

pub struct WebhookReceiver {
    addr: SocketAddr,
    state: Arc<State>,
    handle: actix_web::dev::ServerHandle,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl WebhookReceiver {
    pub fn start() -> Result<WebhookReceiver> {
        let listener = std::net::TcpListener::bind("127.0.0.1:0").context("bind receiver")?;
        let addr = listener.local_addr()?;
        let state = Arc::new(State::default());
        let data = web::Data::from(Arc::clone(&state));
        let (tx, rx) = std::sync::mpsc::channel();
        let thread = std::thread::Builder::new()
            .name(format!("webhook-receiver-{}", addr.port()))
            .spawn(move || {
                actix_web::rt::System::new().block_on(async move {
                    let server = HttpServer::new(move || {
                        App::new()
                            .app_data(data.clone())
                            .app_data(web::PayloadConfig::new(1 << 20))
                            .default_service(web::to(handle))
                    })
                    .workers(2)
                    .disable_signals()
                    .shutdown_timeout(0)
                    .listen(listener);
                    match server {
                        Ok(s) => {
                            let s = s.run();
                            let _ = tx.send(Ok(s.handle()));
                            let _ = s.await;
                        }
                        Err(e) => {
                            let _ = tx.send(Err(e));
                        }
                    }
                });
            })
            .context("spawn receiver thread")?;
        let handle = rx
            .recv()
            .context("receiver thread exited")?
            .context("start receiver")?;
        Ok(WebhookReceiver {
            addr,
            state,
            handle,
            thread: Some(thread),
        })
    }

    /// `http://127.0.0.1:PORT/hook`.
    pub fn url(&self) -> String {
        format!("http://{}/hook", self.addr)
    }

    /// Answer the next requests with these statuses, then 200 again.
    pub fn script(&self, statuses: &[u16]) {
        let mut s = self
            .state
            .script
            .lock()
            .unwrap_or_else(PoisonError::into_inner);
        s.extend(statuses.iter().copied());
    }

    /// Hold requests open without answering (`true`) or answer again.
    pub fn hang(&self, on: bool) {
        self.state.hang.store(on, Ordering::SeqCst);
    }

    /// Answer 200 with a body that never ends (`true`), or normally again.
    pub fn flood(&self, on: bool) {
        self.state.flood.store(on, Ordering::SeqCst);
    }

    /// Every request so far, in arrival order.
    pub fn received(&self) -> Vec<Received> {
        self.state
            .received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .clone()
    }
}

impl Drop for WebhookReceiver {
    fn drop(&mut self) {
        // Release held requests, then stop: `stop` sends the command
        // eagerly; its future only reports completion, which joining the
        // thread observes anyway.
        self.hang(false);
        drop(self.handle.stop(false));
        if let Some(thread) = self.thread.take() {
            let _ = thread.join();
        }
    }
}

async fn handle(state: web::Data<State>, req: HttpRequest, body: Bytes) -> HttpResponse {
    let headers = req
        .headers()
        .iter()
        .map(|(k, v)| {
            (
                k.as_str().to_ascii_lowercase(),
                String::from_utf8_lossy(v.as_bytes()).into_owned(),
            )
        })
        .collect();
    let body = String::from_utf8_lossy(&body).into_owned();
    if state.hang.load(Ordering::SeqCst) {
        state
            .received
            .lock()
            .unwrap_or_else(PoisonError::into_inner)
            .push(Received {
                headers,
                body,
                answered: 0,
            });
        while state.hang.load(Ordering::SeqCst) {
            tokio::time::sleep(Duration::from_millis(50)).await;
        }
        // The sender gave up long ago; answer whatever.
        return HttpResponse::ServiceUnavailable().finish();
    }
    let status = state
        .script
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .pop_front()
        .unwrap_or(200);
    state
        .received
        .lock()
        .unwrap_or_else(PoisonError::into_inner)
        .push(Received {
            headers,
            body,
            answered: status,
        });
    if state.flood.load(Ordering::SeqCst) {
        let chunk = Bytes::from(vec![b'x'; 64 * 1024]);
        let endless = futures_util::stream::repeat_with(move || {
            Ok::<Bytes, std::convert::Infallible>(chunk.clone())
        });
        return HttpResponse::build(actix_web::http::StatusCode::OK).streaming(endless);
    }
    let code = actix_web::http::StatusCode::from_u16(status)
        .unwrap_or(actix_web::http::StatusCode::INTERNAL_SERVER_ERROR);
    HttpResponse::build(code).body("ok")
}
