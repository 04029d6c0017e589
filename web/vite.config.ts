import { defineConfig } from 'vite';

// The page is served by the tchap-visio binary: `/m/{slug}` answers `dist/index.html`
// (the same file for every slug) and `/assets/*` answers `dist/assets/*`, so every URL
// in the built HTML must be absolute under `/assets/`.
//
// `npm run dev` serves the page with hot reload and forwards the API to a running
// tchap-visio (TCHAP_VISIO_URL, default http://127.0.0.1:29330).
const backend = process.env.TCHAP_VISIO_URL ?? 'http://127.0.0.1:29330';

export default defineConfig({
  base: '/',
  build: {
    outDir: 'dist',
    assetsDir: 'assets',
    emptyOutDir: true,
    sourcemap: false,
    target: 'es2022',
    // livekit-client is one ~150 kB (gzip) module; one chunk is what we want.
    chunkSizeWarningLimit: 1200,
    // Icons and the favicon stay files under /assets rather than data: URLs.
    assetsInlineLimit: 0,
  },
  server: {
    proxy: {
      '/api': backend,
    },
  },
});
