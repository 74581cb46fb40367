// Log lines in the original system's phrases ("IPC message sent", "ACK received", "ACK timeout",
// "Retrying IPC message"), through the caller's logger, pino-style: logger.info(fields, message).
//
// Without a logger it is silent, unless LOG_LEVEL (the variable the original system and ipcpool's
// own processes read) names a level: then lines at that level and above go to stderr. Never to
// stdout: an agent host often speaks a protocol there (JSON lines, MCP over stdio) that a stray log
// line would corrupt, and console.debug/console.log write to stdout.

const LEVELS = { debug: 10, info: 20, warn: 30, warning: 30, error: 40 };
const METHODS = ['debug', 'info', 'warn', 'error'];

const silent = Object.freeze({ debug() {}, info() {}, warn() {}, error() {} });

function formatFields(fields) {
  return Object.entries(fields ?? {})
    .filter(([, value]) => value !== undefined)
    .map(([key, value]) => `${key}=${typeof value === 'string' ? value : JSON.stringify(value)}`)
    .join(' ');
}

function stderrLogger(threshold) {
  const logger = {};
  for (const method of METHODS) {
    logger[method] = LEVELS[method] < threshold ? () => {} : (fields, message) => {
      const tail = formatFields(fields);
      process.stderr.write(`${new Date().toISOString()} ${method.toUpperCase()} ipcpool: ${message}${tail ? ` ${tail}` : ''}\n`);
    };
  }
  return logger;
}

/** The logger to use: the caller's (missing methods do nothing), `false` for none, else LOG_LEVEL's or silent. */
export function resolveLogger(logger) {
  if (logger === false || logger === null) return silent;
  if (logger && typeof logger === 'object') {
    const wrapped = {};
    for (const method of METHODS) {
      wrapped[method] = typeof logger[method] === 'function' ? logger[method].bind(logger) : () => {};
    }
    return wrapped;
  }
  const level = LEVELS[(process.env.LOG_LEVEL || '').toLowerCase()];
  return level === undefined ? silent : stderrLogger(level);
}
