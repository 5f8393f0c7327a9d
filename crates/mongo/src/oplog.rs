//! Reading `local.oplog.rs`: entries from a position on, in order, and
//! the fields every entry has.

use mongodb::bson::{Bson, RawDocument, RawDocumentBuf, doc};
use mongodb::{Client, Cursor};

use crate::meta::OpTime;
use crate::{Error, Result};

/// A cursor over the oplog from `start` on (that entry included, so the
/// caller sees whether the oplog still reaches back to it).
///
/// # Errors
/// The server refusing the query (naming it).
pub async fn cursor_from(
    client: &Client,
    server: &str,
    start: OpTime,
) -> Result<Cursor<RawDocumentBuf>> {
    client
        .database("local")
        .collection::<RawDocumentBuf>("oplog.rs")
        .find(doc! {"ts": {"$gte": Bson::Timestamp(start.to_bson())}})
        .await
        .map_err(Error::mongo(format!("reading the oplog of {server}")))
}

/// The `ts` of an oplog entry.
///
/// # Errors
/// [`Error::Corrupt`]: an entry without a timestamp `ts`.
pub fn entry_ts(entry: &RawDocument) -> Result<OpTime> {
    match entry.get_timestamp("ts") {
        Ok(ts) => Ok(ts.into()),
        Err(e) => Err(Error::Corrupt(format!(
            "an oplog entry without a timestamp ts: {e}"
        ))),
    }
}
