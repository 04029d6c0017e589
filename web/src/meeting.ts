// The meeting: connects the room, follows its events and renders, wiring the parts that
// live in modules of their own: the stage of tiles (layout.ts), the buttons
// (controls.ts), the side panel (side.ts), reactions, shortcuts, settings, remote audio
// and notices. Keeps here: joining and publishing, the actions (microphone, camera,
// screen, hand, layout), the reconnection banner and leaving.

import {
  ConnectionState,
  DisconnectReason,
  LocalTrack,
  LocalVideoTrack,
  Participant,
  RemoteParticipant,
  RemoteTrack,
  Room,
  RoomEvent,
  Track,
  type DataPacket_Kind,
  type RemoteTrackPublication,
  type VideoTrack,
} from 'livekit-client';
import { joinMeeting, probeSignal } from './api';
import { RemoteAudio } from './audio';
import { SERVER_IDENTITY } from './chat';
import { ControlButtons } from './controls';
import { diagnostics } from './diagnostics';
import { clear, h } from './dom';
import { isMediaDenied, kindOfConnectError, kindOfDisconnect, kindOfRefusalText, showErrorScreen, showLeftScreen, type ErrorKind } from './errors';
import { signalBars } from './icons';
import { t } from './i18n';
import { Stage, type ParticipantView } from './layout';
import { isModerator, matrixIdOf, Moderation } from './moderation';
import { Notices } from './notices';
import { audioCaptureOptions, videoCaptureOptions, type Joined, type LocalMedia } from './prejoin';
import { REACTION_TOPIC, Reactions } from './reactions';
import { rejoinLoop } from './rejoin';
import { createRoom } from './room';
import { SettingsDialog } from './settings';
import { SidePanels } from './side';
import { Shortcuts } from './shortcuts';
import { participantName, qualityLabel } from './tile';

function isHidden(participant: Participant): boolean {
  return participant.identity === SERVER_IDENTITY || participant.permissions?.hidden === true;
}

export class Meeting {
  readonly room: Room;
  private phase: 'connecting' | 'connected' | 'done' = 'connecting';
  private signalConnected = false;
  private pendingVideo: LocalVideoTrack | undefined;
  /** The pre-join tracks, once they are ready (see Joined.media). */
  private media: LocalMedia = {};
  private publishing: Promise<unknown> = Promise.resolve();
  private renderQueued = false;
  private readonly droppedWhileReconnecting = new Set<string>();
  private readonly names = new Map<string, string>();
  private readonly devices: Joined['devices'];
  private readonly identity: string;
  /** The latest access token (the join's, or a fresh one the server sent): asks /rtc/validate why we were removed. */
  private token: string;
  private readonly watchedEngines = new WeakSet<object>();
  /** The signalling URL of the node hosting the meeting: the join's, or a later rejoin's. */
  private url: string;
  /** A rejoin is under way (rejoin.ts); `moving`: its disconnect and connect, whose events are its own. */
  private rejoining = false;
  private moving = false;
  private readonly resizeObserver: ResizeObserver;

  // DOM
  private readonly main = h('div', { class: 'meeting', id: 'main' });
  private readonly side: SidePanels;
  private readonly controls = h('footer', { class: 'controls', 'aria-label': t('meeting.controls') });
  private readonly buttons = new ControlButtons();
  private readonly headerCount = h('span', { class: 'header-count' });
  private readonly qualityIndicator = h('span', { class: 'quality-indicator', role: 'img', 'data-testid': 'connection-quality' }, signalBars());
  private readonly reconnectBanner = h('div', { class: 'banner warn', 'data-testid': 'reconnecting-banner', role: 'status', hidden: true }, t('meeting.reconnecting'));
  private readonly connectingOverlay = h('div', { class: 'connecting', role: 'status' }, h('span', { class: 'spinner', 'aria-hidden': 'true' }), t('meeting.connecting'));
  private readonly notices = new Notices();
  private readonly moderation: Moderation;
  private readonly stage = new Stage(() => this.identityOf(this.room.localParticipant), () => this.scheduleRender());
  private readonly reactions: Reactions;
  private readonly shortcuts: Shortcuts;
  private readonly settings: SettingsDialog;
  private readonly audio: RemoteAudio;

  constructor(
    private readonly root: HTMLElement,
    private readonly joined: Joined,
  ) {
    this.devices = { ...joined.devices };
    this.identity = joined.join.identity;
    this.token = joined.join.token;
    this.url = joined.join.url;
    this.moderation = new Moderation(joined.slug, this.notices);
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
    this.room = createRoom(this.devices);
    diagnostics.room = this.room;
    this.audio = new RemoteAudio(this.room);
    this.side = new SidePanels({
      room: this.room,
      name: () => joined.name,
      naming: { nameOf: (p) => this.nameOf(p), identityOf: (p) => this.identityOf(p) },
      buttons: this.buttons,
      notices: this.notices,
      main: this.main,
      relayout: () => this.layout(),
      moderation: this.moderation,
    });
    this.settings = new SettingsDialog(this.room, this.devices, (message) => this.notices.toast(message));
    this.reactions = new Reactions(
      { room: this.room, connected: () => this.phase === 'connected', notices: this.notices },
      this.buttons.make('reactions', 'smile', 'meeting.reactions', () => this.reactions.toggleMenu(), 'E'),
    );
    this.shortcuts = new Shortcuts([
      { key: 'm', label: 'meeting.mic', run: () => void this.toggleDevice('mic') },
      { key: 'v', label: 'meeting.camera', run: () => void this.toggleDevice('camera') },
      { key: 'd', label: 'meeting.screen', run: () => { if (!this.buttons.byId['toggle-screen'].disabled) void this.toggleScreen(); } },
      { key: 'c', label: 'meeting.chat', run: () => this.side.toggle('chat') },
      { key: 'p', label: 'meeting.participants', run: () => this.side.toggle('participants') },
      { key: 'r', label: 'meeting.hand', run: () => void this.toggleHand() },
      { key: 'e', label: 'meeting.reactions', run: () => this.reactions.toggleMenu() },
      { key: 'g', label: 'meeting.layoutToggle', run: () => this.toggleLayout() },
      { key: '?', label: 'meeting.help', run: () => this.shortcuts.openHelp() },
      { key: 'q', shift: true, label: 'meeting.leave', run: () => void this.leave() },
    ], {
      escape: () => {
        if (this.reactions.menuOpen) {
          this.reactions.closeMenu(true);
          return true;
        }
        return this.side.closeIfFocused();
      },
      paused: () => this.settings.isOpen,
    });
    this.resizeObserver = new ResizeObserver(() => this.layout());
  }

  // ---- lifecycle -------------------------------------------------------------------

  async start(): Promise<void> {
    this.mount();
    this.bindRoomEvents();
    this.side.chat.listen();
    this.shortcuts.listen();
    this.scheduleRender();
    const { url, token } = this.joined.join;
    try {
      await this.room.connect(url, token, { autoSubscribe: true });
    } catch (error) {
      if (this.phase === 'done') return;
      let kind = kindOfConnectError(error, this.signalConnected);
      if ((!this.signalConnected && kind !== 'full') || kind === 'removed') {
        const probe = await probeSignal(url, token);
        if (probe && (probe.status === 503 || /full/i.test(probe.text))) kind = 'full';
        else if (probe) kind = kindOfRefusalText(probe.status, probe.text) ?? kind;
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
    this.watchToken();
    diagnostics.timings.connected = performance.now();
    this.connectingOverlay.hidden = true;
    this.notices.announce(t('meeting.joined'));
    this.scheduleRender();
    this.publishing = this.publishInitial();
    // After connecting, so that a message arriving meanwhile is either live or stored
    // (and then in the history): the panel shows each id once.
    void this.side.chat.loadHistory(this.joined.slug, token);
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
      this.notices.toast(t('meeting.publishFailed'));
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
        this.buttons.make('toggle-layout', 'grid', 'meeting.layoutSpeaker', () => this.toggleLayout(), 'G'),
        this.buttons.make('settings', 'settings', 'meeting.settings', () => this.settings.open()),
        this.buttons.make('help', 'help', 'meeting.help', () => this.shortcuts.openHelp(), '?'),
      ),
    );

    const screenButton = this.buttons.make('toggle-screen', 'screen', 'meeting.screen', () => void this.toggleScreen(), 'D');
    if (!navigator.mediaDevices || !('getDisplayMedia' in navigator.mediaDevices)) {
      screenButton.disabled = true;
      screenButton.title = t('meeting.screenUnsupported');
    }

    this.controls.append(
      this.buttons.make('toggle-mic', 'mic', 'meeting.mic', () => void this.toggleDevice('mic'), 'M'),
      this.buttons.make('toggle-camera', 'cam', 'meeting.camera', () => void this.toggleDevice('camera'), 'V'),
      screenButton,
      this.reactions.controls(),
      this.buttons.make('raise-hand', 'hand', 'meeting.hand', () => void this.toggleHand(), 'R'),
      this.side.chatButton,
      this.side.peopleButton,
      this.buttons.make('leave', 'leave', 'meeting.leave', () => void this.leave(), 'Maj+Q', 'danger'),
    );

    this.audio.build();
    this.shortcuts.buildHelp();
    this.settings.build();

    const body = h('div', { class: 'meeting-body' }, this.stage.el, this.side.el);
    this.main.append(
      h('a', { class: 'skip-link', href: '#meeting-controls' }, t('meeting.skipToControls')),
      header,
      this.reconnectBanner,
      this.audio.blockedBanner,
      body,
      this.controls,
      this.connectingOverlay,
      this.reactions.layer,
      this.notices.toasts,
      this.notices.announcer,
      this.audio.container,
      this.shortcuts.helpDialog,
      this.settings.el,
      this.moderation.dialog.el,
    );
    this.controls.id = 'meeting-controls';
    this.controls.tabIndex = -1;
    this.root.appendChild(this.main);
    this.resizeObserver.observe(this.stage.el);
  }

  /** Keeps the fresh tokens the server sends (if it does): /rtc/validate is asked with the latest. */
  private watchToken(): void {
    const engine = this.room.engine;
    if (!engine || this.watchedEngines.has(engine)) return;
    this.watchedEngines.add(engine);
    engine.on('tokenRefreshed', (token: string) => { this.token = token; });
  }

  /**
   * Removed from the meeting: the server says why at /rtc/validate (a moderator, the
   * room left, a ban, a stricter access level, or the meeting's end).
   */
  private async finishRemoved(): Promise<void> {
    if (this.phase === 'done') return;
    const { url } = this.joined.join;
    this.teardown();
    const probe = await probeSignal(url, this.token);
    const said = probe ? kindOfRefusalText(probe.status, probe.text) : null;
    // The server said "removed" (PARTICIPANT_REMOVED): a meeting that ended since then
    // does not change that, only the reason is unknown.
    showErrorScreen(this.root, said && said !== 'ended' ? said : 'removed');
  }

  /** Leaves the meeting view for an end screen; stops everything local. */
  private finish(kind: ErrorKind | 'left', detail?: string): void {
    if (this.phase === 'done') return;
    this.teardown();
    if (kind === 'left') showLeftScreen(this.root);
    else showErrorScreen(this.root, kind, { detail });
  }

  /** Stops everything local (tracks, timers, the room); the caller shows what comes next. */
  private teardown(): void {
    this.phase = 'done';
    this.moderation.stop();
    this.shortcuts.stop();
    this.resizeObserver.disconnect();
    this.stage.destroy();
    this.media.video?.stop();
    this.media.audio?.stop();
    for (const pub of this.room.localParticipant.trackPublications.values()) pub.track?.stop();
    void this.room.disconnect(true);
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
        if (!isHidden(p) && !back) this.notices.toast(t('meeting.participantJoined', { name: participantName(p) }));
        rerender();
      })
      .on(RoomEvent.ParticipantDisconnected, (p: RemoteParticipant) => {
        if (room.state !== ConnectionState.Connected) this.droppedWhileReconnecting.add(p.identity);
        else if (!isHidden(p)) this.notices.toast(t('meeting.participantLeft', { name: participantName(p) }));
        rerender();
      })
      .on(RoomEvent.TrackSubscribed, (track: RemoteTrack, pub: RemoteTrackPublication, p: RemoteParticipant) => {
        if (track.kind === Track.Kind.Audio) this.audio.attach(track, pub.trackSid, p);
        rerender();
      })
      .on(RoomEvent.TrackUnsubscribed, (track: RemoteTrack, pub: RemoteTrackPublication) => {
        if (track.kind === Track.Kind.Audio) this.audio.detach(track, pub.trackSid);
        rerender();
      })
      .on(RoomEvent.TrackPublished, (pub: RemoteTrackPublication, p: RemoteParticipant) => {
        if (pub.source === Track.Source.ScreenShare && !isHidden(p)) {
          this.notices.toast(t('meeting.screenStarted', { name: participantName(p) }));
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
        if (remote) this.stage.speakerChanged(remote.identity);
        rerender();
      })
      .on(RoomEvent.ParticipantAttributesChanged, (changed: Record<string, string>, p: Participant) => {
        if (p === room.localParticipant && 'tchap.moderator' in changed) {
          this.notices.announce(t(isModerator(p) ? 'meeting.nowModerator' : 'meeting.noLongerModerator'));
        }
        if ('hand' in changed && p !== room.localParticipant && p.attributes.hand === 'up') {
          this.notices.toast(t('meeting.handRaisedBy', { name: participantName(p) }));
        }
        rerender();
      })
      .on(RoomEvent.DataReceived, (payload: Uint8Array, p?: RemoteParticipant, _kind?: DataPacket_Kind, topic?: string) => {
        if (topic === REACTION_TOPIC && p) this.reactions.receive(payload, p);
      })
      .on(RoomEvent.Reconnecting, () => { this.setReconnecting(true); void this.rejoin(); })
      .on(RoomEvent.SignalReconnecting, () => { this.setReconnecting(true); void this.rejoin(); })
      .on(RoomEvent.Reconnected, () => {
        this.setReconnecting(false);
        this.watchToken();
        // Whoever has not come back a few seconds after the reconnection really left.
        window.setTimeout(() => {
          for (const identity of this.droppedWhileReconnecting) {
            if (!room.remoteParticipants.has(identity) && identity !== SERVER_IDENTITY) {
              this.notices.toast(t('meeting.participantLeft', { name: this.names.get(identity) ?? identity }));
            }
          }
          this.droppedWhileReconnecting.clear();
        }, 5000);
        rerender();
      })
      .on(RoomEvent.ConnectionStateChanged, (state: ConnectionState) => {
        if (state === ConnectionState.Connected) this.setReconnecting(false);
      })
      .on(RoomEvent.AudioPlaybackStatusChanged, () => this.audio.updateBlocked())
      .on(RoomEvent.MediaDevicesChanged, () => { if (this.settings.isOpen) void this.settings.fill(); })
      .on(RoomEvent.Disconnected, (reason?: DisconnectReason) => {
        if (this.phase !== 'connected') return; // a failed connect is reported by start()
        if (this.moving) return; // the rejoin's own disconnect
        if (reason === DisconnectReason.PARTICIPANT_REMOVED) {
          void this.finishRemoved();
          return;
        }
        if (reason !== DisconnectReason.CLIENT_INITIATED && kindOfDisconnect(reason) === 'connection-lost') {
          // livekit-client gave up on the node: join again through the shared address.
          this.setReconnecting(true);
          void this.rejoin();
          return;
        }
        this.finish(reason === DisconnectReason.CLIENT_INITIATED ? 'left' : kindOfDisconnect(reason));
      });

  }

  /**
   * The node may be gone (rejoin.ts): asks the shared address to join again, and moves
   * to the node it names, taking the local tracks along. Ends the meeting view only when
   * the server refuses or after a minute.
   */
  private async rejoin(): Promise<void> {
    if (this.rejoining || this.phase !== 'connected') return;
    this.rejoining = true;
    const room = this.room;
    // What was published before the loss: should livekit-client give up first, it
    // stops the tracks and forgets them.
    const published = [...room.localParticipant.trackPublications.values()]
      .filter((pub) => pub.track)
      .map((pub) => ({ track: pub.track!, source: pub.source, muted: pub.isMuted }));
    const outcome = await rejoinLoop({
      join: async () => {
        const outcome = await joinMeeting(this.joined.slug, this.joined.name, undefined, true);
        return outcome.kind === 'granted' ? { url: outcome.join.url, token: outcome.join.token } : null;
      },
      currentUrl: () => this.url,
      recovered: () => this.phase !== 'connected' || room.state === ConnectionState.Connected,
      gaveUp: () => room.state === ConnectionState.Disconnected,
      move: (url, token) => this.moveTo(url, token, published),
      wait: (ms) => new Promise((resolve) => window.setTimeout(resolve, ms)),
      now: () => Date.now(),
    }).catch(() => 'timed-out' as const);
    this.rejoining = false;
    if (this.phase !== 'connected') return;
    if (outcome === 'moved' || outcome === 'recovered') {
      if (room.state === ConnectionState.Connected) this.setReconnecting(false);
      return;
    }
    if (room.state !== ConnectionState.Connected) this.finish('connection-lost');
  }

  /**
   * Leaves the lost node for `url`, then publishes again what was published: the same
   * tracks while they live, a new microphone or camera where livekit-client stopped them.
   */
  private async moveTo(url: string, token: string, published: { track: LocalTrack; source: Track.Source; muted: boolean }[]): Promise<void> {
    const lp = this.room.localParticipant;
    this.moving = true;
    try {
      // The tracks stay live: they go to the new node.
      await this.room.disconnect(false);
      await this.room.connect(url, token, { autoSubscribe: true });
    } finally {
      this.moving = false;
    }
    this.url = url;
    this.token = token;
    this.watchToken();
    this.publishing = Promise.allSettled(
      published.map(({ track, source, muted }) => {
        if (track.mediaStreamTrack.readyState !== 'ended') {
          return lp.publishTrack(track, { source, simulcast: source === Track.Source.Camera });
        }
        if (muted) return Promise.resolve();
        if (source === Track.Source.Microphone) return lp.setMicrophoneEnabled(true, audioCaptureOptions(this.devices.audioinput));
        if (source === Track.Source.Camera) return lp.setCameraEnabled(true, videoCaptureOptions(this.devices.videoinput), { simulcast: true });
        return Promise.resolve();
      }),
    );
    await this.publishing;
    // Whatever was said during the gap is stored: the panel shows each id once.
    void this.side.chat.loadHistory(this.joined.slug, token);
    this.setReconnecting(false);
    this.scheduleRender();
  }

  private setReconnecting(on: boolean): void {
    if (this.reconnectBanner.hidden === !on) return;
    this.reconnectBanner.hidden = !on;
    if (!on && this.phase === 'connected') this.notices.announce(t('meeting.reconnected'));
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
    const local = this.room.localParticipant;
    const views = this.participants().map((p): ParticipantView => {
      const isLocal = p === local;
      const identity = this.identityOf(p);
      if (!isLocal) this.names.set(identity, this.nameOf(p));
      const micPub = p.getTrackPublication(Track.Source.Microphone);
      const camPub = p.getTrackPublication(Track.Source.Camera);
      let camTrack = camPub && !camPub.isMuted ? (camPub.videoTrack as VideoTrack | undefined) : undefined;
      if (isLocal && !camTrack && this.pendingVideo) camTrack = this.pendingVideo;
      const sharePub = p.getTrackPublication(Track.Source.ScreenShare);
      return {
        identity,
        isLocal,
        common: {
          name: isLocal ? t('tile.you', { name: this.nameOf(p) }) : this.nameOf(p),
          micMuted: !micPub || micPub.isMuted,
          hand: p.attributes?.hand === 'up',
          quality: p.connectionQuality,
          matrixId: matrixIdOf(p),
        },
        speaking: p.isSpeaking,
        camera: camTrack,
        share: sharePub ? { track: !sharePub.isMuted ? (sharePub.videoTrack as VideoTrack | undefined) : undefined } : undefined,
      };
    });
    this.stage.sync(views);
  }

  private layout(): void {
    if (this.phase !== 'done') this.stage.layout();
  }

  private renderParticipants(): void {
    const people = this.participants();
    const count = people.length;
    this.headerCount.textContent = t('meeting.count', { count });
    this.moderation.setActive(isModerator(this.room.localParticipant));
    this.side.renderParticipants(people, this.room.localParticipant);
  }

  private updateControls(): void {
    const lp = this.room.localParticipant;
    this.buttons.update({
      mic: lp.isMicrophoneEnabled || (!!this.media.audio && !lp.getTrackPublication(Track.Source.Microphone)),
      camera: lp.isCameraEnabled || !!this.pendingVideo,
      screen: lp.isScreenShareEnabled,
      hand: lp.attributes?.hand === 'up',
      layout: this.stage.mode,
    });
    const lpQuality = lp.connectionQuality;
    this.qualityIndicator.dataset.quality = lpQuality;
    const label = t('quality.label', { quality: qualityLabel(lpQuality) });
    this.qualityIndicator.setAttribute('aria-label', label);
    this.qualityIndicator.title = label;
  }

  // ---- actions ------------------------------------------------------------------------

  /** Turns the microphone or the camera on or off (once the first publish is done). */
  private async toggleDevice(kind: 'mic' | 'camera'): Promise<void> {
    if (this.phase !== 'connected') return;
    await this.publishing;
    const lp = this.room.localParticipant;
    const mic = kind === 'mic';
    const button = this.buttons.byId[mic ? 'toggle-mic' : 'toggle-camera'];
    button.disabled = true;
    try {
      if (mic) {
        await lp.setMicrophoneEnabled(!lp.isMicrophoneEnabled, audioCaptureOptions(this.devices.audioinput));
        this.notices.announce(t(lp.isMicrophoneEnabled ? 'meeting.micOnNow' : 'meeting.micOffNow'));
      } else {
        await lp.setCameraEnabled(!lp.isCameraEnabled, videoCaptureOptions(this.devices.videoinput), { simulcast: true });
        this.notices.announce(t(lp.isCameraEnabled ? 'meeting.cameraOnNow' : 'meeting.cameraOffNow'));
      }
    } catch (error) {
      const denied = isMediaDenied(error);
      this.notices.toast(t(mic ? (denied ? 'meeting.micDenied' : 'meeting.micFailed') : (denied ? 'meeting.cameraDenied' : 'meeting.cameraFailed')));
    } finally {
      button.disabled = false;
      this.scheduleRender();
    }
  }

  private async toggleScreen(): Promise<void> {
    if (this.phase !== 'connected') return;
    const lp = this.room.localParticipant;
    const button = this.buttons.byId['toggle-screen'];
    button.disabled = true;
    try {
      await lp.setScreenShareEnabled(!lp.isScreenShareEnabled, { audio: true, selfBrowserSurface: 'exclude', surfaceSwitching: 'include', systemAudio: 'include' });
    } catch (error) {
      // Cancelling the browser's picker is not an error worth showing.
      if (!(error instanceof DOMException && error.name === 'NotAllowedError')) this.notices.toast(t('meeting.screenFailed'));
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
      this.notices.announce(t(up ? 'meeting.handUp' : 'meeting.handDown'));
    } catch {
      this.notices.toast(t('meeting.actionFailed'));
    }
    this.scheduleRender();
  }

  private toggleLayout(): void {
    const mode = this.stage.toggleMode();
    this.notices.announce(t(mode === 'grid' ? 'meeting.layoutIsGrid' : 'meeting.layoutIsSpeaker'));
    this.scheduleRender();
  }
}
