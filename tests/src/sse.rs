//! Reading server-sent events in tests: a parser for the wire format (used over any body),
//! and a stream over a reqwest response.

use std::time::Duration;

/// One message of a stream.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum SseItem {
    Event(SseEvent),
    /// A comment line, such as a keep-alive.
    Comment,
}

#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SseEvent {
    pub id: Option<String>,
    pub event: Option<String>,
    pub data: String,
}

impl SseEvent {
    /// The data as JSON.
    pub fn json(&self) -> serde_json::Value {
        serde_json::from_str(&self.data).expect("an event's data is JSON")
    }
}

/// Takes the first complete message off `buffer`, if there is one.
pub fn take_item(buffer: &mut String) -> Option<SseItem> {
    let end = buffer.find("\n\n")?;
    let block: String = buffer.drain(..end + 2).collect();
    let mut event = SseEvent {
        id: None,
        event: None,
        data: String::new(),
    };
    let mut fields = 0;
    for line in block.lines().filter(|line| !line.is_empty()) {
        if line.starts_with(':') {
            continue;
        }
        fields += 1;
        let (name, value) = line.split_once(':').unwrap_or((line, ""));
        let value = value.strip_prefix(' ').unwrap_or(value);
        match name {
            "id" => event.id = Some(value.to_owned()),
            "event" => event.event = Some(value.to_owned()),
            "data" if event.data.is_empty() => event.data = value.to_owned(),
            "data" => {
                event.data.push('\n');
                event.data.push_str(value);
            }
            _ => {}
        }
    }
    Some(if fields == 0 {
        SseItem::Comment
    } else {
        SseItem::Event(event)
    })
}

/// An open stream over HTTP.
pub struct SseStream {
    response: reqwest::Response,
    buffer: String,
}

impl SseStream {
    /// Sends `request`; a 200 `text/event-stream` answer is a stream, anything else comes
    /// back as it is, for the test to look at.
    pub async fn open(request: reqwest::RequestBuilder) -> Result<SseStream, reqwest::Response> {
        let response = request.send().await.expect("the stream answers");
        let is_stream = response
            .headers()
            .get("content-type")
            .and_then(|value| value.to_str().ok())
            .is_some_and(|value| value.starts_with("text/event-stream"));
        if response.status() != 200 || !is_stream {
            return Err(response);
        }
        Ok(SseStream {
            response,
            buffer: String::new(),
        })
    }

    /// The next message, or `None` once the server ended the stream. Fails the test if
    /// nothing comes within `timeout` (a deadline, not a timing assertion).
    pub async fn next_item(&mut self, timeout: Duration) -> Option<SseItem> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            if let Some(item) = take_item(&mut self.buffer) {
                return Some(item);
            }
            let chunk = tokio::time::timeout_at(deadline, self.response.chunk())
                .await
                .expect("a message before the deadline")
                .expect("the stream reads");
            match chunk {
                Some(bytes) => self.buffer.push_str(&String::from_utf8_lossy(&bytes)),
                None => return None,
            }
        }
    }

    /// The next event, skipping keep-alives; `None` once the stream ended.
    pub async fn next_event(&mut self, timeout: Duration) -> Option<SseEvent> {
        let deadline = tokio::time::Instant::now() + timeout;
        loop {
            let left = deadline.saturating_duration_since(tokio::time::Instant::now());
            match self.next_item(left).await? {
                SseItem::Event(event) => return Some(event),
                SseItem::Comment => {}
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn messages_are_split_at_blank_lines_and_comments_are_told_apart() {
        let mut buffer = String::from(
            "event: delivery\ndata: {\"a\":1}\nid: 3\n\n:\n\ndata: x\ndata: y\n\nevent: par",
        );
        assert_eq!(
            take_item(&mut buffer),
            Some(SseItem::Event(SseEvent {
                id: Some("3".into()),
                event: Some("delivery".into()),
                data: "{\"a\":1}".into(),
            }))
        );
        assert_eq!(take_item(&mut buffer), Some(SseItem::Comment));
        let Some(SseItem::Event(event)) = take_item(&mut buffer) else {
            panic!("an event");
        };
        assert_eq!(event.data, "x\ny");
        assert_eq!(take_item(&mut buffer), None, "an incomplete message waits");
        assert_eq!(buffer, "event: par");
    }
}
