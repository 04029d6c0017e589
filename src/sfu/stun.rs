//! Just enough STUN to route a peer's first packet: the local ufrag in a binding
//! request's USERNAME. Everything else about STUN is str0m's job.

const MAGIC_COOKIE: [u8; 4] = [0x21, 0x12, 0xA4, 0x42];
const USERNAME: u16 = 0x0006;

/// Whether a datagram looks like STUN (RFC 5389 header with the magic cookie).
pub fn is_stun(packet: &[u8]) -> bool {
    packet.len() >= 20 && packet[0] & 0xC0 == 0 && packet[4..8] == MAGIC_COOKIE
}

/// The receiver's ufrag (the part of USERNAME before ':'), if the packet is a STUN
/// message carrying one.
pub fn local_ufrag(packet: &[u8]) -> Option<&str> {
    if !is_stun(packet) {
        return None;
    }
    let length = u16::from_be_bytes([packet[2], packet[3]]) as usize;
    let body = packet.get(20..20 + length)?;
    let mut offset = 0;
    while offset + 4 <= body.len() {
        let kind = u16::from_be_bytes([body[offset], body[offset + 1]]);
        let len = u16::from_be_bytes([body[offset + 2], body[offset + 3]]) as usize;
        let value = body.get(offset + 4..offset + 4 + len)?;
        if kind == USERNAME {
            let username = std::str::from_utf8(value).ok()?;
            return username.split(':').next();
        }
        offset += 4 + len.div_ceil(4) * 4;
    }
    None
}

#[cfg(test)]
mod tests {
    use super::*;

    fn binding_request(username: &str) -> Vec<u8> {
        let mut attr = Vec::new();
        attr.extend_from_slice(&USERNAME.to_be_bytes());
        attr.extend_from_slice(&(username.len() as u16).to_be_bytes());
        attr.extend_from_slice(username.as_bytes());
        while attr.len() % 4 != 0 {
            attr.push(0);
        }
        let mut packet = vec![0x00, 0x01];
        packet.extend_from_slice(&(attr.len() as u16).to_be_bytes());
        packet.extend_from_slice(&MAGIC_COOKIE);
        packet.extend_from_slice(&[7; 12]);
        packet.extend_from_slice(&attr);
        packet
    }

    #[test]
    fn finds_the_local_ufrag() {
        assert_eq!(local_ufrag(&binding_request("abcd:wxyz")), Some("abcd"));
    }

    #[test]
    fn garbage_is_not_stun() {
        assert_eq!(local_ufrag(&[0x80; 40]), None);
        assert_eq!(local_ufrag(b"hello"), None);
        let mut truncated = binding_request("abcd:wxyz");
        truncated.truncate(26);
        assert_eq!(local_ufrag(&truncated), None);
        let mut lying = binding_request("abcd:wxyz");
        lying[3] = 200; // claims more body than there is
        assert_eq!(local_ufrag(&lying), None);
    }
}
