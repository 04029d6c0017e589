// The meeting: tiles (grid with pages, or a focused tile with a strip), controls,
// chat and participant panels, reactions, raised hands, shortcuts, reconnection banner.

import {
  ConnectionState,
  DisconnectReason,
  LocalVideoTrack,
  Participant,
  RemoteParticipant,
  RemoteTrack,
  Room,
  RoomEvent,
  ScreenSharePresets,
  Track,
  VideoPresets,
  type DataPacket_Kind,
  type RemoteTrackPublication,
  type VideoTrack,
} from 'livekit-client';
import { probeSignal } from './api';
import { ChatPanel, SERVER_IDENTITY, isTouchScreen } from './chat';
import { diagnostics } from './diagnostics';
import { clear, h, hueOf, initials, isTypingTarget } from './dom';
import { isMediaDenied, kindOfConnectError, kindOfDisconnect, showErrorScreen, type ErrorKind } from './errors';
import { icon, signalBars, type IconName } from './icons';
import { t, type Key } from './i18n';
import { audioCaptureOptions, fillDeviceSelect, videoCaptureOptions, type Joined, type LocalMedia } from './prejoin';
import { load, loadBool, save, saveBool } from './storage';
import { participantName, qualityLabel, Tile, type TileSource } from './tile';

const REACTION_TOPIC = 'tv.reaction';
const REACTIONS: { emoji: string; label: Key }[] = [
  { emoji: '👍', label: 'reaction.thumbsUp' },
  { emoji: '👏', label: 'reaction.clap' },
  { emoji: '😂', label: 'reaction.laugh' },
  { emoji: '❤️', label: 'reaction.heart' },
  { emoji: '🎉', label: 'reaction.party' },
  { emoji: '😮', label: 'reaction.surprised' },
  { emoji: '🤔', label: 'reaction.thinking' },
];
const PAGE_SIZE = 25;
const PAGE_SIZE_NARROW = 6;
const GAP = 8;

type Panel = 'chat' | 'participants' | null;
type Layout = 'grid' | 'speaker';

interface Shortcut {
  key: string;
  shift?: boolean;
  label: Key;
  run: () => void;
}

function isHidden(participant: Participant): boolean {
  return participant.identity === SERVER_IDENTITY || participant.permissions?.hidden === true;
}

/** Widest and narrowest tile shapes (width/height): cells outside them are trimmed. */
const MAX_TILE_RATIO = 16 / 9;
const MIN_TILE_RATIO = 3 / 4;

/**
 * The tile size for `n` tiles in a `width`×`height` box: the number of columns that
 * gives the largest tiles, each tile filling its cell (so two people fill the height)
 * unless the cell is wider than 16:9 or narrower than 3:4.
 */
function fitTiles(n: number, width: number, height: number): { w: number; h: number } {
  let best = { w: 80, h: 80, area: 0 };
  for (let cols = 1; cols <= Math.max(1, n); cols++) {
    const rows = Math.ceil(Math.max(1, n) / cols);
    let w = (width - GAP * (cols - 1)) / cols;
    let h = (height - GAP * (rows - 1)) / rows;
    if (w <= 0 || h <= 0) continue;
    if (w / h > MAX_TILE_RATIO) w = h * MAX_TILE_RATIO;
    if (w / h < MIN_TILE_RATIO) h = w / MIN_TILE_RATIO;
    if (w * h > best.area) best = { w, h, area: w * h };
  }
  return { w: Math.max(80, Math.floor(best.w)), h: Math.max(60, Math.floor(best.h)) };
}

export class Meeting {
  readonly room: Room;
  private readonly tiles = new Map<string, Tile>();
  /** Remote camera tile keys in display order (joins append; hidden speakers move up). */
  private order: string[] = [];
  /** Screen-share tile keys in the order they appeared. */
  private shares: string[] = [];
  private layoutMode: Layout = load('layout') === 'speaker' ? 'speaker' : 'grid';
  private pinned: string | null = null;
  private lastRemoteSpeaker: string | null = null;
  private page = 0;
  private panel: Panel = null;
  private phase: 'connecting' | 'connected' | 'done' = 'connecting';
  private signalConnected = false;
  private pendingVideo: LocalVideoTrack | undefined;
  /** The pre-join tracks, once they are ready (see Joined.media). */
  private media: LocalMedia = {};
  private publishing: Promise<unknown> = Promise.resolve();
  private renderQueued = false;
  private shortcutsOn = loadBool('shortcuts', true);
  private lastReactionAt = 0;
  private readonly audioElements = new Map<string, HTMLMediaElement[]>();
  private readonly droppedWhileReconnecting = new Set<string>();
  private readonly names = new Map<string, string>();
  private readonly devices: Joined['devices'];
  private readonly identity: string;
  private readonly resizeObserver: ResizeObserver;

  // DOM
  private readonly main = h('div', { class: 'meeting', id: 'main' });
  private readonly stage = h('main', { class: 'stage', 'aria-label': t('meeting.stage') });
  private readonly grid = h('div', { class: 'grid' });
  private readonly focusArea = h('div', { class: 'focus-area' });
  /** On a phone, the self-view floats small over the others instead of taking a cell. */
  private readonly selfView = h('div', { class: 'self-view' });
  // Tiles are groups, not list items: no list role here (axe-core: aria-required-children).
  private readonly strip = h('div', { class: 'strip' });
  private readonly pager = h('nav', { class: 'pager', 'aria-label': t('meeting.pages'), hidden: true });
  private readonly side = h('aside', { class: 'side', hidden: true });
  private readonly participantList = h('ul', { class: 'participant-list', 'data-testid': 'participant-list' });
  private readonly participantsPanel: HTMLElement;
  private readonly participantsHeading = h('h2', { id: 'participants-heading' });
  private readonly chat: ChatPanel;
  private readonly controls = h('footer', { class: 'controls', 'aria-label': t('meeting.controls') });
  private readonly buttons: Record<string, HTMLButtonElement> = {};
  private readonly unreadBadge = h('span', { class: 'badge', 'data-testid': 'chat-unread', hidden: true, 'aria-hidden': 'true' });
  private readonly countBadge = h('span', { class: 'badge neutral', 'aria-hidden': 'true' });
  private readonly headerCount = h('span', { class: 'header-count' });
  private readonly qualityIndicator = h('span', { class: 'quality-indicator', role: 'img', 'data-testid': 'connection-quality' }, signalBars());
  private readonly reconnectBanner = h('div', { class: 'banner warn', 'data-testid': 'reconnecting-banner', role: 'status', hidden: true }, t('meeting.reconnecting'));
  private readonly connectingOverlay = h('div', { class: 'connecting', role: 'status' }, h('span', { class: 'spinner', 'aria-hidden': 'true' }), t('meeting.connecting'));
  private readonly audioBlocked = h('div', { class: 'banner info', hidden: true });
  private readonly reactionMenu = h('div', { class: 'reaction-menu', role: 'menu', id: 'reaction-menu', 'aria-label': t('meeting.reactions'), hidden: true });
  private readonly reactionLayer = h('div', { class: 'reaction-layer', 'aria-hidden': 'true' });
  private readonly toasts = h('div', { class: 'toasts', role: 'status', 'aria-live': 'polite' });
  private readonly announcer = h('div', { class: 'sr-only', 'aria-live': 'polite' });
  private readonly audioContainer = h('div', { class: 'audio-container', hidden: true });
  private readonly helpDialog = h('dialog', { class: 'dialog', 'aria-labelledby': 'help-heading' });
  private readonly settingsDialog = h('dialog', { class: 'dialog', 'aria-labelledby': 'settings-heading' });

  constructor(
    private readonly root: HTMLElement,
    private readonly joined: Joined,
  ) {
    this.devices = { ...joined.devices };
    this.identity = joined.join.identity;
    void joined.media.then((media) => {
      this.media = media;
      if (this.phase === 'done') {
        media.video?.stop();
        media.audio?.stop();
        return;
      }
      this.pendingVideo = media.video;
      this.scheduleRender();
    });
    this.room = new Room({
      adaptiveStream: true,
      dynacast: true,
      // One peer connection (/rtc/v1, the publisher offer inside the join request) is
      // livekit-client's default and the SFU's; `?pc=dual` forces the older two-connection
      // path (/rtc), for tests and for comparing the two.
      singlePeerConnection: new URLSearchParams(window.location.search).get('pc') !== 'dual',
      disconnectOnPageLeave: true,
      stopLocalTrackOnUnpublish: true,
      videoCaptureDefaults: videoCaptureOptions(this.devices.videoinput),
      audioCaptureDefaults: audioCaptureOptions(this.devices.audioinput),
      audioOutput: this.devices.audiooutput ? { deviceId: this.devices.audiooutput } : undefined,
      publishDefaults: {
        simulcast: true,
        videoSimulcastLayers: [VideoPresets.h180, VideoPresets.h360],
        videoCodec: 'vp8',
        screenShareEncoding: ScreenSharePresets.h1080fps15.encoding,
        dtx: true,
        red: true,
      },
    });
    diagnostics.room = this.room;
    this.chat = new ChatPanel(
      this.room,
      () => joined.name,
      () => this.setPanel(null),
      (count, latest) => this.onUnread(count, latest),
      (message) => this.toast(message),
    );
    this.participantsPanel = h(
      'section',
      { class: 'panel participants-panel', id: 'participants-panel', 'aria-labelledby': 'participants-heading', hidden: true },
      h('header', { class: 'panel-header' }, this.participantsHeading,
        h('button', { type: 'button', class: 'icon-btn', 'aria-label': t('participants.close'), title: t('participants.close'), onclick: () => this.setPanel(null) }, icon('close'))),
      this.participantList,
    );
    this.resizeObserver = new ResizeObserver(() => this.layout());
  }

  // ---- lifecycle -------------------------------------------------------------------

  async start(): Promise<void> {
    this.mount();
    this.bindRoomEvents();
    this.chat.listen();
    document.addEventListener('keydown', this.onKeyDown);
    this.scheduleRender();
    const { url, token } = this.joined.join;
    try {
      await this.room.connect(url, token, { autoSubscribe: true });
    } catch (error) {
      if (this.phase === 'done') return;
      let kind = kindOfConnectError(error, this.signalConnected);
      if (!this.signalConnected && kind !== 'full') {
        const probe = await probeSignal(url, token);
        if (probe && (probe.status === 503 || /full/i.test(probe.text))) kind = 'full';
      }
      console.warn('connection failed', error);
      this.finish(kind, error instanceof Error ? error.message : String(error));
      return;
    }
    if (this.phase === 'done') {
      // Left while connecting.
      void this.room.disconnect(true);
      return;
    }
    this.phase = 'connected';
    diagnostics.timings.connected = performance.now();
    this.connectingOverlay.hidden = true;
    this.announce(t('meeting.joined'));
    this.scheduleRender();
    this.publishing = this.publishInitial();
    // After connecting, so that a message arriving meanwhile is either live or stored
    // (and then in the history): the panel shows each id once.
    void this.chat.loadHistory(this.joined.slug, token);
  }

  private async publishInitial(): Promise<void> {
    const lp = this.room.localParticipant;
    const { video, audio } = await this.joined.media;
    if (this.phase !== 'connected') return;
    const tasks: Promise<unknown>[] = [];
    if (video) {
      tasks.push(lp.publishTrack(video, { source: Track.Source.Camera, simulcast: true }).finally(() => {
        this.pendingVideo = undefined;
        this.scheduleRender();
      }));
    }
    if (audio) tasks.push(lp.publishTrack(audio, { source: Track.Source.Microphone }));
    const results = await Promise.allSettled(tasks);
    if (results.some((r) => r.status === 'rejected')) {
      console.warn('publish failed', results);
      this.toast(t('meeting.publishFailed'));
    }
    this.scheduleRender();
  }

  private mount(): void {
    clear(this.root);
    const title = this.joined.join.meeting.title || t('prejoin.untitled');
    document.title = `${title} – ${t('app.name')}`;

    const header = h(
      'header',
      { class: 'meeting-header' },
      h('h1', { class: 'meeting-name', title }, title),
      this.headerCount,
      this.qualityIndicator,
      h('div', { class: 'header-actions' },
        this.makeButton('toggle-layout', 'grid', 'meeting.layoutSpeaker', () => this.toggleLayout(), 'G'),
        this.makeButton('settings', 'settings', 'meeting.settings', () => this.openSettings()),
        this.makeButton('help', 'help', 'meeting.help', () => this.openHelp(), '?'),
      ),
    );

    this.stage.append(this.grid, this.focusArea, this.strip, this.pager, this.selfView);
    this.side.append(this.chat.el, this.participantsPanel);

    const reactionsButton = this.makeButton('reactions', 'smile', 'meeting.reactions', () => this.toggleReactionMenu(), 'E');
    reactionsButton.setAttribute('aria-haspopup', 'menu');
    reactionsButton.setAttribute('aria-controls', 'reaction-menu');
    reactionsButton.setAttribute('aria-expanded', 'false');
    for (const reaction of REACTIONS) {
      this.reactionMenu.appendChild(
        h('button', {
          type: 'button',
          role: 'menuitem',
          class: 'reaction-item',
          'data-testid': 'reaction',
          'data-emoji': reaction.emoji,
          'aria-label': t(reaction.label),
          title: t(reaction.label),
          tabindex: '-1',
          onclick: () => { this.sendReaction(reaction.emoji); this.closeReactionMenu(true); },
        }, reaction.emoji),
      );
    }
    this.reactionMenu.addEventListener('keydown', (e: KeyboardEvent) => this.onReactionMenuKey(e));
    this.reactionMenu.addEventListener('focusout', (e: FocusEvent) => {
      const next = e.relatedTarget as Node | null;
      if (next && !this.reactionMenu.contains(next) && next !== this.buttons.reactions) this.closeReactionMenu(false);
    });

    const chatButton = this.makeButton('toggle-chat', 'chat', 'meeting.chat', () => this.togglePanel('chat'), 'C');
    chatButton.setAttribute('aria-controls', 'chat-panel');
    chatButton.setAttribute('aria-expanded', 'false');
    chatButton.appendChild(this.unreadBadge);
    const peopleButton = this.makeButton('toggle-participants', 'people', 'meeting.participants', () => this.togglePanel('participants'), 'P');
    peopleButton.setAttribute('aria-controls', 'participants-panel');
    peopleButton.setAttribute('aria-expanded', 'false');
    peopleButton.appendChild(this.countBadge);

    const screenButton = this.makeButton('toggle-screen', 'screen', 'meeting.screen', () => void this.toggleScreen(), 'D');
    if (!navigator.mediaDevices || !('getDisplayMedia' in navigator.mediaDevices)) {
      screenButton.disabled = true;
      screenButton.title = t('meeting.screenUnsupported');
    }

    this.controls.append(
      this.makeButton('toggle-mic', 'mic', 'meeting.mic', () => void this.toggleMic(), 'M'),
      this.makeButton('toggle-camera', 'cam', 'meeting.camera', () => void this.toggleCamera(), 'V'),
      screenButton,
      h('div', { class: 'reaction-wrap' }, reactionsButton, this.reactionMenu),
      this.makeButton('raise-hand', 'hand', 'meeting.hand', () => void this.toggleHand(), 'R'),
      chatButton,
      peopleButton,
      this.makeButton('leave', 'leave', 'meeting.leave', () => void this.leave(), 'Maj+Q', 'danger'),
    );

    const enableAudio = h('button', { type: 'button', class: 'btn primary small', onclick: () => void this.room.startAudio().then(() => this.updateAudioBlocked()) },
      icon('volume'), t('meeting.enableAudio'));
    this.audioBlocked.append(h('span', {}, t('meeting.audioBlocked')), enableAudio);

    this.buildHelp();
    this.buildSettings();

    const body = h('div', { class: 'meeting-body' }, this.stage, this.side);
    this.main.append(
      h('a', { class: 'skip-link', href: '#meeting-controls' }, t('meeting.skipToControls')),
      header,
      this.reconnectBanner,
      this.audioBlocked,
      body,
      this.controls,
      this.connectingOverlay,
      this.reactionLayer,
      this.toasts,
      this.announcer,
      this.audioContainer,
      this.helpDialog,
      this.settingsDialog,
    );
    this.controls.id = 'meeting-controls';
    this.controls.tabIndex = -1;
    this.root.appendChild(this.main);
    this.resizeObserver.observe(this.stage);
  }

  private makeButton(testid: string, iconName: IconName, label: Key, run: () => void, shortcut?: string, variant = ''): HTMLButtonElement {
    const text = t(label);
    const button = h('button', {
      type: 'button',
      class: `ctrl ${variant}`.trim(),
      'data-testid': testid,
      'aria-label': text,
      title: shortcut ? `${text} (${shortcut})` : text,
      'aria-keyshortcuts': shortcut ? shortcut.replace('Maj+', 'Shift+') : null,
      onclick: run,
    }, icon(iconName));
    this.buttons[testid] = button;
    return button;
  }

  /** Leaves the meeting view for an end screen; stops everything local. */
  private finish(kind: ErrorKind | 'left', detail?: string): void {
    if (this.phase === 'done') return;
    this.phase = 'done';
    document.removeEventListener('keydown', this.onKeyDown);
    this.resizeObserver.disconnect();
    for (const tile of this.tiles.values()) tile.destroy();
    this.tiles.clear();
    this.media.video?.stop();
    this.media.audio?.stop();
    for (const pub of this.room.localParticipant.trackPublications.values()) pub.track?.stop();
    void this.room.disconnect(true);
    if (kind === 'left') this.showLeftScreen();
    else showErrorScreen(this.root, kind, { detail });
  }

  private showLeftScreen(): void {
    clear(this.root);
    const heading = h('h1', { tabindex: '-1' }, t('left.title'));
    this.root.appendChild(
      h('main', { class: 'screen error-screen', id: 'main' },
        h('section', { class: 'error-card', 'data-testid': 'left' },
          heading,
          h('p', {}, t('left.body')),
          h('div', { class: 'actions' },
            h('button', { type: 'button', class: 'btn primary', onclick: () => window.location.reload() }, t('left.rejoin'))))),
    );
    document.title = `${t('left.title')} – ${t('app.name')}`;
    heading.focus();
  }

  async leave(): Promise<void> {
    this.finish('left');
  }

  // ---- room events ------------------------------------------------------------------

  private bindRoomEvents(): void {
    const room = this.room;
    const rerender = () => this.scheduleRender();
    room
      .on(RoomEvent.SignalConnected, () => { this.signalConnected = true; })
      .on(RoomEvent.ParticipantConnected, (p: RemoteParticipant) => {
        // A full reconnect drops every participant locally and adds them back: no news.
        const back = this.droppedWhileReconnecting.delete(p.identity);
        if (!isHidden(p) && !back) this.toast(t('meeting.participantJoined', { name: participantName(p) }));
        rerender();
      })
      .on(RoomEvent.ParticipantDisconnected, (p: RemoteParticipant) => {
        if (room.state !== ConnectionState.Connected) this.droppedWhileReconnecting.add(p.identity);
        else if (!isHidden(p)) this.toast(t('meeting.participantLeft', { name: participantName(p) }));
        rerender();
      })
      .on(RoomEvent.TrackSubscribed, (track: RemoteTrack, pub: RemoteTrackPublication, p: RemoteParticipant) => {
        if (track.kind === Track.Kind.Audio) this.attachAudio(track, pub.trackSid, p);
        rerender();
      })
      .on(RoomEvent.TrackUnsubscribed, (track: RemoteTrack, pub: RemoteTrackPublication) => {
        if (track.kind === Track.Kind.Audio) this.detachAudio(track, pub.trackSid);
        rerender();
      })
      .on(RoomEvent.TrackPublished, (pub: RemoteTrackPublication, p: RemoteParticipant) => {
        if (pub.source === Track.Source.ScreenShare && !isHidden(p)) {
          this.toast(t('meeting.screenStarted', { name: participantName(p) }));
        }
        rerender();
      })
      .on(RoomEvent.TrackUnpublished, rerender)
      .on(RoomEvent.TrackMuted, rerender)
      .on(RoomEvent.TrackUnmuted, rerender)
      .on(RoomEvent.LocalTrackPublished, rerender)
      .on(RoomEvent.LocalTrackUnpublished, rerender)
      .on(RoomEvent.TrackStreamStateChanged, rerender)
      .on(RoomEvent.ParticipantNameChanged, rerender)
      .on(RoomEvent.ConnectionQualityChanged, rerender)
      .on(RoomEvent.ActiveSpeakersChanged, (speakers: Participant[]) => {
        const remote = speakers.find((s) => s !== room.localParticipant && !isHidden(s));
        if (remote) {
          this.lastRemoteSpeaker = remote.identity;
          this.bringIntoView(`${remote.identity}:camera`);
        }
        rerender();
      })
      .on(RoomEvent.ParticipantAttributesChanged, (changed: Record<string, string>, p: Participant) => {
        if ('hand' in changed && p !== room.localParticipant && p.attributes.hand === 'up') {
          this.toast(t('meeting.handRaisedBy', { name: participantName(p) }));
        }
        rerender();
      })
      .on(RoomEvent.DataReceived, (payload: Uint8Array, p?: RemoteParticipant, _kind?: DataPacket_Kind, topic?: string) => {
        if (topic === REACTION_TOPIC && p) this.receiveReaction(payload, p);
      })
      .on(RoomEvent.Reconnecting, () => this.setReconnecting(true))
      .on(RoomEvent.SignalReconnecting, () => this.setReconnecting(true))
      .on(RoomEvent.Reconnected, () => {
        this.setReconnecting(false);
        // Whoever has not come back a few seconds after the reconnection really left.
        window.setTimeout(() => {
          for (const identity of this.droppedWhileReconnecting) {
            if (!room.remoteParticipants.has(identity) && identity !== SERVER_IDENTITY) {
              this.toast(t('meeting.participantLeft', { name: this.names.get(identity) ?? identity }));
            }
          }
          this.droppedWhileReconnecting.clear();
        }, 5000);
        rerender();
      })
      .on(RoomEvent.ConnectionStateChanged, (state: ConnectionState) => {
        if (state === ConnectionState.Connected) this.setReconnecting(false);
      })
      .on(RoomEvent.AudioPlaybackStatusChanged, () => this.updateAudioBlocked())
      .on(RoomEvent.MediaDevicesChanged, () => { if (this.settingsDialog.open) void this.fillSettings(); })
      .on(RoomEvent.Disconnected, (reason?: DisconnectReason) => {
        if (this.phase !== 'connected') return; // a failed connect is reported by start()
        this.finish(reason === DisconnectReason.CLIENT_INITIATED ? 'left' : kindOfDisconnect(reason));
      });
  }

  private setReconnecting(on: boolean): void {
    if (this.reconnectBanner.hidden === !on) return;
    this.reconnectBanner.hidden = !on;
    if (!on && this.phase === 'connected') this.announce(t('meeting.reconnected'));
  }

  private updateAudioBlocked(): void {
    this.audioBlocked.hidden = this.room.canPlaybackAudio;
  }

  private attachAudio(track: RemoteTrack, sid: string, p: RemoteParticipant): void {
    this.detachAudio(track, sid);
    const el = track.attach();
    el.setAttribute('data-identity', p.identity);
    this.audioContainer.appendChild(el);
    this.audioElements.set(sid, [el]);
    this.updateAudioBlocked();
  }

  private detachAudio(track: RemoteTrack, sid: string): void {
    for (const el of this.audioElements.get(sid) ?? []) {
      track.detach(el);
      el.remove();
    }
    this.audioElements.delete(sid);
  }

  // ---- rendering ----------------------------------------------------------------------

  private scheduleRender(): void {
    if (this.renderQueued || this.phase === 'done') return;
    this.renderQueued = true;
    queueMicrotask(() => {
      this.renderQueued = false;
      if (this.phase !== 'done') this.render();
    });
  }

  private render(): void {
    this.syncTiles();
    this.layout();
    this.renderParticipants();
    this.updateControls();
  }

  private participants(): Participant[] {
    const remotes = [...this.room.remoteParticipants.values()].filter((p) => !isHidden(p));
    return [this.room.localParticipant, ...remotes];
  }

  private identityOf(p: Participant): string {
    return p === this.room.localParticipant ? p.identity || this.identity : p.identity;
  }

  private nameOf(p: Participant): string {
    return p === this.room.localParticipant ? p.name || this.joined.name : participantName(p);
  }

  private syncTiles(): void {
    const wanted = new Set<string>();
    const local = this.room.localParticipant;
    for (const p of this.participants()) {
      const isLocal = p === local;
      const identity = this.identityOf(p);
      if (!isLocal) this.names.set(identity, this.nameOf(p));
      const micPub = p.getTrackPublication(Track.Source.Microphone);
      const common = {
        name: isLocal ? t('tile.you', { name: this.nameOf(p) }) : this.nameOf(p),
        micMuted: !micPub || micPub.isMuted,
        hand: p.attributes?.hand === 'up',
        quality: p.connectionQuality,
        pinned: false,
      };
      const camPub = p.getTrackPublication(Track.Source.Camera);
      let camTrack = camPub && !camPub.isMuted ? (camPub.videoTrack as VideoTrack | undefined) : undefined;
      if (isLocal && !camTrack && this.pendingVideo) camTrack = this.pendingVideo;
      const camKey = this.ensureTile(identity, 'camera', isLocal);
      wanted.add(camKey);
      this.tiles.get(camKey)!.update({ ...common, speaking: p.isSpeaking, pinned: this.pinned === camKey, track: camTrack });

      const sharePub = p.getTrackPublication(Track.Source.ScreenShare);
      if (sharePub) {
        const shareKey = this.ensureTile(identity, 'screen_share', isLocal);
        wanted.add(shareKey);
        const shareTrack = !sharePub.isMuted ? (sharePub.videoTrack as VideoTrack | undefined) : undefined;
        this.tiles.get(shareKey)!.update({ ...common, hand: false, speaking: false, pinned: this.pinned === shareKey, track: shareTrack });
      }
    }
    for (const [key, tile] of this.tiles) {
      if (!wanted.has(key)) {
        tile.destroy();
        this.tiles.delete(key);
        this.order = this.order.filter((k) => k !== key);
        this.shares = this.shares.filter((k) => k !== key);
        if (this.pinned === key) this.pinned = null;
      }
    }
  }

  private ensureTile(identity: string, source: TileSource, isLocal: boolean): string {
    const key = `${identity}:${source}`;
    if (!this.tiles.has(key)) {
      this.tiles.set(key, new Tile(key, identity, source, isLocal, (k) => this.togglePin(k)));
      if (source === 'screen_share') this.shares.push(key);
      else if (!isLocal) this.order.push(key);
    }
    return key;
  }

  private localCameraKey(): string {
    return `${this.identityOf(this.room.localParticipant)}:camera`;
  }

  /** The tile shown large, if any: pinned, else the latest remote screen share, else the speaker in speaker view. */
  private focusKey(): string | null {
    if (this.pinned && this.tiles.has(this.pinned)) return this.pinned;
    for (let i = this.shares.length - 1; i >= 0; i--) {
      const tile = this.tiles.get(this.shares[i]);
      if (tile && !tile.isLocal) return tile.key;
    }
    if (this.layoutMode === 'speaker') {
      const speakerKey = this.lastRemoteSpeaker ? `${this.lastRemoteSpeaker}:camera` : null;
      if (speakerKey && this.tiles.has(speakerKey)) return speakerKey;
      return this.order[0] ?? this.localCameraKey();
    }
    return null;
  }

  /** Every tile key but the focused one, in display order. */
  private orderedKeys(exclude: string | null): string[] {
    const keys = [...this.shares, this.localCameraKey(), ...this.order];
    return keys.filter((k) => k !== exclude && this.tiles.has(k));
  }

  private pageSize(): number {
    return this.stage.clientWidth < 600 ? PAGE_SIZE_NARROW : PAGE_SIZE;
  }

  /** Moves a remote speaker's tile onto the page being looked at. */
  private bringIntoView(key: string): void {
    const index = this.order.indexOf(key);
    if (index < 0) return;
    const size = this.pageSize();
    // positions in orderedKeys: shares and the local tile come first
    const offset = this.shares.length + 1;
    const start = this.page * size;
    const end = start + size;
    const position = index + offset;
    if (position >= start && position < end) return;
    this.order.splice(index, 1);
    const target = Math.max(0, Math.min(this.order.length, end - 1 - offset));
    this.order.splice(target, 0, key);
  }

  private layout(): void {
    if (this.phase === 'done') return;
    const focus = this.focusKey();
    const keys = this.orderedKeys(focus);
    const el = (key: string) => this.tiles.get(key)!.el;
    const width = this.stage.clientWidth;
    const height = this.stage.clientHeight;
    this.stage.classList.toggle('focus-layout', focus !== null);
    for (const tile of this.tiles.values()) tile.el.classList.toggle('focused', tile.key === focus);
    if (focus) {
      replaceIfChanged(this.selfView, []);
      replaceIfChanged(this.focusArea, [el(focus)]);
      replaceIfChanged(this.strip, keys.map(el));
      replaceIfChanged(this.grid, []);
      this.pager.hidden = true;
      return;
    }
    replaceIfChanged(this.focusArea, []);
    replaceIfChanged(this.strip, []);
    // A phone (narrow or portrait stage) with someone else to show: the self-view is a
    // small overlay and the others get the screen.
    const localKey = this.localCameraKey();
    const phone = width < 600 || width < height;
    const floating = phone && keys.length >= 2 && keys.includes(localKey);
    if (floating) keys.splice(keys.indexOf(localKey), 1);
    replaceIfChanged(this.selfView, floating ? [el(localKey)] : []);
    const size = this.pageSize();
    const pages = Math.max(1, Math.ceil(keys.length / size));
    this.page = Math.min(this.page, pages - 1);
    const visible = keys.slice(this.page * size, (this.page + 1) * size);
    replaceIfChanged(this.grid, visible.map(el));
    const pagerHeight = pages > 1 ? 48 : 0;
    const boxWidth = width - 2 * GAP;
    const boxHeight = height - 2 * GAP - pagerHeight;
    const tile = fitTiles(visible.length, boxWidth, boxHeight);
    this.grid.style.setProperty('--tile-w', `${tile.w}px`);
    this.grid.style.setProperty('--tile-h', `${tile.h}px`);
    this.renderPager(pages);
  }

  private renderPager(pages: number): void {
    this.pager.hidden = pages <= 1;
    if (pages <= 1) return;
    const label = t('meeting.pageOf', { page: this.page + 1, pages });
    const current = this.pager.dataset.state;
    const state = `${this.page}/${pages}`;
    if (current === state) return;
    this.pager.dataset.state = state;
    this.pager.replaceChildren(
      h('button', { type: 'button', class: 'icon-btn', 'aria-label': t('meeting.prevPage'), title: t('meeting.prevPage'), disabled: this.page === 0, onclick: () => this.goToPage(this.page - 1) }, icon('prev')),
      h('span', { class: 'pager-label', 'aria-live': 'polite' }, label),
      h('button', { type: 'button', class: 'icon-btn', 'aria-label': t('meeting.nextPage'), title: t('meeting.nextPage'), disabled: this.page >= pages - 1, onclick: () => this.goToPage(this.page + 1) }, icon('next')),
    );
  }

  private goToPage(page: number): void {
    this.page = Math.max(0, page);
    this.pager.dataset.state = '';
    this.layout();
    (this.pager.querySelector('button:not([disabled])') as HTMLButtonElement | null)?.focus();
  }

  private renderParticipants(): void {
    const people = this.participants();
    const count = people.length;
    this.headerCount.textContent = t('meeting.count', { count });
    this.countBadge.textContent = String(count);
    // The visible count is part of the button's name (axe-core: label-content-name-mismatch;
    // it ignores words in parentheses, so "Participants (2)" would not do).
    const peopleLabel = t('meeting.count', { count });
    this.buttons['toggle-participants']?.setAttribute('aria-label', peopleLabel);
    if (this.buttons['toggle-participants']) this.buttons['toggle-participants'].title = `${peopleLabel} (P)`;
    this.participantsHeading.textContent = t('participants.title', { count });
    const local = this.room.localParticipant;
    const sorted = [...people].sort((a, b) => {
      const handA = a.attributes?.hand === 'up' ? 0 : 1;
      const handB = b.attributes?.hand === 'up' ? 0 : 1;
      if (handA !== handB) return handA - handB;
      if (a === local) return -1;
      if (b === local) return 1;
      return this.nameOf(a).localeCompare(this.nameOf(b));
    });
    const items = sorted.map((p) => {
      const name = this.nameOf(p);
      const micPub = p.getTrackPublication(Track.Source.Microphone);
      const camPub = p.getTrackPublication(Track.Source.Camera);
      const micOff = !micPub || micPub.isMuted;
      const camOff = !camPub || camPub.isMuted;
      const hand = p.attributes?.hand === 'up';
      const states = [hand ? t('tile.handRaised') : '', micOff ? t('tile.micMuted') : '', camOff ? t('participants.cameraOff') : ''].filter(Boolean);
      return h(
        'li',
        { class: 'participant-item', 'data-testid': 'participant-item', 'data-identity': this.identityOf(p) },
        h('span', { class: 'avatar small', 'aria-hidden': 'true', style: `--hue:${hueOf(this.identityOf(p))}` }, initials(name)),
        h('span', { class: 'participant-name' }, p === local ? t('tile.you', { name }) : name,
          states.length ? h('span', { class: 'sr-only' }, `, ${states.join(', ')}`) : null),
        h('span', { class: 'participant-icons', 'aria-hidden': 'true' },
          hand ? h('span', { class: 'hand-icon', title: t('tile.handRaised') }, icon('hand')) : null,
          icon(micOff ? 'micOff' : 'mic', micOff ? 'icon off' : 'icon'),
          icon(camOff ? 'camOff' : 'cam', camOff ? 'icon off' : 'icon')),
      );
    });
    this.participantList.replaceChildren(...items);
  }

  private updateControls(): void {
    const lp = this.room.localParticipant;
    const set = (id: string, pressed: boolean, iconOn: IconName, iconOff: IconName) => {
      const button = this.buttons[id];
      button.setAttribute('aria-pressed', String(pressed));
      button.classList.toggle('off', !pressed && (id === 'toggle-mic' || id === 'toggle-camera'));
      button.classList.toggle('active', pressed && id !== 'toggle-mic' && id !== 'toggle-camera');
      const svg = button.querySelector('svg');
      const wanted = pressed ? iconOn : iconOff;
      if (svg?.dataset.icon !== wanted) {
        const next = icon(wanted);
        next.dataset.icon = wanted;
        if (svg) svg.replaceWith(next);
        else button.prepend(next);
      }
    };
    const micOn = lp.isMicrophoneEnabled || (!!this.media.audio && !lp.getTrackPublication(Track.Source.Microphone));
    const camOn = lp.isCameraEnabled || !!this.pendingVideo;
    set('toggle-mic', micOn, 'mic', 'micOff');
    set('toggle-camera', camOn, 'cam', 'camOff');
    set('toggle-screen', lp.isScreenShareEnabled, 'screenStop', 'screen');
    set('raise-hand', lp.attributes?.hand === 'up', 'hand', 'hand');
    this.buttons['toggle-screen'].setAttribute('aria-label', t(lp.isScreenShareEnabled ? 'meeting.screenStop' : 'meeting.screen'));
    const lpQuality = lp.connectionQuality;
    this.qualityIndicator.dataset.quality = lpQuality;
    const label = t('quality.label', { quality: qualityLabel(lpQuality) });
    this.qualityIndicator.setAttribute('aria-label', label);
    this.qualityIndicator.title = label;
    const layoutButton = this.buttons['toggle-layout'];
    const speaker = this.layoutMode === 'speaker';
    const layoutLabel = t(speaker ? 'meeting.layoutGrid' : 'meeting.layoutSpeaker');
    layoutButton.setAttribute('aria-label', layoutLabel);
    layoutButton.title = `${layoutLabel} (G)`;
    const layoutIcon: IconName = speaker ? 'grid' : 'speaker';
    const svg = layoutButton.querySelector('svg');
    if (svg?.dataset.icon !== layoutIcon) {
      const next = icon(layoutIcon);
      next.dataset.icon = layoutIcon;
      svg?.replaceWith(next);
    }
  }

  // ---- actions ------------------------------------------------------------------------

  private async toggleMic(): Promise<void> {
    if (this.phase !== 'connected') return;
    await this.publishing;
    const lp = this.room.localParticipant;
    const button = this.buttons['toggle-mic'];
    button.disabled = true;
    try {
      await lp.setMicrophoneEnabled(!lp.isMicrophoneEnabled, audioCaptureOptions(this.devices.audioinput));
      this.announce(t(lp.isMicrophoneEnabled ? 'meeting.micOnNow' : 'meeting.micOffNow'));
    } catch (error) {
      this.toast(t(isMediaDenied(error) ? 'meeting.micDenied' : 'meeting.micFailed'));
    } finally {
      button.disabled = false;
      this.scheduleRender();
    }
  }

  private async toggleCamera(): Promise<void> {
    if (this.phase !== 'connected') return;
    await this.publishing;
    const lp = this.room.localParticipant;
    const button = this.buttons['toggle-camera'];
    button.disabled = true;
    try {
      await lp.setCameraEnabled(!lp.isCameraEnabled, videoCaptureOptions(this.devices.videoinput), { simulcast: true });
      this.announce(t(lp.isCameraEnabled ? 'meeting.cameraOnNow' : 'meeting.cameraOffNow'));
    } catch (error) {
      this.toast(t(isMediaDenied(error) ? 'meeting.cameraDenied' : 'meeting.cameraFailed'));
    } finally {
      button.disabled = false;
      this.scheduleRender();
    }
  }

  private async toggleScreen(): Promise<void> {
    if (this.phase !== 'connected') return;
    const lp = this.room.localParticipant;
    const button = this.buttons['toggle-screen'];
    button.disabled = true;
    try {
      await lp.setScreenShareEnabled(!lp.isScreenShareEnabled, { audio: true, selfBrowserSurface: 'exclude', surfaceSwitching: 'include', systemAudio: 'include' });
    } catch (error) {
      // Cancelling the browser's picker is not an error worth showing.
      if (!(error instanceof DOMException && error.name === 'NotAllowedError')) this.toast(t('meeting.screenFailed'));
    } finally {
      button.disabled = false;
      this.scheduleRender();
    }
  }

  private async toggleHand(): Promise<void> {
    if (this.phase !== 'connected') return;
    const lp = this.room.localParticipant;
    const up = lp.attributes?.hand !== 'up';
    try {
      await lp.setAttributes({ hand: up ? 'up' : '' });
      this.announce(t(up ? 'meeting.handUp' : 'meeting.handDown'));
    } catch {
      this.toast(t('meeting.actionFailed'));
    }
    this.scheduleRender();
  }

  private toggleLayout(): void {
    this.layoutMode = this.layoutMode === 'grid' ? 'speaker' : 'grid';
    this.pinned = null;
    save('layout', this.layoutMode);
    this.announce(t(this.layoutMode === 'grid' ? 'meeting.layoutIsGrid' : 'meeting.layoutIsSpeaker'));
    this.scheduleRender();
  }

  private togglePin(key: string): void {
    this.pinned = this.pinned === key ? null : key;
    this.scheduleRender();
  }

  private togglePanel(panel: Exclude<Panel, null>): void {
    this.setPanel(this.panel === panel ? null : panel);
  }

  private setPanel(panel: Panel): void {
    const previous = this.panel;
    this.panel = panel;
    this.side.hidden = panel === null;
    this.chat.setOpen(panel === 'chat');
    this.participantsPanel.hidden = panel !== 'participants';
    this.buttons['toggle-chat'].setAttribute('aria-expanded', String(panel === 'chat'));
    this.buttons['toggle-participants'].setAttribute('aria-expanded', String(panel === 'participants'));
    this.buttons['toggle-chat'].classList.toggle('active', panel === 'chat');
    this.buttons['toggle-participants'].classList.toggle('active', panel === 'participants');
    this.main.classList.toggle('panel-open', panel !== null);
    // On a touch screen the field is not focused: that would open the keyboard over the chat.
    if (panel === 'chat') (isTouchScreen() ? this.chat.logElement : this.chat.input).focus();
    else if (panel === 'participants') (this.participantsPanel.querySelector('button') as HTMLButtonElement | null)?.focus();
    else if (previous) this.buttons[previous === 'chat' ? 'toggle-chat' : 'toggle-participants'].focus();
    this.layout();
  }

  private onUnread(count: number, latest?: { author: string; text: string }): void {
    this.unreadBadge.hidden = count === 0;
    const shown = count > 99 ? '99+' : String(count);
    this.unreadBadge.textContent = shown;
    // The name holds the badge's text as shown, outside parentheses (axe-core's
    // label-content-name-mismatch).
    const label = count === 0 ? t('meeting.chat') : t('meeting.chatUnread', { count, shown });
    this.buttons['toggle-chat']?.setAttribute('aria-label', label);
    if (latest) this.toast(t('chat.newMessage', { name: latest.author }), latest.text.slice(0, 120));
  }

  // ---- reactions ----------------------------------------------------------------------

  private toggleReactionMenu(): void {
    if (this.reactionMenu.hidden) this.openReactionMenu();
    else this.closeReactionMenu(true);
  }

  private openReactionMenu(): void {
    this.reactionMenu.hidden = false;
    this.buttons.reactions.setAttribute('aria-expanded', 'true');
    (this.reactionMenu.firstElementChild as HTMLElement | null)?.focus();
  }

  private closeReactionMenu(returnFocus: boolean): void {
    if (this.reactionMenu.hidden) return;
    this.reactionMenu.hidden = true;
    this.buttons.reactions.setAttribute('aria-expanded', 'false');
    if (returnFocus) this.buttons.reactions.focus();
  }

  private onReactionMenuKey(e: KeyboardEvent): void {
    const items = [...this.reactionMenu.querySelectorAll<HTMLButtonElement>('[role=menuitem]')];
    const index = items.indexOf(document.activeElement as HTMLButtonElement);
    const move = (i: number) => items[(i + items.length) % items.length]?.focus();
    switch (e.key) {
      case 'ArrowRight':
      case 'ArrowDown':
        move(index + 1);
        break;
      case 'ArrowLeft':
      case 'ArrowUp':
        move(index - 1);
        break;
      case 'Home':
        move(0);
        break;
      case 'End':
        move(items.length - 1);
        break;
      case 'Escape':
        this.closeReactionMenu(true);
        break;
      case 'Tab':
        this.closeReactionMenu(false);
        return;
      default:
        return;
    }
    e.preventDefault();
    e.stopPropagation();
  }

  private sendReaction(emoji: string): void {
    const now = Date.now();
    if (now - this.lastReactionAt < 300 || this.phase !== 'connected') return;
    this.lastReactionAt = now;
    const payload = new TextEncoder().encode(JSON.stringify({ emoji }));
    this.room.localParticipant.publishData(payload, { reliable: true, topic: REACTION_TOPIC }).catch(() => this.toast(t('meeting.actionFailed')));
    this.showReaction(emoji, t('tile.youShort'));
  }

  private receiveReaction(payload: Uint8Array, p: RemoteParticipant): void {
    try {
      const data = JSON.parse(new TextDecoder().decode(payload)) as { emoji?: unknown };
      const emoji = typeof data.emoji === 'string' ? data.emoji : '';
      if (!REACTIONS.some((r) => r.emoji === emoji)) return;
      const name = participantName(p);
      this.showReaction(emoji, name);
      this.announce(t('meeting.reactedBy', { name, reaction: t(REACTIONS.find((r) => r.emoji === emoji)!.label) }));
    } catch {
      /* not ours */
    }
  }

  private showReaction(emoji: string, name: string): void {
    const bubble = h('div', { class: 'reaction-bubble', 'data-testid': 'reaction-bubble', style: `--x:${10 + Math.random() * 60}%` },
      h('span', { class: 'reaction-emoji' }, emoji), h('span', { class: 'reaction-name' }, name));
    this.reactionLayer.appendChild(bubble);
    window.setTimeout(() => bubble.remove(), 4000);
  }

  // ---- dialogs ------------------------------------------------------------------------

  private shortcuts(): Shortcut[] {
    return [
      { key: 'm', label: 'meeting.mic', run: () => void this.toggleMic() },
      { key: 'v', label: 'meeting.camera', run: () => void this.toggleCamera() },
      { key: 'd', label: 'meeting.screen', run: () => { if (!this.buttons['toggle-screen'].disabled) void this.toggleScreen(); } },
      { key: 'c', label: 'meeting.chat', run: () => this.togglePanel('chat') },
      { key: 'p', label: 'meeting.participants', run: () => this.togglePanel('participants') },
      { key: 'r', label: 'meeting.hand', run: () => void this.toggleHand() },
      { key: 'e', label: 'meeting.reactions', run: () => this.toggleReactionMenu() },
      { key: 'g', label: 'meeting.layoutToggle', run: () => this.toggleLayout() },
      { key: '?', label: 'meeting.help', run: () => this.openHelp() },
      { key: 'q', shift: true, label: 'meeting.leave', run: () => void this.leave() },
    ];
  }

  private readonly onKeyDown = (e: KeyboardEvent): void => {
    if (e.key === 'Escape') {
      if (!this.reactionMenu.hidden) {
        this.closeReactionMenu(true);
        return;
      }
      if (this.panel && this.side.contains(document.activeElement)) {
        this.setPanel(null);
        return;
      }
    }
    if (!this.shortcutsOn || e.ctrlKey || e.metaKey || e.altKey || e.repeat) return;
    if (isTypingTarget(e.target) || this.helpDialog.open || this.settingsDialog.open) return;
    const key = e.key.toLowerCase();
    const shortcut = this.shortcuts().find((s) => s.key === key && (s.key === '?' || !!s.shift === e.shiftKey));
    if (!shortcut) return;
    e.preventDefault();
    shortcut.run();
  };

  private buildHelp(): void {
    const rows = this.shortcuts().map((s) =>
      h('tr', {}, h('td', {}, h('kbd', {}, s.shift ? `${t('help.shift')} + ${s.key.toUpperCase()}` : s.key.toUpperCase())), h('td', {}, t(s.label))),
    );
    rows.push(h('tr', {}, h('td', {}, h('kbd', {}, t('help.escape'))), h('td', {}, t('help.escapeAction'))));
    const toggle = h('input', { type: 'checkbox', id: 'shortcuts-on', checked: this.shortcutsOn });
    toggle.addEventListener('change', () => {
      this.shortcutsOn = toggle.checked;
      saveBool('shortcuts', this.shortcutsOn);
    });
    this.helpDialog.append(
      h('header', { class: 'panel-header' }, h('h2', { id: 'help-heading' }, t('help.title')),
        h('button', { type: 'button', class: 'icon-btn', 'aria-label': t('dialog.close'), title: t('dialog.close'), onclick: () => this.helpDialog.close() }, icon('close'))),
      h('p', {}, t('help.intro')),
      h('table', { class: 'shortcut-table' },
        h('thead', {}, h('tr', {}, h('th', { scope: 'col' }, t('help.key')), h('th', { scope: 'col' }, t('help.action')))),
        h('tbody', {}, ...rows)),
      h('p', { class: 'checkbox-row' }, toggle, h('label', { for: 'shortcuts-on' }, t('help.enable'))),
      h('p', { class: 'hint' }, t('help.tiles')),
    );
  }

  private openHelp(): void {
    if (!this.helpDialog.open) this.helpDialog.showModal();
  }

  private readonly settingsCamera = h('select', { id: 'settings-camera', 'data-testid': 'settings-camera-select' });
  private readonly settingsMic = h('select', { id: 'settings-mic', 'data-testid': 'settings-mic-select' });
  private readonly settingsSpeaker = h('select', { id: 'settings-speaker', 'data-testid': 'settings-speaker-select' });

  private buildSettings(): void {
    const change = (kind: 'videoinput' | 'audioinput' | 'audiooutput', select: HTMLSelectElement) => {
      select.addEventListener('change', () => {
        const id = select.value;
        this.devices[kind] = id || undefined;
        save(`device.${kind}`, id);
        this.room.switchActiveDevice(kind, id).catch(() => this.toast(t('meeting.deviceFailed')));
      });
    };
    change('videoinput', this.settingsCamera);
    change('audioinput', this.settingsMic);
    change('audiooutput', this.settingsSpeaker);
    this.settingsDialog.append(
      h('header', { class: 'panel-header' }, h('h2', { id: 'settings-heading' }, t('settings.title')),
        h('button', { type: 'button', class: 'icon-btn', 'aria-label': t('dialog.close'), title: t('dialog.close'), onclick: () => this.settingsDialog.close() }, icon('close'))),
      h('div', { class: 'field' }, h('label', { for: 'settings-camera' }, t('prejoin.camera')), this.settingsCamera),
      h('div', { class: 'field' }, h('label', { for: 'settings-mic' }, t('prejoin.mic')), this.settingsMic),
      h('div', { class: 'field' }, h('label', { for: 'settings-speaker' }, t('prejoin.speaker')), this.settingsSpeaker),
    );
  }

  private async fillSettings(): Promise<void> {
    const room = this.room;
    await Promise.all([
      fillDeviceSelect(this.settingsCamera, 'videoinput', room.getActiveDevice('videoinput') ?? this.devices.videoinput),
      fillDeviceSelect(this.settingsMic, 'audioinput', room.getActiveDevice('audioinput') ?? this.devices.audioinput),
      fillDeviceSelect(this.settingsSpeaker, 'audiooutput', room.getActiveDevice('audiooutput') ?? this.devices.audiooutput),
    ]);
  }

  private openSettings(): void {
    void this.fillSettings();
    if (!this.settingsDialog.open) this.settingsDialog.showModal();
  }

  // ---- messages -----------------------------------------------------------------------

  private toast(message: string, detail?: string): void {
    const el = h('div', { class: 'toast' }, h('strong', {}, message), detail ? h('span', {}, detail) : null);
    this.toasts.appendChild(el);
    while (this.toasts.childElementCount > 4) this.toasts.firstElementChild?.remove();
    window.setTimeout(() => el.remove(), 5000);
  }

  private announce(message: string): void {
    this.announcer.textContent = '';
    window.setTimeout(() => { this.announcer.textContent = message; }, 50);
  }
}

/** Puts exactly `children` in `parent`, in order, touching the DOM only when needed. */
function replaceIfChanged(parent: HTMLElement, children: HTMLElement[]): void {
  const current = parent.children;
  if (current.length === children.length && children.every((child, i) => current[i] === child)) return;
  parent.replaceChildren(...children);
}

