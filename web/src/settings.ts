// The settings dialog: camera, microphone and speaker choice during the meeting (each
// choice is switched at once and remembered for the next visit).

import type { Room } from 'livekit-client';
import { h } from './dom';
import { icon } from './icons';
import { t } from './i18n';
import { fillDeviceSelect, type DeviceChoice } from './prejoin';
import { save } from './storage';

export class SettingsDialog {
  readonly el = h('dialog', { class: 'dialog', 'aria-labelledby': 'settings-heading' });
  private readonly camera = h('select', { id: 'settings-camera', 'data-testid': 'settings-camera-select' });
  private readonly mic = h('select', { id: 'settings-mic', 'data-testid': 'settings-mic-select' });
  private readonly speaker = h('select', { id: 'settings-speaker', 'data-testid': 'settings-speaker-select' });

  constructor(
    private readonly room: Room,
    /** The meeting's current choice, updated here. */
    private readonly devices: DeviceChoice,
    private readonly toast: (message: string) => void,
  ) {}

  get isOpen(): boolean {
    return this.el.open;
  }

  build(): void {
    const change = (kind: 'videoinput' | 'audioinput' | 'audiooutput', select: HTMLSelectElement) => {
      select.addEventListener('change', () => {
        const id = select.value;
        this.devices[kind] = id || undefined;
        save(`device.${kind}`, id);
        this.room.switchActiveDevice(kind, id).catch(() => this.toast(t('meeting.deviceFailed')));
      });
    };
    change('videoinput', this.camera);
    change('audioinput', this.mic);
    change('audiooutput', this.speaker);
    this.el.append(
      h('header', { class: 'panel-header' }, h('h2', { id: 'settings-heading' }, t('settings.title')),
        h('button', { type: 'button', class: 'icon-btn', 'aria-label': t('dialog.close'), title: t('dialog.close'), onclick: () => this.el.close() }, icon('close'))),
      h('div', { class: 'field' }, h('label', { for: 'settings-camera' }, t('prejoin.camera')), this.camera),
      h('div', { class: 'field' }, h('label', { for: 'settings-mic' }, t('prejoin.mic')), this.mic),
      h('div', { class: 'field' }, h('label', { for: 'settings-speaker' }, t('prejoin.speaker')), this.speaker),
    );
  }

  /** Lists the devices again, the active ones selected. */
  async fill(): Promise<void> {
    const room = this.room;
    await Promise.all([
      fillDeviceSelect(this.camera, 'videoinput', room.getActiveDevice('videoinput') ?? this.devices.videoinput),
      fillDeviceSelect(this.mic, 'audioinput', room.getActiveDevice('audioinput') ?? this.devices.audioinput),
      fillDeviceSelect(this.speaker, 'audiooutput', room.getActiveDevice('audiooutput') ?? this.devices.audiooutput),
    ]);
  }

  open(): void {
    void this.fill();
    if (!this.el.open) this.el.showModal();
  }
}
