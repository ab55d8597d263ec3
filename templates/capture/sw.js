/* Service worker of the capture app (served at /sw.js, scope /).
 *
 * It caches the app shell only, under a cache named after the shell's version, so the app opens
 * without a network. API answers, photos, logins and every other URL always go to the network:
 * nothing with patient data is ever put in a cache (the prior photo, POST /api/v1/prior, is
 * not even a GET). */
"use strict";

const VERSION = {{ version|tojson }};
const SHELL = {{ shell|tojson }};
const CACHE = `ebiw-shell-${VERSION}`;
const SHELL_PATHS = new Set(SHELL);

self.addEventListener("install", (event) => {
  event.waitUntil((async () => {
    const cache = await caches.open(CACHE);
    await cache.addAll(SHELL.map((url) => new Request(url, { cache: "reload" })));
    await self.skipWaiting();
  })());
});

self.addEventListener("activate", (event) => {
  event.waitUntil((async () => {
    const names = await caches.keys();
    await Promise.all(names.filter((name) => name.startsWith("ebiw-shell-") && name !== CACHE)
      .map((name) => caches.delete(name)));
    await self.clients.claim();
  })());
});

self.addEventListener("fetch", (event) => {
  const request = event.request;
  if (request.method !== "GET") return;
  const url = new URL(request.url);
  if (url.origin !== self.location.origin || url.search || !SHELL_PATHS.has(url.pathname)) {
    return;  // not part of the shell: straight to the network, never cached
  }
  event.respondWith((async () => {
    const cached = await caches.match(url.pathname, { cacheName: CACHE });
    return cached || fetch(request);
  })());
});
