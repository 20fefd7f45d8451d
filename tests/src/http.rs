//! Plain JSON over HTTP to the native API.

/// POSTs a body as is; the HTTP status and the JSON answer (null when it is not JSON).
pub async fn post_json(
    http: &reqwest::Client,
    url: &str,
    body: String,
) -> (u16, serde_json::Value) {
    // Job and service files are JSON or TOML text; the master reads them by their type.
    let json = matches!(body.trim_start().chars().next(), Some('{' | '['));
    let content_type = if json {
        "application/json"
    } else {
        "application/toml"
    };
    let resp = http
        .post(url)
        .header("Content-Type", content_type)
        .body(body)
        .send()
        .await
        .unwrap();
    let status = resp.status().as_u16();
    (status, resp.json().await.unwrap_or(serde_json::Value::Null))
}

/// GETs a JSON answer; `None` unless the status is a success.
pub async fn get_json(http: &reqwest::Client, url: &str) -> Option<serde_json::Value> {
    let resp = http.get(url).send().await.ok()?;
    if !resp.status().is_success() {
        return None;
    }
    resp.json().await.ok()
}
