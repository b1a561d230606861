/**
 * The contract between the POP3 interop harness and one real POP3 client: log in to the
 * proxy, retrieve message 1 without deleting it, quit — and hand back what the client stored
 * plus its own trace.
 */

export type Pop3Transport = 'starttls' | 'implicit';
/**
 * 'default': however the client logs in out of the box; 'user': USER/PASS forced; 'plain':
 * AUTH PLAIN forced; 'login': AUTH LOGIN forced.
 */
export type Pop3Way = 'default' | 'user' | 'plain' | 'login';
/** How the proxy logs a POP3 login (the `mechanism` of its `login ok` line). */
export type Pop3Mechanism = 'USER/PASS' | 'AUTH PLAIN' | 'AUTH LOGIN';

export interface Pop3Job {
  /** Host name the client dials; 'localhost' matches the proxy certificate's SAN. */
  host: string;
  port: number;
  transport: Pop3Transport;
  caFile: string;
  user: string;
  password: string;
  way: Pop3Way;
  /** Empty directory owned by this run (config files, HOME, local mail store). */
  workDir: string;
  timeoutMs: number;
}

export interface Pop3Run {
  /** The retrieved message as the client stored or printed it. */
  message?: Buffer;
  /** The client's verbose output (protocol trace where it has one); NOT yet redacted. */
  transcript: string;
  /** Set when the client reported failure (exit status, error text, timeout). */
  error?: string;
}

/** A setting the client cannot honour; any other failure of that cell is a regression. */
export interface Pop3Limitation {
  /** The client TLS mode it concerns; absent: every mode the client has. */
  transport?: Pop3Transport;
  /** The way it concerns; absent: the default way. */
  way?: Pop3Way;
  /** Why, for the matrix and the README. */
  why: string;
  /** The run's error exactly as the driver reports it (e.g. the exit status). */
  error: string;
  /** What the client prints when it fails this way. */
  output: RegExp;
}

export interface Pop3ClientDriver {
  name: string;
  /** Client TLS modes it has a setting for. */
  transports: Pop3Transport[];
  /** Ways beyond 'default' this client has a setting for. */
  ways: Pop3Way[];
  /** How it logs in by default when the server offers USER and SASL PLAIN LOGIN. */
  defaultMechanism: Pop3Mechanism;
  /** Line ends of what it stores: 'crlf' as on the wire, 'lf' converted. */
  lineEnds: 'crlf' | 'lf';
  /** Header fields it puts on top of the message, in order (compared after removing exactly these). */
  adds: readonly string[];
  /** How its bytes come out, for the matrix. */
  stores: string;
  notes?: string;
  limitations?: Pop3Limitation[];
  version(): Promise<string>;
  retrieve(job: Pop3Job): Promise<Pop3Run>;
}
