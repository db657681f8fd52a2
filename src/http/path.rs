//! Path parameters, validated where they are extracted: a handler that takes a [`TopicPath`]
//! or [`GroupPath`] holds names that already passed the name rule (`crate::names`), and a
//! malformed path answers in API.md's error shape rather than axum's plain text.

use axum::extract::{FromRequestParts, Path};
use axum::http::request::Parts;

use super::error::{ApiError, Code};
use crate::names::check_name;

/// `{topic}`: a valid topic name (else 400 INVALID_TOPIC).
pub struct TopicPath(pub String);

/// `{topic}/…/{group}`: a valid topic and group name (400 INVALID_TOPIC / INVALID_ARGUMENT).
pub struct GroupPath {
    pub topic: String,
    pub group: String,
}

/// `{topic}/messages/{id}`: a valid topic; the id is resolved (or 404) by the handler.
pub struct MessagePath {
    pub topic: String,
    pub id: String,
}

pub(super) fn check_topic(name: &str) -> Result<(), ApiError> {
    check_name("topic", name).map_err(|m| ApiError::new(Code::InvalidTopic, m))
}

async fn params<T, S>(parts: &mut Parts, state: &S) -> Result<T, ApiError>
where
    T: serde::de::DeserializeOwned + Send,
    S: Send + Sync,
{
    let Path(p) =
        Path::<T>::from_request_parts(parts, state).await.map_err(|e| ApiError::invalid(format!("bad path: {e}")))?;
    Ok(p)
}

impl<S: Send + Sync> FromRequestParts<S> for TopicPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let topic: String = params(parts, state).await?;
        check_topic(&topic)?;
        Ok(Self(topic))
    }
}

impl<S: Send + Sync> FromRequestParts<S> for GroupPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let (topic, group): (String, String) = params(parts, state).await?;
        check_topic(&topic)?;
        check_name("group", &group).map_err(ApiError::invalid)?;
        Ok(Self { topic, group })
    }
}

impl<S: Send + Sync> FromRequestParts<S> for MessagePath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let (topic, id): (String, String) = params(parts, state).await?;
        check_topic(&topic)?;
        Ok(Self { topic, id })
    }
}

/// A listing's `limit` query parameter: 1..=1000, 100 when absent.
pub(crate) fn list_limit(limit: Option<i64>) -> Result<usize, ApiError> {
    let limit = limit.unwrap_or(100);
    if !(1..=1000).contains(&limit) {
        return Err(ApiError::invalid(format!("limit must be 1..=1000, got {limit}")));
    }
    Ok(limit as usize)
}

/// `{id}` of a transaction: any string (a malformed id is a 404, answered by the handler).
pub struct TxnPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for TxnPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        Ok(Self(params(parts, state).await?))
    }
}

/// `{producer_group}`: a valid producer group name (the topic rule; 400 INVALID_ARGUMENT).
pub struct ProducerPath(pub String);

impl<S: Send + Sync> FromRequestParts<S> for ProducerPath {
    type Rejection = ApiError;

    async fn from_request_parts(parts: &mut Parts, state: &S) -> Result<Self, ApiError> {
        let group: String = params(parts, state).await?;
        check_name("producer group", &group).map_err(ApiError::invalid)?;
        Ok(Self(group))
    }
}
