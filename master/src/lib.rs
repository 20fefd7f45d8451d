//! The Shoal master: the IO shell around the sans-IO cell core.
//!
//! - [`store`]: the durable store (redb by default), behind a trait.
//! - [`committer`]: the one commit path (group commit: validate → apply → persist → ack →
//!   publish).
//! - [`api`]: the native HTTP/JSON API for schedulers and the agent-facing API.
//! - [`agents`]: the agent hub, which speaks to agents in typed messages over a [`link`]
//!   (the WebSocket codec, or an in-memory pair).

pub mod agents;
pub mod api;
pub mod collector;
pub mod committer;
pub mod driver;
pub mod error;
pub mod health;
pub mod http;
pub mod jobs;
pub mod limits;
pub mod link;
pub mod services;
pub mod store;
pub mod ui;

use std::net::SocketAddr;
use std::path::PathBuf;
use std::sync::Arc;

use axum::routing::get;
use axum::Router;
use shoal_core::clock::{SharedClock, SystemClock};
use shoal_core::CellConfig;
use shoal_sched::{Cell, Schedulers};

pub use committer::{CommitConfig, CommitCore, CommitError, Committer, Published};
pub use error::MasterError;
pub use store::{MemStore, RedbStore, Store};

/// How to run a master.
#[derive(Clone, Debug)]
pub struct MasterConfig {
    pub listen: SocketAddr,
    pub work_dir: PathBuf,
}

/// Loads the cell from a store (a new cell id is chosen for an empty store) and checks it.
pub fn load_cell(store: &dyn Store) -> Result<Cell, MasterError> {
    let stored = store.load().map_err(MasterError::Load)?;
    let cell_id = stored
        .cell_id
        .clone()
        .unwrap_or_else(|| uuid::Uuid::new_v4().to_string());
    let mut cell = Cell::from_records(
        CellConfig {
            cell_id: Arc::from(cell_id),
        },
        stored.version,
        stored.agents,
        stored.tasks,
        stored.roles,
        stored.claims,
    );
    cell.restore_records(Schedulers::restored(stored.jobs, stored.services));
    cell.restore_collected(stored.collected);
    cell.check_invariants()
        .map_err(|e| MasterError::Invariant(e.to_string()))?;
    Ok(cell)
}

/// A running master core: the commit path and what it publishes. Servers mount routes on it.
#[derive(Clone)]
pub struct MasterCore {
    pub committer: Committer,
    pub published: Arc<Published>,
    pub agents: Arc<agents::AgentHub>,
    /// The open watch streams and their cap (`--max-watchers`).
    pub watchers: Arc<api::Watchers>,
    /// Garbage collection of finished work (parts above add what they keep).
    pub collector: Arc<collector::Collector>,
}

impl MasterCore {
    /// Starts the commit path over a store, on the operating system's clocks.
    /// Must run inside a tokio runtime (the agent hub spawns its loops).
    pub fn start(store: Arc<dyn Store>) -> Result<MasterCore, MasterError> {
        MasterCore::start_with(
            store,
            committer::CommitConfig::default(),
            agents::AgentTimers::default(),
            SystemClock::shared(),
        )
    }

    /// Starts the commit path over a store. Every part of the master (and compat, through
    /// [`Published::clock`]) reads time only from `clock`.
    pub fn start_with(
        store: Arc<dyn Store>,
        config: committer::CommitConfig,
        timers: agents::AgentTimers,
        clock: SharedClock,
    ) -> Result<MasterCore, MasterError> {
        let cell = load_cell(store.as_ref())?;
        tracing::info!(
            cell_id = cell.cell_id(),
            version = cell.version(),
            agents = cell.agent_count(),
            tasks = cell.task_count(),
            "cell loaded"
        );
        let collector = Arc::new(collector::Collector::new(
            config.retention.clone(),
            config.collect_interval,
        ));
        let (committer, published, _thread) = committer::start(cell, store, clock, config);
        if published.snapshot().version() > 0 {
            // Holds (offers) do not survive a restart: say so to watchers first.
            let c = committer.clone();
            tokio::spawn(async move {
                if let Err(e) = c.submit(shoal_core::Command::ClearHolds).await {
                    tracing::warn!(error = %e, "could not clear holds");
                }
            });
        }
        let agents = agents::AgentHub::start(committer.clone(), published.clone(), timers);
        jobs::start(committer.clone(), published.clone());
        services::start(committer.clone(), published.clone());
        collector::start(collector.clone(), committer.clone(), published.clone());
        Ok(MasterCore {
            committer,
            published,
            agents,
            watchers: Arc::new(api::Watchers::new(limits::WATCHERS_MAX)),
            collector,
        })
    }

    /// The clock the whole master tells time by.
    pub fn clock(&self) -> &SharedClock {
        &self.published.clock
    }

    /// The native API plus `/health` (`/version` is the Mesos one, in `shoal-compat`).
    pub fn router(&self) -> Router {
        api::router_with_watchers(
            api::ApiState {
                committer: self.committer.clone(),
                published: self.published.clone(),
            },
            self.watchers.clone(),
        )
        .merge(jobs::router(api::ApiState {
            committer: self.committer.clone(),
            published: self.published.clone(),
        }))
        .merge(services::router(api::ApiState {
            committer: self.committer.clone(),
            published: self.published.clone(),
        }))
        .merge(agents::router(self.agents.clone()))
        .merge(
            Router::new()
                .route("/", get(ui::index))
                .with_state(self.published.clone()),
        )
        .merge(
            Router::new()
                .route("/health", get(health::health))
                .with_state(self.published.clone()),
        )
    }
}

/// Opens the embedded store under `work_dir` (one file, `shoal.redb`); it stamps its
/// reopens with `clock`.
pub fn open_store(
    work_dir: &std::path::Path,
    clock: SharedClock,
) -> Result<Arc<dyn Store>, MasterError> {
    std::fs::create_dir_all(work_dir)
        .map_err(MasterError::io(format!("creating {}", work_dir.display())))?;
    let path = work_dir.join("shoal.redb");
    let store = RedbStore::open_with_clock(&path, clock).map_err(|cause| MasterError::Open {
        path: path.clone(),
        cause,
    })?;
    Ok(Arc::new(store))
}

/// Binds `addr` and writes the bound address to `<work_dir>/master.addr` (so `127.0.0.1:0`
/// can be used by tests that run in parallel).
pub async fn bind(
    addr: SocketAddr,
    work_dir: &std::path::Path,
) -> Result<tokio::net::TcpListener, MasterError> {
    let listener = tokio::net::TcpListener::bind(addr)
        .await
        .map_err(MasterError::io(format!("binding {addr}")))?;
    let bound = listener
        .local_addr()
        .map_err(MasterError::io("reading the bound address"))?;
    let tmp = work_dir.join("master.addr.tmp");
    std::fs::write(&tmp, bound.to_string())
        .map_err(MasterError::io(format!("writing {}", tmp.display())))?;
    std::fs::rename(&tmp, work_dir.join("master.addr"))
        .map_err(MasterError::io(format!("renaming {}", tmp.display())))?;
    tracing::info!(%bound, "master listening");
    Ok(listener)
}

/// Serves `router` on `listener` until `shutdown` resolves, with the default connection
/// limits and the listen address and machine hostname as the accepted hosts.
pub async fn serve(
    listener: tokio::net::TcpListener,
    router: Router,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), MasterError> {
    let config = http::HttpConfig::new(
        listener
            .local_addr()
            .map_err(MasterError::io("reading the bound address"))?,
    );
    serve_with(listener, router, config, shutdown).await
}

/// Serves `router` on `listener` until `shutdown` resolves: every route behind the
/// connection pools, timeouts and request guards of [`http`].
pub async fn serve_with(
    listener: tokio::net::TcpListener,
    router: Router,
    config: http::HttpConfig,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> Result<(), MasterError> {
    http::serve(listener, router, config, shutdown).await
}
