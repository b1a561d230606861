/**
 * The contract between the SMTP interop harness and one real SMTP client: log in to the
 * proxy, send one message to one recipient, quit — and hand back the client's own trace.
 */

export type SmtpTransport = 'starttls' | 'implicit';
/**
 * 'default': however the client authenticates out of the box; 'login': AUTH LOGIN forced;
 * 'plain': AUTH PLAIN forced (only for a client whose default is not PLAIN).
 */
export type SmtpWay = 'default' | 'login' | 'plain';

/**
 * What the client is given to send. 'message': a whole RFC 5322 message it sends as it is;
 * 'body': only a body (and subject) it wraps in headers of its own.
 */
export type SmtpInput = 'message' | 'body';

export interface SmtpJob {
  /** Host name the client dials; 'localhost' matches the proxy certificate's SAN. */
  host: string;
  port: number;
  transport: SmtpTransport;
  caFile: string;
  user: string;
  password: string;
  way: SmtpWay;
  /** Envelope sender and recipient the client is told to use. */
  from: string;
  to: string;
  subject: string;
  /** File with the message or body (per the driver's `input`), LF line ends. */
  contentFile: string;
  /** Name the client announces in EHLO. */
  ehloName: string;
  /** Files to attach (the scanner cell); only drivers with `attaches` take them. */
  attach?: { file: string; type: string };
  /** Empty directory owned by this run (config files, HOME). */
  workDir: string;
  timeoutMs: number;
}

export interface SmtpRun {
  /** The client's verbose output (protocol trace where it has one); NOT yet redacted. */
  transcript: string;
  /** Set when the client reported failure (exit status, error text, timeout). */
  error?: string;
}

export interface SmtpClientDriver {
  name: string;
  input: SmtpInput;
  /** Ways beyond 'default' this client has a setting for. */
  ways: SmtpWay[];
  /** The AUTH mechanism it picks by default when the server offers PLAIN and LOGIN. */
  defaultMechanism: 'AUTH PLAIN' | 'AUTH LOGIN';
  /**
   * How its input may end. 'either': with or without a final newline (it adds the CRLF that
   * ends the data); 'required': without one it re-encodes the content; 'refused': it always
   * adds its own line end, so a final newline would become an extra empty line.
   */
  finalNewline: 'either' | 'required' | 'refused';
  /** Whether it takes a last line "." in its input for the end of data and drops it. */
  dropsLastDotLine?: boolean;
  /** Whether `attach` is supported. */
  attaches?: boolean;
  /** How its bytes are compared and other facts worth printing with the matrix. */
  notes?: string;
  version(): Promise<string>;
  send(job: SmtpJob): Promise<SmtpRun>;
}
