/**
 * The contract between the interop harness and one real IMAP client: log in, select INBOX,
 * fetch one message, log out — and hand back the bytes plus the client's own verbose output.
 */

export type ClientTransport = 'starttls' | 'implicit';
/**
 * 'default': however the client logs in out of the box; 'login': the LOGIN command forced;
 * 'sasl-login': AUTHENTICATE LOGIN asked for explicitly.
 */
export type LoginWay = 'default' | 'login' | 'sasl-login';

export interface ClientJob {
  /** Host name the client dials; 'localhost' matches the proxy certificate's SAN. */
  host: string;
  port: number;
  transport: ClientTransport;
  caFile: string;
  user: string;
  password: string;
  way: LoginWay;
  /** UID of the seeded message. */
  uid: number;
  /** Empty directory owned by this run (config files, local mail stores). */
  workDir: string;
  timeoutMs: number;
}

export interface ClientRun {
  /** The fetched message as the client stored or printed it. */
  message?: Buffer;
  /** The client's verbose output (protocol trace where it has one); NOT yet redacted. */
  transcript: string;
  /** Set when the client reported failure (exit status, error text, timeout). */
  error?: string;
}

/** A login way a client cannot do; any other failure of that cell is a regression. */
export interface Limitation {
  /** Why, for the matrix and the README. */
  why: string;
  /** The run's error exactly as the driver reports it (e.g. the exit status). */
  error: string;
  /** What the client prints when it fails this way. */
  output: RegExp;
}

export interface ClientDriver {
  name: string;
  /** Whether the client stores mail with LF line ends (compare modulo CRLF → LF). */
  storesLf: boolean;
  /** Login ways beyond 'default' this client has a setting for. */
  ways: LoginWay[];
  /** Undo what the client itself adds to a stored message (e.g. mbsync's X-TUID header). */
  normalize?: (message: Buffer) => Buffer;
  /** Facts about the client's login settings worth knowing (printed with the matrix). */
  notes?: string;
  /** Ways the client cannot do, and exactly how each fails (checked: the cell must fail just so). */
  limitations?: Partial<Record<LoginWay, Limitation>>;
  version(): Promise<string>;
  fetch(job: ClientJob): Promise<ClientRun>;
}
