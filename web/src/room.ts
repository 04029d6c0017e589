// The livekit-client Room the meeting connects: its options (simulcast camera, screen
// share, Opus, one peer connection) and the devices chosen on the pre-join screen.

import { Room, ScreenSharePresets, VideoPresets } from 'livekit-client';
import { audioCaptureOptions, videoCaptureOptions, type DeviceChoice } from './prejoin';

export function createRoom(devices: DeviceChoice): Room {
  return new Room({
    adaptiveStream: true,
    dynacast: true,
    // One peer connection (/rtc/v1, the publisher offer inside the join request) is
    // livekit-client's default and the SFU's; `?pc=dual` forces the older two-connection
    // path (/rtc), for tests and for comparing the two.
    singlePeerConnection: new URLSearchParams(window.location.search).get('pc') !== 'dual',
    disconnectOnPageLeave: true,
    stopLocalTrackOnUnpublish: true,
    videoCaptureDefaults: videoCaptureOptions(devices.videoinput),
    audioCaptureDefaults: audioCaptureOptions(devices.audioinput),
    audioOutput: devices.audiooutput ? { deviceId: devices.audiooutput } : undefined,
    publishDefaults: {
      simulcast: true,
      videoSimulcastLayers: [VideoPresets.h180, VideoPresets.h360],
      videoCodec: 'vp8',
      screenShareEncoding: ScreenSharePresets.h1080fps15.encoding,
      dtx: true,
      red: true,
    },
  });
}
