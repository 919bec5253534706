//! AWS adapters: writing property changes to device shadows through the AWS IoT data plane
//! (`UpdateThingShadow`, classic or named shadow), with errors sorted into what a worker can act on;
//! MQTT connection options for AWS IoT Core and other brokers.
#![forbid(unsafe_code)]

pub mod kinesis;
pub mod mqtt;

use std::time::Duration;

use aws_config::timeout::TimeoutConfig;
use aws_config::{BehaviorVersion, Region};
use aws_credential_types::Credentials;
use aws_sdk_iotdataplane::error::SdkError;
use aws_sdk_iotdataplane::operation::update_thing_shadow::UpdateThingShadowError;
use aws_sdk_iotdataplane::primitives::Blob;
use serde_json::{Map, Value};

/// How to reach an AWS service: region, endpoint override, credentials, per-call timeout.
#[derive(Clone, PartialEq, Eq)]
pub struct AwsAccess {
    /// The region; the SDK's default chain (`AWS_REGION`, profile, IMDS) when absent.
    pub region: Option<String>,
    /// An endpoint override (VPC endpoint, test stand-in); the SDK's default when absent.
    pub endpoint: Option<String>,
    /// Static credentials; the default provider chain (env, profile, IMDS, ECS/EKS roles) when
    /// absent.
    pub access_key_id: Option<String>,
    pub secret_access_key: Option<String>,
    /// Per-call timeout.
    pub timeout: Duration,
}

impl std::fmt::Debug for AwsAccess {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("AwsAccess")
            .field("region", &self.region)
            .field("endpoint", &self.endpoint)
            .field("access_key_id", &self.access_key_id)
            .field(
                "secret_access_key",
                &self.secret_access_key.as_ref().map(|_| "***"),
            )
            .field("timeout", &self.timeout)
            .finish()
    }
}

impl AwsAccess {
    /// A local stand-in (moto, kinesalite) at `endpoint`: region `us-east-1`, static test
    /// credentials, a 10 s timeout.
    pub fn stand_in(endpoint: impl Into<String>) -> Self {
        AwsAccess {
            region: Some("us-east-1".into()),
            endpoint: Some(endpoint.into()),
            access_key_id: Some("test".into()),
            secret_access_key: Some("test".into()),
            timeout: Duration::from_secs(10),
        }
    }
}

/// The SDK configuration for `access` (no network call yet, except where the default chains
/// look up the region or credentials).
pub async fn sdk_config(access: &AwsAccess) -> aws_config::SdkConfig {
    let mut loader = aws_config::defaults(BehaviorVersion::latest()).timeout_config(
        TimeoutConfig::builder()
            .operation_timeout(access.timeout)
            .build(),
    );
    if let Some(region) = &access.region {
        loader = loader.region(Region::new(region.clone()));
    }
    if let (Some(id), Some(secret)) = (&access.access_key_id, &access.secret_access_key) {
        loader =
            loader.credentials_provider(Credentials::from_keys(id.clone(), secret.clone(), None));
    }
    if let Some(endpoint) = &access.endpoint {
        loader = loader.endpoint_url(endpoint.clone());
    }
    loader.load().await
}

/// How to reach the AWS IoT data plane: the account's data endpoint
/// (`https://<id>-ats.iot.<region>.amazonaws.com`, or a test stand-in) and the shadow to write.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ShadowConfig {
    pub access: AwsAccess,
    /// A named shadow; the classic shadow when absent.
    pub shadow_name: Option<String>,
}

/// A failed shadow write, by what the caller should do about it.
#[derive(Debug, thiserror::Error)]
pub enum ShadowError {
    /// The Thing (or named shadow's Thing) does not exist in AWS IoT: dead-letter.
    #[error("AWS IoT has no Thing `{thing}`: {message}")]
    NotFound { thing: String, message: String },
    /// The request itself is refused (invalid document, too large…): dead-letter.
    #[error("AWS IoT refused the shadow update of `{thing}`: {message}")]
    Rejected { thing: String, message: String },
    /// Not allowed: credentials or policy are wrong. Retried (an operator must fix it).
    #[error("AWS IoT denied the shadow update of `{thing}`: {message}")]
    Auth { thing: String, message: String },
    /// Throttled, unavailable, a version conflict, a timeout or a network error: retry.
    #[error("shadow update of `{thing}` failed, will retry: {message}")]
    Retryable { thing: String, message: String },
}

impl ShadowError {
    pub fn is_retryable(&self) -> bool {
        matches!(
            self,
            ShadowError::Retryable { .. } | ShadowError::Auth { .. }
        )
    }

    /// A stable label for metrics and dead-letter reasons.
    pub fn class(&self) -> &'static str {
        match self {
            ShadowError::NotFound { .. } => "shadow_not_found",
            ShadowError::Rejected { .. } => "shadow_rejected",
            ShadowError::Auth { .. } => "shadow_auth",
            ShadowError::Retryable { .. } => "shadow_retryable",
        }
    }
}

/// Writes desired state to device shadows.
#[derive(Clone, Debug)]
pub struct ShadowWriter {
    client: aws_sdk_iotdataplane::Client,
    shadow_name: Option<String>,
}

/// The shadow document that sets `desired` and nothing else.
pub fn desired_document(desired: &Map<String, Value>) -> Value {
    serde_json::json!({ "state": { "desired": desired } })
}

impl ShadowWriter {
    /// Builds the client (no network call yet).
    pub async fn new(config: &ShadowConfig) -> Self {
        let shared = sdk_config(&config.access).await;
        ShadowWriter {
            client: aws_sdk_iotdataplane::Client::new(&shared),
            shadow_name: config.shadow_name.clone(),
        }
    }

    /// Sets `state.desired` of the Thing's shadow to the given properties (merged by AWS with
    /// what is there).
    pub async fn update_desired(
        &self,
        thing: &str,
        desired: &Map<String, Value>,
    ) -> Result<(), ShadowError> {
        let body =
            serde_json::to_vec(&desired_document(desired)).map_err(|e| ShadowError::Rejected {
                thing: thing.to_string(),
                message: e.to_string(),
            })?;
        let mut request = self
            .client
            .update_thing_shadow()
            .thing_name(thing)
            .payload(Blob::new(body));
        if let Some(name) = &self.shadow_name {
            request = request.shadow_name(name);
        }
        match request.send().await {
            Ok(_) => Ok(()),
            Err(e) => Err(classify(thing, e)),
        }
    }
}

fn classify<R: std::fmt::Debug>(
    thing: &str,
    e: SdkError<UpdateThingShadowError, R>,
) -> ShadowError {
    let thing = thing.to_string();
    match e {
        SdkError::ServiceError(service) => {
            let err = service.into_err();
            let message = err
                .meta()
                .message()
                .map(str::to_string)
                .unwrap_or_else(|| err.to_string());
            // Not a modelled error of UpdateThingShadow, but what the service (and moto) answer
            // for an unknown Thing.
            if err.meta().code() == Some("ResourceNotFoundException") {
                return ShadowError::NotFound { thing, message };
            }
            match err {
                UpdateThingShadowError::InvalidRequestException(_)
                | UpdateThingShadowError::RequestEntityTooLargeException(_)
                | UpdateThingShadowError::UnsupportedDocumentEncodingException(_)
                | UpdateThingShadowError::MethodNotAllowedException(_) => {
                    ShadowError::Rejected { thing, message }
                }
                UpdateThingShadowError::UnauthorizedException(_) => {
                    ShadowError::Auth { thing, message }
                }
                // Conflict (version), throttling, unavailable, internal failure, and anything
                // new: retry.
                _ => ShadowError::Retryable { thing, message },
            }
        }
        other => ShadowError::Retryable {
            thing,
            message: format!("{other:?}").chars().take(300).collect(),
        },
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn desired_document_shape_and_secret_redaction() {
        let mut m = Map::new();
        m.insert("setpoint".into(), Value::from(42));
        assert_eq!(
            desired_document(&m),
            serde_json::json!({"state": {"desired": {"setpoint": 42}}})
        );
        let c = ShadowConfig {
            access: AwsAccess {
                region: Some("eu-central-1".into()),
                endpoint: None,
                access_key_id: Some("AKIA".into()),
                secret_access_key: Some("very-secret".into()),
                timeout: Duration::from_secs(5),
            },
            shadow_name: None,
        };
        assert!(!format!("{c:?}").contains("very-secret"));
    }

    #[tokio::test]
    async fn connection_refused_is_retryable() {
        let w = ShadowWriter::new(&ShadowConfig {
            access: AwsAccess {
                region: Some("us-east-1".into()),
                endpoint: Some("http://127.0.0.1:1".into()),
                access_key_id: Some("test".into()),
                secret_access_key: Some("test".into()),
                timeout: Duration::from_secs(2),
            },
            shadow_name: None,
        })
        .await;
        let err = w.update_desired("t", &Map::new()).await.unwrap_err();
        assert!(err.is_retryable(), "{err:?}");
        assert_eq!(err.class(), "shadow_retryable");
    }
}
