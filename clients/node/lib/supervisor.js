// Is a supervisor serving this root? Told from <root>/.ipcpool/status.json alone, which the
// supervisor rewrites every [heartbeat] interval and leaves in its final state (stopped, halted,
// failed) when it ends. No pids and no /proc: the sender may run in another container, another
// pid namespace, or on the other side of a bind mount, where a pid means nothing.

import { promises as fsp } from 'node:fs';
import path from 'node:path';
import { STATE_DIR, resolveRoot } from './spool.js';

export const FINAL_STATES = Object.freeze(['stopped', 'halted', 'failed']);
// ipcpool health calls a status older than 3 intervals stuck; "gone" waits a little longer, and
// never less than MIN_STALE_MS, so a busy machine's late rewrite is not taken for a dead supervisor.
export const STALE_INTERVALS = 5;
export const MIN_STALE_MS = 5000;
// A supervisor writes its first status.json only once booted (workers spawned, queues scanned); its
// lock file is written the moment it starts. A lock newer than the last status, younger than this,
// is a supervisor starting up: not "none".
export const STARTING_GRACE_MS = 60000;

const seconds = (ms) => `${(ms / 1000).toFixed(1)}s`;

async function readStatus(file) {
  for (let attempt = 0; attempt < 3; attempt += 1) {
    let text;
    try {
      text = await fsp.readFile(file, 'utf8');
    } catch (error) {
      if (error.code === 'ENOENT') return { status: null };
      return { error: `cannot read ${file}: ${error.code || error.message}` };
    }
    try {
      const status = JSON.parse(text);
      if (status !== null && typeof status === 'object') return { status };
      return { error: `${file} is not a JSON object` };
    } catch {
      // rewritten in place on a full disk: it may be caught half-written; read it again
      await new Promise((resolve) => { setTimeout(resolve, 10); });
    }
  }
  return { error: `${file} does not parse` };
}

async function mtimeMs(file) {
  try {
    return (await fsp.stat(file)).mtimeMs;
  } catch {
    return null;
  }
}

/**
 * What status.json says of the root's supervisor:
 * `running` true (one is serving it), false (none is: no status.json, a final state, or a status
 * not rewritten for several heartbeat intervals), or null (cannot be told: unreadable, starting).
 */
export async function supervisorStatus(root, { now = Date.now() } = {}) {
  const resolved = resolveRoot(root);
  const stateDir = path.join(resolved, STATE_DIR);
  const statusFile = path.join(stateDir, 'status.json');
  const { status, error } = await readStatus(statusFile);
  if (error) return { running: null, root: resolved, detail: error };
  const writtenAtMs = status ? Number(status.writtenAt) * 1000 : NaN;
  const lockMs = await mtimeMs(path.join(stateDir, 'lock'));
  const startingAgo = lockMs !== null && !(lockMs <= writtenAtMs) ? now - lockMs : null;
  const starting = startingAgo !== null && startingAgo < STARTING_GRACE_MS;
  const none = (detail) => (starting
    ? {
      running: null,
      root: resolved,
      state: 'starting',
      detail: `a supervisor took the root's lock ${seconds(startingAgo)} ago and has not written status.json yet`,
    }
    : { running: false, root: resolved, state: status?.state ?? null, detail });
  if (!status) return none(`no ${statusFile}: no supervisor has run on this root`);
  const state = status.state;
  const pid = status.supervisor?.pid ?? null;
  if (FINAL_STATES.includes(state)) {
    return none(`status.json says the last supervisor (pid ${pid}) ${state} ${seconds(now - writtenAtMs)} ago`);
  }
  const interval = Number(status.interval) > 0 ? Number(status.interval) : 2;
  const age = now - writtenAtMs;
  const staleMs = Math.max(STALE_INTERVALS * interval * 1000, MIN_STALE_MS);
  if (!(age <= staleMs)) {
    return none(`status.json was last written ${Number.isNaN(age) ? 'at an unreadable time' : `${seconds(age)} ago`} `
      + `(every ${interval}s while a supervisor runs): its supervisor (pid ${pid}) is gone`);
  }
  return { running: true, root: resolved, state, detail: `supervisor pid ${pid} is ${state} (status ${seconds(age)} old)` };
}
