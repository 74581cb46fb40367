// The original system's module name: copy this file beside an agent that imports
// { getIPCSystem, IPCMessageType } from './ipc-enhanced.js', with the ipcpool package installed
// (npm install /path/to/clients/node), and that code runs unchanged against ipcpool.
export * from 'ipcpool';
