// Waiting for answer files (acks, nacks, responses). The existence check is the truth: fs.watch
// only cuts the latency, and a poll every POLL_MS covers filesystems that send no events (network
// filesystems, Docker Desktop bind mounts). Every wait in the process shares one watch per folder
// and one poll timer; a watch event wakes only the waits for the file it names.

import fs from 'node:fs';
import path from 'node:path';

export const POLL_MS = 250;
const MAX_TIMER_MS = 2 ** 31 - 1; // setTimeout's limit: a longer delay would fire at once

const folders = new Map(); // folder -> { watcher, byName: Map<file name, Set<wake>> }
const everyWait = new Set();
let ticker = null;

function watchFolder(dir, entry) {
  let watcher;
  try {
    watcher = fs.watch(dir, { persistent: true }, (_event, filename) => {
      const name = filename ? filename.toString() : null;
      const wakes = name === null ? [...entry.byName.values()].flatMap((set) => [...set]) : [...(entry.byName.get(name) ?? [])];
      for (const wake of wakes) wake();
    });
  } catch {
    return null; // no such folder yet, no inotify watches left, ...: the poll covers it
  }
  watcher.on('error', () => {
    watcher.close();
    if (entry.watcher === watcher) entry.watcher = null;
  });
  return watcher;
}

function subscribe(files, wake) {
  const taken = [];
  for (const file of files) {
    const dir = path.dirname(file);
    const name = path.basename(file);
    let entry = folders.get(dir);
    if (!entry) {
      entry = { watcher: null, byName: new Map() };
      folders.set(dir, entry);
      entry.watcher = watchFolder(dir, entry);
    }
    if (!entry.byName.has(name)) entry.byName.set(name, new Set());
    entry.byName.get(name).add(wake);
    taken.push([dir, name]);
  }
  everyWait.add(wake);
  if (ticker === null) {
    ticker = setInterval(() => {
      for (const each of [...everyWait]) each();
    }, POLL_MS);
  }
  return () => {
    for (const [dir, name] of taken) {
      const entry = folders.get(dir);
      const set = entry?.byName.get(name);
      if (!set) continue;
      set.delete(wake);
      if (set.size === 0) entry.byName.delete(name);
      if (entry.byName.size === 0) {
        entry.watcher?.close();
        folders.delete(dir);
      }
    }
    everyWait.delete(wake);
    if (everyWait.size === 0 && ticker !== null) {
      clearInterval(ticker);
      ticker = null;
    }
  };
}

/**
 * Resolve with what `probe()` finds (any truthy value) once it finds it, or with null after
 * `timeoutMs`. `probe` runs at once (after the watches are armed, so nothing that arrives
 * meanwhile is missed), on every event for `files`, on every poll tick, and once more at the
 * deadline. Rejects with the signal's reason when `signal` aborts, or with probe's error.
 */
export function waitFor(files, probe, timeoutMs, signal) {
  return new Promise((resolve, reject) => {
    if (signal?.aborted) {
      reject(signal.reason ?? new Error('aborted'));
      return;
    }
    let done = false;
    let busy = false;
    let again = false;
    let expired = false;
    let unsubscribe = () => {};
    let timer = null;
    const onAbort = () => finish(signal.reason ?? new Error('aborted'));
    function finish(error, value) {
      if (done) return;
      done = true;
      unsubscribe();
      if (timer !== null) clearTimeout(timer);
      signal?.removeEventListener('abort', onAbort);
      if (error) reject(error);
      else resolve(value);
    }
    async function check() {
      if (done) return;
      if (busy) {
        again = true;
        return;
      }
      busy = true;
      try {
        do {
          again = false;
          const found = await probe();
          if (found) {
            finish(null, found);
            return;
          }
        } while (again && !done);
        if (expired) finish(null, null);
      } catch (error) {
        finish(error);
      } finally {
        busy = false;
      }
    }
    unsubscribe = subscribe(files, check);
    signal?.addEventListener('abort', onAbort, { once: true });
    if (timeoutMs <= MAX_TIMER_MS) { // longer (Infinity): until found or aborted
      timer = setTimeout(() => {
        expired = true;
        if (busy) again = true; // the running check looks once more, then ends the wait
        else check();
      }, Math.max(0, timeoutMs));
    }
    check();
  });
}
