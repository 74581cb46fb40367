// The spool on disk, the sender's side (ipcpool/transport/spool/{layout,writes,outbox}.py):
// folders made with the modes ipcpool uses, messages written in tmp/ and renamed into messages/,
// never over a different queued message.

import { randomBytes } from 'node:crypto';
import fs, { constants as FS, promises as fsp } from 'node:fs';
import path from 'node:path';
import { IpcpoolError, MessageExists } from './errors.js';
import { checkGroupName } from './envelope.js';

export const SUBDIRS = Object.freeze(['tmp', 'messages', 'processing', 'acks', 'responses', 'errors']);
export const STATE_DIR = '.ipcpool';
export const DEFAULT_ROOT = 'data/ipc';

const PRIVATE_DIR = 0o700;
const PRIVATE_FILE = 0o600;
// "shared": writers in the root's group may write tmp/ and messages/ (sticky: none removes another's
// file) and read acks/ and responses/; the rest is the supervisor's.
const SHARED_DIRS = {
  '': 0o2750, tmp: 0o3770, messages: 0o3770, processing: 0o2700, acks: 0o2750, responses: 0o2750, errors: 0o2750,
};
const SHARED_FILE = 0o640;
const SHARED_MESSAGE_FILE = 0o640; // its writer alone may change a queued message (as ipcpool's own senders)

const O_NOFOLLOW = FS.O_NOFOLLOW ?? 0;
const O_NONBLOCK = FS.O_NONBLOCK ?? 0;
const OPEN_WRITE = FS.O_WRONLY | FS.O_CREAT | FS.O_EXCL | O_NOFOLLOW;
const OPEN_READ = FS.O_RDONLY | O_NOFOLLOW | O_NONBLOCK;
const MAX_ANSWER_BYTES = 1024 * 1024;

/** The spool root: the option, else $IPCPOOL_ROOT, else data/ipc (relative to the working directory). */
export function resolveRoot(root) {
  return path.resolve(root || process.env.IPCPOOL_ROOT || DEFAULT_ROOT);
}

/**
 * The mode to write in: the one given, else the root's own. A shared root is setgid (2750, as ipcpool makes it,
 * or a Kubernetes volume's 2775): its supervisor may be another user, who can read only files written 0640. A
 * private root (0700) lets no other user in, so writing 0600 there is right.
 */
export function checkMode(mode, root) {
  if (mode === undefined) {
    try {
      return root !== undefined && (fs.statSync(root).mode & 0o2000) ? 'shared' : 'private';
    } catch {
      return 'private'; // no root yet: this sender makes it, private
    }
  }
  if (mode !== 'private' && mode !== 'shared') {
    throw new TypeError(`mode must be 'private' or 'shared' (as [spool] mode), got ${JSON.stringify(mode)}`);
  }
  return mode;
}

export function checkDurability(durability = 'process') {
  if (durability !== 'process' && durability !== 'power') {
    throw new TypeError(`durability must be 'process' or 'power' (as [spool] durability), got ${JSON.stringify(durability)}`);
  }
  return durability;
}

export function dirMode(mode, sub = '') {
  return mode === 'shared' ? (SHARED_DIRS[sub] ?? 0o2750) : PRIVATE_DIR;
}

export function fileMode(mode, sub = '') {
  if (mode !== 'shared') return PRIVATE_FILE;
  return sub === 'tmp' || sub === 'messages' ? SHARED_MESSAGE_FILE : SHARED_FILE;
}

export function groupPath(root, group, sub, name) {
  return name === undefined ? path.join(root, group, sub) : path.join(root, group, sub, name);
}

export const ackPath = (root, group, id) => groupPath(root, group, 'acks', `${id}.ack`);
export const nackPath = (root, group, id) => groupPath(root, group, 'acks', `${id}.nack`);
export const responsePath = (root, group, id) => groupPath(root, group, 'responses', `${id}.json`);

/** mkdir with its mode set whatever the umask; a folder already there is left as it is (as the Python sender). */
async function mkdirMode(dir, mode) {
  try {
    await fsp.mkdir(dir, { mode });
  } catch (error) {
    if (error.code === 'EEXIST') return;
    throw error;
  }
  await fsp.chmod(dir, mode);
}

const ensured = new Map(); // root -> Set of groups whose folders this process made sure of

/** The root and its state folder, as the Python sender's ensure_root makes them. */
export async function ensureRoot(root, mode) {
  await fsp.mkdir(path.dirname(root), { recursive: true });
  await mkdirMode(root, dirMode(mode));
  await mkdirMode(path.join(root, STATE_DIR), dirMode(mode));
  await mkdirMode(path.join(root, STATE_DIR, 'deliveries'), PRIVATE_DIR);
}

/** A group's folders (idempotent); refuses a group folder that is a symlink. */
export async function ensureGroup(root, group, mode, { force = false } = {}) {
  checkGroupName(group);
  let groups = ensured.get(root);
  if (!force && groups?.has(group)) return;
  await ensureRoot(root, mode);
  const gdir = path.join(root, group);
  const folders = [[gdir, dirMode(mode)], ...SUBDIRS.map((sub) => [path.join(gdir, sub), dirMode(mode, sub)])];
  for (const [dir, dmode] of folders) {
    await mkdirMode(dir, dmode);
    const st = await fsp.lstat(dir);
    if (!st.isDirectory()) {
      throw new IpcpoolError(`${dir} is not a real directory (a symlink?); refusing group '${group}'`);
    }
  }
  if (!groups) ensured.set(root, (groups = new Set()));
  groups.add(group);
}

let lastStamp = 0;

// A sequence's files get rising modification times: after a supervisor's restart a sequence goes by
// modification time then name, and the kernel's coarse clock would tie files written one after another.
async function stampInOrder(handle) {
  lastStamp = Math.max(Date.now() / 1000, lastStamp + 1e-5);
  await handle.utimes(lastStamp, lastStamp);
}

let tmpCounter = 0;

/** Short and unguessable, never derived from the message's name: `.<pid>-<n>-<random>.tmp`. */
function tmpName() {
  tmpCounter += 1;
  return `.${process.pid}-${tmpCounter}-${randomBytes(6).toString('hex')}.tmp`;
}

async function unlinkQuietly(file) {
  try {
    await fsp.unlink(file);
  } catch (error) {
    if (error.code !== 'ENOENT') throw error;
  }
}

async function fsyncDir(dir) {
  const handle = await fsp.open(dir, FS.O_RDONLY | (FS.O_DIRECTORY ?? 0));
  try {
    await handle.sync();
  } finally {
    await handle.close();
  }
}

/** Whether the file holds exactly `data`; null when it is gone. */
async function sameBytes(file, data) {
  let handle;
  try {
    handle = await fsp.open(file, OPEN_READ);
  } catch (error) {
    return error.code === 'ENOENT' ? null : false;
  }
  try {
    const st = await handle.stat();
    if (st.size !== data.length) return false;
    const buffer = Buffer.alloc(data.length + 1);
    const { bytesRead } = await handle.read(buffer, 0, buffer.length, 0);
    return bytesRead === data.length && buffer.subarray(0, bytesRead).equals(data);
  } finally {
    await handle.close();
  }
}

/**
 * Move the written temp file to `final` unless a file of that name is there. Node has no
 * renameat2(RENAME_NOREPLACE), and link(2)+unlink(2) would show the supervisor a file with two
 * links, which it refuses as hostile (reads.py: "refused: a hard link"). So: look, then rename
 * (what ipcpool itself does on kernels without renameat2). The one gap: another writer placing
 * a different file of the same name between the look and the rename, microseconds apart.
 */
async function placeNoReplace(tmp, final, data, group, name) {
  for (let attempt = 0; attempt < 10; attempt += 1) {
    let exists = true;
    try {
      await fsp.lstat(final);
    } catch (error) {
      if (error.code !== 'ENOENT') throw error;
      exists = false;
    }
    if (!exists) {
      await fsp.rename(tmp, final);
      return true;
    }
    const same = await sameBytes(final, data);
    if (same === null) continue; // claimed or removed meanwhile: look again
    await unlinkQuietly(tmp);
    if (!same) throw new MessageExists(group, name);
    return false; // the very same message is queued: a re-publish (the ack retry path) is a success
  }
  throw new IpcpoolError(`cannot publish ${name} in group '${group}': a file of that name keeps appearing and `
    + 'vanishing in messages/');
}

/**
 * Atomically place a message file in `<root>/<group>/messages/`: written in `tmp/`, then renamed,
 * so no reader sees it half-written; never replaces a different queued message (MessageExists).
 * Returns true when it was placed, false when the identical bytes were queued already.
 */
export async function publishFile(root, group, name, data, { mode = 'private', durability = 'process' } = {}) {
  await ensureGroup(root, group, mode);
  const final = groupPath(root, group, 'messages', name);
  const perms = fileMode(mode, 'messages');
  let handle;
  let tmp;
  for (let attempt = 0; ; attempt += 1) {
    tmp = groupPath(root, group, 'tmp', tmpName());
    try {
      handle = await fsp.open(tmp, OPEN_WRITE, perms);
      break;
    } catch (error) {
      // The folders went away since this process made them (a test's cleanup, an operator): once more.
      if (error.code !== 'ENOENT' || attempt > 0) throw error;
      await ensureGroup(root, group, mode, { force: true });
    }
  }
  try {
    try {
      if (mode === 'shared') await handle.chmod(perms); // group bits must not depend on the umask
      await handle.writeFile(data);
      if (name.includes('.ordered.')) await stampInOrder(handle);
      if (durability === 'power') await handle.sync();
    } finally {
      await handle.close();
    }
    const placed = await placeNoReplace(tmp, final, data, group, name);
    if (placed && durability === 'power') await fsyncDir(path.dirname(final));
    return placed;
  } catch (error) {
    await unlinkQuietly(tmp).catch(() => {});
    throw error;
  }
}

async function exists(file) {
  try {
    await fsp.access(file);
    return true;
  } catch {
    return false;
  }
}

/** Queued, in flight or acked: checked in lifecycle order so no move slips between the checks. */
export async function present(root, group, name, id) {
  return (await exists(groupPath(root, group, 'messages', name)))
    || (await exists(groupPath(root, group, 'processing', name)))
    || exists(ackPath(root, group, id));
}

export { exists as fileExists };

/** A small JSON object file (a nack), or null when it is missing, unreadable or not an object. */
export async function readJsonObject(file) {
  let handle;
  try {
    handle = await fsp.open(file, OPEN_READ);
  } catch {
    return null;
  }
  try {
    if ((await handle.stat()).size > MAX_ANSWER_BYTES) return null;
    const body = JSON.parse(await handle.readFile('utf8'));
    return body !== null && typeof body === 'object' && !Array.isArray(body) ? body : null;
  } catch {
    return null;
  } finally {
    await handle.close();
  }
}

/** Read a response and remove it (it is this sender's); null when it is not there (any more). */
export async function takeResponse(file) {
  let body;
  try {
    body = await fsp.readFile(file);
  } catch (error) {
    if (error.code === 'ENOENT') return null;
    throw error;
  }
  try {
    await fsp.unlink(file);
  } catch {
    // shared mode: responses/ is not ours to write; the supervisor prunes it
  }
  return body;
}
