//! Hostile input for the SFU: any bytes as a signalling frame (decoded and fed to an
//! engine with a joined participant on each path, `/rtc` and `/rtc/v1`), as a `/rtc/v1`
//! join request parameter and an answer to rewrite, as a data-channel packet, and as a
//! datagram.
#![no_main]

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use tchap_visio::sfu::data::{SeenChat, TextStreams, chat_in, decode_and_stamp};
use tchap_visio::sfu::{Engine, EngineConfig, JoinRequest, ParticipantKey, sdp};
use tchap_visio::signal::v1;

struct State {
    engine: Engine,
    key: ParticipantKey,
    /// A single peer connection participant (`/rtc/v1`).
    single: ParticipantKey,
    streams: TextStreams,
    seen: SeenChat,
}

fn join(engine: &mut Engine, single_pc: bool) -> ParticipantKey {
    let request = request(single_pc);
    engine.join(Instant::now(), request).expect("an engine with room admits this participant")
}

fn request(single_pc: bool) -> JoinRequest {
    JoinRequest {
        room: "fuzz".into(),
        identity: if single_pc { "fuzzer-v1" } else { "fuzzer" }.into(),
        name: "Fuzzer".into(),
        metadata: String::new(),
        attributes: HashMap::new(),
        can_publish: true,
        can_subscribe: true,
        can_publish_data: true,
        // Granted, so that renames and attribute updates reach the engine too.
        can_update_own_metadata: true,
        can_publish_sources: Vec::new(),
        auto_subscribe: true,
        single_pc,
        publisher_offer: None,
    }
}

thread_local! {
    static STATE: RefCell<State> = RefCell::new({
        let config = EngineConfig {
            candidates: vec!["127.0.0.1:7882".parse().expect("address")],
            max_participants_per_room: 10,
            max_participants: 10,
            ice_servers: vec![],
        };
        let mut engine = Engine::new(config, Instant::now());
        let key = join(&mut engine, false);
        let single = join(&mut engine, true);
        State { engine, key, single, streams: TextStreams::default(), seen: SeenChat::default() }
    });
}

fuzz_target!(|data: &[u8]| {
    STATE.with(|state| {
        let mut state = state.borrow_mut();
        let now = Instant::now();
        if state.engine.sid_of(state.key).is_none() {
            state.key = join(&mut state.engine, false);
        }
        if state.engine.sid_of(state.single).is_none() {
            state.single = join(&mut state.engine, true);
        }
        if let Ok(Some(message)) = Engine::decode_request(data) {
            let (key, single) = (state.key, state.single);
            state.engine.signal(now, key, message.clone());
            state.engine.signal(now, single, message);
        }
        if let Ok(text) = std::str::from_utf8(data) {
            if let Ok(join) = v1::decode(Some(text)) {
                // Joins again with the decoded offer (replacing the previous session).
                let mut request = request(true);
                request.publisher_offer = join.publisher_offer;
                if let Ok(key) = state.engine.join(now, request) {
                    state.single = key;
                }
            }
            let _ = sdp::receive_slots(text);
            let _ = sdp::rewrite_answer(text, &HashMap::new());
        }
        if let Ok(packet) = decode_and_stamp(data, "PA_fuzz", "fuzzer") {
            let state = &mut *state;
            if let Some(chat) = chat_in(&packet, &mut state.streams) {
                state.seen.insert(&chat.id);
            }
        }
        let source = "10.1.2.3:4000".parse().expect("address");
        let destination = "127.0.0.1:7882".parse().expect("address");
        state.engine.handle_packet(now, source, destination, data);
        while state.engine.poll_output().is_some() {}
    });
});
