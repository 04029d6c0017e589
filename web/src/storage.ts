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

