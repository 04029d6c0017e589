//! Hostile input for the SFU: any bytes as a signalling frame (decoded and fed to an
//! engine with a joined participant), as a data-channel packet, and as a datagram.
#![no_main]

use std::cell::RefCell;
use std::collections::HashMap;
use std::time::Instant;

use libfuzzer_sys::fuzz_target;
use tchap_visio::sfu::data::{SeenChat, TextStreams, chat_in, decode_and_stamp};
use tchap_visio::sfu::{Engine, EngineConfig, JoinRequest, ParticipantKey};

struct State {
    engine: Engine,
    key: ParticipantKey,
    streams: TextStreams,
    seen: SeenChat,
}

fn join(engine: &mut Engine) -> ParticipantKey {
    let request = JoinRequest {
        room: "fuzz".into(),
        identity: "fuzzer".into(),
        name: "Fuzzer".into(),
        metadata: String::new(),
        attributes: HashMap::new(),
        can_publish: true,
        can_subscribe: true,
        can_publish_data: true,
        auto_subscribe: true,
        single_pc: false,
        publisher_offer: None,
    };
    engine.join(Instant::now(), request).expect("an empty engine admits one participant")
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
        let key = join(&mut engine);
        State { engine, key, streams: TextStreams::default(), seen: SeenChat::default() }
    });
}

fuzz_target!(|data: &[u8]| {
    STATE.with(|state| {
        let mut state = state.borrow_mut();
        let now = Instant::now();
        if state.engine.sid_of(state.key).is_none() {
            state.key = join(&mut state.engine);
        }
        if let Ok(Some(message)) = Engine::decode_request(data) {
            let key = state.key;
            state.engine.signal(now, key, message);
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
