// The error tree: every error this package throws on purpose derives from IpcpoolError,
// with the same names the Python client uses, so a caller can catch ours without catching everything.

export class IpcpoolError extends Error {
  constructor(message, options) {
    super(message, options);
    this.name = new.target.name;
  }
}

/** A message that cannot be built or encoded as the receiver will validate it (bad group, id, type...). */
export class InvalidMessage extends IpcpoolError {}

/** A different message with this file name is already queued; publishing would replace it. */
export class MessageExists extends IpcpoolError {
  constructor(group, file) {
    super(`a different message named '${file}' is already queued in group '${group}'; `
      + 'refusing to replace it (use a new id, or wait until it is handled)');
    this.group = group;
    this.file = file;
    this.messageId = file.replace(/\.json$/, '');
  }
}

/**
 * The message ended in the group's errors/ folder; its sender is told at once (a nack, or a failed response).
 * `reason` is the one in its error record, `errorFile` where that record is, `outcome` one of
 * `rejected`, `failed`, `poisoned`, `record` the nack (or the failed response's payload) as read.
 */
export class MessageNotHandled extends IpcpoolError {
  constructor(messageId, group, reason, { errorFile = '', outcome = '', record = null } = {}) {
    const where = errorFile ? ` (record: ${errorFile})` : '';
    super(`message ${messageId} to group '${group}' was ${outcome || 'not handled'}: ${reason}${where}`);
    this.messageId = messageId;
    this.group = group;
    this.reason = reason;
    this.errorFile = errorFile;
    this.outcome = outcome;
    this.record = record;
  }
}

/** It never reached a handler: no handler for its type, a type the group does not allow, invalid, too large. */
export class MessageRejected extends MessageNotHandled {}

/** Its handler raised on every attempt, or it killed or hung its worker until it was poison. */
export class MessageFailed extends MessageNotHandled {
  constructor(messageId, group, reason, { errorType = '', ...rest } = {}) {
    super(messageId, group, reason, rest);
    this.errorType = errorType;
  }
}

/** No ack after every attempt of the ack policy. `hint` says why, when that can be told. */
export class AckTimeout extends IpcpoolError {
  constructor(messageId, group, attempts, timeoutMs, hint = '') {
    super(`ACK timeout: message ${messageId} to group '${group}' was not acknowledged `
      + `after ${attempts} attempt(s) of ${timeoutMs / 1000}s each${hint ? `; ${hint}` : ''}`);
    this.messageId = messageId;
    this.group = group;
    this.attempts = attempts;
    this.timeoutMs = timeoutMs;
    this.hint = hint;
  }
}

/** A request got no response (and no nack) in time. */
export class ResponseTimeout extends IpcpoolError {
  constructor(messageId, group, timeoutMs, hint = '') {
    super(`no response to request ${messageId} in group '${group}' within ${timeoutMs / 1000}s`
      + (hint ? `; ${hint}` : ''));
    this.messageId = messageId;
    this.group = group;
    this.timeoutMs = timeoutMs;
    this.hint = hint;
  }
}

/** The sentence the Python client says when no supervisor holds the root. */
export function noSupervisorSentence(root) {
  return `no ipcpool supervisor is running for ${root}; the message stays queued and will be handled when one starts`;
}

/**
 * No supervisor is running for the root (read from <root>/.ipcpool/status.json): the message was
 * published and stays queued, but nothing will answer it until `ipcpool run` starts on that root.
 * `detail` says how that was told (no status.json, a final state, a stale status).
 */
export class NoSupervisor extends IpcpoolError {
  constructor(root, messageId, group, detail = '') {
    super(noSupervisorSentence(root));
    this.root = root;
    this.messageId = messageId;
    this.group = group;
    this.detail = detail;
  }
}
