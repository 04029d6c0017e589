// A minimal Matrix widget host for Element Call's embedded build: the host side of the
// widget API (matrix-widget-api's ClientWidgetApi, loaded as window.mxwidgets from its
// browser bundle) with a WidgetDriver that does what the widget asks on a real
// homeserver, with a real user's access token: state and room events, delayed events
// (MSC4140), sticky events (MSC4354), to-device messages, room state, OpenID tokens,
// MatrixRTC transports (MSC4143); and a /sync loop that feeds the widget the room's new
// events, state and to-device messages. Only what a call in one unencrypted room needs.

const mx = window.mxwidgets;
const log = (...a) => console.log('[host]', ...a);

export class Host {
  /** spec: {homeserver, user_id, device_id, access_token, room_id, ec_url} */
  constructor(spec) {
    this.spec = spec;
    this.txn = 0;
    this.requests = [];
    this.stopped = false;
  }

  async hs(method, path, body, query = {}) {
    const url = new URL(`${this.spec.homeserver}${path}`);
    for (const [k, v] of Object.entries(query)) url.searchParams.set(k, v);
    const r = await fetch(url, {
      method,
      headers: { Authorization: `Bearer ${this.spec.access_token}`, ...(body ? { 'Content-Type': 'application/json' } : {}) },
      body: body === undefined ? undefined : JSON.stringify(body),
    });
    const text = await r.text();
    this.requests.push(`${method} ${url.pathname} ${r.status}`);
    if (!r.ok) throw new Error(`${method} ${url.pathname}: ${r.status} ${text}`);
    return text ? JSON.parse(text) : {};
  }

  txnId() {
    return `host-${Date.now()}-${this.txn++}`;
  }

  start() {
    const { spec } = this;
    const widgetId = 'element-call';
    const params = new URLSearchParams({
      widgetId,
      parentUrl: location.href,
      roomId: spec.room_id,
      userId: spec.user_id,
      deviceId: spec.device_id,
      baseUrl: spec.homeserver,
      lang: 'en',
      theme: 'dark',
      skipLobby: 'true',
      preload: 'false',
      confineToRoom: 'true',
      header: 'none',
      perParticipantE2EE: 'false',
      intent: 'join_existing',
    });
    const url = `${spec.ec_url}?${params}`;
    const iframe = document.createElement('iframe');
    iframe.allow = 'camera; microphone; display-capture; autoplay';
    iframe.style = 'width: 100%; height: 90vh; border: 0';
    const widget = new mx.Widget({ id: widgetId, creatorUserId: spec.user_id, type: 'm.custom', url, data: {} });
    const driver = this.driver();
    document.body.append(iframe);
    this.api = new mx.ClientWidgetApi(widget, iframe, driver);
    this.api.setViewedRoomId(spec.room_id);
    this.api.on('ready', () => {
      log('widget ready');
      this.ready = true;
      this.sync().catch((e) => log('sync failed', e));
    });
    this.api.on('action', (ev) => log('action', ev.detail?.action));
    // Element Call's own actions (join/hangup/device mute/always on screen...): answer {}.
    for (const action of ['io.element.join', 'im.vector.hangup', 'io.element.close', 'io.element.device_mute', 'set_always_on_screen']) {
      this.api.on(`action:${action}`, (ev) => {
        ev.preventDefault();
        this.api.transport.reply(ev.detail, {});
      });
    }
    iframe.src = url;
    this.iframe = iframe;
  }

  driver() {
    const host = this;
    const room = () => host.spec.room_id;
    class Driver extends mx.WidgetDriver {
      async validateCapabilities(requested) {
        log('capabilities', [...requested].join(' '));
        return requested;
      }
      async sendEvent(type, content, stateKey = null, roomId = null) {
        const r = roomId ?? room();
        const e = encodeURIComponent;
        const res =
          stateKey !== null && stateKey !== undefined
            ? await host.hs('PUT', `/_matrix/client/v3/rooms/${e(r)}/state/${e(type)}/${e(stateKey)}`, content)
            : await host.hs('PUT', `/_matrix/client/v3/rooms/${e(r)}/send/${e(type)}/${host.txnId()}`, content);
        return { roomId: r, eventId: res.event_id };
      }
      async sendStickyEvent(stickyMs, type, content, roomId = null) {
        const r = roomId ?? room();
        const e = encodeURIComponent;
        const res = await host.hs('PUT', `/_matrix/client/v3/rooms/${e(r)}/send/${e(type)}/${host.txnId()}`, content, { 'org.matrix.msc4354.sticky_duration_ms': stickyMs });
        return { roomId: r, eventId: res.event_id };
      }
      async sendDelayedEvent(delay, type, content, stateKey = null, roomId = null) {
        const r = roomId ?? room();
        const e = encodeURIComponent;
        const q = { 'org.matrix.msc4140.delay': delay };
        const res =
          stateKey !== null && stateKey !== undefined
            ? await host.hs('PUT', `/_matrix/client/v3/rooms/${e(r)}/state/${e(type)}/${e(stateKey)}`, content, q)
            : await host.hs('PUT', `/_matrix/client/v3/rooms/${e(r)}/send/${e(type)}/${host.txnId()}`, content, q);
        return { roomId: r, delayId: res.delay_id };
      }
      async sendDelayedStickyEvent(delay, stickyMs, type, content, roomId = null) {
        const r = roomId ?? room();
        const e = encodeURIComponent;
        const res = await host.hs('PUT', `/_matrix/client/v3/rooms/${e(r)}/send/${e(type)}/${host.txnId()}`, content, {
          'org.matrix.msc4140.delay': delay,
          'org.matrix.msc4354.sticky_duration_ms': stickyMs,
        });
        return { roomId: r, delayId: res.delay_id };
      }
      async updateDelayed(delayId, action) {
        await host.hs('POST', `/_matrix/client/unstable/org.matrix.msc4140/delayed_events/${encodeURIComponent(delayId)}`, { action });
      }
      cancelScheduledDelayedEvent(id) {
        return this.updateDelayed(id, 'cancel');
      }
      restartScheduledDelayedEvent(id) {
        return this.updateDelayed(id, 'restart');
      }
      sendScheduledDelayedEvent(id) {
        return this.updateDelayed(id, 'send');
      }
      async sendToDevice(type, encrypted, messages) {
        if (encrypted) throw new Error('this host does not encrypt to-device messages');
        await host.hs('PUT', `/_matrix/client/v3/sendToDevice/${encodeURIComponent(type)}/${host.txnId()}`, { messages });
      }
      async readRoomState(roomId, eventType, stateKey) {
        const state = await host.hs('GET', `/_matrix/client/v3/rooms/${encodeURIComponent(roomId)}/state`);
        return state.filter((ev) => ev.type === eventType && (stateKey === undefined || ev.state_key === stateKey)).map((ev) => ({ ...ev, room_id: roomId }));
      }
      async readRoomTimeline() {
        return [];
      }
      async readStickyEvents() {
        return [];
      }
      askOpenID(observer) {
        host
          .hs('POST', `/_matrix/client/v3/user/${encodeURIComponent(host.spec.user_id)}/openid/request_token`, {})
          .then((token) => observer.update({ state: mx.OpenIDRequestState.Allowed, token }))
          .catch((e) => {
            log('openid failed', e);
            observer.update({ state: mx.OpenIDRequestState.Blocked });
          });
      }
      async getRtcTransports() {
        const r = await host.hs('GET', '/_matrix/client/unstable/org.matrix.msc4143/rtc/transports');
        return { rtc_transports: r.rtc_transports ?? [] };
      }
      async navigate() {}
      async *getTurnServers() {}
      async getMediaConfig() {
        return {};
      }
      getKnownRooms() {
        return [room()];
      }
    }
    return new Driver();
  }

  /** /sync until stopped: new timeline events, state and to-device messages to the widget. */
  async sync() {
    let since;
    const filter = JSON.stringify({ room: { rooms: [this.spec.room_id], timeline: { limit: 50 } } });
    while (!this.stopped) {
      const q = { filter, timeout: since ? '10000' : '0' };
      if (since) q.since = since;
      const s = await this.hs('GET', '/_matrix/client/v3/sync', undefined, q);
      const first = since === undefined;
      since = s.next_batch;
      for (const msg of s.to_device?.events ?? []) {
        if (!first) await this.api.feedToDevice(msg, false).catch((e) => log('feedToDevice', e));
      }
      const joined = s.rooms?.join?.[this.spec.room_id];
      if (!joined || first) continue; // the widget reads the initial state itself
      for (const ev of joined.state?.events ?? []) await this.api.feedStateUpdate({ ...ev, room_id: this.spec.room_id }).catch((e) => log('feedStateUpdate', e));
      for (const ev of joined.timeline?.events ?? []) {
        const raw = { ...ev, room_id: this.spec.room_id };
        await this.api.feedEvent(raw).catch((e) => log('feedEvent', e));
        if (ev.state_key !== undefined) await this.api.feedStateUpdate(raw).catch((e) => log('feedStateUpdate', e));
      }
    }
  }
}
