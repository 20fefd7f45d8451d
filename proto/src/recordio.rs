//! Mesos RecordIO framing: each record is its length in bytes as ASCII
//! decimal digits, a line feed, then the record bytes
//! (`20\n{"type":"HEARTBEAT"}`). Chunk boundaries of the transport are
//! unrelated to record boundaries.

use bytes::{Buf, Bytes, BytesMut};

/// Largest record the [`Decoder`] accepts by default (16 MiB).
pub const MAX_RECORD_BYTES: usize = 16 * 1024 * 1024;

/// Most digits a length header may have (a `u64` has at most 20).
pub const MAX_HEADER_DIGITS: usize = 20;

/// Frames one record.
pub fn encode(record: &[u8]) -> Bytes {
    let mut out = BytesMut::with_capacity(record.len() + MAX_HEADER_DIGITS + 1);
    encode_into(record, &mut out);
    out.freeze()
}

/// Appends one framed record to `out`.
pub fn encode_into(record: &[u8], out: &mut BytesMut) {
    out.extend_from_slice(record.len().to_string().as_bytes());
    out.extend_from_slice(b"\n");
    out.extend_from_slice(record);
}

/// A malformed RecordIO stream.
#[derive(Debug, Clone, PartialEq, Eq, thiserror::Error)]
pub enum RecordIoError {
    /// The length header contains something other than ASCII digits.
    #[error("invalid RecordIO length header: byte 0x{byte:02x} is not an ASCII digit")]
    InvalidHeaderByte {
        /// The offending byte.
        byte: u8,
    },
    /// The length header is empty (a bare line feed).
    #[error("invalid RecordIO length header: no digits before the line feed")]
    EmptyHeader,
    /// The length header has more than [`MAX_HEADER_DIGITS`] digits.
    #[error("invalid RecordIO length header: more than {MAX_HEADER_DIGITS} digits")]
    HeaderTooLong,
    /// The announced record is larger than the decoder's limit.
    #[error("RecordIO record of {length} bytes exceeds the limit of {max} bytes")]
    RecordTooLarge {
        /// Announced length (saturated at `u64::MAX`).
        length: u64,
        /// The decoder's limit.
        max: usize,
    },
    /// The stream ended in the middle of a header or a record.
    #[error("RecordIO stream ended inside a record ({buffered} bytes pending)")]
    Truncated {
        /// Bytes received for the unfinished record.
        buffered: usize,
    },
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum State {
    Header,
    Body(usize),
}

/// Incremental RecordIO decoder: [`feed`](Decoder::feed) it bytes as they
/// arrive and take complete records with
/// [`next_record`](Decoder::next_record). After an error the decoder
/// stays failed and keeps returning that error.
#[derive(Debug, Clone)]
pub struct Decoder {
    buffer: BytesMut,
    state: State,
    max_record_bytes: usize,
    failed: Option<RecordIoError>,
}

impl Default for Decoder {
    fn default() -> Self {
        Self::new()
    }
}

impl Decoder {
    /// A decoder that accepts records up to [`MAX_RECORD_BYTES`].
    pub fn new() -> Self {
        Self::with_max_record_bytes(MAX_RECORD_BYTES)
    }

    /// A decoder that accepts records up to `max_record_bytes`.
    pub fn with_max_record_bytes(max_record_bytes: usize) -> Self {
        Decoder {
            buffer: BytesMut::new(),
            state: State::Header,
            max_record_bytes,
            failed: None,
        }
    }

    /// The largest record this decoder accepts.
    pub fn max_record_bytes(&self) -> usize {
        self.max_record_bytes
    }

    /// Adds received bytes.
    pub fn feed(&mut self, chunk: &[u8]) {
        if self.failed.is_none() {
            self.buffer.extend_from_slice(chunk);
        }
    }

    /// Returns the next complete record, `Ok(None)` if more bytes are
    /// needed, or the error that broke the stream.
    pub fn next_record(&mut self) -> Result<Option<Bytes>, RecordIoError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        match self.step() {
            Ok(record) => Ok(record),
            Err(error) => {
                self.buffer = BytesMut::new();
                self.failed = Some(error.clone());
                Err(error)
            }
        }
    }

    /// Feeds `chunk` and returns every record completed by it.
    pub fn decode(&mut self, chunk: &[u8]) -> Result<Vec<Bytes>, RecordIoError> {
        self.feed(chunk);
        let mut records = Vec::new();
        while let Some(record) = self.next_record()? {
            records.push(record);
        }
        Ok(records)
    }

    /// Checks that the stream ended on a record boundary.
    pub fn finish(&self) -> Result<(), RecordIoError> {
        if let Some(error) = &self.failed {
            return Err(error.clone());
        }
        if self.state == State::Header && self.buffer.is_empty() {
            Ok(())
        } else {
            Err(RecordIoError::Truncated {
                buffered: self.buffer.len(),
            })
        }
    }

    /// Bytes received but not yet returned as part of a record.
    pub fn buffered_len(&self) -> usize {
        self.buffer.len()
    }

    fn step(&mut self) -> Result<Option<Bytes>, RecordIoError> {
        loop {
            match self.state {
                State::Header => {
                    let newline = self.buffer.iter().position(|&b| b == b'\n');
                    let header_len = newline.unwrap_or(self.buffer.len());
                    if let Some(&byte) = self.buffer[..header_len]
                        .iter()
                        .find(|b| !b.is_ascii_digit())
                    {
                        return Err(RecordIoError::InvalidHeaderByte { byte });
                    }
                    if header_len > MAX_HEADER_DIGITS {
                        return Err(RecordIoError::HeaderTooLong);
                    }
                    if newline.is_none() {
                        return Ok(None);
                    }
                    if header_len == 0 {
                        return Err(RecordIoError::EmptyHeader);
                    }
                    let length = parse_digits(&self.buffer[..header_len]);
                    if length > self.max_record_bytes as u64 {
                        return Err(RecordIoError::RecordTooLarge {
                            length,
                            max: self.max_record_bytes,
                        });
                    }
                    self.buffer.advance(header_len + 1);
                    // `length <= max_record_bytes`, so it fits in usize.
                    self.state = State::Body(length as usize);
                }
                State::Body(length) => {
                    if self.buffer.len() < length {
                        return Ok(None);
                    }
                    let record = self.buffer.split_to(length).freeze();
                    self.state = State::Header;
                    return Ok(Some(record));
                }
            }
        }
    }
}

/// Value of a run of ASCII digits, saturating at `u64::MAX`.
fn parse_digits(digits: &[u8]) -> u64 {
    digits.iter().fold(0u64, |acc, &d| {
        acc.saturating_mul(10).saturating_add(u64::from(d - b'0'))
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    #[test]
    fn encodes_length_prefix() {
        assert_eq!(
            &encode(br#"{"type":"HEARTBEAT"}"#)[..],
            &b"20\n{\"type\":\"HEARTBEAT\"}"[..]
        );
        assert_eq!(&encode(b"")[..], &b"0\n"[..]);
    }

    #[test]
    fn decodes_records_split_anywhere() {
        let mut stream = BytesMut::new();
        encode_into(b"hello", &mut stream);
        encode_into(b"", &mut stream);
        encode_into(b"world\nwith newline", &mut stream);
        let mut decoder = Decoder::new();
        let mut records = Vec::new();
        for byte in stream.iter() {
            records.extend(decoder.decode(std::slice::from_ref(byte)).unwrap());
        }
        assert_eq!(
            records,
            vec![
                Bytes::from_static(b"hello"),
                Bytes::new(),
                Bytes::from_static(b"world\nwith newline"),
            ]
        );
        decoder.finish().unwrap();
    }

    #[test]
    fn needs_more_bytes_without_error() {
        let mut decoder = Decoder::new();
        assert_eq!(decoder.decode(b"1").unwrap(), Vec::<Bytes>::new());
        assert_eq!(decoder.decode(b"0\nabcde").unwrap(), Vec::<Bytes>::new());
        assert!(matches!(
            decoder.finish(),
            Err(RecordIoError::Truncated { buffered: 5 })
        ));
        assert_eq!(
            decoder.decode(b"fghij").unwrap(),
            vec![Bytes::from_static(b"abcdefghij")]
        );
        decoder.finish().unwrap();
    }

    #[test]
    fn rejects_bad_headers() {
        for (input, expected) in [
            (
                &b"+5\nhello"[..],
                RecordIoError::InvalidHeaderByte { byte: b'+' },
            ),
            (
                b"-5\nhello",
                RecordIoError::InvalidHeaderByte { byte: b'-' },
            ),
            (
                b" 5\nhello",
                RecordIoError::InvalidHeaderByte { byte: b' ' },
            ),
            (
                b"5\r\nhello",
                RecordIoError::InvalidHeaderByte { byte: b'\r' },
            ),
            (b"0x10\n", RecordIoError::InvalidHeaderByte { byte: b'x' }),
            (
                b"{\"type\":\"HEARTBEAT\"}",
                RecordIoError::InvalidHeaderByte { byte: b'{' },
            ),
            (b"\nhello", RecordIoError::EmptyHeader),
            (b"123456789012345678901\n", RecordIoError::HeaderTooLong),
        ] {
            let mut decoder = Decoder::new();
            assert_eq!(
                decoder.decode(input),
                Err(expected.clone()),
                "input {input:?}"
            );
            // The decoder stays failed.
            assert_eq!(decoder.decode(b"1\na"), Err(expected.clone()));
            assert_eq!(decoder.finish(), Err(expected));
        }
    }

    #[test]
    fn rejects_long_header_before_newline_arrives() {
        let mut decoder = Decoder::new();
        assert_eq!(decoder.decode(&[b'1'; 20]).unwrap(), Vec::<Bytes>::new());
        assert_eq!(decoder.decode(b"1"), Err(RecordIoError::HeaderTooLong));
    }

    #[test]
    fn rejects_oversized_records() {
        let mut decoder = Decoder::new();
        let header = format!("{}\n", MAX_RECORD_BYTES + 1);
        assert_eq!(
            decoder.decode(header.as_bytes()),
            Err(RecordIoError::RecordTooLarge {
                length: MAX_RECORD_BYTES as u64 + 1,
                max: MAX_RECORD_BYTES,
            })
        );

        // Exactly the limit is fine (announced, not yet received).
        let mut decoder = Decoder::new();
        let header = format!("{MAX_RECORD_BYTES}\n");
        assert_eq!(
            decoder.decode(header.as_bytes()).unwrap(),
            Vec::<Bytes>::new()
        );

        // 20 digits that overflow u64 are "too large", not a panic.
        let mut decoder = Decoder::new();
        assert_eq!(
            decoder.decode(b"99999999999999999999\n"),
            Err(RecordIoError::RecordTooLarge {
                length: u64::MAX,
                max: MAX_RECORD_BYTES
            })
        );

        let mut decoder = Decoder::with_max_record_bytes(4);
        assert_eq!(
            decoder.decode(b"4\nabcd").unwrap(),
            vec![Bytes::from_static(b"abcd")]
        );
        assert_eq!(
            decoder.decode(b"5\nabcde"),
            Err(RecordIoError::RecordTooLarge { length: 5, max: 4 })
        );
    }

    #[test]
    fn accepts_leading_zeros() {
        let mut decoder = Decoder::new();
        assert_eq!(
            decoder.decode(b"003\nabc").unwrap(),
            vec![Bytes::from_static(b"abc")]
        );
    }

    proptest! {
        #[test]
        fn round_trips_with_random_chunking(
            records in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..300), 0..8),
            cuts in proptest::collection::vec(any::<prop::sample::Index>(), 0..16),
        ) {
            let mut stream = BytesMut::new();
            for record in &records {
                encode_into(record, &mut stream);
            }
            let stream = stream.freeze();
            let mut positions: Vec<usize> = cuts.iter().map(|c| c.index(stream.len() + 1)).collect();
            positions.push(0);
            positions.push(stream.len());
            positions.sort_unstable();

            let mut decoder = Decoder::new();
            let mut decoded = Vec::new();
            for window in positions.windows(2) {
                decoded.extend(decoder.decode(&stream[window[0]..window[1]]).unwrap());
            }
            decoder.finish().unwrap();
            let decoded: Vec<Vec<u8>> = decoded.into_iter().map(|b| b.to_vec()).collect();
            prop_assert_eq!(decoded, records);
        }

        #[test]
        fn never_panics_on_garbage(
            chunks in proptest::collection::vec(proptest::collection::vec(any::<u8>(), 0..64), 0..8),
        ) {
            let mut decoder = Decoder::with_max_record_bytes(1024);
            for chunk in &chunks {
                if decoder.decode(chunk).is_err() {
                    break;
                }
            }
            let _ = decoder.finish();
        }
    }
}
