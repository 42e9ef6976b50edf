//! The NOTIFY channel the projector announces its commits on, and the payload format: one
//! encoder for the projector, one parser for the query API's listener.

use uuid::Uuid;

/// The channel the projector notifies in the transaction of every live batch it commits; the
/// query API LISTENs on it to wake reads that wait for a version.
pub const CHANNEL: &str = "projection";

/// Postgres refuses NOTIFY payloads of 8000 bytes or more; stay clear of it.
const PAYLOAD_LIMIT: usize = 7800;

/// What one entry of a notification says.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Announced {
    /// This delivery's row reached this version.
    Version { delivery_id: Uuid, version: i64 },
    /// Something moved that the notification does not name: an empty payload (a batch that
    /// changed no delivery), or an entry this build cannot read.
    SomethingMoved,
}

/// The payloads announcing that each `(delivery, version)` was committed, as
/// `id:version,id:version,...`, split to stay under Postgres's payload limit. Nothing moved
/// by name (a batch of only duplicates, parked or poison messages) gives one empty payload:
/// "something moved".
pub fn notification_payloads(moved: impl IntoIterator<Item = (Uuid, i64)>) -> Vec<String> {
    let mut payloads = vec![String::new()];
    for (delivery_id, version) in moved {
        let entry = format!("{delivery_id}:{version}");
        let current = payloads
            .last_mut()
            .filter(|p| p.len() + entry.len() < PAYLOAD_LIMIT);
        match current {
            Some(payload) if payload.is_empty() => payload.push_str(&entry),
            Some(payload) => {
                payload.push(',');
                payload.push_str(&entry);
            }
            None => payloads.push(entry),
        }
    }
    payloads
}

/// Reads one payload of [`notification_payloads`], entry by entry. Whatever cannot be read
/// is not an error: it is announced as "something moved", so a listener re-reads rather than
/// misses a change.
pub fn parse_notification(payload: &str) -> impl Iterator<Item = Announced> + '_ {
    // `split` yields one empty entry for an empty payload: "something moved".
    payload.split(',').map(|entry| {
        entry
            .split_once(':')
            .and_then(|(id, version)| {
                Some(Announced::Version {
                    delivery_id: Uuid::parse_str(id).ok()?,
                    version: version.parse().ok()?,
                })
            })
            .unwrap_or(Announced::SomethingMoved)
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    fn id(n: u128) -> Uuid {
        Uuid::from_u128(n)
    }

    #[test]
    fn announced_versions_round_trip_through_the_payloads() {
        let moved: Vec<(Uuid, i64)> = vec![(id(1), 3), (id(2), 1), (id(3), 12)];
        let payloads = notification_payloads(moved.clone());
        assert_eq!(payloads.len(), 1);
        assert_eq!(
            payloads[0],
            format!("{}:3,{}:1,{}:12", id(1), id(2), id(3)),
            "the format other listeners may rely on"
        );
        let heard: Vec<Announced> = payloads
            .iter()
            .flat_map(|p| parse_notification(p))
            .collect();
        let expected: Vec<Announced> = moved
            .into_iter()
            .map(|(delivery_id, version)| Announced::Version {
                delivery_id,
                version,
            })
            .collect();
        assert_eq!(heard, expected);
    }

    #[test]
    fn many_deliveries_are_split_over_payloads_under_the_limit_each_named_once() {
        let moved: Vec<(Uuid, i64)> = (1..=400).map(|n| (id(n), 1)).collect();
        let payloads = notification_payloads(moved.clone());
        assert!(
            payloads.len() > 1,
            "400 deliveries need more than one payload"
        );
        assert!(payloads.iter().all(|p| !p.is_empty() && p.len() < 8000));
        let heard: Vec<Announced> = payloads
            .iter()
            .flat_map(|p| parse_notification(p))
            .collect();
        assert_eq!(heard.len(), 400);
        for (announced, (delivery_id, version)) in heard.into_iter().zip(moved) {
            assert_eq!(
                announced,
                Announced::Version {
                    delivery_id,
                    version
                }
            );
        }
    }

    #[test]
    fn nothing_moved_by_name_is_one_empty_payload_that_says_something_moved() {
        let payloads = notification_payloads([]);
        assert_eq!(payloads, [String::new()]);
        let heard: Vec<Announced> = parse_notification(&payloads[0]).collect();
        assert_eq!(heard, [Announced::SomethingMoved]);
    }

    #[test]
    fn entries_that_cannot_be_read_say_something_moved_and_the_rest_still_count() {
        let heard: Vec<Announced> =
            parse_notification(&format!("not-a-delivery,{}:2,{}:x,{}", id(1), id(2), id(3)))
                .collect();
        assert_eq!(
            heard,
            [
                Announced::SomethingMoved,
                Announced::Version {
                    delivery_id: id(1),
                    version: 2
                },
                Announced::SomethingMoved,
                Announced::SomethingMoved,
            ]
        );
    }
}
