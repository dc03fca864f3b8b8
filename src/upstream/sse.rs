//! A small server-sent-events parser for the streamable HTTP transport, and
//! for HTTP+SSE's stream, whose `endpoint` event it also reads.

/// Feeds on byte chunks (not aligned to lines) and yields each event's data.
#[derive(Debug)]
pub struct SseParser {
    line: Vec<u8>,
    data: Vec<u8>,
    /// The current event's type: `message` (the default), `endpoint`, or
    /// another, which is ignored.
    event: EventType,
    /// Whether `endpoint` events are read (HTTP+SSE).
    endpoints: bool,
    limit: usize,
    overflow: bool,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum EventType {
    Message,
    Endpoint,
    Other,
}

/// One complete event: its `data` lines joined, or a note that it was too large.
#[derive(Debug, PartialEq, Eq)]
pub enum SseEvent {
    Data(Vec<u8>),
    /// HTTP+SSE: where the session's messages are to be POSTed.
    Endpoint(Vec<u8>),
    TooLarge,
}

impl SseParser {
    pub fn new(limit: usize) -> Self {
        Self {
            line: Vec::new(),
            data: Vec::new(),
            event: EventType::Message,
            endpoints: false,
            limit,
            overflow: false,
        }
    }

    /// A parser of an HTTP+SSE stream, which reads its `endpoint` events too.
    pub fn with_endpoints(limit: usize) -> Self {
        Self {
            endpoints: true,
            ..Self::new(limit)
        }
    }

    pub fn feed(&mut self, chunk: &[u8], out: &mut Vec<SseEvent>) {
        for &byte in chunk {
            if byte == b'\n' {
                let mut line = std::mem::take(&mut self.line);
                if line.last() == Some(&b'\r') {
                    line.pop();
                }
                self.line_done(&line, out);
            } else if self.line.len() <= self.limit + 64 {
                self.line.push(byte);
            } else {
                self.overflow = true;
            }
        }
    }

    fn line_done(&mut self, line: &[u8], out: &mut Vec<SseEvent>) {
        if line.is_empty() {
            if self.overflow {
                out.push(SseEvent::TooLarge);
            } else if !self.data.is_empty() {
                match self.event {
                    EventType::Message => out.push(SseEvent::Data(std::mem::take(&mut self.data))),
                    EventType::Endpoint if self.endpoints => {
                        out.push(SseEvent::Endpoint(std::mem::take(&mut self.data)));
                    }
                    EventType::Endpoint | EventType::Other => {}
                }
            }
            self.data.clear();
            self.overflow = false;
            self.event = EventType::Message;
            return;
        }
        if line.first() == Some(&b':') {
            return;
        }
        let (field, value) = match line.iter().position(|&b| b == b':') {
            Some(colon) => {
                let (field, value) = line.split_at(colon);
                let value = value.get(1..).unwrap_or_default();
                (field, value.strip_prefix(b" ").unwrap_or(value))
            }
            None => (line, &[][..]),
        };
        match field {
            b"data" => {
                // Checked before anything is added (the line break too):
                // an event past the limit stops growing at once.
                let separator = usize::from(!self.data.is_empty());
                if self.overflow || self.data.len() + separator + value.len() > self.limit {
                    self.overflow = true;
                } else {
                    if separator == 1 {
                        self.data.push(b'\n');
                    }
                    self.data.extend_from_slice(value);
                }
            }
            b"event" => {
                self.event = match value {
                    b"message" => EventType::Message,
                    b"endpoint" => EventType::Endpoint,
                    _ => EventType::Other,
                };
            }
            _ => {}
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    /// A server that sends a `data` line, then empty ones on and on without
    /// ending the event (each adds a line break) cannot grow the event past
    /// the limit.
    #[test]
    fn empty_data_lines_do_not_grow_an_event_past_the_limit() {
        let mut parser = SseParser::new(1024);
        let mut out = Vec::new();
        parser.feed(b"data: x\n", &mut out);
        for _ in 0..100_000 {
            parser.feed(b"data\n", &mut out);
            assert!(parser.data.len() <= 1024, "{}", parser.data.len());
        }
        parser.feed(b"\n", &mut out);
        assert!(matches!(out.as_slice(), [SseEvent::TooLarge]));
        // The next event is read as usual.
        parser.feed(b"data: {}\n\n", &mut out);
        assert!(matches!(out.get(1), Some(SseEvent::Data(data)) if data == b"{}"));
    }

    #[test]
    fn events_split_across_chunks() {
        let mut parser = SseParser::new(1024);
        let mut out = Vec::new();
        for chunk in [
            &b"id: 1\nda"[..],
            b"ta: {\"a\":",
            b"1}\r\n\r\n: ping\n\nevent: message\ndata: 2\n\n",
        ] {
            parser.feed(chunk, &mut out);
        }
        assert_eq!(
            out,
            vec![
                SseEvent::Data(b"{\"a\":1}".to_vec()),
                SseEvent::Data(b"2".to_vec())
            ]
        );
    }

    /// An HTTP+SSE stream's `endpoint` event is read only by a parser of
    /// that transport; a streamable HTTP stream ignores it.
    #[test]
    fn endpoint_events_are_read_only_where_asked_for() {
        let stream =
            b"event: endpoint\ndata: /messages?session_id=1\n\nevent: message\ndata: {}\n\n";
        let mut out = Vec::new();
        SseParser::with_endpoints(1024).feed(stream, &mut out);
        assert_eq!(
            out,
            vec![
                SseEvent::Endpoint(b"/messages?session_id=1".to_vec()),
                SseEvent::Data(b"{}".to_vec())
            ]
        );
        let mut out = Vec::new();
        SseParser::new(1024).feed(stream, &mut out);
        assert_eq!(out, vec![SseEvent::Data(b"{}".to_vec())]);
    }

    #[test]
    fn other_event_types_are_ignored_and_big_events_flagged() {
        let mut parser = SseParser::new(8);
        let mut out = Vec::new();
        parser.feed(
            b"event: other\ndata: x\n\ndata: 0123456789\n\ndata: ok\n\n",
            &mut out,
        );
        assert_eq!(
            out,
            vec![SseEvent::TooLarge, SseEvent::Data(b"ok".to_vec())]
        );
    }
}
