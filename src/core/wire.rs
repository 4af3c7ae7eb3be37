//! Frames and messages: the bytes two agents exchange over TCP.
//!
//! A frame is `len: u32 LE ‖ crc32(payload): u32 LE ‖ payload`, the payload one postcard-encoded
//! [`Message`]. The length is checked against [`MAX_PAYLOAD`] as soon as the eight header bytes
//! are in, so a peer cannot make us reserve memory by announcing a large frame: the receive
//! buffer is sized once for the largest legal frame. Block payloads are borrowed from the
//! receive buffer on decode and, on encode, read from disk straight into the send buffer
//! behind a hand-written header ([`begin_block`]), so a block is never copied in between.
//!
//! This module knows nothing of sessions or swarms; it only turns bytes into messages and back.

use crate::core::auth::TAG_LEN;
use serde::{Deserialize, Serialize};

/// Protocol version carried in [`Message::Hello`].
pub const VERSION: u16 = 3;
/// Bytes of a block: the slice of a chunk one data frame carries.
pub const BLOCK_SIZE: u32 = 16 * 1024;
/// Frame header: length and crc32.
pub const HEADER_LEN: usize = 8;
/// Largest legal payload: one block plus its message header, with slack.
pub const MAX_PAYLOAD: usize = BLOCK_SIZE as usize + 32;
/// Largest legal frame, header included; receive and send buffers are sized from it.
pub const MAX_FRAME: usize = HEADER_LEN + MAX_PAYLOAD + TAG_LEN;

/// A byte string that postcard encodes as `varint(len) ‖ bytes` and decodes by borrowing.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Bytes<'a>(pub &'a [u8]);

impl Serialize for Bytes<'_> {
    fn serialize<S: serde::Serializer>(&self, s: S) -> Result<S::Ok, S::Error> {
        s.serialize_bytes(self.0)
    }
}

impl<'de: 'a, 'a> Deserialize<'de> for Bytes<'a> {
    fn deserialize<D: serde::Deserializer<'de>>(d: D) -> Result<Self, D::Error> {
        <&'de [u8]>::deserialize(d).map(Bytes)
    }
}

/// Why an agent refuses a connection at the handshake.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum RefuseReason {
    /// The Hello named a protocol version this agent does not speak.
    UnsupportedVersion,
    /// The Hello named a swarm this agent does not serve.
    UnknownSwarm,
    /// Every connection slot is taken, or as many connections from the dialler's address as
    /// we take: sent at accept, before the dialler's Hello is read, then closed. A dialler
    /// beyond our LAN learns that we are alive and full, and its site waits for a slot rather
    /// than take the release from the origin (`agent::site::BUSY_WAIT`).
    Busy,
}

/// One protocol message. Variant order is the wire tag: append, never reorder.
#[derive(Serialize, Deserialize, Clone, Copy, Debug, PartialEq, Eq)]
pub enum Message<'a> {
    /// First frame each way: protocol version, the swarm id, and the port the sender listens on
    /// (0 if none), so that peers can later tell others where to reach it.
    Hello {
        /// Protocol version, [`VERSION`].
        version: u16,
        /// SHA-256 of the release manifest.
        swarm: [u8; 32],
        /// TCP port the sender accepts connections on, 0 for none.
        listen_port: u16,
        /// A random number the sender picked at start: tells a connection to ourselves, and two
        /// connections to one agent, apart.
        node: u64,
        /// Fresh random bytes for this connection, from which (with the other side's and the
        /// fleet secret) the sealed channel's keys are derived.
        nonce: [u8; crate::core::auth::NONCE_LEN],
    },
    /// The handshake is refused; the connection closes after it.
    Refuse(RefuseReason),
    /// The chunks the sender has, one bit each; replaces any earlier bitfield.
    #[serde(borrow)]
    Bitfield(Bytes<'a>),
    /// The sender now has this chunk.
    Have(u32),
    /// Please send this whole chunk, block by block, in order.
    Request(u32),
    /// Withdraw a request; the sender answers with `Reject` if it had not finished the chunk.
    Cancel(u32),
    /// This request will not be served (or was cancelled); no more blocks of it follow.
    Reject(u32),
    /// Part of a requested chunk: `data` starts at `offset` within the chunk.
    Block {
        /// Chunk index.
        chunk: u32,
        /// Byte offset within the chunk, a multiple of [`BLOCK_SIZE`].
        offset: u32,
        /// The bytes, at most [`BLOCK_SIZE`].
        data: Bytes<'a>,
    },
    /// Nothing; keeps an idle connection from timing out.
    KeepAlive,
    /// Other peers of this swarm the sender is connected to: [`PEER_ENTRY`]-byte entries (IPv6
    /// or IPv4-mapped address, then port big-endian), at most [`MAX_PEX_PEERS`].
    Peers(Bytes<'a>),
    /// Proof of the fleet secret (see [`crate::core::auth`]); with a fleet secret, the only message
    /// allowed between the Hellos and the Bitfield.
    Auth([u8; 32]),
    /// Instead of a Hello, as a connection's first frame: send me the manifest of this swarm (a
    /// device following its name heard it announced). Answered with `ManifestPart`s, then closed.
    ManifestGet([u8; 32]),
    /// Part of a manifest file: `data` starts at `offset` of its `total` bytes; parts come in order.
    ManifestPart { total: u32, offset: u32, data: Bytes<'a> },
    /// The sender's advert in the tree of reachable devices (`swarm::tree`, version 3): the
    /// lowest node number it knows of among them and the hops to it; `hops` past `MAX_HOPS`
    /// withdraws it. Sent only to peers beyond the sender's LAN.
    Tree { root: u64, hops: u8 },
}

/// Bytes of one address in [`Message::Peers`].
pub const PEER_ENTRY: usize = 18;
/// Most addresses in one [`Message::Peers`].
pub const MAX_PEX_PEERS: usize = 32;

/// Writes `addr` as one [`Message::Peers`] entry.
pub fn encode_peer(addr: std::net::SocketAddr, out: &mut [u8; PEER_ENTRY]) {
    let ip = match addr.ip() {
        std::net::IpAddr::V4(v4) => v4.to_ipv6_mapped(),
        std::net::IpAddr::V6(v6) => v6,
    };
    out[..16].copy_from_slice(&ip.octets());
    out[16..].copy_from_slice(&addr.port().to_be_bytes());
}

/// Reads the entries of a [`Message::Peers`]; `None` if the length is not whole entries or too many.
pub fn decode_peers(bytes: &[u8]) -> Option<impl Iterator<Item = std::net::SocketAddr> + '_> {
    if bytes.len() % PEER_ENTRY != 0 || bytes.len() / PEER_ENTRY > MAX_PEX_PEERS {
        return None;
    }
    Some(bytes.chunks_exact(PEER_ENTRY).map(|e| {
        let mut ip = [0u8; 16];
        ip.copy_from_slice(&e[..16]);
        let ip = std::net::Ipv6Addr::from(ip);
        let ip = ip.to_ipv4_mapped().map_or(std::net::IpAddr::V6(ip), std::net::IpAddr::V4);
        std::net::SocketAddr::new(ip, u16::from_be_bytes([e[16], e[17]]))
    }))
}

/// Postcard tag of [`Message::Block`], used by the hand-written block header.
const BLOCK_TAG: u32 = 7;

/// What is wrong with bytes received from a peer.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireError {
    /// The header announces a payload longer than [`MAX_PAYLOAD`].
    Oversize(u32),
    /// The payload's crc32 does not match the header.
    BadCrc,
    /// A sealed frame's authentication tag does not check.
    BadTag,
    /// The payload is not a valid message, or has trailing bytes.
    Malformed,
    /// The message does not fit the buffer given to encode it.
    BufferTooSmall,
}

impl std::fmt::Display for WireError {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        match self {
            WireError::Oversize(n) => write!(f, "frame of {n} bytes exceeds the {MAX_PAYLOAD}-byte cap"),
            WireError::BadCrc => write!(f, "frame checksum mismatch"),
            WireError::BadTag => write!(f, "frame authentication failed"),
            WireError::Malformed => write!(f, "undecodable message"),
            WireError::BufferTooSmall => write!(f, "message larger than its buffer"),
        }
    }
}

impl std::error::Error for WireError {}

/// The length of the first frame at the start of `buf`, once all of it is there.
///
/// `Ok(None)` while more bytes are needed. The length cap (a sealed frame's: the largest
/// payload and its tag) is enforced from the header alone, before anything is buffered.
pub fn frame_len(buf: &[u8]) -> Result<Option<usize>, WireError> {
    let Some(header) = buf.first_chunk::<HEADER_LEN>() else { return Ok(None) };
    let total = frame_total(header)?;
    Ok((buf.len() >= total).then_some(total))
}

/// The whole length of the frame this header starts, header included, checked against the cap.
pub fn frame_total(header: &[u8; HEADER_LEN]) -> Result<usize, WireError> {
    let len = u32::from_le_bytes([header[0], header[1], header[2], header[3]]);
    if len as usize > MAX_PAYLOAD + TAG_LEN {
        return Err(WireError::Oversize(len));
    }
    Ok(HEADER_LEN + len as usize)
}

/// The payload of a whole plain frame, if its crc32 checks.
pub fn check_crc(frame: &[u8]) -> Result<&[u8], WireError> {
    let payload = &frame[HEADER_LEN.min(frame.len())..];
    if payload.len() > MAX_PAYLOAD {
        return Err(WireError::Oversize(payload.len() as u32));
    }
    let crc = u32::from_le_bytes([frame[4], frame[5], frame[6], frame[7]]);
    match crc32fast::hash(payload) == crc {
        true => Ok(payload),
        false => Err(WireError::BadCrc),
    }
}

/// Finds the first whole plain frame at the start of `buf`.
///
/// Returns `Ok(None)` while more bytes are needed, `Ok(Some((payload, frame_len)))` when a frame
/// is complete and its crc checks. The length cap is enforced from the header alone.
pub fn parse_frame(buf: &[u8]) -> Result<Option<(&[u8], usize)>, WireError> {
    let Some(total) = frame_len(buf)? else { return Ok(None) };
    Ok(Some((check_crc(&buf[..total])?, total)))
}

/// Turns the plain frame `frame[..len]` into a sealed one in place: the length now counts the
/// tag, the crc field is zero, the payload is encrypted (with the header authenticated) and the
/// tag follows it. Returns the sealed frame's length; `frame` must have room for the tag.
pub fn seal_with(channel: &mut crate::core::auth::Channel, frame: &mut [u8], len: usize) -> usize {
    let sealed = len + TAG_LEN;
    frame[..4].copy_from_slice(&((sealed - HEADER_LEN) as u32).to_le_bytes());
    frame[4..HEADER_LEN].fill(0);
    let (header, rest) = frame.split_at_mut(HEADER_LEN);
    let tag = channel.seal(header, &mut rest[..len - HEADER_LEN]);
    frame[len..sealed].copy_from_slice(&tag);
    sealed
}

/// The plaintext payload of a sealed frame that [`open_with`] opened in place.
pub fn opened_payload(frame: &[u8]) -> &[u8] {
    &frame[HEADER_LEN..frame.len() - TAG_LEN]
}

/// Checks and decrypts the whole sealed frame `frame` in place with `channel`; returns the
/// plaintext payload. On failure nothing is changed (another channel may be tried).
pub fn open_with<'f>(channel: &mut crate::core::auth::Channel, frame: &'f mut [u8]) -> Result<&'f [u8], WireError> {
    if frame.len() < HEADER_LEN + TAG_LEN {
        return Err(WireError::BadTag);
    }
    let (header, rest) = frame.split_at_mut(HEADER_LEN);
    let (payload, tag) = rest.split_at_mut(rest.len() - TAG_LEN);
    let tag: &[u8; TAG_LEN] = (&*tag).try_into().map_err(|_| WireError::BadTag)?;
    channel.open(header, payload, tag).map_err(|_| WireError::BadTag)?;
    Ok(payload)
}

/// Decodes one message from a frame payload; trailing bytes are an error.
pub fn decode_message(payload: &[u8]) -> Result<Message<'_>, WireError> {
    match postcard::take_from_bytes::<Message>(payload) {
        Ok((msg, [])) => Ok(msg),
        _ => Err(WireError::Malformed),
    }
}

/// Encodes `msg` as a whole frame at the start of `out`; returns the frame length.
pub fn encode_frame(msg: &Message, out: &mut [u8]) -> Result<usize, WireError> {
    if out.len() < HEADER_LEN {
        return Err(WireError::BufferTooSmall);
    }
    let n = postcard::to_slice(msg, &mut out[HEADER_LEN..]).map_err(|_| WireError::BufferTooSmall)?.len();
    seal_frame(&mut out[..HEADER_LEN + n]);
    Ok(HEADER_LEN + n)
}

/// Writes the frame header and message prefix of a `Block` carrying `len` bytes.
///
/// Returns where the data must go: the caller fills `out[start..start + len]` (from disk,
/// without an intermediate copy) and then calls [`seal_frame`] on `out[..start + len]`.
pub fn begin_block(chunk: u32, offset: u32, len: u32, out: &mut [u8]) -> Result<usize, WireError> {
    // postcard encodes an enum tag, u32 fields and a byte-string length all as varints,
    // so this tuple is exactly the bytes that precede `data` in Message::Block.
    let prefix = (BLOCK_TAG, chunk, offset, len);
    let end = out.len().min(HEADER_LEN + 24);
    let n = postcard::to_slice(&prefix, &mut out[HEADER_LEN..end]).map_err(|_| WireError::BufferTooSmall)?.len();
    let start = HEADER_LEN + n;
    if out.len() < start + len as usize || n + len as usize > MAX_PAYLOAD {
        return Err(WireError::BufferTooSmall);
    }
    Ok(start)
}

/// Fills in the length and crc32 of the frame occupying all of `frame`.
pub fn seal_frame(frame: &mut [u8]) {
    let (header, payload) = frame.split_at_mut(HEADER_LEN);
    header[..4].copy_from_slice(&(payload.len() as u32).to_le_bytes());
    header[4..].copy_from_slice(&crc32fast::hash(payload).to_le_bytes());
}

#[cfg(test)]
mod tests {
    use super::*;

    fn roundtrip(msg: Message) {
        let mut buf = [0u8; MAX_FRAME];
        let n = encode_frame(&msg, &mut buf).unwrap();
        let (payload, used) = parse_frame(&buf[..n]).unwrap().unwrap();
        assert_eq!(used, n);
        assert_eq!(decode_message(payload).unwrap(), msg);
        // Every strict prefix is "need more", never an error or a message.
        for cut in 0..n {
            assert_eq!(parse_frame(&buf[..cut]), Ok(None));
        }
    }

    #[test]
    fn every_message_roundtrips() {
        let data = [7u8; BLOCK_SIZE as usize];
        roundtrip(Message::Hello {
            version: VERSION,
            swarm: [9; 32],
            listen_port: 7070,
            node: u64::MAX,
            nonce: [3; 16],
        });
        roundtrip(Message::Auth([0xa5; 32]));
        roundtrip(Message::Peers(Bytes(&[1; 36])));
        roundtrip(Message::Refuse(RefuseReason::UnknownSwarm));
        roundtrip(Message::Bitfield(Bytes(&[0xff, 0x80])));
        roundtrip(Message::Have(70_000));
        roundtrip(Message::Request(3));
        roundtrip(Message::Cancel(3));
        roundtrip(Message::Reject(u32::MAX));
        roundtrip(Message::Block { chunk: 5, offset: 16384, data: Bytes(&data) });
        roundtrip(Message::KeepAlive);
        roundtrip(Message::Tree { root: u64::MAX - 1, hops: 3 });
        roundtrip(Message::Tree { root: 0, hops: u8::MAX });
    }

    #[test]
    fn hand_written_block_header_matches_postcard() {
        let data: Vec<u8> = (0..BLOCK_SIZE).map(|i| i as u8).collect();
        for (chunk, offset, len) in [(0, 0, 1), (300, 16384, 200), (u32::MAX, 4 << 20, BLOCK_SIZE)] {
            let d = &data[..len as usize];
            let mut a = [0u8; MAX_FRAME];
            let n = encode_frame(&Message::Block { chunk, offset, data: Bytes(d) }, &mut a).unwrap();
            let mut b = [0u8; MAX_FRAME];
            let start = begin_block(chunk, offset, len, &mut b).unwrap();
            b[start..start + len as usize].copy_from_slice(d);
            seal_frame(&mut b[..start + len as usize]);
            assert_eq!(&a[..n], &b[..start + len as usize]);
        }
    }

    #[test]
    fn oversize_length_is_refused_from_the_header_alone() {
        // A sealed frame may carry a full payload and its tag; one byte more is refused from the
        // header alone, before anything is buffered.
        let mut buf = [0u8; HEADER_LEN];
        let sealed_cap = (MAX_PAYLOAD + TAG_LEN) as u32;
        buf[..4].copy_from_slice(&(sealed_cap + 1).to_le_bytes());
        assert_eq!(frame_len(&buf), Err(WireError::Oversize(sealed_cap + 1)));
        assert_eq!(parse_frame(&buf), Err(WireError::Oversize(sealed_cap + 1)));
        buf[..4].copy_from_slice(&u32::MAX.to_le_bytes());
        assert_eq!(parse_frame(&buf), Err(WireError::Oversize(u32::MAX)));
        // A plain frame has no tag: a payload past MAX_PAYLOAD is refused once whole.
        let mut plain = vec![0u8; HEADER_LEN + MAX_PAYLOAD + 1];
        plain[..4].copy_from_slice(&(MAX_PAYLOAD as u32 + 1).to_le_bytes());
        assert_eq!(parse_frame(&plain), Err(WireError::Oversize(MAX_PAYLOAD as u32 + 1)));
    }

    #[test]
    fn corrupted_payload_fails_crc_and_garbage_fails_decode() {
        let mut buf = [0u8; 64];
        let n = encode_frame(&Message::Request(42), &mut buf).unwrap();
        for i in HEADER_LEN..n {
            let mut copy = buf;
            copy[i] ^= 0x10;
            assert_eq!(parse_frame(&copy[..n]), Err(WireError::BadCrc));
        }
        assert_eq!(decode_message(&[200]), Err(WireError::Malformed));
        assert_eq!(decode_message(&[]), Err(WireError::Malformed));
        // A valid message followed by a stray byte is refused too.
        assert_eq!(decode_message(&[8, 0]), Err(WireError::Malformed));
        // A block whose byte string claims more than the payload holds.
        assert_eq!(decode_message(&[7, 0, 0, 100, 1, 2]), Err(WireError::Malformed));
    }

    #[test]
    fn peer_entries_roundtrip_and_bad_lengths_are_refused() {
        let addrs: Vec<std::net::SocketAddr> =
            vec!["10.1.2.3:7070".parse().unwrap(), "[2001:db8::1]:9".parse().unwrap()];
        let mut bytes = Vec::new();
        for a in &addrs {
            let mut e = [0u8; PEER_ENTRY];
            encode_peer(*a, &mut e);
            bytes.extend_from_slice(&e);
        }
        assert_eq!(decode_peers(&bytes).unwrap().collect::<Vec<_>>(), addrs);
        assert!(decode_peers(&bytes[..20]).is_none());
        assert!(decode_peers(&[0; PEER_ENTRY * (MAX_PEX_PEERS + 1)]).is_none());
    }

    #[test]
    fn begin_block_refuses_an_oversize_block() {
        let mut b = [0u8; 2 * MAX_FRAME];
        assert_eq!(begin_block(0, 0, MAX_PAYLOAD as u32, &mut b), Err(WireError::BufferTooSmall));
    }
}
