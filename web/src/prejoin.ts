// The pre-join screen: title, name, camera preview, microphone level, device choice.
// The tracks it opens are handed to the meeting, so joining does not reopen devices.

import {
  createLocalAudioTrack,
  createLocalTracks,
  createLocalVideoTrack,
  LocalAudioTrack,
  LocalVideoTrack,
  MediaDeviceFailure,
  Room,
  supportsAudioOutputSelection,
  VideoPresets,
  type AudioCaptureOptions,
  type VideoCaptureOptions,
} from 'livekit-client';
import { IdentifyStep, LobbyStep } from './access';
import { ApiError, getMeeting, joinMeeting, type JoinResponse, type LobbyTicket } from './api';
import { clear, h, toggleAttr } from './dom';
import { errorBox, isMediaDenied, kindOfApiError, showErrorScreen, type ErrorKind, type ErrorOptions } from './errors';
import { icon } from './icons';
import { langSwitchLink, t } from './i18n';
import { load, loadBool, save, saveBool } from './storage';
import { diagnostics } from './diagnostics';

export interface DeviceChoice {
  videoinput?: string;
  audioinput?: string;
  audiooutput?: string;
}

export interface LocalMedia {
  video?: LocalVideoTrack;
  audio?: LocalAudioTrack;
}

export interface Joined {
  name: string;
  /** The link's slug (for the chat history). */
  slug: string;
  join: JoinResponse;
  /**
   * The tracks opened on the pre-join screen. A promise: the camera or microphone may
   * still be opening (or its permission prompt still open) when Join is clicked, and
   * the meeting connects meanwhile.
   */
  media: Promise<LocalMedia>;
  devices: DeviceChoice;
}

export function videoCaptureOptions(deviceId?: string): VideoCaptureOptions {
  return { deviceId, resolution: VideoPresets.h720.resolution };
}

export function audioCaptureOptions(deviceId?: string): AudioCaptureOptions {
  return { deviceId, echoCancellation: true, noiseSuppression: true, autoGainControl: true };
}

const DEVICE_KINDS = ['videoinput', 'audioinput', 'audiooutput'] as const;
type DeviceKind = (typeof DEVICE_KINDS)[number];

/**
 * Fills a device <select>. `current` is the device in use (or remembered); an empty
 * list gets one disabled "none" option so the control keeps its label.
 */
export async function fillDeviceSelect(select: HTMLSelectElement, kind: DeviceKind, current?: string): Promise<void> {
  let devices: MediaDeviceInfo[] = [];
  try {
    devices = await Room.getLocalDevices(kind, false);
  } catch {
    devices = [];
  }
  // Chrome lists "default" and "communications" aliases; keep them, they follow the OS.
  devices = devices.filter((d) => d.deviceId !== '');
  clear(select);
  if (kind === 'audiooutput' && (!supportsAudioOutputSelection() || devices.length === 0)) {
    select.appendChild(h('option', { value: '' }, t('prejoin.systemDefault')));
    select.disabled = !supportsAudioOutputSelection() || devices.length === 0;
    return;
  }
  if (devices.length === 0) {
    select.appendChild(h('option', { value: '' }, kind === 'videoinput' ? t('prejoin.noCamera') : t('prejoin.noMic')));
    select.disabled = true;
    return;
  }
  select.disabled = false;
  const fallbackLabel = kind === 'videoinput' ? 'prejoin.camera' : kind === 'audioinput' ? 'prejoin.mic' : 'prejoin.speaker';
  devices.forEach((device, index) => {
    const option = h('option', { value: device.deviceId }, device.label || `${t(fallbackLabel)} ${index + 1}`);
    if (device.deviceId === current) option.selected = true;
    select.appendChild(option);
  });
}

/** Live microphone level from a Web Audio analyser, shown as a bar. */
export class MicMeter {
  private context: AudioContext | null = null;
  private source: MediaStreamAudioSourceNode | null = null;
  private frame = 0;
  private lastPublished = 0;
  private readonly resume = () => void this.context?.resume().catch(() => undefined);

  constructor(private readonly el: HTMLElement) {}

  start(track: MediaStreamTrack): void {
    this.stop();
    try {
      this.context = new AudioContext();
    } catch {
      return;
    }
    const analyser = this.context.createAnalyser();
    analyser.fftSize = 512;
    this.source = this.context.createMediaStreamSource(new MediaStream([track]));
    this.source.connect(analyser);
    this.resume();
    // Autoplay policies may keep the context suspended until the first gesture.
    document.addEventListener('pointerdown', this.resume, { once: true });
    document.addEventListener('keydown', this.resume, { once: true });
    const buffer = new Float32Array(analyser.fftSize);
    const tick = (now: number) => {
      analyser.getFloatTimeDomainData(buffer);
      let sum = 0;
      for (const sample of buffer) sum += sample * sample;
      const rms = Math.sqrt(sum / buffer.length);
      const level = Math.min(1, Math.sqrt(rms * 4));
      this.el.style.setProperty('--level', level.toFixed(3));
      if (now - this.lastPublished > 150) {
        this.lastPublished = now;
        this.el.dataset.level = String(Math.round(level * 100));
      }
      this.frame = requestAnimationFrame(tick);
    };
    this.frame = requestAnimationFrame(tick);
    this.el.dataset.active = 'true';
  }

  stop(): void {
    cancelAnimationFrame(this.frame);
    document.removeEventListener('pointerdown', this.resume);
    document.removeEventListener('keydown', this.resume);
    this.source?.disconnect();
    this.source = null;
    void this.context?.close().catch(() => undefined);
    this.context = null;
    this.el.style.setProperty('--level', '0');
    this.el.dataset.level = '0';
    this.el.dataset.active = 'false';
  }
}

export class PreJoin {
  private video?: LocalVideoTrack;
  private audio?: LocalAudioTrack;
  private cameraOn = loadBool('camera-on', true);
  private micOn = loadBool('mic-on', true);
  private readonly devices: DeviceChoice = {
    videoinput: load('device.videoinput') ?? undefined,
    audioinput: load('device.audioinput') ?? undefined,
    audiooutput: load('device.audiooutput') ?? undefined,
  };
  private gone = false;
  /** Set once the tracks belong to the meeting: nothing here may stop them any more. */
  private handedOver = false;
  private joining = false;
  /** Camera and microphone operations, one after the other. */
  private mediaTask: Promise<void> = Promise.resolve();
  private busy = false;

  private readonly previewVideo = h('video', {
    'data-testid': 'preview',
    class: 'preview-video mirrored',
    muted: true,
    playsinline: true,
    autoplay: true,
    'aria-label': t('prejoin.previewLabel'),
  });
  private readonly previewOff = h('div', { class: 'preview-off', hidden: true }, icon('camOff', 'icon big'), h('span', {}, t('prejoin.cameraOff')));
  private readonly level = h('div', {
    class: 'mic-level',
    'data-testid': 'mic-level',
    role: 'img',
    'aria-label': t('prejoin.micLevel'),
    'data-level': '0',
  }, h('span', { class: 'mic-level-bar' }));
  private readonly meter = new MicMeter(this.level);
  private readonly cameraToggle = h('button', { type: 'button', class: 'round-btn', 'data-testid': 'prejoin-camera-toggle' });
  private readonly micToggle = h('button', { type: 'button', class: 'round-btn', 'data-testid': 'prejoin-mic-toggle' });
  private readonly mediaMessage = h('div', { class: 'media-message' });
  private readonly title = h('h1', { 'data-testid': 'meeting-title', class: 'meeting-title' }, t('prejoin.loadingTitle'));
  private readonly nameInput = h('input', {
    id: 'display-name',
    name: 'name',
    type: 'text',
    autocomplete: 'name',
    required: true,
    maxlength: '64',
    spellcheck: 'false',
    'aria-describedby': 'name-error',
  });
  private readonly nameError = h('p', { id: 'name-error', class: 'field-error', hidden: true });
  private readonly cameraSelect = h('select', { id: 'camera-select', 'data-testid': 'camera-select' });
  private readonly micSelect = h('select', { id: 'mic-select', 'data-testid': 'mic-select' });
  private readonly speakerSelect = h('select', { id: 'speaker-select', 'data-testid': 'speaker-select' });
  private readonly joinButton = h('button', { type: 'submit', class: 'btn primary join-btn', 'data-testid': 'join' }, t('prejoin.join'));
  private readonly status = h('p', { class: 'join-status', role: 'status', 'aria-live': 'polite' });
  /** How the person joins: identified as a member of the room, or as a guest. */
  private joinAs: 'member' | 'guest' = load('join-as') === 'member' ? 'member' : 'guest';
  private readonly memberRadio = h('input', { type: 'radio', name: 'join-as', id: 'join-as-member', value: 'member', 'data-testid': 'join-as-member', 'aria-describedby': 'join-as-member-hint' });
  private readonly guestRadio = h('input', { type: 'radio', name: 'join-as', id: 'join-as-guest', value: 'guest', 'data-testid': 'join-as-guest', 'aria-describedby': 'join-as-guest-hint' });
  private form: HTMLFormElement | null = null;
  /** Where the identity code, the waiting room and refusals show, in place of the form. */
  private readonly stepArea = h('div', { class: 'step-area', hidden: true });
  private identify: IdentifyStep | null = null;
  private lobby: LobbyStep | null = null;
  private readonly onDeviceChange = () => void this.refreshDevices();

  constructor(
    private readonly root: HTMLElement,
    private readonly slug: string,
    private readonly onJoined: (joined: Joined) => void,
  ) {}

  start(): void {
    this.render();
    void this.loadTitle();
    void this.queueMedia(() => this.acquireInitial());
    navigator.mediaDevices?.addEventListener?.('devicechange', this.onDeviceChange);
  }

  private render(): void {
    clear(this.root);
    this.nameInput.value = load('name') ?? '';
    this.cameraToggle.addEventListener('click', () => void this.queueMedia(() => this.toggleCamera()));
    this.micToggle.addEventListener('click', () => void this.queueMedia(() => this.toggleMic()));
    this.cameraSelect.addEventListener('change', () => void this.queueMedia(() => this.chooseDevice('videoinput', this.cameraSelect.value)));
    this.micSelect.addEventListener('change', () => void this.queueMedia(() => this.chooseDevice('audioinput', this.micSelect.value)));
    this.speakerSelect.addEventListener('change', () => void this.queueMedia(() => this.chooseDevice('audiooutput', this.speakerSelect.value)));
    this.nameInput.addEventListener('input', () => this.setNameError(null));

    this.memberRadio.checked = this.joinAs === 'member';
    this.guestRadio.checked = this.joinAs === 'guest';
    for (const radio of [this.memberRadio, this.guestRadio]) {
      radio.addEventListener('change', () => {
        if (!radio.checked) return;
        this.joinAs = radio.value === 'member' ? 'member' : 'guest';
        save('join-as', this.joinAs);
        this.updateJoinButton();
      });
    }
    const form = h(
      'form',
      { class: 'join-form', novalidate: true, onsubmit: (e: Event) => void this.submit(e) },
      h('label', { for: 'display-name' }, t('prejoin.name')),
      this.nameInput,
      this.nameError,
      h(
        'fieldset',
        { class: 'join-as', 'data-testid': 'join-as' },
        h('legend', {}, t('prejoin.who')),
        h('div', { class: 'choice' }, this.memberRadio,
          h('label', { for: 'join-as-member' }, t('prejoin.asMember')),
          h('p', { class: 'choice-hint', id: 'join-as-member-hint' }, t('prejoin.asMemberHint'))),
        h('div', { class: 'choice' }, this.guestRadio,
          h('label', { for: 'join-as-guest' }, t('prejoin.asGuest')),
          h('p', { class: 'choice-hint', id: 'join-as-guest-hint' }, t('prejoin.asGuestHint'))),
      ),
      h(
        'details',
        { class: 'devices', open: window.matchMedia('(min-width: 720px)').matches },
        h('summary', {}, t('prejoin.devices')),
        h('label', { for: 'camera-select' }, t('prejoin.camera')),
        this.cameraSelect,
        h('label', { for: 'mic-select' }, t('prejoin.mic')),
        this.micSelect,
        h('label', { for: 'speaker-select' }, t('prejoin.speaker')),
        this.speakerSelect,
      ),
      this.joinButton,
      this.status,
    );
    this.form = form;
    this.updateJoinButton();

    const main = h(
      'main',
      { class: 'screen prejoin', id: 'main' },
      h(
        'div',
        { class: 'prejoin-card' },
        h(
          'section',
          { class: 'preview-pane', 'aria-label': t('prejoin.previewSection') },
          h('div', { class: 'preview-box' }, this.previewVideo, this.previewOff,
            h('div', { class: 'preview-toggles' }, this.micToggle, this.cameraToggle)),
          this.level,
          this.mediaMessage,
        ),
        h(
          'section',
          { class: 'join-pane', 'aria-labelledby': 'join-heading' },
          h('p', { class: 'eyebrow', id: 'join-heading' }, t('prejoin.heading')),
          this.title,
          form,
          this.stepArea,
        ),
      ),
      h('footer', { class: 'prejoin-footer' }, h('span', {}, t('app.name')), langSwitchLink()),
    );
    this.root.appendChild(main);
    this.updateToggles();
    void this.refreshDevices();
    if (!this.nameInput.value) this.nameInput.focus();
  }

  private async loadTitle(): Promise<void> {
    try {
      const info = await getMeeting(this.slug);
      if (this.gone) return;
      if (info.state === 'ended') {
        this.fail('ended', undefined, { title: info.title, endedAt: info.ended_at });
        return;
      }
      this.title.textContent = info.title || t('prejoin.untitled');
      document.title = `${info.title || t('prejoin.untitled')} – ${t('app.name')}`;
    } catch (error) {
      if (this.gone) return;
      // Only a real "not found" from our API ends here; an older server without the
      // endpoint (plain 404) or a hiccup leaves the generic title and lets the join decide.
      if (error instanceof ApiError && error.isJson && (error.status === 404 || error.status === 410)) {
        this.fail(kindOfApiError(error) ?? 'not-found', error.message);
        return;
      }
      this.title.textContent = t('prejoin.untitled');
    }
  }

  private fail(kind: ErrorKind, detail?: string, meeting?: ErrorOptions['meeting'], body?: string): void {
    this.destroy(true);
    showErrorScreen(this.root, kind, { detail, meeting, body });
  }

  private queueMedia(op: () => Promise<void>): Promise<void> {
    const run = async () => {
      try {
        await op();
      } catch (error) {
        console.warn('media operation failed', error);
      }
      // The screen went away (an error screen) while a device was opening: close it.
      if (this.gone && !this.handedOver) {
        this.video?.stop();
        this.audio?.stop();
        this.video = undefined;
        this.audio = undefined;
      }
    };
    this.mediaTask = this.mediaTask.then(run);
    return this.mediaTask;
  }

  private async acquireInitial(): Promise<void> {
    if (!navigator.mediaDevices?.getUserMedia) {
      this.cameraOn = false;
      this.micOn = false;
      this.showMediaProblem('media-denied', t('prejoin.insecure'));
      this.updateToggles();
      return;
    }
    if (!this.cameraOn && !this.micOn) return;
    this.busy = true;
    this.updateToggles();
    try {
      const tracks = await createLocalTracks({
        video: this.cameraOn ? videoCaptureOptions(this.devices.videoinput) : false,
        audio: this.micOn ? audioCaptureOptions(this.devices.audioinput) : false,
      });
      for (const track of tracks) {
        if (track instanceof LocalVideoTrack) this.video = track;
        if (track instanceof LocalAudioTrack) this.audio = track;
      }
    } catch (error) {
      if (isMediaDenied(error)) {
        this.cameraOn = false;
        this.micOn = false;
        this.showMediaProblem('media-denied');
      } else {
        // One of the two may be missing or busy: try them one by one.
        if (this.cameraOn) this.video = await this.openVideo();
        if (this.micOn) this.audio = await this.openAudio();
      }
    } finally {
      this.busy = false;
    }
    if (this.gone) {
      if (!this.handedOver) {
        this.video?.stop();
        this.audio?.stop();
      }
      return;
    }
    this.attachPreview();
    this.updateToggles();
    void this.refreshDevices();
  }

  private async openVideo(): Promise<LocalVideoTrack | undefined> {
    try {
      return await createLocalVideoTrack(videoCaptureOptions(this.devices.videoinput));
    } catch (error) {
      this.cameraOn = false;
      this.reportDeviceError(error, 'camera');
      return undefined;
    }
  }

  private async openAudio(): Promise<LocalAudioTrack | undefined> {
    try {
      return await createLocalAudioTrack(audioCaptureOptions(this.devices.audioinput));
    } catch (error) {
      this.micOn = false;
      this.reportDeviceError(error, 'mic');
      return undefined;
    }
  }

  private reportDeviceError(error: unknown, which: 'camera' | 'mic'): void {
    if (isMediaDenied(error)) {
      this.showMediaProblem('media-denied');
      return;
    }
    const failure = MediaDeviceFailure.getFailure(error);
    const key =
      failure === MediaDeviceFailure.DeviceInUse
        ? which === 'camera' ? 'prejoin.cameraBusy' : 'prejoin.micBusy'
        : which === 'camera' ? 'prejoin.cameraMissing' : 'prejoin.micMissing';
    this.mediaMessage.appendChild(h('p', { class: 'media-note', role: 'status' }, t(key)));
  }

  private showMediaProblem(kind: 'media-denied', detail?: string): void {
    if (this.mediaMessage.querySelector(`[data-error="${kind}"]`)) return;
    this.mediaMessage.appendChild(errorBox(kind, { detail }));
  }

  private attachPreview(): void {
    if (this.gone) return;
    if (this.video) {
      this.video.attach(this.previewVideo);
      this.previewVideo.hidden = false;
      this.previewOff.hidden = true;
    } else {
      this.previewVideo.srcObject = null;
      this.previewVideo.hidden = true;
      this.previewOff.hidden = false;
    }
    if (this.audio) this.meter.start(this.audio.mediaStreamTrack);
    else this.meter.stop();
  }

  private updateToggles(): void {
    const cam = this.cameraOn;
    const mic = this.micOn;
    this.cameraToggle.replaceChildren(icon(cam ? 'cam' : 'camOff'));
    this.cameraToggle.setAttribute('aria-pressed', String(cam));
    this.cameraToggle.setAttribute('aria-label', t('prejoin.cameraToggle'));
    this.cameraToggle.title = cam ? t('prejoin.cameraIsOn') : t('prejoin.cameraIsOff');
    this.cameraToggle.classList.toggle('off', !cam);
    this.micToggle.replaceChildren(icon(mic ? 'mic' : 'micOff'));
    this.micToggle.setAttribute('aria-pressed', String(mic));
    this.micToggle.setAttribute('aria-label', t('prejoin.micToggle'));
    this.micToggle.title = mic ? t('prejoin.micIsOn') : t('prejoin.micIsOff');
    this.micToggle.classList.toggle('off', !mic);
    this.cameraToggle.disabled = this.busy || this.joining;
    this.micToggle.disabled = this.busy || this.joining;
    this.level.classList.toggle('off', !mic);
  }

  /** Runs one camera/microphone switch with the toggles disabled, then refreshes the preview. */
  private async switchDevice(change: () => Promise<void>): Promise<void> {
    if (this.busy) return;
    this.busy = true;
    this.updateToggles();
    try {
      await change();
    } finally {
      this.busy = false;
    }
    if (this.gone) return;
    this.attachPreview();
    this.updateToggles();
    void this.refreshDevices();
  }

  private toggleCamera(): Promise<void> {
    return this.switchDevice(async () => {
      if (this.cameraOn) {
        this.cameraOn = false;
        this.video?.stop();
        this.video = undefined;
      } else {
        this.cameraOn = true;
        this.video = await this.openVideo();
      }
      saveBool('camera-on', this.cameraOn);
    });
  }

  private toggleMic(): Promise<void> {
    return this.switchDevice(async () => {
      if (this.micOn) {
        this.micOn = false;
        this.audio?.stop();
        this.audio = undefined;
      } else {
        this.micOn = true;
        this.audio = await this.openAudio();
      }
      saveBool('mic-on', this.micOn);
    });
  }

  private async chooseDevice(kind: DeviceKind, deviceId: string): Promise<void> {
    this.devices[kind] = deviceId || undefined;
    save(`device.${kind}`, deviceId);
    if (kind === 'videoinput' && this.video) {
      this.video.stop();
      this.video = await this.openVideo();
      this.attachPreview();
      this.updateToggles();
    } else if (kind === 'audioinput' && this.audio) {
      this.audio.stop();
      this.audio = await this.openAudio();
      this.attachPreview();
      this.updateToggles();
    }
  }

  private async refreshDevices(): Promise<void> {
    const current = (track?: LocalVideoTrack | LocalAudioTrack) => track?.mediaStreamTrack.getSettings().deviceId;
    await Promise.all([
      fillDeviceSelect(this.cameraSelect, 'videoinput', current(this.video) ?? this.devices.videoinput),
      fillDeviceSelect(this.micSelect, 'audioinput', current(this.audio) ?? this.devices.audioinput),
      fillDeviceSelect(this.speakerSelect, 'audiooutput', this.devices.audiooutput),
    ]);
  }

  private setNameError(key: 'prejoin.nameRequired' | 'prejoin.nameInvalid' | null, detail?: string): void {
    toggleAttr(this.nameInput, 'aria-invalid', key !== null, 'true');
    this.nameError.hidden = key === null;
    this.nameError.textContent = key ? t(key) + (detail ? ` (${detail})` : '') : '';
  }

  private updateJoinButton(): void {
    this.joinButton.textContent = t(this.joinAs === 'member' ? 'prejoin.getCode' : 'prejoin.join');
  }

  /** The name as typed (spaces tidied), or null after saying it is missing. */
  private readName(): string | null {
    const name = this.nameInput.value.trim().replace(/\s+/g, ' ');
    if (!name) {
      this.setNameError('prejoin.nameRequired');
      this.nameInput.focus();
      return null;
    }
    save('name', name);
    return name;
  }

  private async submit(event: Event): Promise<void> {
    event.preventDefault();
    if (this.joining) return;
    const name = this.readName();
    if (!name) return;
    if (this.joinAs === 'member') {
      this.startIdentify(name);
      return;
    }
    await this.join(name);
  }

  /** Shows `step` in the join pane instead of the form, and moves the focus to `heading`. */
  private showStep(step: HTMLElement, heading: HTMLElement): void {
    if (this.gone) return;
    if (this.form) this.form.hidden = true;
    this.stepArea.hidden = false;
    this.stepArea.replaceChildren(step);
    heading.focus();
  }

  /** Back to the form (the choice, the name), the focus on the join button. */
  private backToForm(): void {
    this.identify?.stop();
    this.lobby?.stop();
    this.identify = null;
    this.lobby = null;
    this.joining = false;
    this.joinButton.disabled = false;
    this.status.textContent = '';
    this.updateToggles();
    this.stepArea.replaceChildren();
    this.stepArea.hidden = true;
    if (this.form) this.form.hidden = false;
    this.joinButton.focus();
  }

  /** The identity code, then the join with the verification once confirmed. */
  private startIdentify(name: string): void {
    this.identify?.stop();
    const step = new IdentifyStep(this.slug, { show: (el, heading) => this.showStep(el, heading) }, {
      verified: (verification) => void this.join(name, verification),
      cancelled: () => this.backToForm(),
    });
    this.identify = step;
    void step.start();
  }

  /** Asks to join (as identified with `verification`, or as a guest) and goes where the answer says. */
  private async join(name: string, verification?: string): Promise<void> {
    if (this.joining) return;
    diagnostics.timings.joinClicked = performance.now();
    this.joining = true;
    this.joinButton.disabled = true;
    this.updateToggles();
    this.status.textContent = t('prejoin.joining');
    let outcome: Awaited<ReturnType<typeof joinMeeting>>;
    try {
      outcome = await joinMeeting(this.slug, name, verification);
    } catch (error) {
      this.joining = false;
      this.joinButton.disabled = false;
      this.status.textContent = '';
      this.updateToggles();
      await this.refused(error, name, verification);
      return;
    }
    if (this.gone) return;
    if (outcome.kind === 'lobby') {
      this.waitInLobby(name, outcome.lobby);
      return;
    }
    this.enter(name, outcome.join);
  }

  /** A refused join: the name, an identity to redo, or a screen saying why. */
  private async refused(error: unknown, name: string, verification?: string): Promise<void> {
    if (!(error instanceof ApiError)) {
      this.fail('generic', String(error));
      return;
    }
    const kind = kindOfApiError(error);
    if (kind === null) {
      this.backToForm();
      this.setNameError('prejoin.nameInvalid', error.message);
      this.nameInput.focus();
      return;
    }
    if (kind === 'members-only' && !verification) {
      this.showMembersOnly(name, error.message);
      return;
    }
    if (kind === 'forbidden' && verification && !error.reason && this.identify) {
      // The verification was not usable (expired, or used meanwhile): a new code.
      this.identify.expired();
      return;
    }
    if (kind === 'not-found') {
      // The meeting may have ended while this screen was open: say so, not "unknown".
      const info = await getMeeting(this.slug).catch(() => null);
      if (info?.state === 'ended') {
        this.fail('ended', undefined, { title: info.title, endedAt: info.ended_at });
        return;
      }
    }
    const body = error.isJson && (error.status === 403 || kind === 'members-only') && error.reason ? error.message : undefined;
    this.fail(kind, error.message, undefined, body);
  }

  /** A guest at a members-only meeting: the server's sentence, and a way to identify. */
  private showMembersOnly(name: string, sentence: string): void {
    const heading = h('h2', { class: 'step-title', tabindex: '-1' }, t('err.membersOnly.title'));
    const identify = h('button', {
      type: 'button',
      class: 'btn primary',
      'data-testid': 'refusal-identify',
      onclick: () => {
        this.joinAs = 'member';
        this.memberRadio.checked = true;
        save('join-as', 'member');
        this.updateJoinButton();
        this.startIdentify(name);
      },
    }, t('refusal.identify'));
    const back = h('button', { type: 'button', class: 'btn', onclick: () => this.backToForm() }, t('refusal.back'));
    this.showStep(
      h('section', { class: 'access-step refusal', 'data-testid': 'refusal', 'data-reason': 'members_only', role: 'alert' },
        heading,
        h('p', { 'data-testid': 'refusal-text' }, sentence),
        h('div', { class: 'step-actions' }, identify, back)),
      heading,
    );
  }

  private waitInLobby(name: string, ticket: LobbyTicket): void {
    this.status.textContent = '';
    const step = new LobbyStep(this.slug, ticket, { show: (el, heading) => this.showStep(el, heading) }, {
      admitted: (join) => this.enter(name, join),
      finished: (kind) => this.fail(kind),
      cancelled: () => this.backToForm(),
    });
    this.lobby = step;
    step.start();
  }

  /** Hands the tracks to the meeting and goes in. */
  private enter(name: string, join: JoinResponse): void {
    if (this.gone) return;
    // Tracks still opening go to the meeting when ready; nothing here stops them now.
    this.handedOver = true;
    const media = this.mediaTask.then((): LocalMedia => {
      const handed = { video: this.video, audio: this.audio };
      this.video = undefined;
      this.audio = undefined;
      return handed;
    });
    this.destroy(false);
    this.onJoined({ name, slug: this.slug, join, media, devices: { ...this.devices } });
  }

  /** Leaves the screen; `stopTracks` false hands the open tracks to the meeting. */
  destroy(stopTracks: boolean): void {
    this.gone = true;
    this.identify?.stop();
    this.lobby?.stop();
    this.meter.stop();
    navigator.mediaDevices?.removeEventListener?.('devicechange', this.onDeviceChange);
    if (this.video) this.video.detach(this.previewVideo);
    if (stopTracks) {
      this.video?.stop();
      this.audio?.stop();
      this.video = undefined;
      this.audio = undefined;
    }
  }
}

