//! Helpers of the adapter's tests.

use std::sync::Arc;

use tessera_core::{Credential, InitOptions, KdfParams, ObjectStoreBackend, Repository};

pub use crate::server::{Server, db_name};

impl Server {
    pub async fn connect(&self) -> tessera_mongo::Connection {
        tessera_mongo::connect(&self.uri).await.unwrap()
    }
}

pub async fn repo() -> Repository {
    let options = InitOptions {
        kdf: KdfParams::insecure_fast(),
        ..Default::default()
    };
    Repository::init(
        Arc::new(ObjectStoreBackend::memory()),
        &Credential::password("pw"),
        options,
    )
    .await
    .unwrap()
}

/// Documents in `_id` order (numbers, then strings), sorted here: the
/// stand-in server sorts numbers as text.
pub fn by_id(mut docs: Vec<mongodb::bson::Document>) -> Vec<mongodb::bson::Document> {
    use mongodb::bson::Bson;
    docs.sort_by_key(|d| match d.get("_id") {
        Some(Bson::Int32(n)) => (0, i64::from(*n), String::new()),
        Some(Bson::Int64(n)) => (0, *n, String::new()),
        Some(Bson::String(s)) => (1, 0, s.clone()),
        other => (2, 0, format!("{other:?}")),
    });
    docs
}

/// Every document of a collection, in `_id` order.
pub async fn documents(
    conn: &tessera_mongo::Connection,
    db: &str,
    coll: &str,
) -> Vec<mongodb::bson::Document> {
    use futures::TryStreamExt;
    let docs = conn
        .client
        .database(db)
        .collection::<mongodb::bson::Document>(coll)
        .find(mongodb::bson::doc! {})
        .await
        .unwrap()
        .try_collect()
        .await
        .unwrap();
    by_id(docs)
}
