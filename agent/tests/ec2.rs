//! EC2 metadata against a fake IMDSv2 service on loopback.

use std::time::{Duration, Instant};

use axum::http::{HeaderMap, StatusCode};
use axum::routing::{get, put};
use axum::Router;

async fn serve(router: Router) -> String {
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap();
    tokio::spawn(async move { axum::serve(listener, router).await.unwrap() });
    format!("http://{addr}")
}

fn authed(h: &HeaderMap, body: &'static str) -> (StatusCode, &'static str) {
    if h.get("X-aws-ec2-metadata-token")
        .map(|v| v == "tok")
        .unwrap_or(false)
    {
        (StatusCode::OK, body)
    } else {
        (StatusCode::UNAUTHORIZED, "")
    }
}

#[tokio::test]
async fn reads_instance_metadata_with_a_session_token() {
    let router = Router::new()
        .route(
            "/latest/api/token",
            put(|h: HeaderMap| async move {
                if h.contains_key("X-aws-ec2-metadata-token-ttl-seconds") {
                    (StatusCode::OK, "tok")
                } else {
                    (StatusCode::BAD_REQUEST, "")
                }
            }),
        )
        .route(
            "/latest/meta-data/instance-id",
            get(|h: HeaderMap| async move { authed(&h, "i-0abc") }),
        )
        .route(
            "/latest/meta-data/instance-type",
            get(|h: HeaderMap| async move { authed(&h, "m5.large") }),
        )
        .route(
            "/latest/meta-data/placement/availability-zone",
            get(|h: HeaderMap| async move { authed(&h, "eu-west-1b") }),
        );
    let base = serve(router).await;
    let info = shoal_agent::ec2::probe(&base).await.expect("metadata");
    assert_eq!(info.instance_id, "i-0abc");
    assert_eq!(info.instance_type, "m5.large");
    assert_eq!(
        info.region, "eu-west-1",
        "derived from the zone when the service has no region"
    );
    assert_eq!(info.domain().zone, "eu-west-1b");
    assert_eq!(info.attributes()["ec2_instance_type"], "m5.large");
}

#[tokio::test]
async fn gives_up_within_a_second() {
    // A service that never answers the token request.
    let router = Router::new().route(
        "/latest/api/token",
        put(|| async {
            tokio::time::sleep(Duration::from_secs(30)).await;
            "late"
        }),
    );
    let base = serve(router).await;
    let started = Instant::now();
    assert!(shoal_agent::ec2::probe(&base).await.is_none());
    assert!(
        started.elapsed() < Duration::from_millis(1500),
        "{:?}",
        started.elapsed()
    );
    // Nothing listening at all.
    assert!(shoal_agent::ec2::probe("http://127.0.0.1:9")
        .await
        .is_none());
}
