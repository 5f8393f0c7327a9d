//! The read floor of `benches/mongo.sh`: every document of one collection
//! read with the official driver as raw BSON (no decoding), the least any
//! logical backup must do.
//!
//! `cargo run --release -p tessera-mongo --example read_floor -- URI DB COLLECTION`
//! prints `documents bytes seconds`.

use std::time::Instant;

use mongodb::bson::{RawDocumentBuf, doc};

#[tokio::main]
async fn main() -> Result<(), Box<dyn std::error::Error>> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    let [uri, db, coll] = args.as_slice() else {
        eprintln!("usage: read_floor URI DB COLLECTION");
        std::process::exit(2);
    };
    let client = mongodb::Client::with_uri_str(uri).await?;
    let started = Instant::now();
    let mut cursor = client
        .database(db)
        .collection::<RawDocumentBuf>(coll)
        .find(doc! {})
        .await?;
    let (mut documents, mut bytes) = (0u64, 0u64);
    while cursor.advance().await? {
        documents += 1;
        bytes += cursor.current().as_bytes().len() as u64;
    }
    println!("{documents} {bytes} {:.3}", started.elapsed().as_secs_f64());
    Ok(())
}
