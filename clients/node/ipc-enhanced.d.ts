// Types for ipc-enhanced.js: the ipcpool package's, under the original system's module name.
export * from 'ipcpool';
