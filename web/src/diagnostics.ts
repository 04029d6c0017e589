// `window.tchapVisio`: the livekit-client Room once created (tests drive it, e.g.
// `simulateScenario` or publishing a canvas track as screen share) and a few timings
// (performance.now() values) for the join benchmark.

import { Track, type Room, version } from 'livekit-client';

export interface Diagnostics {
  room: Room | undefined;
  /** livekit-client's Track (for Track.Source values in tests). */
  Track: typeof Track;
  livekitVersion: string;
  timings: {
    joinClicked?: number;
    connected?: number;
    firstRemoteFrame?: number;
  };
}

declare global {
  interface Window {
    tchapVisio: Diagnostics;
  }
}

export const diagnostics: Diagnostics = {
  room: undefined,
  Track,
  livekitVersion: version,
  timings: {},
};

window.tchapVisio = diagnostics;
