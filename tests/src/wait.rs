//! Waiting for a state with a deadline instead of sleeping.

use std::future::Future;
use std::time::Duration;

/// How often a check runs again: short, so a test waits little past the moment it could go on.
const POLL_INTERVAL: Duration = Duration::from_millis(20);

/// Polls `check` until it returns `Some`, failing the test with `what` after `timeout`. A
/// deadline, not a timing assertion: it only has to be generous.
pub async fn eventually<T, F, Fut>(timeout: Duration, what: &str, mut check: F) -> T
where
    F: FnMut() -> Fut,
    Fut: Future<Output = Option<T>>,
{
    let deadline = tokio::time::Instant::now() + timeout;
    loop {
        if let Some(value) = check().await {
            return value;
        }
        assert!(
            tokio::time::Instant::now() < deadline,
            "timed out waiting for {what}"
        );
        tokio::time::sleep(POLL_INTERVAL).await;
    }
}
