//! The join request of LiveKit's single peer connection path (`/rtc/v1`): a protobuf
//! `WrappedJoinRequest`, base64url in the `join_request` query parameter, whose
//! `JoinRequest` (client info, connection settings, the first publisher offer, resume
//! fields) may be gzip-compressed. Everything here comes from the network: every
//! failure is a [`JoinRequestError`] with a message for the client, never a panic, and
//! sizes are bounded before anything is allocated for them.

use std::io::Read;

use base64::Engine as _;
use base64::engine::general_purpose::{URL_SAFE, URL_SAFE_NO_PAD};
use flate2::read::GzDecoder;
use livekit_protocol as lk;
use prost::Message;

/// Longest `join_request` parameter accepted (base64 text). A browser's gzipped offer
/// takes a few KiB; an uncompressed one with a dozen m-lines about 15 KiB. The HTTP
/// server itself refuses request targets above 64 KiB (414) before this is reached.
pub const MAX_PARAM_BYTES: usize = 48 * 1024;
/// Largest `JoinRequest` once decompressed: a gzip bomb stops here.
pub const MAX_DECODED_BYTES: usize = 1024 * 1024;

/// Why a `join_request` was refused (answered 400 with this text).
#[derive(Debug, thiserror::Error, PartialEq, Eq)]
pub enum JoinRequestError {
    #[error("the join_request parameter is missing")]
    Missing,
    #[error("the join_request parameter is longer than {MAX_PARAM_BYTES} bytes")]
    TooLong,
    #[error("the join_request parameter is not base64url")]
    Base64,
    #[error("the join_request parameter is not a WrappedJoinRequest")]
    Wrapper,
    #[error("unknown join_request compression {0}")]
    Compression(i32),
    #[error("the join_request is not valid gzip")]
    Gzip,
    #[error("the join_request is larger than {MAX_DECODED_BYTES} bytes once decompressed")]
    TooLarge,
    #[error("the join_request does not hold a JoinRequest")]
    JoinRequest,
}

/// Decodes the `join_request` query parameter.
pub fn decode(param: Option<&str>) -> Result<lk::JoinRequest, JoinRequestError> {
    let param = param.ok_or(JoinRequestError::Missing)?.trim();
    if param.is_empty() {
        return Err(JoinRequestError::Missing);
    }
    if param.len() > MAX_PARAM_BYTES {
        return Err(JoinRequestError::TooLong);
    }
    // livekit-client keeps the padding, other SDKs drop it; a client that forgot to
    // switch alphabets is met half way.
    let text: String = param
        .chars()
        .map(|c| match c {
            '+' => '-',
            '/' => '_',
            c => c,
        })
        .collect();
    let bytes = if text.ends_with('=') {
        URL_SAFE.decode(&text)
    } else {
        URL_SAFE_NO_PAD.decode(&text)
    }
    .map_err(|_| JoinRequestError::Base64)?;
    let wrapped =
        lk::WrappedJoinRequest::decode(bytes.as_slice()).map_err(|_| JoinRequestError::Wrapper)?;
    let inner = match lk::wrapped_join_request::Compression::try_from(wrapped.compression) {
        Ok(lk::wrapped_join_request::Compression::None) => wrapped.join_request,
        Ok(lk::wrapped_join_request::Compression::Gzip) => gunzip(&wrapped.join_request)?,
        Err(_) => return Err(JoinRequestError::Compression(wrapped.compression)),
    };
    if inner.len() > MAX_DECODED_BYTES {
        return Err(JoinRequestError::TooLarge);
    }
    lk::JoinRequest::decode(inner.as_slice()).map_err(|_| JoinRequestError::JoinRequest)
}

fn gunzip(compressed: &[u8]) -> Result<Vec<u8>, JoinRequestError> {
    let mut out = Vec::new();
    // One byte more than allowed tells "too large" from "exactly at the limit".
    GzDecoder::new(compressed)
        .take(MAX_DECODED_BYTES as u64 + 1)
        .read_to_end(&mut out)
        .map_err(|_| JoinRequestError::Gzip)?;
    if out.len() > MAX_DECODED_BYTES {
        return Err(JoinRequestError::TooLarge);
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use std::io::Write;

    use flate2::Compression;
    use flate2::write::GzEncoder;

    use super::*;

    fn request() -> lk::JoinRequest {
        lk::JoinRequest {
            publisher_offer: Some(lk::SessionDescription {
                r#type: "offer".into(),
                sdp: "v=0\r\n".repeat(50),
                id: 1,
                ..Default::default()
            }),
            connection_settings: Some(lk::ConnectionSettings {
                auto_subscribe: true,
                ..Default::default()
            }),
            ..Default::default()
        }
    }

    fn gzip(bytes: &[u8]) -> Vec<u8> {
        let mut encoder = GzEncoder::new(Vec::new(), Compression::default());
        encoder.write_all(bytes).expect("write to memory");
        encoder.finish().expect("finish in memory")
    }

    fn wrap(compression: i32, join_request: Vec<u8>) -> lk::WrappedJoinRequest {
        lk::WrappedJoinRequest {
            compression,
            join_request,
        }
    }

    fn param(wrapped: &lk::WrappedJoinRequest) -> String {
        URL_SAFE.encode(wrapped.encode_to_vec())
    }

    #[test]
    fn plain_and_gzip_padded_or_not_decode() {
        let plain = wrap(0, request().encode_to_vec());
        let gzipped = wrap(1, gzip(&request().encode_to_vec()));
        for wrapped in [plain, gzipped] {
            let padded = param(&wrapped);
            let unpadded = URL_SAFE_NO_PAD.encode(wrapped.encode_to_vec());
            let standard =
                base64::engine::general_purpose::STANDARD.encode(wrapped.encode_to_vec());
            for text in [padded, unpadded, standard] {
                assert_eq!(decode(Some(&text)), Ok(request()));
            }
        }
    }

    #[test]
    fn hostile_input_is_refused_with_a_reason() {
        let cases: Vec<(Option<String>, JoinRequestError)> = vec![
            (None, JoinRequestError::Missing),
            (Some(String::new()), JoinRequestError::Missing),
            (
                Some("a".repeat(MAX_PARAM_BYTES + 1)),
                JoinRequestError::TooLong,
            ),
            (Some("!!!not base64!!!".into()), JoinRequestError::Base64),
            (
                Some(URL_SAFE.encode([0xff, 0xff, 0xff, 0xff])),
                JoinRequestError::Wrapper,
            ),
            (
                Some(param(&wrap(7, vec![1, 2, 3]))),
                JoinRequestError::Compression(7),
            ),
            (
                Some(param(&wrap(1, b"not gzip at all".to_vec()))),
                JoinRequestError::Gzip,
            ),
            (
                Some(param(&wrap(1, gzip(&[0u8; MAX_DECODED_BYTES + 1])))),
                JoinRequestError::TooLarge,
            ),
            (
                Some(param(&wrap(0, vec![0xff; 40]))),
                JoinRequestError::JoinRequest,
            ),
        ];
        for (input, expected) in cases {
            assert_eq!(decode(input.as_deref()), Err(expected));
        }
    }

    #[test]
    fn a_truncated_gzip_stream_is_an_error() {
        let full = gzip(&request().encode_to_vec());
        let cut = param(&wrap(1, full[..full.len() / 2].to_vec()));
        assert_eq!(decode(Some(&cut)), Err(JoinRequestError::Gzip));
    }
}
