import { getIPCSystem, IPCMessageType } from './ipc-enhanced.js';

const ipc = getIPCSystem();

// Send a task message
await ipc.send('main', IPCMessageType.TASK, {
  taskId: 123,
  prompt: 'Execute this task',
  scheduleType: 'once',
}, true); // requiresAck = true

// Send a command
await ipc.send('group1', IPCMessageType.COMMAND, {
  command: 'restart',
  args: [],
});
