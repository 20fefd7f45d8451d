//! A small status page at `/`: the cell's agents and tasks, refreshed every two seconds.
//! Server-rendered, no JavaScript; every value is HTML-escaped.

use std::sync::Arc;

use axum::extract::State;
use axum::response::Html;

use crate::committer::Published;

fn esc(s: &str) -> String {
    s.replace('&', "&amp;")
        .replace('<', "&lt;")
        .replace('>', "&gt;")
        .replace('"', "&quot;")
}

pub async fn index(State(p): State<Arc<Published>>) -> Html<String> {
    let snap = p.snapshot();
    let mut agents: Vec<_> = snap.agents().collect();
    agents.sort_by(|a, b| a.id.cmp(&b.id));
    let mut tasks: Vec<_> = snap.tasks().collect();
    tasks.sort_by_key(|t| std::cmp::Reverse(t.version));
    let mut html = format!(
        "<!doctype html><html><head><meta charset=utf-8><meta http-equiv=refresh content=2><title>Shoal</title>\
         <style>body{{font-family:sans-serif;margin:2em}}table{{border-collapse:collapse}}td,th{{padding:2px 10px;border-bottom:1px solid #ddd;text-align:left}}</style>\
         </head><body><h1>Shoal cell {}</h1><p>version {} · {} agents · {} tasks · JSON: <a href=/api/shoal/v1/state>/api/shoal/v1/state</a></p>",
        esc(snap.cell_id()),
        snap.version(),
        agents.len(),
        tasks.len()
    );
    html.push_str("<h2>Agents</h2><table><tr><th>id</th><th>hostname</th><th>state</th><th>total</th><th>allocated</th></tr>");
    for a in agents {
        html.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{:?}</td><td>{}</td><td>{}</td></tr>",
            esc(a.id.as_str()),
            esc(&a.hostname),
            a.state,
            esc(&a.total.to_string()),
            esc(&a.allocated.to_string())
        ));
    }
    html.push_str("</table><h2>Tasks (newest first)</h2><table><tr><th>id</th><th>state</th><th>agent</th><th>resources</th><th>message</th><th>logs</th></tr>");
    for t in tasks.into_iter().take(500) {
        let logs = format!(
            "/files/read?path=/agents/{}/tasks/{}/stdout",
            t.agent_id, t.id
        );
        html.push_str(&format!(
            "<tr><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td>{}</td><td><a href=\"{}\">stdout</a></td></tr>",
            esc(t.id.as_str()),
            t.state.mesos_name().trim_start_matches("TASK_"),
            esc(t.agent_id.as_str()),
            esc(&t.resources.to_string()),
            esc(t.status.message.as_deref().unwrap_or("")),
            esc(&logs)
        ));
    }
    html.push_str("</table></body></html>");
    Html(html)
}
