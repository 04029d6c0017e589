//! LiveKit data packets on the data channels: the server stamps the sender's identity
//! (a client cannot speak as someone else) and recognises chat in its three shapes
//! (`lk.chat` text streams, the legacy `lk-chat-topic` packet, `ChatMessage`).

use std::collections::{HashMap, HashSet, VecDeque};

use livekit_protocol::{DataPacket, data_packet};
use prost::Message;

/// Topic of chat text streams.
pub const CHAT_TOPIC: &str = "lk.chat";
/// Topic of the legacy chat packet that older clients (and current ones, to old servers) send.
pub const LEGACY_CHAT_TOPIC: &str = "lk-chat-topic";

/// Longest chat message kept, in bytes; longer streams are forwarded but not recorded.
const MAX_CHAT_BYTES: usize = 64 * 1024;
/// Longest data stream relayed, in bytes (any topic): the page reads a stream whole, so a
/// larger one is cut off here, its later chunks and its trailer dropped.
pub const MAX_RELAYED_STREAM_BYTES: usize = 64 * 1024;
/// Open text streams tracked per participant.
const MAX_OPEN_STREAMS: usize = 32;
/// Message ids remembered per room for de-duplication.
const SEEN_IDS: usize = 512;

/// A chat message as the engine emits it, once.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Chat {
    pub id: String,
    pub text: String,
    pub timestamp_ms: i64,
}

/// Text streams on the chat topic, being received from one participant.
#[derive(Debug, Default)]
pub struct TextStreams {
    open: HashMap<String, OpenStream>,
}

/// The bytes of one stream so far; compressed streams are inflated at their trailer,
/// since DEFLATE is one bit stream across chunk boundaries.
#[derive(Debug, Default)]
struct OpenStream {
    bytes: Vec<u8>,
    deflated: bool,
    /// Longer than [`MAX_CHAT_BYTES`]: forwarded, never recorded.
    too_long: bool,
}

impl OpenStream {
    fn text(self) -> Option<String> {
        if self.too_long {
            return None;
        }
        let bytes = if self.deflated {
            inflate_bounded(&self.bytes)?
        } else {
            self.bytes
        };
        Some(String::from_utf8_lossy(&bytes).into_owned())
    }
}

/// Raw DEFLATE (no zlib header), as LiveKit's SDKs compress streams, refusing anything
/// that would inflate past [`MAX_CHAT_BYTES`] (a small packet can be a large bomb).
fn inflate_bounded(compressed: &[u8]) -> Option<Vec<u8>> {
    use std::io::Read;
    let mut out = Vec::new();
    let mut decoder = flate2::read::DeflateDecoder::new(compressed).take(MAX_CHAT_BYTES as u64 + 1);
    decoder.read_to_end(&mut out).ok()?;
    (out.len() <= MAX_CHAT_BYTES).then_some(out)
}

fn is_deflated(header: &livekit_protocol::data_stream::Header) -> bool {
    header.compression == livekit_protocol::data_stream::CompressionType::DeflateRaw as i32
}

/// Ids of chat messages already emitted in a room.
#[derive(Debug, Default)]
pub struct SeenChat {
    order: VecDeque<String>,
    ids: HashSet<String>,
}

impl SeenChat {
    /// Records an id; false if it was seen already.
    pub fn insert(&mut self, id: &str) -> bool {
        if self.ids.contains(id) {
            return false;
        }
        if self.order.len() == SEEN_IDS
            && let Some(old) = self.order.pop_front()
        {
            self.ids.remove(&old);
        }
        self.order.push_back(id.to_owned());
        self.ids.insert(id.to_owned());
        true
    }
}

/// Who a packet is for: everyone, or only the participants named (by identity or, in the
/// oldest clients' form, by sid). The legacy `UserPacket` fields count as much as the
/// packet's own: a private message in any shape stays private.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Destinations {
    pub identities: Vec<String>,
    pub sids: Vec<String>,
}

impl Destinations {
    #[allow(deprecated)] // the legacy fields are what older clients fill
    pub fn of(packet: &DataPacket) -> Self {
        let mut identities = packet.destination_identities.clone();
        let mut sids = Vec::new();
        if let Some(data_packet::Value::User(user)) = &packet.value {
            identities.extend(user.destination_identities.iter().cloned());
            sids.extend(user.destination_sids.iter().cloned());
        }
        Self { identities, sids }
    }

    /// Sent to some participants only: never recorded, mirrored or published.
    pub fn is_private(&self) -> bool {
        !self.identities.is_empty() || !self.sids.is_empty()
    }

    pub fn includes(&self, identity: &str, sid: &str) -> bool {
        !self.is_private()
            || self.identities.iter().any(|i| i == identity)
            || self.sids.iter().any(|s| s == sid)
    }
}

/// Whether a packet begins a chat message (one chat token each).
pub fn starts_chat(packet: &DataPacket) -> bool {
    match &packet.value {
        Some(data_packet::Value::StreamHeader(header)) => header.topic == CHAT_TOPIC,
        Some(data_packet::Value::User(user)) => user.topic.as_deref() == Some(LEGACY_CHAT_TOPIC),
        Some(data_packet::Value::ChatMessage(_)) => true,
        _ => false,
    }
}

/// The data streams one participant is sending, by id, with their bytes so far: what
/// lets the engine cut off a stream that grows past [`MAX_RELAYED_STREAM_BYTES`].
#[derive(Debug, Default)]
pub struct RelayedStreams {
    open: HashMap<String, usize>,
}

/// Marks a stream that went over the limit: nothing more of it is relayed.
const CUT_OFF: usize = usize::MAX;

impl RelayedStreams {
    /// Whether this packet may be relayed, counting the stream bytes it carries.
    pub fn admit(&mut self, packet: &DataPacket) -> bool {
        match &packet.value {
            Some(data_packet::Value::StreamHeader(header)) => {
                let inline = header.inline_content.as_ref().map_or(0, Vec::len);
                if inline > MAX_RELAYED_STREAM_BYTES {
                    return false;
                }
                if header.inline_content.is_some() {
                    return true;
                }
                if self.open.len() >= MAX_OPEN_STREAMS && !self.open.contains_key(&header.stream_id)
                {
                    return false;
                }
                self.open.insert(header.stream_id.clone(), 0);
                true
            }
            Some(data_packet::Value::StreamChunk(chunk)) => {
                let Some(bytes) = self.open.get_mut(&chunk.stream_id) else {
                    // A chunk of a stream whose header was refused, or never sent.
                    return false;
                };
                if *bytes == CUT_OFF {
                    return false;
                }
                *bytes += chunk.content.len();
                if *bytes > MAX_RELAYED_STREAM_BYTES {
                    *bytes = CUT_OFF;
                    return false;
                }
                true
            }
            Some(data_packet::Value::StreamTrailer(trailer)) => self
                .open
                .remove(&trailer.stream_id)
                .is_some_and(|b| b != CUT_OFF),
            _ => true,
        }
    }
}

/// Decodes a packet from a participant and stamps it with their identity.
pub fn decode_and_stamp(
    bytes: &[u8],
    sid: &str,
    identity: &str,
) -> Result<DataPacket, prost::DecodeError> {
    let mut packet = DataPacket::decode(bytes)?;
    packet.participant_sid = sid.to_owned();
    packet.participant_identity = identity.to_owned();
    // Older clients read the identity inside the user packet: stamp it there too.
    #[allow(deprecated)]
    if let Some(data_packet::Value::User(user)) = &mut packet.value {
        user.participant_sid = sid.to_owned();
        user.participant_identity = identity.to_owned();
    }
    Ok(packet)
}

/// The chat message a packet completes, if any.
pub fn chat_in(packet: &DataPacket, streams: &mut TextStreams) -> Option<Chat> {
    match packet.value.as_ref()? {
        data_packet::Value::StreamHeader(header) if header.topic == CHAT_TOPIC => {
            // Short messages come whole inside the header (no chunk, no trailer).
            if let Some(content) = &header.inline_content {
                let stream = OpenStream {
                    bytes: content.clone(),
                    deflated: is_deflated(header),
                    too_long: content.len() > MAX_CHAT_BYTES,
                };
                return Some(Chat {
                    id: header.stream_id.clone(),
                    text: stream.text()?,
                    timestamp_ms: header.timestamp,
                });
            }
            if streams.open.len() >= MAX_OPEN_STREAMS {
                return None;
            }
            let stream = OpenStream {
                deflated: is_deflated(header),
                ..Default::default()
            };
            streams.open.insert(header.stream_id.clone(), stream);
            None
        }
        data_packet::Value::StreamChunk(chunk) => {
            let stream = streams.open.get_mut(&chunk.stream_id)?;
            if stream.bytes.len() + chunk.content.len() <= MAX_CHAT_BYTES {
                stream.bytes.extend_from_slice(&chunk.content);
            } else {
                stream.too_long = true;
            }
            None
        }
        data_packet::Value::StreamTrailer(trailer) => {
            let text = streams.open.remove(&trailer.stream_id)?.text()?;
            Some(Chat {
                id: trailer.stream_id.clone(),
                text,
                timestamp_ms: crate::clock::now_ms(),
            })
        }
        data_packet::Value::User(user) if user.topic.as_deref() == Some(LEGACY_CHAT_TOPIC) => {
            #[derive(serde::Deserialize)]
            struct Legacy {
                id: String,
                message: String,
                #[serde(default)]
                timestamp: i64,
            }
            let legacy: Legacy = serde_json::from_slice(&user.payload).ok()?;
            Some(Chat {
                id: legacy.id,
                text: legacy.message,
                timestamp_ms: legacy.timestamp,
            })
        }
        data_packet::Value::ChatMessage(message) => Some(Chat {
            id: message.id.clone(),
            text: message.message.clone(),
            timestamp_ms: message.timestamp,
        }),
        _ => None,
    }
}

/// The three packets of a server-sent `lk.chat` text stream.
pub fn server_chat_packets(
    sender_sid: &str,
    sender_identity: &str,
    stream_id: &str,
    text: &str,
    attributes: HashMap<String, String>,
) -> [Vec<u8>; 3] {
    use livekit_protocol::data_stream;
    #[allow(deprecated)] // older clients still read the kind field
    let packet = |value| DataPacket {
        kind: data_packet::Kind::Reliable as i32,
        participant_identity: sender_identity.to_owned(),
        participant_sid: sender_sid.to_owned(),
        value: Some(value),
        ..Default::default()
    };
    let header = data_stream::Header {
        stream_id: stream_id.to_owned(),
        timestamp: crate::clock::now_ms(),
        topic: CHAT_TOPIC.to_owned(),
        mime_type: "text/plain".to_owned(),
        total_length: Some(text.len() as u64),
        attributes,
        content_header: Some(data_stream::header::ContentHeader::TextHeader(
            data_stream::TextHeader {
                operation_type: data_stream::OperationType::Create as i32,
                ..Default::default()
            },
        )),
        ..Default::default()
    };
    let chunk = data_stream::Chunk {
        stream_id: stream_id.to_owned(),
        chunk_index: 0,
        content: text.as_bytes().to_vec(),
        ..Default::default()
    };
    let trailer = data_stream::Trailer {
        stream_id: stream_id.to_owned(),
        ..Default::default()
    };
    [
        packet(data_packet::Value::StreamHeader(header)).encode_to_vec(),
        packet(data_packet::Value::StreamChunk(chunk)).encode_to_vec(),
        packet(data_packet::Value::StreamTrailer(trailer)).encode_to_vec(),
    ]
}

#[cfg(test)]
mod tests {
    use super::*;
    use livekit_protocol::UserPacket;

    #[test]
    #[allow(deprecated)]
    fn identity_is_stamped_over_whatever_the_client_claimed() {
        let forged = DataPacket {
            participant_identity: "someone-else".into(),
            value: Some(data_packet::Value::User(UserPacket {
                participant_identity: "someone-else".into(),
                payload: b"hi".to_vec(),
                ..Default::default()
            })),
            ..Default::default()
        };
        let packet = decode_and_stamp(&forged.encode_to_vec(), "PA_1", "alice").expect("decodes");
        assert_eq!(packet.participant_identity, "alice");
        assert_eq!(packet.participant_sid, "PA_1");
        match packet.value {
            Some(data_packet::Value::User(user)) => assert_eq!(user.participant_identity, "alice"),
            other => panic!("{other:?}"),
        }
        assert!(decode_and_stamp(&[0xff, 0xff, 0xff], "PA_1", "alice").is_err());
    }

    #[test]
    fn a_text_stream_and_its_legacy_twin_make_one_chat() {
        let [header, chunk, trailer] =
            server_chat_packets("PA_1", "alice", "msg-1", "bonjour", HashMap::new());
        let mut streams = TextStreams::default();
        let mut seen = SeenChat::default();
        let mut chats = Vec::new();
        let legacy = DataPacket {
            value: Some(data_packet::Value::User(UserPacket {
                topic: Some(LEGACY_CHAT_TOPIC.into()),
                payload: br#"{"id":"msg-1","timestamp":5,"message":"bonjour"}"#.to_vec(),
                ..Default::default()
            })),
            ..Default::default()
        }
        .encode_to_vec();
        for bytes in [header, chunk, trailer, legacy] {
            let packet = decode_and_stamp(&bytes, "PA_1", "alice").expect("decodes");
            if let Some(chat) = chat_in(&packet, &mut streams)
                && seen.insert(&chat.id)
            {
                chats.push(chat);
            }
        }
        assert_eq!(chats.len(), 1, "{chats:?}");
        assert_eq!(chats[0].text, "bonjour");
        assert_eq!(chats[0].id, "msg-1");
    }

    #[test]
    fn a_header_with_inline_content_is_a_whole_message() {
        let packet = DataPacket {
            value: Some(data_packet::Value::StreamHeader(
                livekit_protocol::data_stream::Header {
                    stream_id: "s1".into(),
                    topic: CHAT_TOPIC.into(),
                    timestamp: 42,
                    inline_content: Some(b"salut".to_vec()),
                    ..Default::default()
                },
            )),
            ..Default::default()
        };
        let chat = chat_in(&packet, &mut TextStreams::default()).expect("a chat");
        assert_eq!(
            (chat.id.as_str(), chat.text.as_str(), chat.timestamp_ms),
            ("s1", "salut", 42)
        );
    }

    fn deflate(bytes: &[u8]) -> Vec<u8> {
        use std::io::Write;
        let mut encoder =
            flate2::write::DeflateEncoder::new(Vec::new(), flate2::Compression::default());
        encoder.write_all(bytes).expect("in memory");
        encoder.finish().expect("in memory")
    }

    fn stream_packets(id: &str, compressed: bool, content: &[u8], chunk: usize) -> Vec<DataPacket> {
        use livekit_protocol::data_stream;
        let compression = if compressed {
            data_stream::CompressionType::DeflateRaw
        } else {
            data_stream::CompressionType::None
        };
        let mut packets = vec![DataPacket {
            value: Some(data_packet::Value::StreamHeader(data_stream::Header {
                stream_id: id.into(),
                topic: CHAT_TOPIC.into(),
                compression: compression as i32,
                ..Default::default()
            })),
            ..Default::default()
        }];
        for (i, part) in content.chunks(chunk).enumerate() {
            packets.push(DataPacket {
                value: Some(data_packet::Value::StreamChunk(data_stream::Chunk {
                    stream_id: id.into(),
                    chunk_index: i as u64,
                    content: part.to_vec(),
                    ..Default::default()
                })),
                ..Default::default()
            });
        }
        packets.push(DataPacket {
            value: Some(data_packet::Value::StreamTrailer(data_stream::Trailer {
                stream_id: id.into(),
                ..Default::default()
            })),
            ..Default::default()
        });
        packets
    }

    #[test]
    fn compressed_streams_are_inflated_across_chunks() {
        let text = "Bonjour à toutes et à tous, ".repeat(20);
        let mut streams = TextStreams::default();
        let chats: Vec<Chat> = stream_packets("z1", true, &deflate(text.as_bytes()), 7)
            .iter()
            .filter_map(|p| chat_in(p, &mut streams))
            .collect();
        assert_eq!(chats.len(), 1);
        assert_eq!(chats[0].text, text);

        // Inline and compressed.
        let packet = DataPacket {
            value: Some(data_packet::Value::StreamHeader(
                livekit_protocol::data_stream::Header {
                    stream_id: "z2".into(),
                    topic: CHAT_TOPIC.into(),
                    inline_content: Some(deflate("salut".as_bytes())),
                    compression: livekit_protocol::data_stream::CompressionType::DeflateRaw as i32,
                    ..Default::default()
                },
            )),
            ..Default::default()
        };
        assert_eq!(
            chat_in(&packet, &mut TextStreams::default()).map(|c| c.text),
            Some("salut".to_owned())
        );
    }

    #[test]
    fn compression_bombs_and_garbage_are_not_recorded() {
        let bomb = deflate(&vec![b'a'; 10 * MAX_CHAT_BYTES]);
        assert!(bomb.len() < MAX_CHAT_BYTES / 10, "small on the wire");
        let mut streams = TextStreams::default();
        let chats = stream_packets("b", true, &bomb, 1000)
            .iter()
            .filter_map(|p| chat_in(p, &mut streams))
            .count();
        assert_eq!(chats, 0);
        let chats = stream_packets("g", true, b"\xff\xfe not deflate at all", 4)
            .iter()
            .filter_map(|p| chat_in(p, &mut streams))
            .count();
        assert_eq!(chats, 0);
        assert!(streams.open.is_empty(), "finished streams are forgotten");
    }

    #[test]
    fn seen_ids_are_bounded() {
        let mut seen = SeenChat::default();
        for i in 0..(SEEN_IDS + 10) {
            assert!(seen.insert(&i.to_string()));
        }
        assert_eq!(seen.ids.len(), SEEN_IDS);
        assert!(!seen.insert(&(SEEN_IDS + 5).to_string()));
    }
}
