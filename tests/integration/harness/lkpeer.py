"""A LiveKit participant in a process of its own, driven by LiveKit's official Python SDK.

Two halves in one module:

* the peer itself, run as ``python -m harness.lkpeer --url WS_URL --token JWT
  --state FILE [--publish] [--chat-log] [--once] [--pc single|dual]``. It connects in
  single peer connection mode (``/rtc/v1``, the SDK's default, asked for explicitly) or
  with ``--pc dual`` in dual peer connection mode (``/rtc``), optionally publishes
  a synthetic camera (320x180 at 15 fps, I420, a pattern that changes every frame) and a
  microphone (a 400 Hz sine, 48 kHz mono), subscribes to everything, decodes what it
  receives and keeps counts. Its whole state is rewritten (atomically, at most every
  50 ms) as one JSON object in the ``--state`` file, which survives a SIGKILL. It takes
  commands as JSON lines on stdin and acknowledges each in the state's ``acks``::

      {"id": 1, "cmd": "chat", "text": "salut"}              send_text(topic="lk.chat")
      {"id": 2, "cmd": "chat", "text": "x", "legacy": true}  ... plus the legacy
                                                             lk-chat-topic packet, with the
                                                             same message id, as chat
                                                             components do for old servers
      {"id": 3, "cmd": "simulate", "scenario": "signal_reconnect"}
                                              room.simulate_scenario(SIMULATE_SIGNAL_RECONNECT)
      {"id": 5, "cmd": "video_quality", "identity": "alice", "quality": "low"}
                                              set_video_quality on alice's video
                                              publications (low, medium or high)
      {"id": 4, "cmd": "quit"}                leave the room and exit 0

  End of stdin counts as "quit", so a peer never outlives the test process that feeds it.
  Exit codes: 0 quit, 2 connect failed (the SDK's error is in the state's ``error``),
  3 disconnected by the server or the network, 4 bad usage or internal error.
  ``--once`` connects, records the result, leaves and exits (0 or 2): for token tests.
  ``--simulcast`` publishes the camera in simulcast layers, ``--size WxH`` at another
  size (three layers need 1280x720), ``--dynacast`` obeys the server's
  ``SubscribedQualityUpdate``. Each remote video records its decoded ``sizes`` over time
  and ``max_video_gap``, the longest wait between two decoded frames.

* ``Peer``: the test-side handle that starts that process and reads its state.

Times in the state are ``time.monotonic()`` (CLOCK_MONOTONIC, one clock for every process
on the machine), so a test can compare them with its own ``time.monotonic()``.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import subprocess
import sys
import time
import zlib
from pathlib import Path
from typing import Any, Callable

# Video and audio that the peer publishes.
WIDTH, HEIGHT, FPS = 320, 180, 15
SAMPLE_RATE, AUDIO_FRAME_MS, TONE_HZ = 48000, 20, 400
# A decoded audio frame whose peak is above this counts as "loud": the sine came through
# (libwebrtc hands out silent frames when no packet arrives, so counting frames is not enough).
LOUD_PEAK = 1000

CHAT_TOPIC = "lk.chat"
LEGACY_CHAT_TOPIC = "lk-chat-topic"

EXIT_OK, EXIT_CONNECT_FAILED, EXIT_DISCONNECTED, EXIT_INTERNAL = 0, 2, 3, 4


# --------------------------------------------------------------------------------------
# Tokens (test side; livekit-api)
# --------------------------------------------------------------------------------------


def token(
    key: str,
    secret: str,
    identity: str,
    room: str,
    *,
    name: str | None = None,
    **grants: Any,
) -> str:
    """A LiveKit access token made by livekit-api (room_join=True unless overridden)."""
    from livekit import api

    grants.setdefault("room_join", True)
    at = api.AccessToken(key, secret).with_identity(identity).with_grants(api.VideoGrants(room=room, **grants))
    if name is not None:
        at = at.with_name(name)
    return at.to_jwt()


# --------------------------------------------------------------------------------------
# The peer process
# --------------------------------------------------------------------------------------


class PeerState:
    """Everything the peer has seen, written out as JSON."""

    def __init__(self, path: Path):
        self.path = path
        self.tmp = path.with_name(path.name + ".tmp")
        self.dirty = True
        self.data: dict[str, Any] = {
            "pid": os.getpid(),
            "phase": "starting",  # starting, connecting, connected, failed, disconnected, closed
            "error": None,
            "sdk_version": None,
            "single_peer_connection": None,  # what was asked of the SDK (None: option missing)
            "t_start": time.monotonic(),
            "t_connect_start": None,
            "t_connected": None,
            "identity": None,
            "name": None,
            "sid": None,
            "room": None,
            "published": {},  # "video"/"audio" -> track sid
            "sent": {"video_frames": 0, "audio_frames": 0},
            "remotes": {},  # identity -> see remote()
            "participant_connected": [],  # [{identity, sid, t}]
            "participant_disconnected": [],  # [{identity, sid, reason, t}]
            "chat": [],  # [{from, text, attributes, topic, stream_id, t}]
            "data": [],  # [{from, topic, payload, t}] (data packets, e.g. legacy chat)
            "room_events": [],  # [{event, detail, sid, t}]: reconnecting, reconnected, disconnected...
            "speakers": [],  # identities ever reported by active_speakers_changed
            "acks": {},  # command id -> {ok, result|error, t}
        }

    def __getitem__(self, key: str) -> Any:
        return self.data[key]

    def set(self, **values: Any) -> None:
        self.data.update(values)
        self.dirty = True

    def append(self, key: str, item: dict) -> None:
        item.setdefault("t", time.monotonic())
        self.data[key].append(item)
        self.dirty = True

    def remote(self, identity: str) -> dict:
        r = self.data["remotes"].get(identity)
        if r is None:
            r = self.data["remotes"][identity] = {
                "name": None,
                "sid": None,
                "tracks": {},  # track sid -> {kind, source, subscribed}
                "video_frames": 0,
                "video_changes": 0,  # decoded frames whose content differs from the previous one
                "width": 0,
                "height": 0,
                "sizes": [],  # [[t, width, height]] each time the decoded size changes
                "max_video_gap": 0.0,  # longest wait between two decoded frames, seconds
                "first_video_t": None,
                "last_video_t": None,
                "audio_frames": 0,
                "audio_loud": 0,
                "first_audio_t": None,
                "last_audio_t": None,
            }
        self.dirty = True
        return r

    def flush(self) -> None:
        """Atomic rewrite, so a reader never sees half a file."""
        self.tmp.write_text(json.dumps(self.data))
        os.replace(self.tmp, self.path)
        self.dirty = False


class PeerProcess:
    def __init__(self, args: argparse.Namespace):
        self.args = args
        w, _, h = args.size.partition("x")
        self.size = (int(w), int(h))
        self.state = PeerState(Path(args.state))
        self.log = logging.getLogger("lkpeer")
        self.tasks: set[asyncio.Task] = set()
        self.room = None
        self.exit_code: int | None = None
        self.done = asyncio.Event()
        self.main_task: asyncio.Task | None = None

    def spawn(self, coro, name: str) -> asyncio.Task:
        task = asyncio.get_running_loop().create_task(coro, name=name)
        self.tasks.add(task)
        task.add_done_callback(self._task_done)
        return task

    def _task_done(self, task: asyncio.Task) -> None:
        self.tasks.discard(task)
        if not task.cancelled() and task.exception() is not None:
            self.log.error("task %s failed", task.get_name(), exc_info=task.exception())

    def finish(self, code: int) -> None:
        """End the peer (quit, end of stdin, SIGTERM, lost connection)."""
        if self.exit_code is None:
            self.exit_code = code
        self.done.set()
        if self.main_task is not None and self.state["phase"] in ("starting", "connecting"):
            self.main_task.cancel()  # still inside connect(): give up on it

    # -- main ------------------------------------------------------------------------

    async def run(self) -> int:
        from livekit import rtc

        self.state.set(sdk_version=getattr(rtc, "__version__", None))
        self.main_task = asyncio.current_task()
        self.spawn(self.flusher(), "flusher")
        if not self.args.once:
            # Read commands from the start, so that quit or the end of stdin also ends a
            # peer still stuck in connect().
            self.spawn(self.commands(), "commands")
        try:
            room = self.room = rtc.Room()
            self.attach(room)
            options = rtc.RoomOptions(auto_subscribe=True, dynacast=self.args.dynacast)
            if hasattr(options, "single_peer_connection"):
                # Set either way: what the SDK does by default changed between versions.
                single = self.args.pc == "single"
                options.single_peer_connection = single
                self.state.set(single_peer_connection=single)
            self.state.set(phase="connecting", t_connect_start=time.monotonic())
            self.state.flush()
            try:
                await asyncio.wait_for(room.connect(self.args.url, self.args.token, options), self.args.connect_timeout)
            except asyncio.CancelledError:
                if self.main_task is not None:
                    self.main_task.uncancel()
                self.log.info("told to stop while connecting")
                self.state.set(phase="failed", error="stopped while connecting")
                return self.exit_code if self.exit_code is not None else EXIT_CONNECT_FAILED
            except (Exception, asyncio.TimeoutError) as e:  # noqa: BLE001 - reported in the state
                if isinstance(e, asyncio.TimeoutError):
                    error = f"connect() did not finish within {self.args.connect_timeout:g} s"
                else:
                    error = str(e) or type(e).__name__
                self.log.error("connect failed: %s", error)
                self.state.set(phase="failed", error=f"{type(e).__name__}: {error}")
                print(f"lkpeer: connect to {self.args.url} failed: {type(e).__name__}: {error}", file=sys.stderr)
                return EXIT_CONNECT_FAILED
            lp = room.local_participant
            self.state.set(
                phase="connected",
                t_connected=time.monotonic(),
                identity=lp.identity,
                name=lp.name,
                sid=lp.sid,
                room=room.name,
            )
            for p in room.remote_participants.values():
                self.remote_info(p)
            self.state.flush()
            self.log.info("connected as %s (%s) to room %s", lp.identity, lp.sid, room.name)

            if self.args.once:
                return EXIT_OK

            if self.args.publish:
                await self.publish(room)
            await self.done.wait()
            return self.exit_code if self.exit_code is not None else EXIT_OK
        finally:
            await self.shutdown()

    async def shutdown(self) -> None:
        room = self.room
        if room is not None and room.isconnected():
            try:
                await asyncio.wait_for(room.disconnect(), 5)
            except Exception:  # noqa: BLE001
                self.log.exception("disconnect failed")
        for task in list(self.tasks):
            if task.get_name() != "flusher":
                task.cancel()
        if self.state["phase"] == "connected":
            self.state.set(phase="closed")
        self.state.flush()

    async def flusher(self) -> None:
        while True:
            if self.state.dirty:
                self.state.flush()
            await asyncio.sleep(0.05)

    # -- room events -----------------------------------------------------------------

    def remote_info(self, p) -> dict:
        r = self.state.remote(p.identity)
        r["name"] = p.name
        r["sid"] = p.sid
        r["metadata"] = p.metadata
        r["attributes"] = dict(p.attributes)
        for sid, pub in p.track_publications.items():
            t = r["tracks"].setdefault(sid, {"subscribed": False})
            t["kind"] = _enum_name("TrackKind", pub.kind)
            t["source"] = _enum_name("TrackSource", pub.source)
        return r

    def attach(self, room) -> None:
        from livekit import rtc

        st = self.state

        @room.on("participant_connected")
        def _(p):
            self.remote_info(p)
            st.append("participant_connected", {"identity": p.identity, "sid": p.sid})

        @room.on("participant_disconnected")
        def _(p):
            st.append(
                "participant_disconnected",
                {
                    "identity": p.identity,
                    "sid": p.sid,
                    "reason": _enum_name("DisconnectReason", getattr(p, "disconnect_reason", None)),
                },
            )
            r = st.remote(p.identity)
            r["left_t"] = time.monotonic()

        @room.on("track_published")
        def _(pub, p):
            self.remote_info(p)

        for event in ("participant_name_changed", "participant_metadata_changed", "participant_attributes_changed"):

            @room.on(event)
            def _(*args):
                # The participant is the first argument of the name and attributes events,
                # and the first of the metadata event too (then old and new values).
                participant = next((a for a in args if hasattr(a, "identity") and hasattr(a, "attributes")), None)
                if participant is not None and participant.identity != self.room.local_participant.identity:
                    self.remote_info(participant)
                    st.dirty = True


        @room.on("track_subscribed")
        def _(track, pub, p):
            r = self.remote_info(p)
            r["tracks"].setdefault(pub.sid, {})["subscribed"] = True
            if track.kind == rtc.TrackKind.KIND_VIDEO:
                self.spawn(self.count_video(track, p.identity), f"video {p.identity} {pub.sid}")
            elif track.kind == rtc.TrackKind.KIND_AUDIO:
                self.spawn(self.count_audio(track, p.identity), f"audio {p.identity} {pub.sid}")

        @room.on("track_unsubscribed")
        def _(track, pub, p):
            st.remote(p.identity)["tracks"].setdefault(pub.sid, {})["subscribed"] = False

        @room.on("data_received")
        def _(packet):
            try:
                payload = packet.data.decode()
            except UnicodeDecodeError:
                payload = packet.data.hex()
            st.append(
                "data",
                {
                    "from": packet.participant.identity if packet.participant else None,
                    "topic": packet.topic,
                    # Enough to recognise a payload; floods would make the state file huge.
                    "payload": payload[:200],
                    "size": len(packet.data),
                },
            )

        for event in ("reconnecting", "reconnected"):
            room.on(event, self._room_event(event))

        @room.on("active_speakers_changed")
        def _(speakers):
            known = set(st["speakers"])
            st.set(speakers=sorted(known | {sp.identity for sp in speakers}))

        @room.on("connection_state_changed")
        def _(state):
            st.append("room_events", {"event": "connection_state", "detail": _enum_name("ConnectionState", state)})

        @room.on("disconnected")
        def _(reason=None):
            st.append("room_events", {"event": "disconnected", "detail": _enum_name("DisconnectReason", reason)})
            if st["phase"] == "connected" and not self.done.is_set():
                st.set(phase="disconnected")
                self.finish(EXIT_DISCONNECTED)

        if self.args.chat_log:
            room.register_text_stream_handler(CHAT_TOPIC, self.on_chat_stream)

    def _room_event(self, event: str) -> Callable:
        def handler(*_args):
            sid = self.room.local_participant.sid if self.room is not None else None
            self.state.append("room_events", {"event": event, "sid": sid})

        return handler

    def on_chat_stream(self, reader, participant_identity: str) -> None:
        async def read() -> None:
            text = await reader.read_all()
            info = reader.info
            self.state.append(
                "chat",
                {
                    "from": participant_identity,
                    "text": text,
                    "attributes": dict(info.attributes or {}),
                    "topic": info.topic,
                    "stream_id": info.stream_id,
                },
            )

        self.spawn(read(), f"chat {participant_identity}")

    # -- receiving media -------------------------------------------------------------

    async def count_video(self, track, identity: str) -> None:
        from livekit import rtc

        r = self.state.remote(identity)
        last = None
        stream = rtc.VideoStream(track)
        try:
            async for ev in stream:
                frame = ev.frame
                now = time.monotonic()
                data = frame.data
                mid = len(data) // 2
                crc = zlib.crc32(bytes(data[mid : mid + 2048]))
                if r["first_video_t"] is None:
                    r["first_video_t"] = now
                elif r["last_video_t"] is not None:
                    r["max_video_gap"] = max(r["max_video_gap"], now - r["last_video_t"])
                r["last_video_t"] = now
                r["video_frames"] += 1
                if last is not None and crc != last:
                    r["video_changes"] += 1
                last = crc
                if (frame.width, frame.height) != (r["width"], r["height"]) and len(r["sizes"]) < 100:
                    r["sizes"].append([now, frame.width, frame.height])
                r["width"], r["height"] = frame.width, frame.height
                self.state.dirty = True
        finally:
            await stream.aclose()

    async def count_audio(self, track, identity: str) -> None:
        import numpy as np
        from livekit import rtc

        r = self.state.remote(identity)
        stream = rtc.AudioStream(track, sample_rate=SAMPLE_RATE, num_channels=1)
        try:
            async for ev in stream:
                now = time.monotonic()
                samples = np.frombuffer(ev.frame.data, dtype=np.int16)
                if r["first_audio_t"] is None:
                    r["first_audio_t"] = now
                r["last_audio_t"] = now
                r["audio_frames"] += 1
                if samples.size and int(np.abs(samples.astype(np.int32)).max()) > LOUD_PEAK:
                    r["audio_loud"] += 1
                self.state.dirty = True
        finally:
            await stream.aclose()

    # -- publishing ------------------------------------------------------------------

    async def publish(self, room) -> None:
        from livekit import rtc

        lp = room.local_participant
        video = rtc.VideoSource(*self.size)
        vtrack = rtc.LocalVideoTrack.create_video_track("camera", video)
        vopts = rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_CAMERA, simulcast=self.args.simulcast)
        vopts.video_codec = getattr(rtc.VideoCodec, self.args.video_codec.upper())
        vpub = await lp.publish_track(vtrack, vopts)

        audio = rtc.AudioSource(SAMPLE_RATE, 1)
        atrack = rtc.LocalAudioTrack.create_audio_track("microphone", audio)
        apub = await lp.publish_track(atrack, rtc.TrackPublishOptions(source=rtc.TrackSource.SOURCE_MICROPHONE))
        self.state.set(published={"video": vpub.sid, "audio": apub.sid})
        self.log.info("published video %s and audio %s", vpub.sid, apub.sid)
        self.spawn(self.send_video(video), "send video")
        self.spawn(self.send_audio(audio), "send audio")

    async def send_video(self, source) -> None:
        """I420 frames: a diagonal gradient that slides and a bar that moves, every frame."""
        import numpy as np
        from livekit import rtc

        width, height = self.size
        ys, xs = np.mgrid[0:height, 0:width]
        base = ((xs + 2 * ys) % 256).astype(np.uint16)
        chroma = (width // 2) * (height // 2)
        loop = asyncio.get_running_loop()
        next_t = loop.time()
        n = 0
        sent = self.state["sent"]
        while True:
            y = ((base + 5 * n) % 256).astype(np.uint8)
            bar = (4 * n) % width
            y[:, bar : bar + 8] = 235
            u = np.full(chroma, (96 + 3 * n) % 256, dtype=np.uint8)
            v = np.full(chroma, 160, dtype=np.uint8)
            buf = y.tobytes() + u.tobytes() + v.tobytes()
            source.capture_frame(
                rtc.VideoFrame(width, height, rtc.VideoBufferType.I420, buf),
                timestamp_us=int(n * 1_000_000 / FPS),
            )
            n += 1
            sent["video_frames"] = n
            self.state.dirty = True
            # A frame clock: media pacing, not synchronisation.
            next_t += 1 / FPS
            await asyncio.sleep(max(0.0, next_t - loop.time()))

    async def send_audio(self, source) -> None:
        import numpy as np
        from livekit import rtc

        spf = SAMPLE_RATE * AUDIO_FRAME_MS // 1000  # a whole number of 400 Hz periods
        t = np.arange(spf) / SAMPLE_RATE
        pcm = (0.3 * 32767 * np.sin(2 * np.pi * TONE_HZ * t)).astype(np.int16).tobytes()
        loop = asyncio.get_running_loop()
        next_t = loop.time()
        sent = self.state["sent"]
        while True:
            await source.capture_frame(rtc.AudioFrame(pcm, SAMPLE_RATE, 1, spf))
            sent["audio_frames"] += 1
            self.state.dirty = True
            next_t += AUDIO_FRAME_MS / 1000
            await asyncio.sleep(max(0.0, next_t - loop.time()))

    # -- commands --------------------------------------------------------------------

    async def commands(self) -> None:
        loop = asyncio.get_running_loop()
        reader = asyncio.StreamReader()
        await loop.connect_read_pipe(lambda: asyncio.StreamReaderProtocol(reader), sys.stdin)
        while True:
            line = await reader.readline()
            if not line:
                self.log.info("stdin closed: leaving")
                self.finish(EXIT_OK)
                return
            line = line.strip()
            if not line:
                continue
            try:
                msg = json.loads(line)
            except ValueError:
                self.log.error("bad command line: %r", line)
                continue
            self.spawn(self.command(msg), f"cmd {msg.get('id')}")

    async def command(self, msg: dict) -> None:
        from livekit import rtc

        cid = str(msg.get("id"))
        cmd = msg.get("cmd")
        try:
            if cmd != "quit" and self.state["phase"] != "connected":
                raise RuntimeError(f"not connected (phase {self.state['phase']})")
            if cmd == "quit":
                result = None
                self.finish(EXIT_OK)
            elif cmd == "chat":
                lp = self.room.local_participant
                info = await lp.send_text(
                    msg["text"],
                    topic=CHAT_TOPIC,
                    attributes=msg.get("attributes"),
                    destination_identities=msg.get("to"),
                )
                result = {"stream_id": info.stream_id, "timestamp": info.timestamp}
                if msg.get("legacy"):
                    # What LiveKit's chat components add for servers up to 1.8.2: the
                    # same message, same id, as a reliable packet on the legacy topic.
                    legacy = {"id": info.stream_id, "timestamp": info.timestamp, "message": msg["text"]}
                    await lp.publish_data(json.dumps(legacy), reliable=True, topic=LEGACY_CHAT_TOPIC)
                    result["legacy"] = True
            elif cmd == "set_attributes":
                await self.room.local_participant.set_attributes(msg["attributes"])
                result = dict(self.room.local_participant.attributes)
            elif cmd == "set_name":
                await self.room.local_participant.set_name(msg["name"])
                result = self.room.local_participant.name
            elif cmd == "set_metadata":
                await self.room.local_participant.set_metadata(msg["metadata"])
                result = self.room.local_participant.metadata
            elif cmd == "flood":
                # As fast as the SDK takes them: what a hostile client does to the others.
                lp = self.room.local_participant
                payload = b"x" * int(msg.get("size", 1000))
                for _ in range(int(msg["count"])):
                    await lp.publish_data(payload, reliable=bool(msg.get("reliable", True)), topic=msg.get("topic", "flood"))
                result = {"sent": int(msg["count"])}
            elif cmd == "video_quality":
                # What a viewer's quality menu does: ask the server for a simulcast layer.
                quality = rtc.VideoQuality.Value("VIDEO_QUALITY_" + msg["quality"].upper())
                remote = self.room.remote_participants[msg["identity"]]
                pubs = [p for p in remote.track_publications.values() if p.kind == rtc.TrackKind.KIND_VIDEO]
                if not pubs:
                    raise RuntimeError(f"{msg['identity']} publishes no video")
                for pub in pubs:
                    pub.set_video_quality(quality)
                result = {"tracks": [p.sid for p in pubs], "simulcasted": [p.simulcasted for p in pubs]}
            elif cmd == "simulate":
                kind = rtc.SimulateScenarioKind.Value("SIMULATE_" + msg["scenario"].upper())
                await self.room.simulate_scenario(kind)
                result = {"scenario": rtc.SimulateScenarioKind.Name(kind)}
            else:
                raise ValueError(f"unknown command {cmd!r}")
        except Exception as e:  # noqa: BLE001 - acknowledged with the error
            self.log.exception("command %s failed", msg)
            self.state.data["acks"][cid] = {"ok": False, "error": f"{type(e).__name__}: {e}", "t": time.monotonic()}
        else:
            self.state.data["acks"][cid] = {"ok": True, "result": result, "t": time.monotonic()}
        self.state.dirty = True


def _enum_name(enum: str, value: Any) -> Any:
    if value is None:
        return None
    try:
        from livekit import rtc

        return getattr(rtc, enum).Name(value)
    except Exception:  # noqa: BLE001
        return value


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(prog="python -m harness.lkpeer", description=__doc__.split("\n\n")[0])
    p.add_argument("--url", required=True, help="LiveKit URL, e.g. ws://127.0.0.1:PORT (the SDK appends /rtc)")
    p.add_argument("--token", required=True, help="LiveKit access token (JWT)")
    p.add_argument("--state", required=True, help="file the peer's state is written to (JSON)")
    p.add_argument("--publish", action="store_true", help="publish synthetic video and audio")
    p.add_argument("--chat-log", action="store_true", help="record chat received on lk.chat text streams")
    p.add_argument("--once", action="store_true", help="connect, record the result, leave, exit")
    p.add_argument("--simulcast", action="store_true", help="publish the video with simulcast")
    p.add_argument("--video-codec", default="vp8", choices=["vp8", "h264"])
    p.add_argument("--size", default=f"{WIDTH}x{HEIGHT}", help="published video size, WxH")
    p.add_argument("--dynacast", action="store_true", help="obey the server's SubscribedQualityUpdate")
    p.add_argument("--connect-timeout", type=float, default=30.0)
    p.add_argument(
        "--pc", default="single", choices=["single", "dual"], help="single (/rtc/v1) or dual (/rtc) peer connections"
    )
    args = p.parse_args(argv)

    logging.basicConfig(
        level=logging.INFO, stream=sys.stderr, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        import livekit.rtc  # noqa: F401
    except Exception as e:  # noqa: BLE001
        print(f"lkpeer: cannot import livekit.rtc: {e}", file=sys.stderr)
        return EXIT_INTERNAL

    peer = PeerProcess(args)

    async def amain() -> int:
        loop = asyncio.get_running_loop()
        loop.add_signal_handler(signal.SIGTERM, peer.finish, EXIT_OK)
        return await peer.run()

    try:
        return asyncio.run(amain())
    except Exception as e:  # noqa: BLE001
        logging.getLogger("lkpeer").exception("peer failed")
        try:
            peer.state.set(phase="failed", error=f"internal: {type(e).__name__}: {e}")
            peer.state.flush()
        except Exception:  # noqa: BLE001
            pass
        return EXIT_INTERNAL


# --------------------------------------------------------------------------------------
# The test side
# --------------------------------------------------------------------------------------


class PeerError(AssertionError):
    """The peer process failed (connect refused, exited, command failed)."""


class Peer:
    """A peer process, started at construction (see the module docstring).

    ``wait_connected`` (default): return once the room is joined; a failed connect
    raises PeerError with the SDK's message. ``Peer(..., wait_connected=False)`` then
    ``wait_exit()`` is how a test checks that a connect is refused.
    """

    _seq = 0

    def __init__(
        self,
        workdir: Path,
        name: str,
        url: str,
        token: str,
        *,
        publish: bool = False,
        chat_log: bool = True,
        once: bool = False,
        pc: str = "single",
        extra_args: list[str] = (),
        wait_connected: bool = True,
        timeout: float = 30,
    ):
        from .util import _CHILDREN, ACTIVE, ROOT

        Peer._seq += 1
        self.name = f"lkpeer {name}"
        self.dir = Path(workdir) / f"peer-{name}-{Peer._seq}"
        self.dir.mkdir(parents=True, exist_ok=True)
        self.state_path = self.dir / "state.json"
        self.log_path = self.dir / "peer.log"
        self._next_id = 0
        args = [sys.executable, "-m", "harness.lkpeer", "--url", url, "--token", token, "--state", str(self.state_path)]
        if publish:
            args.append("--publish")
        if chat_log:
            args.append("--chat-log")
        if once:
            args.append("--once")
        args += ["--pc", pc]
        # The peer gives up on connect() first, so that its state carries the SDK's error.
        args += ["--connect-timeout", str(timeout)]
        args += list(extra_args)
        env = {**os.environ, "PYTHONPATH": os.pathsep.join([str(ROOT / "tests" / "integration"), os.environ.get("PYTHONPATH", "")]).rstrip(os.pathsep)}
        with open(self.log_path, "ab") as log:
            self.proc = subprocess.Popen(
                args, cwd=self.dir, env=env, stdin=subprocess.PIPE, stdout=log, stderr=subprocess.STDOUT
            )
        self.t_spawn = time.monotonic()
        # Killed at exit if a test leaves it behind; also by scripts/test.sh's trap.
        _CHILDREN.append(self.proc)
        pidfile = os.environ.get("TCHAP_VISIO_TEST_PIDFILE")
        if pidfile:
            with open(pidfile, "a") as f:
                f.write(f"{self.proc.pid}\n")
        ACTIVE.append(self)
        if wait_connected:
            try:
                self.wait_connected(timeout + 10)
            except BaseException:
                self.close()
                raise

    # -- reading ---------------------------------------------------------------------

    def state(self) -> dict:
        """The latest state the peer wrote ({} before its first write)."""
        try:
            return json.loads(self.state_path.read_text())
        except (FileNotFoundError, ValueError):
            return {}

    @property
    def identity(self) -> str | None:
        return self.state().get("identity")

    def remote(self, identity: str) -> dict:
        """This peer's counters for remote participant `identity` ({} if never seen)."""
        return self.state().get("remotes", {}).get(identity, {})

    def alive(self) -> bool:
        return self.proc.poll() is None

    def wait(self, cond: Callable[[dict], Any], timeout: float, what: str, interval: float = 0.05) -> Any:
        """Poll the state until cond(state) is truthy; return that value.

        Fails at once (with the peer's log) if the process exits meanwhile, and with
        the last state when `timeout` passes.
        """
        deadline = time.monotonic() + timeout
        while True:
            st = self.state()
            value = cond(st) if st else None
            if value:
                return value
            if self.proc.poll() is not None:
                st = self.state()
                value = cond(st) if st else None
                if value:
                    return value
                raise PeerError(
                    f"{self.name} exited ({self.proc.returncode}) while waiting for {what}: "
                    f"phase={st.get('phase')} error={st.get('error')}\n{self.logs()}"
                )
            if time.monotonic() >= deadline:
                raise PeerError(f"{self.name}: timed out after {timeout:g} s waiting for {what}; state: {_summary(st)}")
            time.sleep(interval)

    def wait_connected(self, timeout: float = 30) -> dict:
        def connected(st):
            if st.get("phase") == "failed":
                raise PeerError(f"{self.name} could not connect: {st.get('error')}")
            return st if st.get("phase") in ("connected", "closed") and st.get("sid") else None

        return self.wait(connected, timeout, "the room to be joined")

    def wait_exit(self, timeout: float = 30) -> tuple[int, dict]:
        """Wait for the process to end by itself; (exit code, final state)."""
        try:
            code = self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            raise PeerError(f"{self.name} still running after {timeout:g} s; state: {_summary(self.state())}") from None
        return code, self.state()

    def wait_media_from(
        self, identity: str, *, video: int = 0, audio_loud: int = 0, timeout: float = 30
    ) -> dict:
        """Wait until this peer has decoded at least `video` frames (with a size) and
        `audio_loud` non-silent audio frames from `identity`; returns those counters."""

        def ok(st):
            r = st.get("remotes", {}).get(identity)
            if not r:
                return None
            good_video = r["video_frames"] >= video and (video == 0 or r["width"] > 0 and r["height"] > 0)
            return r if good_video and r["audio_loud"] >= audio_loud else None

        return self.wait(ok, timeout, f"{video} video / {audio_loud} loud audio frames from {identity}")

    # -- commands --------------------------------------------------------------------

    def send(self, cmd: str, timeout: float = 15, **fields: Any) -> Any:
        """Send a command and wait for its acknowledgement; returns its result."""
        self._next_id += 1
        cid = str(self._next_id)
        line = json.dumps({"id": cid, "cmd": cmd, **fields}) + "\n"
        try:
            self.proc.stdin.write(line.encode())
            self.proc.stdin.flush()
        except (BrokenPipeError, ValueError) as e:
            raise PeerError(f"{self.name}: cannot send {cmd!r}: {e}\n{self.logs()}") from None
        ack = self.wait(lambda st: st.get("acks", {}).get(cid), timeout, f"the ack of {cmd!r}")
        if not ack["ok"]:
            raise PeerError(f"{self.name}: {cmd!r} failed: {ack['error']}")
        return ack["result"]

    def chat(self, text: str, *, legacy: bool = False, attributes: dict | None = None, to: list[str] | None = None) -> dict:
        """send_text(text, topic="lk.chat"); with legacy, also the lk-chat-topic packet;
        with ``to``, only to those identities (a private message)."""
        return self.send("chat", text=text, legacy=legacy, attributes=attributes, to=to)

    def simulate(self, scenario: str = "signal_reconnect") -> dict:
        """room.simulate_scenario(SimulateScenarioKind.SIMULATE_<SCENARIO>)."""
        return self.send("simulate", scenario=scenario)

    # -- ending ----------------------------------------------------------------------

    def kill(self) -> None:
        """SIGKILL: no leave, no goodbye."""
        if self.proc.poll() is None:
            self.proc.send_signal(signal.SIGKILL)
            self.proc.wait(10)

    def close(self, timeout: float = 10) -> int | None:
        """Ask the peer to leave (quit + end of stdin), then SIGTERM/SIGKILL if it lingers."""
        from .util import ACTIVE

        if self.proc.poll() is None:
            try:
                self.proc.stdin.write(b'{"id": "close", "cmd": "quit"}\n')
                self.proc.stdin.close()
            except (BrokenPipeError, ValueError, OSError):
                pass
            try:
                self.proc.wait(timeout)
            except subprocess.TimeoutExpired:
                self.proc.terminate()
                try:
                    self.proc.wait(5)
                except subprocess.TimeoutExpired:
                    self.proc.kill()
                    self.proc.wait(5)
        else:
            try:
                self.proc.stdin.close()
            except (BrokenPipeError, ValueError, OSError):
                pass
        if self in ACTIVE:
            ACTIVE.remove(self)
        return self.proc.returncode

    def logs(self) -> str:
        from .util import log_tail

        return log_tail(self.log_path, 60) + f"\n--- state: {_summary(self.state())}"


def _summary(st: dict) -> str:
    """The state without its long lists' heads, for error messages."""
    if not st:
        return "(no state written yet)"
    short = dict(st)
    for key in ("chat", "data", "room_events", "participant_connected", "participant_disconnected"):
        items = short.get(key) or []
        if len(items) > 10:
            short[key] = items[-10:]
    return json.dumps(short)[:4000]


if __name__ == "__main__":
    code = main()
    sys.stdout.flush()
    sys.stderr.flush()
    # Not sys.exit: the SDK's native threads (tokio) may still call back into Python
    # while the interpreter finalises, and that panics across the FFI boundary and
    # aborts (SIGABRT, exit -6) - seen after a refused connect with livekit 1.2.1.
    # The state file is already flushed; skip finalisation.
    os._exit(code)
