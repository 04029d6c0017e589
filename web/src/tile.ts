// One tile: a participant's camera (or avatar) or screen share, with name, mute icon,
// raised hand, connection quality and a pin button.

import { ConnectionQuality, type Participant, type VideoTrack } from 'livekit-client';
import { diagnostics } from './diagnostics';
import { h, hueOf, initials } from './dom';
import { icon, signalBars } from './icons';
import { t } from './i18n';

export type TileSource = 'camera' | 'screen_share';

export interface TileState {
  name: string;
  micMuted: boolean;
  hand: boolean;
  quality: ConnectionQuality;
  /** The Matrix ID of an identified member of the room. */
  matrixId?: string;
  speaking: boolean;
  pinned: boolean;
  track: VideoTrack | undefined;
}

export function qualityLabel(quality: ConnectionQuality): string {
  switch (quality) {
    case ConnectionQuality.Excellent:
      return t('quality.excellent');
    case ConnectionQuality.Good:
      return t('quality.good');
    case ConnectionQuality.Poor:
      return t('quality.poor');
    case ConnectionQuality.Lost:
      return t('quality.lost');
    default:
      return t('quality.unknown');
  }
}

export class Tile {
  readonly el: HTMLElement;
  readonly video: HTMLVideoElement;
  private readonly avatar: HTMLElement;
  private readonly nameEl: HTMLElement;
  private readonly micSlot: HTMLElement;
  private readonly badgeSlot: HTMLElement;
  private readonly handEl: HTMLElement;
  private readonly qualityEl: HTMLElement;
  private readonly pinButton: HTMLButtonElement;
  private track: VideoTrack | undefined;
  private last: Partial<TileState> = {};

  constructor(
    readonly key: string,
    readonly identity: string,
    readonly source: TileSource,
    readonly isLocal: boolean,
    onPin: (key: string) => void,
  ) {
    this.video = h('video', {
      class: isLocal && source === 'camera' ? 'tile-video mirrored' : 'tile-video',
      muted: true,
      playsinline: true,
      autoplay: true,
      'aria-hidden': 'true',
    });
    this.video.muted = true;
    this.avatar = h('div', { class: 'avatar', 'aria-hidden': 'true' });
    this.nameEl = h('span', { class: 'tile-name' });
    this.micSlot = h('span', { class: 'mic-slot' });
    this.badgeSlot = h('span', { class: 'badge-slot' });
    this.handEl = h('span', { class: 'tile-hand', role: 'img', 'aria-label': t('tile.handRaised'), title: t('tile.handRaised'), hidden: true }, icon('hand'));
    this.qualityEl = h('span', { class: 'tile-quality', role: 'img' }, signalBars());
    this.pinButton = h('button', { type: 'button', class: 'icon-btn pin-btn', 'aria-pressed': 'false' }, icon('pin'));
    this.pinButton.addEventListener('click', () => onPin(this.key));
    this.el = h(
      'div',
      {
        class: `tile source-${source}`,
        'data-testid': 'tile',
        'data-identity': identity,
        'data-source': source,
        role: 'group',
      },
      this.video,
      this.avatar,
      h('div', { class: 'tile-top' }, this.handEl, this.qualityEl, this.pinButton),
      h('div', { class: 'tile-label' }, this.micSlot, this.nameEl, this.badgeSlot),
    );
    this.el.addEventListener('dblclick', () => onPin(this.key));
  }

  update(state: TileState): void {
    const last = this.last;
    if (state.track !== this.track) this.setTrack(state.track);
    if (state.name !== last.name) {
      const shown = this.source === 'screen_share' ? t('tile.screenOf', { name: state.name }) : state.name;
      this.nameEl.textContent = shown;
      this.nameEl.title = shown;
      this.el.setAttribute('aria-label', shown);
      this.avatar.textContent = initials(state.name);
      this.avatar.style.setProperty('--hue', String(hueOf(this.identity)));
      this.pinButton.setAttribute('aria-label', t('tile.pin', { name: shown }));
      this.pinButton.title = t('tile.pin', { name: shown });
    }
    if (state.micMuted !== last.micMuted) {
      // Present exactly while the microphone is muted or absent (test contract).
      this.micSlot.replaceChildren();
      if (state.micMuted) {
        this.micSlot.appendChild(
          h('span', { class: 'muted-icon', 'data-testid': 'muted-icon', role: 'img', 'aria-label': t('tile.micMuted'), title: t('tile.micMuted') }, icon('micOff')),
        );
      }
    }
    if (state.matrixId !== last.matrixId) {
      this.badgeSlot.replaceChildren();
      if (state.matrixId && this.source === 'camera') {
        const label = t('participants.identifiedAs', { user: state.matrixId });
        this.badgeSlot.appendChild(
          h('span', { class: 'tile-id-badge', 'data-testid': 'identified-badge', 'data-matrix-id': state.matrixId, role: 'img', 'aria-label': label, title: label }, icon('verified')),
        );
      }
    }
    if (state.hand !== last.hand) {
      this.handEl.hidden = !state.hand;
      this.el.classList.toggle('hand-up', state.hand);
    }
    if (state.quality !== last.quality) {
      this.qualityEl.dataset.quality = state.quality;
      const label = t('quality.label', { quality: qualityLabel(state.quality) });
      this.qualityEl.setAttribute('aria-label', label);
      this.qualityEl.title = label;
    }
    if (state.speaking !== last.speaking) {
      this.el.classList.toggle('speaking', state.speaking);
      if (state.speaking) this.el.setAttribute('data-speaking', 'true');
      else this.el.removeAttribute('data-speaking');
    }
    if (state.pinned !== last.pinned) {
      this.pinButton.setAttribute('aria-pressed', String(state.pinned));
      this.el.classList.toggle('pinned', state.pinned);
    }
    this.last = { ...state };
  }

  private setTrack(track: VideoTrack | undefined): void {
    if (this.track) this.track.detach(this.video);
    this.track = track;
    if (track) {
      track.attach(this.video);
      if (!this.isLocal && diagnostics.timings.firstRemoteFrame === undefined && 'requestVideoFrameCallback' in this.video) {
        this.video.requestVideoFrameCallback(() => {
          diagnostics.timings.firstRemoteFrame ??= performance.now();
        });
      }
    } else {
      this.video.srcObject = null;
    }
    this.el.classList.toggle('has-video', !!track);
  }

  destroy(): void {
    this.setTrack(undefined);
    this.el.remove();
  }
}

export function participantName(participant: Participant, fallback?: string): string {
  return participant.name || fallback || participant.identity;
}
