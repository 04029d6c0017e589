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
import { ApiError, getMeeting, joinMeeting, type JoinResponse } from './api';
import { clear, h, toggleAttr } from './dom';
import { errorBox, isMediaDenied, kindOfApiError, showErrorScreen, type ErrorOptions } from './errors';
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

    const form = h(
      'form',
      { class: 'join-form', novalidate: true, onsubmit: (e: Event) => void this.submit(e) },
      h('label', { for: 'display-name' }, t('prejoin.name')),
      this.nameInput,
      this.nameError,
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

  private fail(kind: Parameters<typeof showErrorScreen>[1], detail?: string, meeting?: ErrorOptions['meeting']): void {
    this.destroy(true);
    showErrorScreen(this.root, kind, { detail, meeting });
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

  private async submit(event: Event): Promise<void> {
    event.preventDefault();
    if (this.joining) return;
    const name = this.nameInput.value.trim().replace(/\s+/g, ' ');
    if (!name) {
      this.setNameError('prejoin.nameRequired');
      this.nameInput.focus();
      return;
    }
    save('name', name);
    diagnostics.timings.joinClicked = performance.now();
    this.joining = true;
    this.joinButton.disabled = true;
    this.updateToggles();
    this.status.textContent = t('prejoin.joining');
    let join: JoinResponse;
    try {
      join = await joinMeeting(this.slug, name);
    } catch (error) {
      this.joining = false;
      this.joinButton.disabled = false;
      this.status.textContent = '';
      this.updateToggles();
      if (error instanceof ApiError) {
        const kind = kindOfApiError(error);
        if (kind === null) {
          this.setNameError('prejoin.nameInvalid', error.message);
          this.nameInput.focus();
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
        this.fail(kind, error.message);
        return;
      }
      this.fail('generic', String(error));
      return;
    }
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

