/** Checks made before a line is treated as an IMAP command (smtp-server style). */

const HTTP_METHODS = ['GET', 'POST', 'HEAD', 'PUT', 'DELETE', 'OPTIONS', 'CONNECT', 'PATCH', 'TRACE'];
const HTTP_VERSION_PREFIX = ' HTTP/';

/** `GET / HTTP/1.1` and friends: a browser or scanner pointed at the IMAP port. */
export function isHttpRequestLine(line: Buffer): boolean {
  if (line.length > 8192) return false;
  const text = line.toString('latin1');
  const sp = text.indexOf(' ');
  if (sp === -1 || !HTTP_METHODS.includes(text.slice(0, sp))) return false;
  const v = text.lastIndexOf(HTTP_VERSION_PREFIX);
  return v > sp && v + HTTP_VERSION_PREFIX.length < text.length;
}
