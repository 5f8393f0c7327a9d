//! Opening storage from a repository URL.
//!
//! | URL | store | cargo feature |
//! |---|---|---|
//! | `PATH`, `file://PATH` | local directory | always |
//! | `memory://` | process memory (tests) | always |
//! | `s3://BUCKET[/PREFIX]` | AWS S3 and S3-compatible (MinIO, Ceph, Garage) | `s3` |
//! | `gs://BUCKET[/PREFIX]` | Google Cloud Storage | `gcs` |
//! | `az://CONTAINER[/PREFIX]` | Azure Blob Storage | `azure` |
//!
//! Cloud credentials and endpoints come from the standard environment, as
//! `object_store` reads it (`AWS_ACCESS_KEY_ID`, `AWS_SECRET_ACCESS_KEY`,
//! `AWS_SESSION_TOKEN`, `AWS_REGION`, `AWS_ENDPOINT_URL`,
//! `AWS_ALLOW_HTTP`, `GOOGLE_SERVICE_ACCOUNT`, `AZURE_STORAGE_ACCOUNT_NAME`,
//! ...). For S3, what the environment leaves unset is read from the AWS
//! profile files (`~/.aws/credentials`, `~/.aws/config`, or the files
//! `AWS_SHARED_CREDENTIALS_FILE` and `AWS_CONFIG_FILE` name; profile
//! `AWS_PROFILE` or `default`). A custom endpoint is addressed path-style
//! unless `AWS_VIRTUAL_HOSTED_STYLE_REQUEST=true`.
//!
//! Every store is wrapped the same way: fault injection when asked for,
//! then request counting, then retries of transient failures
//! ([`RetryingBackend`]); the HTTP stores also retry each request
//! themselves (exponential backoff with jitter).

use std::sync::Arc;

use tessera_core::config::ObjectLock;
use tessera_core::storage::{
    Backend, CountingBackend, FaultPlan, FaultyBackend, ObjectStoreBackend, RetryPolicy,
    RetryingBackend, StorageClass,
};
use tessera_core::{Error, Result};

/// How to open storage.
#[derive(Clone, Debug, Default)]
pub struct StorageOptions {
    /// Storage class of data packs (metadata keeps the default class).
    pub data_storage_class: Option<StorageClass>,
    /// Object lock retention to set on every new object (S3 only).
    pub object_lock: Option<ObjectLock>,
    /// Retries of transient failures.
    pub retry: RetryPolicy,
    /// Faults to inject (tests and benchmarks).
    pub faults: Option<FaultPlan>,
}

/// Opened storage: the backend to open a repository on, and its request
/// counter.
#[derive(Clone, Debug)]
pub struct Storage {
    /// The backend, with retries.
    pub backend: Arc<dyn Backend>,
    /// Counts the requests that reach the store.
    pub counter: Arc<CountingBackend>,
    /// Whether the store is remote (worth a local metadata cache).
    pub remote: bool,
}

/// Opens the storage `location` names (see the module docs). With `create`,
/// a missing local directory is created (for `init`).
///
/// # Errors
/// [`Error::InvalidArgument`] for an unknown scheme, a scheme this build
/// lacks, or options the store cannot honour; [`Error::NoRepository`] for
/// a missing local directory; storage errors.
pub fn open_storage(location: &str, create: bool, options: &StorageOptions) -> Result<Storage> {
    let (store, remote) = open_store(location, create, options)?;
    let store: Arc<dyn Backend> = match &options.faults {
        Some(plan) => Arc::new(FaultyBackend::new(store, plan.clone())),
        None => store,
    };
    let counter = Arc::new(CountingBackend::new(store));
    let backend = Arc::new(RetryingBackend::new(counter.clone(), options.retry));
    Ok(Storage {
        backend,
        counter,
        remote,
    })
}

fn open_store(
    location: &str,
    create: bool,
    options: &StorageOptions,
) -> Result<(Arc<dyn Backend>, bool)> {
    let scheme = location.split_once("://").map(|(s, _)| s);
    let local = matches!(scheme, None | Some("file" | "memory"));
    if local {
        if let Some(class) = &options.data_storage_class {
            return Err(Error::InvalidArgument(format!(
                "{location}: a local repository has no storage classes (asked for {class})"
            )));
        }
        return Ok((tessera_core::open_location(location, create)?, false));
    }
    let (scheme, rest) = location.split_once("://").unwrap_or(("", location));
    let (bucket, prefix) = rest.split_once('/').unwrap_or((rest, ""));
    if bucket.is_empty() {
        return Err(Error::InvalidArgument(format!(
            "{location}: no bucket or container named"
        )));
    }
    // Buckets and containers are made by their owner, never by tessera.
    let _ = create;
    let store = remote_store(location, scheme, bucket, options)?;
    let prefix = prefix.trim_matches('/');
    let store: Arc<dyn object_store::ObjectStore> = if prefix.is_empty() {
        store
    } else {
        Arc::new(object_store::prefix::PrefixStore::new(store, prefix))
    };
    let mut backend = ObjectStoreBackend::new(store, location);
    if let Some(class) = &options.data_storage_class {
        backend = backend
            .with_data_class(class.clone())
            .map_err(|e| Error::InvalidArgument(e.to_string()))?;
    }
    Ok((Arc::new(backend), true))
}

/// The cloud store a scheme names, if this build has it.
fn remote_store(
    location: &str,
    scheme: &str,
    bucket: &str,
    options: &StorageOptions,
) -> Result<Arc<dyn object_store::ObjectStore>> {
    let _ = (bucket, options);
    match scheme {
        #[cfg(feature = "s3")]
        "s3" => Ok(Arc::new(s3::build(bucket, options)?)),
        #[cfg(feature = "gcs")]
        "gs" => Ok(Arc::new(
            object_store::gcp::GoogleCloudStorageBuilder::from_env()
                .with_bucket_name(bucket)
                .with_retry(retry_config())
                .build()
                .map_err(|e| invalid(location, e))?,
        )),
        #[cfg(feature = "azure")]
        "az" => Ok(Arc::new(
            object_store::azure::MicrosoftAzureBuilder::from_env()
                .with_container_name(bucket)
                .with_retry(retry_config())
                .build()
                .map_err(|e| invalid(location, e))?,
        )),
        #[allow(unreachable_patterns)]
        "s3" | "gs" | "az" => Err(Error::InvalidArgument(format!(
            "{location}: this build of tessera has no {scheme}:// support (cargo feature {})",
            match scheme {
                "s3" => "s3",
                "gs" => "gcs",
                _ => "azure",
            }
        ))),
        other => Err(Error::InvalidArgument(format!(
            "{location}: unknown scheme {other}:// (use a path, file://, memory://, s3://, gs:// or az://)"
        ))),
    }
}

#[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
fn retry_config() -> object_store::RetryConfig {
    object_store::RetryConfig {
        backoff: object_store::BackoffConfig {
            init_backoff: std::time::Duration::from_millis(100),
            max_backoff: std::time::Duration::from_secs(15),
            base: 2.0,
        },
        max_retries: 10,
        retry_timeout: std::time::Duration::from_secs(180),
    }
}

#[cfg(any(feature = "s3", feature = "gcs", feature = "azure"))]
fn invalid(location: &str, e: object_store::Error) -> Error {
    Error::InvalidArgument(format!("{location}: {e}"))
}

#[cfg(feature = "s3")]
mod s3 {
    use object_store::ClientOptions;
    use object_store::aws::{AmazonS3, AmazonS3Builder, AmazonS3ConfigKey};

    use super::{StorageOptions, invalid, retry_config};
    use tessera_core::Result;

    /// The S3 store of `bucket`: environment first, then profile files.
    pub(super) fn build(bucket: &str, options: &StorageOptions) -> Result<AmazonS3> {
        let location = format!("s3://{bucket}");
        let mut builder = AmazonS3Builder::from_env().with_bucket_name(bucket);
        for (key, value) in super::profile::aws_settings() {
            if builder.get_config_value(&key).is_none() {
                builder = builder.with_config(key, value);
            }
        }
        if builder
            .get_config_value(&AmazonS3ConfigKey::Region)
            .is_none()
        {
            builder = builder.with_region("us-east-1");
        }
        if let Some(lock) = options.object_lock {
            // Replaces the client options from the environment: keep the
            // one a test or MinIO setup needs.
            let mut client = ClientOptions::new().with_default_headers(lock_headers(lock)?);
            if let Ok(v) = std::env::var("AWS_ALLOW_HTTP") {
                client = client.with_allow_http(v.eq_ignore_ascii_case("true") || v == "1");
            }
            builder = builder.with_client_options(client);
            // S3 wants a checksum on puts that carry retention.
            builder = builder.with_checksum_algorithm(object_store::aws::Checksum::SHA256);
        }
        builder
            .with_retry(retry_config())
            .build()
            .map_err(|e| invalid(&location, e))
    }

    /// Retention headers for every request: a retain-until date this far
    /// from now. Objects stored later in a long run get slightly less; prune
    /// counts retention from each object's own timestamp, which errs long.
    fn lock_headers(lock: tessera_core::config::ObjectLock) -> Result<http::HeaderMap> {
        let until =
            jiff::Timestamp::now() + jiff::SignedDuration::from_hours(24 * i64::from(lock.days));
        let until = until.strftime("%Y-%m-%dT%H:%M:%SZ").to_string();
        let mut headers = http::HeaderMap::new();
        let bad = |e: http::header::InvalidHeaderValue| {
            tessera_core::Error::InvalidArgument(format!("object lock header: {e}"))
        };
        headers.insert(
            "x-amz-object-lock-mode",
            http::HeaderValue::from_static(lock.mode.header_value()),
        );
        headers.insert(
            "x-amz-object-lock-retain-until-date",
            http::HeaderValue::from_str(&until).map_err(bad)?,
        );
        // Puts carry `x-amz-checksum-sha256` (set on the builder); S3
        // wants the algorithm named too before it accepts a retention.
        headers.insert(
            "x-amz-sdk-checksum-algorithm",
            http::HeaderValue::from_static("SHA256"),
        );
        Ok(headers)
    }
}

#[cfg(feature = "s3")]
mod profile {
    //! The AWS shared profile files, read the way the AWS CLI reads them,
    //! for what the environment leaves unset.

    use std::path::PathBuf;

    use object_store::aws::AmazonS3ConfigKey;

    /// Settings of the current profile, credentials file first.
    pub(super) fn aws_settings() -> Vec<(AmazonS3ConfigKey, String)> {
        let profile = std::env::var("AWS_PROFILE").unwrap_or_else(|_| "default".into());
        let home = std::env::var_os("HOME").map(PathBuf::from);
        let file = |var: &str, name: &str| {
            std::env::var_os(var)
                .map(PathBuf::from)
                .or_else(|| home.as_ref().map(|h| h.join(".aws").join(name)))
        };
        let mut out = Vec::new();
        if let Some(text) = file("AWS_SHARED_CREDENTIALS_FILE", "credentials")
            .and_then(|p| std::fs::read_to_string(p).ok())
        {
            out.extend(section(&text, &profile));
        }
        if let Some(text) =
            file("AWS_CONFIG_FILE", "config").and_then(|p| std::fs::read_to_string(p).ok())
        {
            let name = if profile == "default" {
                profile.clone()
            } else {
                format!("profile {profile}")
            };
            out.extend(section(&text, &name));
        }
        out
    }

    /// The settings tessera uses from one `[name]` section of an INI file.
    pub(super) fn section(text: &str, name: &str) -> Vec<(AmazonS3ConfigKey, String)> {
        let mut inside = false;
        let mut out = Vec::new();
        for line in text.lines().map(str::trim) {
            if line.starts_with('[') && line.ends_with(']') {
                inside = line[1..line.len() - 1].trim() == name;
                continue;
            }
            let Some((key, value)) = line.split_once('=') else {
                continue;
            };
            if !inside {
                continue;
            }
            let key = match key.trim() {
                "aws_access_key_id" => AmazonS3ConfigKey::AccessKeyId,
                "aws_secret_access_key" => AmazonS3ConfigKey::SecretAccessKey,
                "aws_session_token" => AmazonS3ConfigKey::Token,
                "region" => AmazonS3ConfigKey::Region,
                "endpoint_url" => AmazonS3ConfigKey::Endpoint,
                _ => continue,
            };
            out.push((key, value.trim().to_string()));
        }
        out
    }

    #[cfg(test)]
    mod tests {
        use super::*;

        #[test]
        fn reads_the_named_section_only() {
            let text = "[default]\naws_access_key_id = A\n[profile lab]\nregion=eu-west-1\nendpoint_url = http://127.0.0.1:9000\nother = x\n";
            assert_eq!(
                section(text, "default"),
                vec![(AmazonS3ConfigKey::AccessKeyId, "A".to_string())]
            );
            assert_eq!(
                section(text, "profile lab"),
                vec![
                    (AmazonS3ConfigKey::Region, "eu-west-1".to_string()),
                    (
                        AmazonS3ConfigKey::Endpoint,
                        "http://127.0.0.1:9000".to_string()
                    )
                ]
            );
        }
    }
}
