//! Reading a Kinesis data stream: the shard list with its lineage, shard iterators and
//! GetRecords, with failures sorted into what a reader acts on (back off, renew the iterator,
//! give up on the shard). The lease and checkpoint logic lives in the router.

use aws_sdk_kinesis::error::{ProvideErrorMetadata, SdkError};
use aws_sdk_kinesis::operation::get_records::GetRecordsError;
use aws_sdk_kinesis::operation::get_shard_iterator::GetShardIteratorError;
use aws_sdk_kinesis::operation::list_shards::ListShardsError;
use aws_sdk_kinesis::primitives::DateTime;
use aws_sdk_kinesis::types::ShardIteratorType;
use bytes::Bytes;

use crate::{sdk_config, AwsAccess};

/// One shard of the stream and where it came from.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShardInfo {
    pub id: String,
    /// Split or merge parents: both must be read to their end before this shard.
    pub parents: Vec<String>,
    /// Set when the shard is closed (no more writes); it still holds records until it expires.
    pub ending_sequence: Option<String>,
}

/// Where to start reading a shard.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum StartAt {
    TrimHorizon,
    Latest,
    /// Epoch milliseconds.
    AtTimestamp(i64),
    AfterSequence(String),
}

/// One record as the reader hands it on.
#[derive(Debug, Clone)]
pub struct KinesisRecord {
    pub sequence: String,
    pub partition_key: String,
    pub data: Bytes,
    /// When Kinesis received it (epoch ms), if reported.
    pub arrived_at_ms: Option<i64>,
}

/// One GetRecords answer.
#[derive(Debug, Clone)]
pub struct RecordBatch {
    pub records: Vec<KinesisRecord>,
    /// `None`: the shard is closed and fully read.
    pub next_iterator: Option<String>,
    pub millis_behind_latest: Option<i64>,
}

/// A failed Kinesis call, by what the caller should do.
#[derive(Debug, thiserror::Error)]
pub enum KinesisError {
    /// ProvisionedThroughputExceeded / LimitExceeded / KMS throttling: back off (≥ 1 s).
    #[error("Kinesis throttled the call: {0}")]
    Throttled(String),
    /// The iterator is older than 5 minutes: get a new one after the last processed record.
    #[error("the shard iterator expired: {0}")]
    ExpiredIterator(String),
    /// The stream or shard does not exist (yet, or any more).
    #[error("Kinesis has no such stream or shard: {0}")]
    NotFound(String),
    /// Credentials or policy are wrong: an operator must fix it; retried slowly.
    #[error("Kinesis denied the call: {0}")]
    Denied(String),
    /// Anything else (network, timeout, 5xx, an invalid argument): retry with backoff.
    #[error("Kinesis call failed: {0}")]
    Other(String),
}

fn classify<E>(err: SdkError<E>) -> KinesisError
where
    E: ProvideErrorMetadata + std::error::Error + 'static,
{
    let code = err.code().unwrap_or_default().to_string();
    let message = match err.message() {
        Some(m) => format!("{code}: {m}"),
        None if !code.is_empty() => code.clone(),
        None => format!("{}", aws_sdk_kinesis::error::DisplayErrorContext(&err)),
    };
    match code.as_str() {
        "ProvisionedThroughputExceededException"
        | "LimitExceededException"
        | "KMSThrottlingException"
        | "ThrottlingException" => KinesisError::Throttled(message),
        "ExpiredIteratorException" => KinesisError::ExpiredIterator(message),
        "ResourceNotFoundException" => KinesisError::NotFound(message),
        "AccessDeniedException"
        | "UnrecognizedClientException"
        | "InvalidSignatureException"
        | "KMSAccessDeniedException" => KinesisError::Denied(message),
        _ => KinesisError::Other(message),
    }
}

/// A Kinesis stream reader.
#[derive(Clone, Debug)]
pub struct KinesisReader {
    client: aws_sdk_kinesis::Client,
    stream: String,
}

impl KinesisReader {
    /// Builds the client (no network call yet).
    pub async fn new(access: &AwsAccess, stream: &str) -> Self {
        let shared = sdk_config(access).await;
        KinesisReader {
            client: aws_sdk_kinesis::Client::new(&shared),
            stream: stream.to_string(),
        }
    }

    pub fn stream(&self) -> &str {
        &self.stream
    }

    /// Every shard the stream still holds (open and closed, not expired), with its parents.
    pub async fn list_shards(&self) -> Result<Vec<ShardInfo>, KinesisError> {
        let mut out = Vec::new();
        let mut next: Option<String> = None;
        loop {
            let req = self.client.list_shards();
            // With a token the stream name must not be sent.
            let req = match &next {
                Some(token) => req.next_token(token),
                None => req.stream_name(&self.stream),
            };
            let resp = req.send().await.map_err(classify::<ListShardsError>)?;
            for s in resp.shards() {
                let mut parents = Vec::new();
                if let Some(p) = s.parent_shard_id() {
                    parents.push(p.to_string());
                }
                if let Some(p) = s.adjacent_parent_shard_id() {
                    parents.push(p.to_string());
                }
                out.push(ShardInfo {
                    id: s.shard_id().to_string(),
                    parents,
                    ending_sequence: s
                        .sequence_number_range()
                        .and_then(|r| r.ending_sequence_number())
                        .map(str::to_string),
                });
            }
            match resp.next_token() {
                Some(t) if !t.is_empty() && !resp.shards().is_empty() => next = Some(t.to_string()),
                _ => break,
            }
        }
        Ok(out)
    }

    /// A shard iterator starting at `start`.
    pub async fn iterator(&self, shard: &str, start: &StartAt) -> Result<String, KinesisError> {
        let req = self
            .client
            .get_shard_iterator()
            .stream_name(&self.stream)
            .shard_id(shard);
        let req = match start {
            StartAt::TrimHorizon => req.shard_iterator_type(ShardIteratorType::TrimHorizon),
            StartAt::Latest => req.shard_iterator_type(ShardIteratorType::Latest),
            StartAt::AtTimestamp(ms) => req
                .shard_iterator_type(ShardIteratorType::AtTimestamp)
                .timestamp(DateTime::from_millis(*ms)),
            StartAt::AfterSequence(seq) => req
                .shard_iterator_type(ShardIteratorType::AfterSequenceNumber)
                .starting_sequence_number(seq),
        };
        let resp = req
            .send()
            .await
            .map_err(classify::<GetShardIteratorError>)?;
        resp.shard_iterator()
            .map(str::to_string)
            .ok_or_else(|| KinesisError::Other(format!("no iterator returned for shard {shard}")))
    }

    /// Up to `limit` records from `iterator`.
    pub async fn get_records(
        &self,
        iterator: &str,
        limit: u32,
    ) -> Result<RecordBatch, KinesisError> {
        let resp = self
            .client
            .get_records()
            .shard_iterator(iterator)
            .limit(i32::try_from(limit).unwrap_or(10_000))
            .send()
            .await
            .map_err(classify::<GetRecordsError>)?;
        let records = resp
            .records()
            .iter()
            .map(|r| KinesisRecord {
                sequence: r.sequence_number().to_string(),
                partition_key: r.partition_key().unwrap_or_default().to_string(),
                data: Bytes::copy_from_slice(r.data().as_ref()),
                arrived_at_ms: r
                    .approximate_arrival_timestamp()
                    .and_then(|t| t.to_millis().ok()),
            })
            .collect();
        Ok(RecordBatch {
            records,
            next_iterator: resp
                .next_shard_iterator()
                .filter(|s| !s.is_empty())
                .map(str::to_string),
            millis_behind_latest: resp.millis_behind_latest(),
        })
    }
}
