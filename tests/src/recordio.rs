//! Mesos RecordIO framing, read from an HTTP response body.

/// Reads Mesos RecordIO (`docs/recordio.md`: `<decimal length>\n<that many bytes>`, repeated)
/// from an HTTP response body; record boundaries are independent of chunk boundaries.
pub struct RecordIoReader {
    body: std::pin::Pin<Box<dyn futures::Stream<Item = Result<Vec<u8>, String>> + Send>>,
    buf: Vec<u8>,
}

impl RecordIoReader {
    pub fn new(resp: reqwest::Response) -> RecordIoReader {
        use futures::StreamExt as _;
        let body = resp
            .bytes_stream()
            .map(|r| r.map(|b| b.to_vec()).map_err(|e| e.to_string()));
        RecordIoReader {
            body: Box::pin(body),
            buf: Vec::new(),
        }
    }

    /// The next record; `Ok(None)` when the stream ended cleanly between records.
    pub async fn next(&mut self) -> Result<Option<Vec<u8>>, String> {
        use futures::StreamExt as _;
        loop {
            if let Some(nl) = self.buf.iter().position(|b| *b == b'\n') {
                let header = std::str::from_utf8(&self.buf[..nl])
                    .map_err(|_| format!("RecordIO length is not text: {:?}", &self.buf[..nl]))?;
                if header.is_empty() || !header.bytes().all(|b| b.is_ascii_digit()) {
                    return Err(format!(
                        "RecordIO length is not a decimal number: {header:?}"
                    ));
                }
                let len: usize = header
                    .parse()
                    .map_err(|e| format!("RecordIO length {header:?}: {e}"))?;
                if len == 0 {
                    return Err("RecordIO record of length 0 (Mesos never sends one)".into());
                }
                if self.buf.len() >= nl + 1 + len {
                    let record = self.buf[nl + 1..nl + 1 + len].to_vec();
                    self.buf.drain(..nl + 1 + len);
                    return Ok(Some(record));
                }
            } else if self.buf.len() > 20 {
                return Err(format!(
                    "no newline after {} bytes of RecordIO length: {:?}",
                    self.buf.len(),
                    String::from_utf8_lossy(&self.buf[..20])
                ));
            }
            match self.body.next().await {
                Some(Ok(chunk)) => self.buf.extend_from_slice(&chunk),
                Some(Err(e)) => return Err(format!("reading the event stream: {e}")),
                None if self.buf.is_empty() => return Ok(None),
                None => {
                    return Err(format!(
                        "event stream ended inside a record ({} bytes pending)",
                        self.buf.len()
                    ))
                }
            }
        }
    }
}
