// Every call of the package, typed: checked by `tsc --noEmit` in test/types.test.mjs (never run).
import {
  AckTimeout, IPCMessageType, IpcpoolError, MessageExists, MessageFailed, MessageRejected, NoSupervisor,
  createIPCSystem, getIPCSystem, prepare, publish, request, send, sendAndWait, supervisorStatus,
} from 'ipcpool';
import type { IPCMessage, NackRecord, SupervisorStatus } from 'ipcpool';

const root = '/srv/ipc';
const id: string = await send('main', IPCMessageType.TASK, { taskId: 1 }, { root, extra: { traceId: 't-1' } });
await sendAndWait('main', 'task', { taskId: 2 }, {
  root, id: `job-${id}`, ack: { timeoutMs: 10000, maxRetries: 2, retryDelayMs: 1000, backoff: 2, jitterMs: 100 },
  waitForSupervisor: true, logger: { info: (fields, message) => void [fields, message] },
});
const result = await request<{ status: string }>('main', 'task', { taskId: 3 }, { root, replyGroup: 'agent-1', timeoutMs: 5000 });
const status: string = result.status;

const message = prepare('main', 'task', { taskId: 4 }, { id: 'job-4', requiresAck: true });
const published: string = await publish(message, { root, mode: 'shared', durability: 'power' });
const envelope: IPCMessage = message.envelope;

try {
  await sendAndWait('main', 'task', null);
} catch (error) {
  if (error instanceof MessageFailed) {
    const why: string = error.reason;
    const type: string = error.errorType;
    const record = error.record as NackRecord | null;
    void [why, type, record?.outcome];
  } else if (error instanceof MessageRejected || error instanceof NoSupervisor || error instanceof AckTimeout) {
    const base: IpcpoolError = error;
    void base;
  } else if (error instanceof MessageExists) {
    const file: string = error.file;
    void file;
  }
}

const ipc = createIPCSystem({ root, ack: { timeoutMs: 5000 } });
ipc.registerHandler(IPCMessageType.ERROR, (report) => report.payload.messageId);
const acked: string = await ipc.send('main', IPCMessageType.COMMAND, { command: 'restart', args: [] }, true);
const health: SupervisorStatus = await supervisorStatus(root);
const same = getIPCSystem() === getIPCSystem();

// @ts-expect-error requiresAck is a boolean, not a string
await ipc.send('main', 'task', {}, 'yes');
// @ts-expect-error only the ERROR handler can be registered in a sender
ipc.registerHandler(IPCMessageType.TASK, () => undefined);
// @ts-expect-error mode is private or shared
await send('main', 'task', {}, { mode: 'public' });

void [status, published, envelope, acked, health.running, same];
