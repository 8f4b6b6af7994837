//! An HTTP endpoint that reads each request body and answers 204: the ceiling of what the
//! benchmark's own client can push, to show it is not the bottleneck.

use axum::Router;
use axum::body::Bytes;
use axum::extract::DefaultBodyLimit;
use axum::http::StatusCode;
use axum::routing::post;

/// A running null endpoint; dropped, it stops.
pub struct NullSink {
    pub url: String,
    shutdown: Option<tokio::sync::oneshot::Sender<()>>,
    thread: Option<std::thread::JoinHandle<()>>,
}

impl NullSink {
    pub fn start() -> anyhow::Result<NullSink> {
        let rt = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let listener = rt.block_on(tokio::net::TcpListener::bind("127.0.0.1:0"))?;
        let url = format!("http://{}/write", listener.local_addr()?);
        let (tx, rx) = tokio::sync::oneshot::channel::<()>();
        let app = Router::new()
            .route(
                "/write",
                post(|body: Bytes| async move {
                    std::hint::black_box(body.len());
                    StatusCode::NO_CONTENT
                }),
            )
            .layer(DefaultBodyLimit::disable());
        let thread = std::thread::spawn(move || {
            rt.block_on(async move {
                let _ = axum::serve(listener, app)
                    .with_graceful_shutdown(async move {
                        let _ = rx.await;
                    })
                    .await;
            });
        });
        Ok(NullSink {
            url,
            shutdown: Some(tx),
            thread: Some(thread),
        })
    }
}

impl Drop for NullSink {
    fn drop(&mut self) {
        if let Some(tx) = self.shutdown.take() {
            let _ = tx.send(());
        }
        if let Some(t) = self.thread.take() {
            let _ = t.join();
        }
    }
}
