//! Newline-delimited JSON-RPC framing (the MCP stdio transport), with a size
//! bound enforced while reading: a line longer than the bound is skipped to
//! its end without ever being held in memory whole.

use serde_json::Value;
use tokio::io::{AsyncBufRead, AsyncBufReadExt, AsyncWrite, AsyncWriteExt};

/// How much of an oversize line is kept.
pub const HEAD_BYTES: usize = 256;

/// One line of input.
#[derive(Debug, PartialEq, Eq)]
pub enum Frame {
    /// A complete line, without its line ending.
    Line(Vec<u8>),
    /// A line longer than the bound; it was skipped. Holds its first bytes
    /// (at most [`HEAD_BYTES`]), enough to find the request id in most
    /// messages so that the refusal can name it.
    Oversize(Vec<u8>),
}

/// Reads frames from a buffered reader, reusing one buffer.
pub struct FrameReader<R> {
    reader: R,
    limit: usize,
    buffer: Vec<u8>,
}

impl<R: AsyncBufRead + Unpin> FrameReader<R> {
    pub fn new(reader: R, limit: usize) -> Self {
        Self {
            reader,
            limit,
            buffer: Vec::new(),
        }
    }

    /// The next non-empty line, or `None` at the end of the stream. A last
    /// line without a trailing newline still counts.
    pub async fn next(&mut self) -> std::io::Result<Option<Frame>> {
        loop {
            match self.next_raw().await? {
                Some(Frame::Line(line)) if line.iter().all(u8::is_ascii_whitespace) => continue,
                other => return Ok(other),
            }
        }
    }

    async fn next_raw(&mut self) -> std::io::Result<Option<Frame>> {
        self.buffer.clear();
        let mut oversize: Option<Vec<u8>> = None;
        loop {
            let available = self.reader.fill_buf().await?;
            if available.is_empty() {
                return Ok(if let Some(head) = oversize {
                    Some(Frame::Oversize(head))
                } else if self.buffer.is_empty() {
                    None
                } else {
                    Some(Frame::Line(self.take_line()))
                });
            }
            let (chunk, done) = match memchr::memchr(b'\n', available) {
                Some(end) => (available.get(..end).unwrap_or(available), Some(end + 1)),
                None => (available, None),
            };
            if let Some(head) = &mut oversize {
                let more = HEAD_BYTES.saturating_sub(head.len()).min(chunk.len());
                head.extend(chunk.iter().take(more));
            } else {
                if self.buffer.len() + chunk.len() > self.limit {
                    let mut head = std::mem::take(&mut self.buffer);
                    head.truncate(HEAD_BYTES);
                    let more = HEAD_BYTES.saturating_sub(head.len()).min(chunk.len());
                    head.extend(chunk.iter().take(more));
                    oversize = Some(head);
                } else {
                    self.buffer.extend_from_slice(chunk);
                }
            }
            let consumed = done.unwrap_or(available.len());
            self.reader.consume(consumed);
            if done.is_some() {
                return Ok(Some(match oversize {
                    Some(head) => Frame::Oversize(head),
                    None => Frame::Line(self.take_line()),
                }));
            }
        }
    }

    fn take_line(&mut self) -> Vec<u8> {
        if self.buffer.last() == Some(&b'\r') {
            self.buffer.pop();
        }
        std::mem::take(&mut self.buffer)
    }
}

/// Serializes `message` as one line. serde_json escapes control characters
/// inside strings, so the output never contains a raw newline.
pub fn encode_line(message: &Value) -> Vec<u8> {
    let mut line = Vec::with_capacity(256);
    // Serializing a `Value` into a Vec cannot fail: keys are strings and the
    // writer never errors.
    if serde_json::to_writer(&mut line, message).is_err() {
        line.clear();
        line.extend_from_slice(br#"{"jsonrpc":"2.0","id":null,"error":{"code":-32603,"message":"unserializable message"}}"#);
    }
    line.push(b'\n');
    line
}

/// Writes one message as a line and flushes.
pub async fn write_message<W: AsyncWrite + Unpin>(
    writer: &mut W,
    message: &Value,
) -> std::io::Result<()> {
    writer.write_all(&encode_line(message)).await?;
    writer.flush().await
}

#[cfg(test)]
mod tests {
    use super::*;
    use tokio::io::BufReader;

    async fn frames(input: &[u8], limit: usize, capacity: usize) -> Vec<Frame> {
        let mut reader = FrameReader::new(BufReader::with_capacity(capacity, input), limit);
        let mut out = Vec::new();
        while let Ok(Some(frame)) = reader.next().await {
            out.push(frame);
        }
        out
    }

    #[tokio::test]
    async fn splits_lines_and_skips_blank_ones() {
        let got = frames(b"{\"a\":1}\r\n\n  \n{\"b\":2}", 100, 3).await;
        assert_eq!(
            got,
            vec![
                Frame::Line(b"{\"a\":1}".to_vec()),
                Frame::Line(b"{\"b\":2}".to_vec())
            ]
        );
    }

    #[tokio::test]
    async fn oversize_line_is_skipped_and_the_next_one_read() {
        let mut input = vec![b'x'; 50];
        input.extend_from_slice(b"\n{}\n");
        input.extend_from_slice(&[b'y'; 11]);
        let got = frames(&input, 10, 4).await;
        assert_eq!(
            got,
            vec![
                Frame::Oversize(vec![b'x'; 50]),
                Frame::Line(b"{}".to_vec()),
                Frame::Oversize(vec![b'y'; 11])
            ]
        );
    }

    #[tokio::test]
    async fn an_oversize_line_keeps_its_head() {
        let mut input = b"{\"jsonrpc\":\"2.0\",\"id\":42,\"params\":\"".to_vec();
        input.extend_from_slice(&[b'z'; 10_000]);
        input.extend_from_slice(b"\"}\n");
        let got = frames(&input, 1024, 7).await;
        let [Frame::Oversize(head)] = &got[..] else {
            panic!("{got:?}");
        };
        assert_eq!(head.len(), HEAD_BYTES);
        assert!(head.starts_with(b"{\"jsonrpc\":\"2.0\",\"id\":42,"));
    }

    #[tokio::test]
    async fn exact_limit_is_accepted() {
        let got = frames(b"0123456789\n", 10, 2).await;
        assert_eq!(got, vec![Frame::Line(b"0123456789".to_vec())]);
    }

    #[test]
    fn encoded_lines_have_no_inner_newline() {
        let line = encode_line(&serde_json::json!({"text": "a\nb"}));
        assert_eq!(line.iter().filter(|&&b| b == b'\n').count(), 1);
    }
}
