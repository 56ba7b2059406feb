//! Connections to Redis, standalone or cluster: one reconnecting handle for commands and scripts (cheap to clone,
//! multiplexed), and a factory for the dedicated connection of blocking reads, made without a response timeout (the
//! crate's default timeout would cut every `XREAD BLOCK` short).

use std::time::Duration;

use redis::aio::{ConnectionLike, ConnectionManager, ConnectionManagerConfig, MultiplexedConnection};
use redis::cluster::ClusterClient;
use redis::cluster_async::ClusterConnection;
use redis::{AsyncConnectionConfig, Client, Cmd, Pipeline, RedisFuture, Value};

use crate::model::StoreError;

/// How long connecting may take.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Where the store's Redis is.
#[derive(Clone, Debug)]
pub(super) enum Target {
    /// One server (`redis://host:port/db`).
    Standalone(Client),
    /// A Redis Cluster, by its seed nodes.
    Cluster(Vec<String>),
}

impl Target {
    /// The one-line location for the start-up log.
    pub(super) fn describe(&self) -> String {
        match self {
            Target::Standalone(client) => format!("redis at {}", client.get_connection_info().addr()),
            Target::Cluster(nodes) => format!("redis cluster at {}", nodes.join(",")),
        }
    }

    /// The connection for commands and scripts: reconnecting (standalone) or slot-routing (cluster). A command
    /// or script that has not answered within `response_timeout` (`STORE_TIMEOUT`) fails as `Unavailable`.
    pub(super) async fn commands(&self, response_timeout: Duration) -> Result<Commands, StoreError> {
        match self {
            Target::Standalone(client) => {
                let config = ConnectionManagerConfig::new()
                    .set_response_timeout(Some(response_timeout))
                    .set_connection_timeout(Some(CONNECT_TIMEOUT))
                    .set_number_of_retries(2);
                let manager = client.get_connection_manager_with_config(config).await.map_err(unavailable)?;
                Ok(Commands::Standalone(manager))
            }
            Target::Cluster(nodes) => {
                let client = ClusterClient::builder(nodes.iter().map(String::as_str))
                    .connection_timeout(CONNECT_TIMEOUT)
                    .response_timeout(response_timeout)
                    .build()
                    .map_err(unavailable)?;
                Ok(Commands::Cluster(client.get_async_connection().await.map_err(unavailable)?))
            }
        }
    }

    /// A dedicated connection for blocking reads: no response timeout, never shared with other commands.
    pub(super) async fn blocking(&self) -> Result<Commands, StoreError> {
        match self {
            Target::Standalone(client) => {
                let config = AsyncConnectionConfig::new()
                    .set_response_timeout(None)
                    .set_connection_timeout(Some(CONNECT_TIMEOUT));
                let connection =
                    client.get_multiplexed_async_connection_with_config(&config).await.map_err(unavailable)?;
                Ok(Commands::Blocking(connection))
            }
            Target::Cluster(nodes) => {
                // No `response_timeout` on the builder: the cluster client then waits for each reply.
                let client = ClusterClient::builder(nodes.iter().map(String::as_str))
                    .connection_timeout(CONNECT_TIMEOUT)
                    .build()
                    .map_err(unavailable)?;
                Ok(Commands::Cluster(client.get_async_connection().await.map_err(unavailable)?))
            }
        }
    }
}

/// A connection of either kind, usable wherever the crate takes an async connection (scripts, commands).
#[derive(Clone)]
pub(super) enum Commands {
    /// Standalone, reconnecting.
    Standalone(ConnectionManager),
    /// Standalone, dedicated to blocking reads.
    Blocking(MultiplexedConnection),
    /// Cluster.
    Cluster(ClusterConnection),
}

impl ConnectionLike for Commands {
    fn req_packed_command<'a>(&'a mut self, cmd: &'a Cmd) -> RedisFuture<'a, Value> {
        match self {
            Commands::Standalone(c) => c.req_packed_command(cmd),
            Commands::Blocking(c) => c.req_packed_command(cmd),
            Commands::Cluster(c) => c.req_packed_command(cmd),
        }
    }

    fn req_packed_commands<'a>(
        &'a mut self,
        pipeline: &'a Pipeline,
        offset: usize,
        count: usize,
    ) -> RedisFuture<'a, Vec<Value>> {
        match self {
            Commands::Standalone(c) => c.req_packed_commands(pipeline, offset, count),
            Commands::Blocking(c) => c.req_packed_commands(pipeline, offset, count),
            Commands::Cluster(c) => c.req_packed_commands(pipeline, offset, count),
        }
    }

    fn get_db(&self) -> i64 {
        match self {
            Commands::Standalone(c) => c.get_db(),
            Commands::Blocking(c) => c.get_db(),
            Commands::Cluster(c) => c.get_db(),
        }
    }
}

/// Any Redis failure (connection lost, timeout, server error): the store is unavailable and the outcome of a write
/// is unknown.
pub(super) fn unavailable(error: redis::RedisError) -> StoreError {
    StoreError::Unavailable(format!("redis: {error}"))
}
