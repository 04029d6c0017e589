// Keyboard shortcuts (one letter each, Shift+Q to leave; they can be turned off, which is
// remembered) and the help dialog that lists them.

import { h, isTypingTarget } from './dom';
import { icon } from './icons';
import { t, type Key } from './i18n';
import { loadBool, saveBool } from './storage';

export interface Shortcut {
  /** `KeyboardEvent.key`, lower case. */
  key: string;
  shift?: boolean;
  label: Key;
  run: () => void;
}

export interface ShortcutOptions {
  /** Escape was pressed: true when the meeting closed something with it. */
  escape: () => boolean;
  /** True while a dialog of the meeting is open (shortcuts wait). */
  paused: () => boolean;
}

export class Shortcuts {
  readonly helpDialog = h('dialog', { class: 'dialog', 'aria-labelledby': 'help-heading' });
  private enabled = loadBool('shortcuts', true);

  constructor(
    private readonly list: Shortcut[],
    private readonly options: ShortcutOptions,
  ) {}

  listen(): void {
    document.addEventListener('keydown', this.onKeyDown);
  }

  stop(): void {
    document.removeEventListener('keydown', this.onKeyDown);
  }

  openHelp(): void {
    if (!this.helpDialog.open) this.helpDialog.showModal();
  }

  private readonly onKeyDown = (e: KeyboardEvent): void => {
    if (e.key === 'Escape' && this.options.escape()) return;
    if (!this.enabled || e.ctrlKey || e.metaKey || e.altKey || e.repeat) return;
    if (isTypingTarget(e.target) || this.helpDialog.open || this.options.paused()) return;
    const key = e.key.toLowerCase();
    const shortcut = this.list.find((s) => s.key === key && (s.key === '?' || !!s.shift === e.shiftKey));
    if (!shortcut) return;
    e.preventDefault();
    shortcut.run();
  };

  /** Fills the help dialog: the table of shortcuts and the switch that turns them off. */
  buildHelp(): void {
    const rows = this.list.map((s) =>
      h('tr', {}, h('td', {}, h('kbd', {}, s.shift ? `${t('help.shift')} + ${s.key.toUpperCase()}` : s.key.toUpperCase())), h('td', {}, t(s.label))),
    );
    rows.push(h('tr', {}, h('td', {}, h('kbd', {}, t('help.escape'))), h('td', {}, t('help.escapeAction'))));
    const toggle = h('input', { type: 'checkbox', id: 'shortcuts-on', checked: this.enabled });
    toggle.addEventListener('change', () => {
      this.enabled = toggle.checked;
      saveBool('shortcuts', this.enabled);
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
}
