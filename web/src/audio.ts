// Remote audio: one hidden <audio> element per subscribed microphone or screen-share
// audio track, and the banner with a button when the browser blocks playback until the
// user interacts with the page.

import type { RemoteParticipant, RemoteTrack, Room } from 'livekit-client';
import { h } from './dom';
import { icon } from './icons';
import { t } from './i18n';

export class RemoteAudio {
  readonly container = h('div', { class: 'audio-container', hidden: true });
  /** Shown while the browser refuses to play audio. */
  readonly blockedBanner = h('div', { class: 'banner info', hidden: true });
  private readonly elements = new Map<string, HTMLMediaElement[]>();

  constructor(private readonly room: Room) {}

  /** Fills the blocked-audio banner (its button starts playback). */
  build(): void {
    const enableAudio = h('button', { type: 'button', class: 'btn primary small', onclick: () => void this.room.startAudio().then(() => this.updateBlocked()) },
      icon('volume'), t('meeting.enableAudio'));
    this.blockedBanner.append(h('span', {}, t('meeting.audioBlocked')), enableAudio);
  }

  updateBlocked(): void {
    this.blockedBanner.hidden = this.room.canPlaybackAudio;
  }

  attach(track: RemoteTrack, sid: string, p: RemoteParticipant): void {
    this.detach(track, sid);
    const el = track.attach();
    el.setAttribute('data-identity', p.identity);
    this.container.appendChild(el);
    this.elements.set(sid, [el]);
    this.updateBlocked();
  }

  detach(track: RemoteTrack, sid: string): void {
    for (const el of this.elements.get(sid) ?? []) {
      track.detach(el);
      el.remove();
    }
    this.elements.delete(sid);
  }
}
