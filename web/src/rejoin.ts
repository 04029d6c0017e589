// Joining again when the meeting's node is lost. In a cluster a meeting's room lives on
// one node; if that node dies, livekit-client's own reconnection keeps knocking at a
// dead address. Meanwhile the page asks the shared address to join again (the server
// moves the room to a live node once the dead one missed its heartbeats) and moves
// there as soon as the answer names another node, or when livekit-client gave up.
// No DOM and no livekit-client here: meeting.ts gives the steps, tests drive them.

export interface RejoinSteps {
  /** POST .../join with `rejoin: true`; null when refused (nothing more to try). Throws when unreachable. */
  join(): Promise<{ url: string; token: string } | null>;
  /** The signalling URL the room is connected (or reconnecting) to. */
  currentUrl(): string;
  /** livekit-client's own reconnection succeeded: nothing to do. */
  recovered(): boolean;
  /** livekit-client stopped trying: even the same node must be joined again. */
  gaveUp(): boolean;
  /** Leaves the lost connection and connects to `url` with `token`. */
  move(url: string, token: string): Promise<void>;
  wait(ms: number): Promise<void>;
  now(): number;
}

export interface RejoinTiming {
  /** Before the first ask: a blip that livekit-client resumes costs no join. */
  firstMs: number;
  /** Between asks: the room moves within three heartbeats (6 s by default). */
  everyMs: number;
  /** Then the page gives up and says the connection is lost. */
  giveUpMs: number;
}

export const REJOIN_TIMING: RejoinTiming = { firstMs: 1000, everyMs: 1500, giveUpMs: 60_000 };

export type RejoinOutcome = 'recovered' | 'moved' | 'refused' | 'timed-out';

export async function rejoinLoop(steps: RejoinSteps, timing: RejoinTiming = REJOIN_TIMING): Promise<RejoinOutcome> {
  const deadline = steps.now() + timing.giveUpMs;
  await steps.wait(timing.firstMs);
  for (;;) {
    if (steps.recovered()) return 'recovered';
    if (steps.now() >= deadline) return 'timed-out';
    let answer: { url: string; token: string } | null | undefined;
    try {
      answer = await steps.join();
    } catch {
      // The shared address is unreachable too: ask again.
      answer = undefined;
    }
    if (answer === null) return 'refused';
    if (steps.recovered()) return 'recovered';
    if (answer && (answer.url !== steps.currentUrl() || steps.gaveUp())) {
      try {
        await steps.move(answer.url, answer.token);
        return 'moved';
      } catch {
        // That node went too, or is not ready: the next answer may name another.
      }
    }
    await steps.wait(timing.everyMs);
  }
}
