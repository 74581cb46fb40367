import { randomUUID } from 'node:crypto';
import { promises as fs } from 'node:fs';
import path from 'node:path';

const root = process.env.IPCPOOL_ROOT || 'data/ipc';
const group = 'main'; // its folders exist once `ipcpool run` has started with it in [spool] groups
const id = randomUUID();
const message = { id, type: 'task', groupFolder: group, payload: { taskId: 7 },
  timestamp: new Date().toISOString(), requiresAck: true };
const tmp = path.join(root, group, 'tmp', `.${id}.tmp`);
// 0640: readable by ipcpool when it runs as another user in your group (shared mode), as in a container
await fs.writeFile(tmp, JSON.stringify(message), { mode: 0o640 });
await fs.rename(tmp, path.join(root, group, 'messages', `${id}.json`)); // rename, never link: one link only

const answer = (name) => fs.readFile(path.join(root, group, 'acks', name), 'utf8').catch(() => null);
for (const deadline = Date.now() + 30000; ; await new Promise((r) => setTimeout(r, 200))) {
  if (await answer(`${id}.ack`) !== null) break; // handled
  const nack = JSON.parse(await answer(`${id}.nack`) ?? 'null'); // ended in errors/: outcome, reason, errorFile
  // Only this very message's nack: another writer may drop a file under our id (docs/spool-format.md).
  // A nack without a timestamp is for a file ipcpool could not read at all (its reason says why).
  if (nack && (nack.timestamp === message.timestamp || nack.timestamp == null)) {
    throw new Error(`not handled: ${nack.reason}`);
  }
  if (Date.now() > deadline) throw new Error(`no ack for ${id} in 30 s: is \`ipcpool run\` up?`);
}
