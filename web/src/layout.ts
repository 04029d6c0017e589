// The stage: the tiles, their order, and where each one goes: a grid with pages, or a
// focused tile (pinned, a remote screen share, or the speaker) with a strip, and on a
// phone a small floating self-view. Owns no connection: the meeting hands it what each
// participant shows (sync) and asks it to place the tiles (layout).

import { h } from './dom';
import { icon } from './icons';
import { t } from './i18n';
import { load, save } from './storage';
import { Tile, type TileSource, type TileState } from './tile';

export type Layout = 'grid' | 'speaker';

const PAGE_SIZE = 25;
const PAGE_SIZE_NARROW = 6;
const GAP = 8;

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

/** Puts exactly `children` in `parent`, in order, touching the DOM only when needed. */
function replaceIfChanged(parent: HTMLElement, children: HTMLElement[]): void {
  const current = parent.children;
  if (current.length === children.length && children.every((child, i) => current[i] === child)) return;
  parent.replaceChildren(...children);
}

/** What one participant shows: a camera tile always, a screen-share tile while sharing. */
export interface ParticipantView {
  identity: string;
  isLocal: boolean;
  /** The state both tiles share (the share tile has no hand and never speaks). */
  common: Omit<TileState, 'speaking' | 'pinned' | 'track'>;
  speaking: boolean;
  camera: TileState['track'];
  /** Present while the participant shares a screen (its track once subscribed). */
  share?: { track: TileState['track'] };
}

export class Stage {
  readonly el = h('main', { class: 'stage', 'aria-label': t('meeting.stage') });
  private readonly tiles = new Map<string, Tile>();
  /** Remote camera tile keys in display order (joins append; hidden speakers move up). */
  private order: string[] = [];
  /** Screen-share tile keys in the order they appeared. */
  private shares: string[] = [];
  private layoutMode: Layout = load('layout') === 'speaker' ? 'speaker' : 'grid';
  private pinned: string | null = null;
  private lastRemoteSpeaker: string | null = null;
  private page = 0;

  private readonly grid = h('div', { class: 'grid' });
  private readonly focusArea = h('div', { class: 'focus-area' });
  /** On a phone, the self-view floats small over the others instead of taking a cell. */
  private readonly selfView = h('div', { class: 'self-view' });
  // Tiles are groups, not list items: no list role here (axe-core: aria-required-children).
  private readonly strip = h('div', { class: 'strip' });
  private readonly pager = h('nav', { class: 'pager', 'aria-label': t('meeting.pages'), hidden: true });

  constructor(
    /** The local participant's identity (its camera tile is always there). */
    private readonly localIdentity: () => string,
    /** Called when a pin changes what should be shown. */
    private readonly changed: () => void,
  ) {
    this.el.append(this.grid, this.focusArea, this.strip, this.pager, this.selfView);
  }

  get mode(): Layout {
    return this.layoutMode;
  }

  /** Switches between grid and speaker view (remembered); unpins. Returns the new mode. */
  toggleMode(): Layout {
    this.layoutMode = this.layoutMode === 'grid' ? 'speaker' : 'grid';
    this.pinned = null;
    save('layout', this.layoutMode);
    return this.layoutMode;
  }

  /** A remote participant spoke: remembered for speaker view, and their tile moved onto the page being looked at. */
  speakerChanged(identity: string): void {
    this.lastRemoteSpeaker = identity;
    this.bringIntoView(`${identity}:camera`);
  }

  /** Creates, updates and removes tiles so that there is one per camera and per screen share in `views`. */
  sync(views: ParticipantView[]): void {
    const wanted = new Set<string>();
    for (const view of views) {
      const camKey = this.ensureTile(view.identity, 'camera', view.isLocal);
      wanted.add(camKey);
      this.tiles.get(camKey)!.update({ ...view.common, speaking: view.speaking, pinned: this.pinned === camKey, track: view.camera });
      if (view.share) {
        const shareKey = this.ensureTile(view.identity, 'screen_share', view.isLocal);
        wanted.add(shareKey);
        this.tiles.get(shareKey)!.update({ ...view.common, hand: false, speaking: false, pinned: this.pinned === shareKey, track: view.share.track });
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

  /** Removes every tile (the meeting is over). */
  destroy(): void {
    for (const tile of this.tiles.values()) tile.destroy();
    this.tiles.clear();
  }

  private togglePin(key: string): void {
    this.pinned = this.pinned === key ? null : key;
    this.changed();
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
    return `${this.localIdentity()}:camera`;
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
    return this.el.clientWidth < 600 ? PAGE_SIZE_NARROW : PAGE_SIZE;
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

  /** Places the tiles for the stage's current size. */
  layout(): void {
    const focus = this.focusKey();
    const keys = this.orderedKeys(focus);
    const el = (key: string) => this.tiles.get(key)!.el;
    const width = this.el.clientWidth;
    const height = this.el.clientHeight;
    this.el.classList.toggle('focus-layout', focus !== null);
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
}
