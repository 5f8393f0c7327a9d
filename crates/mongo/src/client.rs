//! Connecting: the URI parsed by the driver, the hosts kept for messages
//! and metadata (never the credentials), and one round trip up front so a
//! wrong address or password fails at once with a clear message.

use std::time::Duration;

use mongodb::Client;
use mongodb::bson::doc;
use mongodb::options::ClientOptions;

use crate::{Error, Result};

/// A connected client and what to call its server in messages.
#[derive(Clone, Debug)]
pub struct Connection {
    /// The driver's client.
    pub client: Client,
    /// `host:port` of each seed, from the URI.
    pub hosts: Vec<String>,
}

impl Connection {
    /// The hosts as one string, for messages.
    pub fn name(&self) -> String {
        self.hosts.join(",")
    }
}

/// Connects to `uri` (`mongodb://` or `mongodb+srv://`, with the driver's
/// options) and checks that the server answers and accepts the
/// credentials. Without `serverSelectionTimeoutMS` in the URI, an
/// unreachable server fails after 10 s rather than the driver's 30.
///
/// # Errors
/// [`Error::InvalidArgument`] for a URI the driver rejects;
/// [`Error::Mongo`] naming the hosts when the server cannot be reached or
/// refuses the credentials.
pub async fn connect(uri: &str) -> Result<Connection> {
    let mut options = ClientOptions::parse(uri)
        .await
        .map_err(|e| Error::InvalidArgument(format!("MongoDB URI: {e}")))?;
    let hosts: Vec<String> = options.hosts.iter().map(ToString::to_string).collect();
    options.app_name.get_or_insert_with(|| "tessera".into());
    options
        .server_selection_timeout
        .get_or_insert(Duration::from_secs(10));
    options
        .connect_timeout
        .get_or_insert(Duration::from_secs(10));
    let client = Client::with_options(options)
        .map_err(|e| Error::InvalidArgument(format!("MongoDB URI: {e}")))?;
    let c = Connection { client, hosts };
    c.client
        .database("admin")
        .run_command(doc! {"ping": 1})
        .await
        .map_err(Error::mongo(format!(
            "connecting to MongoDB at {}",
            c.name()
        )))?;
    Ok(c)
}
