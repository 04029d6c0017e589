// What the page remembers in localStorage (all keys prefixed "tchap-visio."). Storage may
// be unavailable (private modes, disabled cookies): every access is best effort.

const PREFIX = 'tchap-visio.';

export function load(key: string): string | null {
  try {
    return window.localStorage.getItem(PREFIX + key);
  } catch {
    return null;
  }
}

export function save(key: string, value: string): void {
  try {
    window.localStorage.setItem(PREFIX + key, value);
  } catch {
    /* storage unavailable: nothing to remember */
  }
}

export function loadBool(key: string, fallback: boolean): boolean {
  const value = load(key);
  return value === null ? fallback : value === '1';
}

export function saveBool(key: string, value: boolean): void {
  save(key, value ? '1' : '0');
}

function randomId(): string {
  const bytes = new Uint8Array(16);
  crypto.getRandomValues(bytes); // available outside secure contexts, unlike randomUUID
  return Array.from(bytes, (b) => b.toString(16).padStart(2, '0')).join('');
}

/** A random id for this browser, created once and sent with every join. */
export function browserId(): string {
  let id = load('browser-id');
  if (!id || !/^[A-Za-z0-9_-]{8,64}$/.test(id)) {
    id = randomId();
    save('browser-id', id);
  }
  return id;
}
