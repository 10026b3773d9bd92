//! Framing of messages on the replication stream.
//!
//! A frame is `[u32 BE payload length][u8 version][u32 BE CRC-32 of payload][payload]`, where
//! the payload is the `postcard` encoding of one message.
//!
//! Design reasons:
//! - **postcard**: compact, deterministic and serde-driven, so protocol messages are plain Rust
//!   enums; it is not self-describing, which is why the frame carries a version byte — a peer
//!   speaking another version is refused instead of misread. (bincode 3 is not an option.)
//! - **CRC-32 although TLS authenticates the bytes**: TLS protects the link, not our own code.
//!   The checksum catches a payload mangled before it was framed or after it was read (a buffer
//!   bug, a proxy in tests, a frame persisted for replay) before it is applied to storage, and
//!   every wire frame in Bunker carries a version and a checksum.
//! - **Length first and bounded by [`MAX_FRAME_BYTES`]** before anything is allocated: a peer
//!   cannot make us reserve 4 GiB by sending a large length.
//! - A clean EOF between frames is [`FrameError::Closed`] (the peer hung up); an EOF inside a
//!   frame is an I/O error (the frame was torn).
//!
//! [`read_frame`] is not cancel-safe: if its future is dropped midway (a `tokio::select!` whose
//! other branch won, a `timeout`), the partially read frame is lost and the stream is out of
//! sync. Where a read races other events, keep a [`FrameReader`] per stream: it holds the
//! partial frame itself and resumes it on the next call.

use serde::de::DeserializeOwned;
use serde::Serialize;
use tokio::io::{AsyncRead, AsyncReadExt, AsyncWrite, AsyncWriteExt};

/// Version of the frame layout and of the message encoding inside it (3: the Merkle tree lists
/// only the buckets that hold keys, as `(bucket, hash)` pairs).
pub const FRAME_VERSION: u8 = 3;
/// Largest accepted payload.
pub const MAX_FRAME_BYTES: usize = 64 * 1024 * 1024;
/// Longest a frame write may take: a peer that stops reading cannot hold a sender (and what
/// it waits on) for ever.
pub const WRITE_TIMEOUT: std::time::Duration = std::time::Duration::from_secs(30);
/// Length (4) + version (1) + CRC (4).
pub const FRAME_HEADER_BYTES: usize = 9;

#[derive(Debug, thiserror::Error)]
pub enum FrameError {
    #[error("replication stream I/O: {0}")]
    Io(#[from] std::io::Error),
    #[error("replication stream closed by the peer")]
    Closed,
    #[error("replication frame of {len} bytes exceeds the {limit}-byte limit")]
    TooLarge { len: usize, limit: usize },
    #[error("writing a replication frame timed out after {WRITE_TIMEOUT:?}")]
    WriteTimeout,
    #[error("replication frame version {got}, expected {FRAME_VERSION}")]
    BadVersion { got: u8 },
    #[error(
        "replication frame checksum mismatch: header {expected:#010x}, payload {actual:#010x}"
    )]
    BadChecksum { expected: u32, actual: u32 },
    #[error("decoding replication frame payload: {0}")]
    Decode(#[source] postcard::Error),
    #[error("replication frame payload has {trailing} trailing bytes")]
    TrailingBytes { trailing: usize },
    #[error("encoding replication message: {0}")]
    Encode(#[source] postcard::Error),
}

/// Encodes `msg` as one frame, writes it and flushes. Returns the bytes written, header
/// included. A message over [`MAX_FRAME_BYTES`] is refused before anything is written.
pub async fn write_frame<W, T>(w: &mut W, msg: &T) -> Result<usize, FrameError>
where
    W: AsyncWrite + Unpin,
    T: Serialize,
{
    // Encode after a zeroed header so the frame goes out in one write without a copy.
    let header_placeholder = vec![0u8; FRAME_HEADER_BYTES];
    let mut frame = postcard::to_extend(msg, header_placeholder).map_err(FrameError::Encode)?;
    let payload = frame.get(FRAME_HEADER_BYTES..).unwrap_or_default();
    let too_large = FrameError::TooLarge {
        len: payload.len(),
        limit: MAX_FRAME_BYTES,
    };
    if payload.len() > MAX_FRAME_BYTES {
        return Err(too_large);
    }
    let len = u32::try_from(payload.len()).map_err(|_| too_large)?;
    let header = encode_header(len, crc32fast::hash(payload));
    for (slot, byte) in frame.iter_mut().zip(header) {
        *slot = byte;
    }
    let write = async {
        w.write_all(&frame).await?;
        w.flush().await
    };
    tokio::time::timeout(WRITE_TIMEOUT, write)
        .await
        .map_err(|_| FrameError::WriteTimeout)??;
    Ok(frame.len())
}

/// Reads one frame and decodes its message. Returns the message and the bytes read, header
/// included. The length is checked against [`MAX_FRAME_BYTES`] and the version against
/// [`FRAME_VERSION`] before the payload is allocated or read.
///
/// Not cancel-safe (see the module docs); [`FrameReader`] is.
pub async fn read_frame<R, T>(r: &mut R) -> Result<(T, usize), FrameError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    FrameReader::new(r).read_frame().await
}

/// [`read_frame`] with a smaller payload limit, for messages from a peer that is not yet
/// identified (a hello): it cannot make us allocate more than `limit` bytes.
pub async fn read_frame_limited<R, T>(r: &mut R, limit: usize) -> Result<(T, usize), FrameError>
where
    R: AsyncRead + Unpin,
    T: DeserializeOwned,
{
    let mut reader = FrameReader::new(r);
    reader.limit = limit.min(MAX_FRAME_BYTES);
    reader.read_frame().await
}

/// A reader that keeps a partially read frame in itself rather than in the future, so
/// [`FrameReader::read_frame`] is cancel-safe: it can be a `tokio::select!` branch beside a
/// timer, and a frame interrupted by the other branch resumes on the next call.
#[derive(Debug)]
pub struct FrameReader<R> {
    inner: R,
    header: [u8; FRAME_HEADER_BYTES],
    header_filled: usize,
    /// The payload being read, allocated once the header has been validated.
    payload: Option<Vec<u8>>,
    payload_filled: usize,
    /// Largest payload accepted; [`MAX_FRAME_BYTES`] unless lowered.
    limit: usize,
}

impl<R: AsyncRead + Unpin> FrameReader<R> {
    pub fn new(inner: R) -> Self {
        Self {
            inner,
            header: [0; FRAME_HEADER_BYTES],
            header_filled: 0,
            payload: None,
            payload_filled: 0,
            limit: MAX_FRAME_BYTES,
        }
    }

    pub fn get_ref(&self) -> &R {
        &self.inner
    }

    pub fn get_mut(&mut self) -> &mut R {
        &mut self.inner
    }

    /// The underlying reader; a partially read frame is discarded.
    pub fn into_inner(self) -> R {
        self.inner
    }

    /// Reads the next frame, resuming one interrupted by cancellation. Same checks and
    /// results as [`read_frame`]. After an error the stream is out of sync: drop it.
    pub async fn read_frame<T: DeserializeOwned>(&mut self) -> Result<(T, usize), FrameError> {
        self.fill_header().await?;
        let (len, version, expected) = decode_header(&self.header);
        let len = usize::try_from(len).unwrap_or(usize::MAX);
        if len > self.limit {
            return Err(FrameError::TooLarge {
                len,
                limit: self.limit,
            });
        }
        if version != FRAME_VERSION {
            return Err(FrameError::BadVersion { got: version });
        }
        let payload = self.fill_payload(len).await?;
        // The frame is complete: the next call starts a new one whatever happens below.
        self.header_filled = 0;
        self.payload_filled = 0;
        let actual = crc32fast::hash(&payload);
        if actual != expected {
            return Err(FrameError::BadChecksum { expected, actual });
        }
        let (msg, trailing) = postcard::take_from_bytes(&payload).map_err(FrameError::Decode)?;
        if !trailing.is_empty() {
            return Err(FrameError::TrailingBytes {
                trailing: trailing.len(),
            });
        }
        Ok((msg, FRAME_HEADER_BYTES + len))
    }

    /// Completes the header; EOF before its first byte is [`FrameError::Closed`], EOF after it
    /// a torn frame ([`std::io::ErrorKind::UnexpectedEof`]). Each await is one cancel-safe read.
    async fn fill_header(&mut self) -> Result<(), FrameError> {
        while let Some(rest) = self
            .header
            .get_mut(self.header_filled..)
            .filter(|rest| !rest.is_empty())
        {
            let n = self.inner.read(rest).await?;
            if n == 0 {
                if self.header_filled == 0 {
                    return Err(FrameError::Closed);
                }
                return Err(torn(self.header_filled, "header"));
            }
            self.header_filled += n;
        }
        Ok(())
    }

    /// Completes a payload of `len` bytes (already checked against the limit) and takes it.
    async fn fill_payload(&mut self, len: usize) -> Result<Vec<u8>, FrameError> {
        let payload = self.payload.get_or_insert_with(|| vec![0; len]);
        while let Some(rest) = payload
            .get_mut(self.payload_filled..)
            .filter(|rest| !rest.is_empty())
        {
            let n = self.inner.read(rest).await?;
            if n == 0 {
                return Err(torn(FRAME_HEADER_BYTES + self.payload_filled, "payload"));
            }
            self.payload_filled += n;
        }
        Ok(self.payload.take().unwrap_or_default())
    }
}

fn torn(offset: usize, part: &str) -> FrameError {
    std::io::Error::new(
        std::io::ErrorKind::UnexpectedEof,
        format!("stream ended {offset} bytes into a frame, in its {part}"),
    )
    .into()
}

fn encode_header(len: u32, crc: u32) -> [u8; FRAME_HEADER_BYTES] {
    let [l0, l1, l2, l3] = len.to_be_bytes();
    let [c0, c1, c2, c3] = crc.to_be_bytes();
    [l0, l1, l2, l3, FRAME_VERSION, c0, c1, c2, c3]
}

/// Splits a header into (payload length, version, CRC).
fn decode_header(header: &[u8; FRAME_HEADER_BYTES]) -> (u32, u8, u32) {
    let [l0, l1, l2, l3, version, c0, c1, c2, c3] = *header;
    (
        u32::from_be_bytes([l0, l1, l2, l3]),
        version,
        u32::from_be_bytes([c0, c1, c2, c3]),
    )
}

#[cfg(test)]
#[allow(clippy::unwrap_used)]
mod tests {
    use std::time::Duration;

    use serde::Deserialize;
    use tokio::io::duplex;

    use super::*;

    #[derive(Debug, PartialEq, Serialize, Deserialize)]
    enum Msg {
        Hello {
            secondary_id: String,
            wal_index: u64,
        },
        Entries(Vec<Vec<u8>>),
        Blob(Vec<u8>),
        Heartbeat,
    }

    fn samples() -> Vec<Msg> {
        vec![
            Msg::Hello {
                secondary_id: "dr-east".into(),
                wal_index: 42,
            },
            Msg::Entries(vec![vec![], vec![1, 2, 3], vec![0xff; 1000]]),
            Msg::Blob((0..=255u8).cycle().take(300_000).collect()),
            Msg::Heartbeat,
        ]
    }

    /// Encodes `msg` and returns the raw frame bytes.
    async fn encode(msg: &Msg) -> Vec<u8> {
        let mut buf = Vec::new();
        let written = write_frame(&mut buf, msg).await.unwrap();
        assert_eq!(written, buf.len());
        buf
    }

    async fn decode(bytes: &[u8]) -> Result<(Msg, usize), FrameError> {
        let mut reader = bytes;
        read_frame(&mut reader).await
    }

    #[tokio::test]
    async fn round_trip_over_a_pipe_then_closed() {
        let (mut a, mut b) = duplex(64 * 1024);
        let writer = tokio::spawn(async move {
            let mut total = 0;
            for msg in samples() {
                total += write_frame(&mut a, &msg).await.unwrap();
            }
            total
        });
        let mut read_total = 0;
        for expected in samples() {
            let (msg, n) = read_frame::<_, Msg>(&mut b).await.unwrap();
            assert_eq!(msg, expected);
            read_total += n;
        }
        assert_eq!(read_total, writer.await.unwrap());
        // The writer half was dropped at a frame boundary.
        assert!(matches!(
            read_frame::<_, Msg>(&mut b).await,
            Err(FrameError::Closed)
        ));
    }

    #[tokio::test]
    async fn header_layout_is_stable() {
        let frame = encode(&Msg::Heartbeat).await;
        let payload = postcard::to_stdvec(&Msg::Heartbeat).unwrap();
        let mut expected = (payload.len() as u32).to_be_bytes().to_vec();
        expected.push(FRAME_VERSION);
        expected.extend(crc32fast::hash(&payload).to_be_bytes());
        expected.extend(&payload);
        assert_eq!(frame, expected);
    }

    #[tokio::test]
    async fn any_corrupted_payload_byte_is_a_bad_checksum() {
        let frame = encode(&Msg::Entries(vec![vec![7; 64], vec![9; 3]])).await;
        for i in FRAME_HEADER_BYTES..frame.len() {
            let mut corrupted = frame.clone();
            corrupted[i] ^= 0x01;
            assert!(
                matches!(
                    decode(&corrupted).await,
                    Err(FrameError::BadChecksum { .. })
                ),
                "byte {i}"
            );
        }
        // A corrupted CRC field is caught the same way.
        let mut corrupted = frame.clone();
        corrupted[6] ^= 0x80;
        assert!(matches!(
            decode(&corrupted).await,
            Err(FrameError::BadChecksum { .. })
        ));
    }

    #[tokio::test]
    async fn other_version_is_refused() {
        let mut frame = encode(&Msg::Heartbeat).await;
        frame[4] = FRAME_VERSION + 1;
        assert!(matches!(
            decode(&frame).await,
            Err(FrameError::BadVersion { got }) if got == FRAME_VERSION + 1
        ));
    }

    #[tokio::test]
    async fn oversize_length_is_refused_before_reading_the_payload() {
        // The writer stays open and sends no payload: had read_frame tried to allocate and
        // read 4 GiB it would wait forever, so the timeout turns that into a failure.
        let (mut a, mut b) = duplex(1024);
        let mut header = encode_header(u32::MAX, 0);
        a.write_all(&header).await.unwrap();
        let result = tokio::time::timeout(Duration::from_secs(10), read_frame::<_, Msg>(&mut b))
            .await
            .unwrap();
        assert!(matches!(
            result,
            Err(FrameError::TooLarge { len, .. }) if len == u32::MAX as usize
        ));

        // One byte over the limit is refused, the limit itself is not.
        header = encode_header(MAX_FRAME_BYTES as u32 + 1, 0);
        assert!(matches!(
            decode(&header).await,
            Err(FrameError::TooLarge { .. })
        ));
        drop(a);
    }

    #[tokio::test]
    async fn oversize_message_is_not_written() {
        /// Serialized as one byte string (a `Vec<u8>` field would go byte by byte, slowly).
        struct Bytes(Vec<u8>);
        impl Serialize for Bytes {
            fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
                s.serialize_bytes(&self.0)
            }
        }
        let mut sink = Vec::new();
        // The length prefix makes the payload just over the limit.
        let huge = Bytes(vec![0; MAX_FRAME_BYTES]);
        assert!(matches!(
            write_frame(&mut sink, &huge).await,
            Err(FrameError::TooLarge { len, .. }) if len > MAX_FRAME_BYTES
        ));
        assert!(sink.is_empty());
        let largest = Bytes(vec![0; MAX_FRAME_BYTES - 4]);
        let written = write_frame(&mut sink, &largest).await.unwrap();
        assert_eq!(written, FRAME_HEADER_BYTES + MAX_FRAME_BYTES);
        let (back, _) = read_frame::<_, Vec<u8>>(&mut sink.as_slice())
            .await
            .unwrap();
        assert_eq!(back.len(), MAX_FRAME_BYTES - 4);
    }

    #[tokio::test]
    async fn truncation_is_closed_at_a_boundary_and_io_inside_a_frame() {
        let frame = encode(&Msg::Blob(vec![5; 100])).await;
        assert!(matches!(decode(&[]).await, Err(FrameError::Closed)));
        for len in 1..frame.len() {
            match decode(&frame[..len]).await {
                Err(FrameError::Io(e)) => {
                    assert_eq!(e.kind(), std::io::ErrorKind::UnexpectedEof, "prefix {len}")
                }
                other => panic!("prefix {len}: {other:?}"),
            }
        }
    }

    #[tokio::test]
    async fn frame_reader_resumes_a_frame_interrupted_by_cancellation() {
        let (mut a, b) = duplex(1024 * 1024);
        let mut reader = FrameReader::new(b);
        let first = Msg::Blob(vec![3; 10_000]);
        let frame = encode(&first).await;
        // Cut inside the header, then inside the payload; each time the read is cancelled.
        for chunk in [&frame[..4], &frame[4..5000], &frame[5000..]] {
            let pending =
                tokio::time::timeout(Duration::from_millis(20), reader.read_frame::<Msg>()).await;
            assert!(
                pending.is_err(),
                "a frame cannot complete before its bytes arrive"
            );
            a.write_all(chunk).await.unwrap();
        }
        let (msg, n) = reader.read_frame::<Msg>().await.unwrap();
        assert_eq!(msg, first);
        assert_eq!(n, frame.len());
        // The reader is at a frame boundary again.
        write_frame(&mut a, &Msg::Heartbeat).await.unwrap();
        drop(a);
        assert_eq!(reader.read_frame::<Msg>().await.unwrap().0, Msg::Heartbeat);
        assert!(matches!(
            reader.read_frame::<Msg>().await,
            Err(FrameError::Closed)
        ));
    }

    #[tokio::test]
    async fn frame_reader_in_select_loses_nothing() {
        let (mut a, b) = duplex(4096);
        let writer = tokio::spawn(async move {
            for msg in samples() {
                write_frame(&mut a, &msg).await.unwrap();
            }
        });
        let mut reader = FrameReader::new(b);
        let mut received = Vec::new();
        let mut interruptions = 0;
        while received.len() < samples().len() {
            // `yield_now` is ready on its second poll, so it wins whenever the read waits for
            // the writer, cancelling the read in the middle of a frame.
            tokio::select! {
                frame = reader.read_frame::<Msg>() => received.push(frame.unwrap().0),
                () = tokio::task::yield_now() => interruptions += 1,
            }
        }
        writer.await.unwrap();
        assert_eq!(received, samples());
        assert!(interruptions > 0, "the reads were never interrupted");
    }

    #[tokio::test]
    async fn payload_that_does_not_decode_is_refused() {
        // A valid frame around bytes that are not a `Msg`: variant index 200 does not exist.
        let payload = [200u8];
        let mut frame = encode_header(1, crc32fast::hash(&payload)).to_vec();
        frame.extend(payload);
        assert!(matches!(decode(&frame).await, Err(FrameError::Decode(_))));

        // A valid `Msg` followed by extra bytes inside the same frame.
        let mut payload = postcard::to_stdvec(&Msg::Heartbeat).unwrap();
        payload.push(0);
        let mut frame = encode_header(payload.len() as u32, crc32fast::hash(&payload)).to_vec();
        frame.extend(&payload);
        assert!(matches!(
            decode(&frame).await,
            Err(FrameError::TrailingBytes { trailing: 1 })
        ));
    }
}
