/**
 * Pre-auth connection states. greeting: waiting out the greeting delay; ready: reading
 * commands; sasl: an AUTHENTICATE exchange waits for a client response line; login: the
 * login handler runs (reading paused); starttls: TLS handshake after STARTTLS; spliced:
 * handed to the byte splice; closed: done.
 */
export type SessionState = 'greeting' | 'ready' | 'sasl' | 'login' | 'starttls' | 'spliced' | 'closed';
