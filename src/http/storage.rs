//! `GET /v1/storage`: disk use, the commit log, what retention keeps and what it reclaimed
//! (API.md "Storage lifecycle"). The figures come from `crate::retention`.

use axum::extract::State;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde::Serialize;
use utoipa::ToSchema;

use super::{ApiError, AppState};

#[derive(Serialize, ToSchema)]
pub(crate) struct StorageOut {
    disk: DiskOut,
    commitlog: CommitLogOut,
    pinned: PinnedOut,
    reclaimed: ReclaimedOut,
    /// Pending scheduled messages copied out of reclaimed segments since start (same ids).
    carried_forward: u64,
    /// False while the disk is above `store.disk_hard_limit`: sends answer 503 "disk full".
    accepting: bool,
    timer: TimerFilesOut,
}

/// The timer's files (an addition to API.md): reclaimed with the records they describe.
#[derive(Serialize, ToSchema)]
struct TimerFilesOut {
    timer_log_segments: u64,
    state_files: u64,
    /// Carried-forward messages whose id leads to a copy.
    moved_ids: u64,
    /// Since start.
    timer_log_reclaimed_bytes: u64,
    state_reclaimed_bytes: u64,
}

#[derive(Serialize, ToSchema)]
struct DiskOut {
    total_bytes: u64,
    free_bytes: u64,
    used_ratio: f64,
}

#[derive(Serialize, ToSchema)]
struct CommitLogOut {
    segments: u64,
    bytes: u64,
    /// Offset of the first byte still on disk.
    first_offset: u64,
    /// Store time of the oldest record on disk; null for an empty log.
    oldest_store_ms: Option<i64>,
}

#[derive(Serialize, ToSchema)]
struct PinnedOut {
    /// Segments kept beyond the retention rules, because pending messages in them are due
    /// too soon to be carried forward (or are being fired).
    segments: u64,
    bytes: u64,
    pending_messages: u64,
    /// Why, when something is pinned.
    #[serde(skip_serializing_if = "Option::is_none")]
    reason: Option<String>,
}

#[derive(Serialize, ToSchema)]
struct ReclaimedOut {
    /// Since start.
    segments: u64,
    bytes: u64,
}

/// Disk use and the storage lifecycle's figures.
#[utoipa::path(get, path = "/v1/storage", tag = "storage", responses((status = 200, body = StorageOut)))]
pub(crate) async fn storage(State(state): State<AppState>) -> Result<Response, ApiError> {
    // Cheap: the disk as of the last retention pass, the segment list, one record's header.
    let r = state.core()?.retention.report();
    Ok(Json(StorageOut {
        disk: DiskOut { total_bytes: r.disk.total_bytes, free_bytes: r.disk.free_bytes, used_ratio: r.disk.used_ratio },
        commitlog: CommitLogOut {
            segments: r.commitlog.segments,
            bytes: r.commitlog.bytes,
            first_offset: r.commitlog.first_offset,
            oldest_store_ms: r.commitlog.oldest_store_ms,
        },
        pinned: PinnedOut {
            segments: r.pinned.segments,
            bytes: r.pinned.bytes,
            pending_messages: r.pinned.pending_messages,
            reason: r.pinned.reason,
        },
        reclaimed: ReclaimedOut { segments: r.reclaimed.segments, bytes: r.reclaimed.bytes },
        carried_forward: r.carried_forward,
        accepting: r.accepting,
        timer: TimerFilesOut {
            timer_log_segments: r.timer.timer_log_segments,
            state_files: r.timer.state_files,
            moved_ids: r.timer.moved_ids,
            timer_log_reclaimed_bytes: r.timer.timer_log_reclaimed_bytes,
            state_reclaimed_bytes: r.timer.state_reclaimed_bytes,
        },
    })
    .into_response())
}
