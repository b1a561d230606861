import assert from 'node:assert/strict';
import { execFileSync } from 'node:child_process';
import { createHash, randomBytes } from 'node:crypto';
import { test } from 'node:test';
import fc from 'fast-check';
import { Base64Source, base64Of, decodeQuotedPrintable } from '../../src/protocols/smtp/graph/decode.js';
import { addressKey, parseAddressList, parseStructured } from '../../src/protocols/smtp/graph/headers.js';
import {
  type MimeAttachment,
  parseMessage,
  rewriteRecipients,
  stripAttachments,
} from '../../src/protocols/smtp/graph/mime.js';
import type { Envelope } from '../../src/protocols/smtp/transaction.js';

const env = (...recipients: string[]): Envelope => ({
  from: 'dev@example.com',
  recipients,
  body: '8BITMIME',
});
const crlf = (s: string) => Buffer.from(s.replace(/\r?\n/g, '\r\n'), 'utf8');
const sha = (b: Buffer) => createHash('sha256').update(b).digest('hex');
const all = (a: MimeAttachment) => a.content.read(0, a.content.size);

/** Python's email package reads what we produce: a second, independent MIME parser. */
function pythonView(mime: Buffer): {
  parts: [string, string | null, boolean][];
  defects: string[];
  to: string[];
} {
  const script = `
import sys, json, email, email.policy
m = email.message_from_bytes(sys.stdin.buffer.read(), policy=email.policy.default)
parts, defects = [], [type(d).__name__ for d in m.defects]
for p in m.walk():
    defects += [type(d).__name__ for d in p.defects]
    parts.append([p.get_content_type(), p.get_filename(), p.is_attachment()])
to = [a.addr_spec for h in ('to', 'cc', 'bcc') for a in (m[h].addresses if m[h] else ())]
print(json.dumps({'parts': parts, 'defects': defects, 'to': to}))
`;
  return JSON.parse(execFileSync('python3', ['-c', script], { input: mime }).toString());
}

function python(script: string, input?: Buffer): Buffer {
  return execFileSync('python3', ['-c', script], { input, maxBuffer: 64 * 1024 * 1024 });
}

function strip(msg: Buffer) {
  const parsed = parseMessage(msg);
  const s = stripAttachments(parsed);
  const header = msg.subarray(0, parsed.root.header.headerEnd);
  return { ...s, mime: Buffer.concat([header, ...s.body]) };
}

test('address lists: display names, quoted strings, comments, groups, routes, encoded words', () => {
  const cases: [string, string[]][] = [
    ['a@example.com', ['a@example.com']],
    ['"Doe, John" <john@example.com>, jane@example.com', ['john@example.com', 'jane@example.com']],
    ['=?utf-8?Q?J=C3=B6rg?= <joerg@example.com>', ['joerg@example.com']],
    ['undisclosed-recipients:;', []],
    [
      'Team: a@example.com, "B" <b@example.com>;, c@example.com',
      ['a@example.com', 'b@example.com', 'c@example.com'],
    ],
    ['x@example.com (the boss), <@relay.example:y@example.com>', ['x@example.com', 'y@example.com']],
    ['"john doe"@example.com', ['"john doe"@example.com']],
    ['John (comment, with comma) <john@example.com>', ['john@example.com']],
    ['  ', []],
  ];
  for (const [input, want] of cases) assert.deepEqual(parseAddressList(input), want, input);
  assert.equal(addressKey('"john"@Example.COM'), 'john@example.com');
  assert.equal(addressKey('"john doe"@example.com'), '"john doe"@example.com');
});

test('parameters: RFC 2231 continuations and charsets, quoted values, comments', () => {
  const a = parseStructured(`attachment; filename*0*=utf-8''%E2%82%AC%20rech; filename*1*=nung.pdf`);
  assert.equal(a.value, 'attachment');
  assert.equal(a.params.get('filename'), '€ rechnung.pdf');
  const b = parseStructured(`Multipart/Mixed (a comment); boundary="a;b \\"c\\""; charset=us-ascii`);
  assert.equal(b.value, 'multipart/mixed');
  assert.equal(b.params.get('boundary'), 'a;b "c"');
  const c = parseStructured(`attachment; filename*=iso-8859-1'de'M%FCller.txt; filename="fallback.txt"`);
  assert.equal(c.params.get('filename'), 'Müller.txt');
});

test('recipients: Bcc rebuilt from the envelope, To/Cc kept byte for byte, body untouched', () => {
  const msg = crlf(
    'From: dev@example.com\nTo: "Alice" <Alice@Example.com>,\n  bob@example.com\nBcc: someone@else.example\nSubject: hi\n\nbody line\nBcc: not a header\n',
  );
  const parsed = parseMessage(msg);
  const r = rewriteRecipients(parsed, env('alice@example.com', 'bob@example.com', 'carol@example.com'));
  assert.ok(r.ok);
  assert.deepEqual(r.bcc, ['carol@example.com']);
  const out = Buffer.concat([r.header, msg.subarray(parsed.root.header.headerEnd)]).toString();
  assert.equal(
    out,
    'From: dev@example.com\r\nTo: "Alice" <Alice@Example.com>,\r\n  bob@example.com\r\nSubject: hi\r\nBcc: carol@example.com\r\n\r\nbody line\r\nBcc: not a header\r\n',
  );
  assert.deepEqual(pythonView(Buffer.from(out)).to, [
    'Alice@Example.com',
    'bob@example.com',
    'carol@example.com',
  ]);
});

test('recipients: Bcc-only message (no To) sends to every envelope recipient, folded under 78 columns', () => {
  const msg = crlf('From: dev@example.com\nSubject: scan\n\nx\n');
  const rcpts = Array.from({ length: 8 }, (_, i) => `recipient-number-${i}@example.com`);
  const r = rewriteRecipients(parseMessage(msg), env(...rcpts, 'RECIPIENT-NUMBER-0@example.com'));
  assert.ok(r.ok);
  assert.deepEqual(r.bcc, rcpts, 'case-insensitive duplicates sent once');
  for (const line of r.header.toString().split('\r\n')) assert.ok(line.length <= 78, line);
  assert.deepEqual(pythonView(Buffer.concat([r.header, crlf('\nx\n')])).to, rcpts);
});

test('recipients: a To or Cc address outside the envelope refuses the message, naming it', () => {
  const msg = crlf('To: a@example.com\nCc: Eve <eve@evil.example>\n\nx\n');
  const r = rewriteRecipients(parseMessage(msg), env('a@example.com'));
  assert.equal(r.ok, false);
  assert.match(!r.ok ? r.reason : '', /Cc address eve@evil\.example is not a recipient/);
  const g = rewriteRecipients(
    parseMessage(crlf('To: undisclosed-recipients:;\n\nx\n')),
    env('a@example.com'),
  );
  assert.ok(g.ok);
  assert.deepEqual(g.bcc, ['a@example.com']);
});

test('recipients: LF-only message gets an LF Bcc line; a header without a body still works', () => {
  const msg = Buffer.from('To: a@example.com\nSubject: x\n\nbody\n');
  const r = rewriteRecipients(parseMessage(msg), env('a@example.com', 'b@example.com'));
  assert.ok(r.ok);
  assert.equal(r.header.toString(), 'To: a@example.com\nSubject: x\nBcc: b@example.com\n');
  const h = rewriteRecipients(
    parseMessage(Buffer.from('To: a@example.com')),
    env('a@example.com', 'b@example.com'),
  );
  assert.ok(h.ok);
  assert.equal(h.header.toString(), 'To: a@example.com\r\nBcc: b@example.com\r\n');
});

test("Python's email package message: PDF and non-ASCII named attachment out, text stays, valid MIME", () => {
  const pdf = randomBytes(200_000);
  const csv = Buffer.from('a;b\r\n1;2\r\n');
  const msg = python(
    `
import sys
from email.message import EmailMessage
m = EmailMessage()
m['From'] = 'scanner@example.com'; m['To'] = 'a@example.com'; m['Subject'] = 'Scan'
m.set_content('See attached.\\n')
m.add_alternative('<p>See attached.</p>', subtype='html')
m.add_attachment(sys.stdin.buffer.read(), maintype='application', subtype='pdf', filename='scan 001.pdf')
m.add_attachment(bytes.fromhex('${csv.toString('hex')}'), maintype='text', subtype='csv', filename='Prüfbericht für März.csv')
sys.stdout.buffer.write(m.as_bytes())
`,
    pdf,
  );
  const s = strip(msg);
  assert.deepEqual(
    s.attachments.map((a) => [a.name, a.contentType, a.isInline]),
    [
      ['scan 001.pdf', 'application/pdf', false],
      ['Prüfbericht für März.csv', 'text/csv', false],
    ],
  );
  assert.equal(sha(all(s.attachments[0]!)), sha(pdf));
  assert.equal(sha(all(s.attachments[1]!)), sha(csv));
  const view = pythonView(s.mime);
  assert.deepEqual(view.defects, []);
  assert.deepEqual(view.parts, [
    ['multipart/mixed', null, false],
    ['multipart/alternative', null, false],
    ['text/plain', null, false],
    ['text/html', null, false],
  ]);
  assert.ok(s.mime.length < 2_000, `stripped to ${s.mime.length} bytes`);
});

/** A copier's scan-to-mail: text part plus a base64 PDF in 76-column lines. */
function scannerMessage(pdf: Buffer, eol = '\r\n'): Buffer {
  const b64 = pdf.toString('base64').replace(/.{76}/g, `$&${eol}`);
  return Buffer.from(
    [
      'From: MFP <scanner@example.com>',
      'To: a@example.com',
      'Subject: Scanned from MFP-1',
      'MIME-Version: 1.0',
      'Content-Type: multipart/mixed; boundary="----=_NextPart_000_0001"',
      '',
      'This is a multi-part message in MIME format.',
      '',
      '------=_NextPart_000_0001',
      'Content-Type: text/plain; charset="us-ascii"',
      'Content-Transfer-Encoding: 7bit',
      '',
      'Scanned document attached.',
      '',
      '------=_NextPart_000_0001',
      'Content-Type: application/pdf; name="SCAN0001.PDF"',
      'Content-Transfer-Encoding: base64',
      '',
      b64,
      '------=_NextPart_000_0001--',
      '',
    ].join(eol),
    'latin1',
  );
}

test('scanner-style message: the PDF (named only by Content-Type name=) comes out byte-identical', () => {
  const pdf = randomBytes(1_000_000);
  const s = strip(scannerMessage(pdf));
  assert.equal(s.attachments.length, 1);
  const a = s.attachments[0]!;
  assert.deepEqual(
    [a.name, a.contentType, a.isInline, a.content.size],
    ['SCAN0001.PDF', 'application/pdf', false, pdf.length],
  );
  assert.equal(sha(all(a)), sha(pdf));
  const view = pythonView(s.mime);
  assert.deepEqual(view.defects, []);
  assert.deepEqual(view.parts, [
    ['multipart/mixed', null, false],
    ['text/plain', null, false],
  ]);
  assert.match(s.mime.toString(), /Scanned document attached\.\r\n\r\n------=_NextPart_000_0001--\r\n$/);
});

test('bare LF input parses like CRLF input: same attachment bytes, LF kept in what remains', () => {
  const pdf = randomBytes(50_000);
  const lf = strip(scannerMessage(pdf, '\n'));
  const cr = strip(scannerMessage(pdf));
  assert.equal(sha(all(lf.attachments[0]!)), sha(pdf));
  assert.equal(sha(all(cr.attachments[0]!)), sha(pdf));
  assert.equal(lf.mime.toString().replace(/\n/g, '\r\n'), cr.mime.toString());
});

test('inline image with Content-ID in multipart/related becomes an inline attachment; HTML stays', () => {
  const png = randomBytes(3000);
  const msg = crlf(`From: a@example.com
To: b@example.com
Content-Type: multipart/related; boundary=rel; type="text/html"

--rel
Content-Type: text/html; charset=utf-8

<img src="cid:logo@example">
--rel
Content-Type: image/png
Content-ID: <logo@example>
Content-Transfer-Encoding: base64

${png.toString('base64')}
--rel--
`);
  const s = strip(msg);
  assert.deepEqual(
    s.attachments.map((a) => [a.name, a.contentType, a.isInline, a.contentId]),
    [['attachment-1', 'image/png', true, 'logo@example']],
  );
  assert.equal(sha(all(s.attachments[0]!)), sha(png));
  assert.deepEqual(pythonView(s.mime).parts, [
    ['multipart/related', null, false],
    ['text/html', null, false],
  ]);
});

test('quoted-printable attachment, encoded-word file name; text/plain without disposition stays', () => {
  const msg = crlf(`Content-Type: multipart/mixed; boundary="b"

--b
Content-Type: text/plain; name="readme.txt"

stays
--b
Content-Type: text/x-log
Content-Disposition: attachment; filename="=?UTF-8?B?w7xiZXJzaWNodC5sb2c=?="
Content-Transfer-Encoding: quoted-printable

caf=C3=A9 =3D ok   =
joined
--b--
`);
  const s = strip(msg);
  assert.equal(s.attachments.length, 1);
  assert.equal(s.attachments[0]!.name, 'übersicht.log');
  assert.equal(all(s.attachments[0]!).toString('utf8'), 'café = ok   joined');
  assert.match(s.mime.toString(), /stays/);
});

test('every attachment removed: an empty text part keeps the multipart valid', () => {
  const msg = crlf(`Content-Type: multipart/mixed; boundary=b

--b
Content-Type: application/pdf
Content-Disposition: attachment; filename=a.pdf
Content-Transfer-Encoding: base64

AAEC
--b--
`);
  const s = strip(msg);
  assert.equal(s.attachments.length, 1);
  assert.deepEqual([...all(s.attachments[0]!)], [0, 1, 2]);
  const view = pythonView(s.mime);
  assert.deepEqual(view.defects, []);
  assert.deepEqual(view.parts, [
    ['multipart/mixed', null, false],
    ['text/plain', null, false],
  ]);
});

test('the first body part removed (no preamble): what remains still parses cleanly', () => {
  const msg = crlf(`Content-Type: multipart/mixed; boundary=b

--b
Content-Type: application/pdf; name=first.pdf
Content-Transfer-Encoding: base64

QUJD
--b
Content-Type: text/plain

after
--b--
`);
  const s = strip(msg);
  assert.deepEqual(
    s.attachments.map((a) => a.name),
    ['first.pdf'],
  );
  const view = pythonView(s.mime);
  assert.deepEqual(view.defects, []);
  assert.deepEqual(view.parts, [
    ['multipart/mixed', null, false],
    ['text/plain', null, false],
  ]);
});

test('malformed structure never throws: kept whole, with a note saying why', () => {
  const cases: [string, string | RegExp][] = [
    [
      'Content-Type: multipart/mixed\r\n\r\n--x\r\nContent-Type: application/pdf\r\n\r\nAAA\r\n--x--\r\n',
      'multipart without a boundary',
    ],
    [
      'Content-Type: multipart/mixed; boundary=zz\r\n\r\n--x\r\n\r\nAAA\r\n',
      'no boundary delimiter in the body',
    ],
    ['Content-Type: application/pdf\r\n\r\nAAAA', 'not a multipart message'],
    ['no header at all', 'not a multipart message'],
    ['', 'not a multipart message'],
  ];
  for (const [m, why] of cases) {
    const s = strip(Buffer.from(m));
    assert.equal(s.attachments.length, 0, m);
    assert.equal(s.note, why, m);
    assert.equal(s.mime.toString(), m, 'sent as it is');
  }
});

test('truncated multipart (no close delimiter): the attachment read up to the end, the rest kept', () => {
  const msg = crlf(`Content-Type: multipart/mixed; boundary=b

--b

text
--b
Content-Type: application/octet-stream
Content-Disposition: attachment; filename=x.bin
Content-Transfer-Encoding: base64

AAECAwQF
`);
  const s = strip(msg);
  assert.deepEqual([...all(s.attachments[0]!)], [0, 1, 2, 3, 4, 5]);
  assert.match(s.mime.toString(), /boundary=b\r\n\r\n--b\r\n\r\ntext$/);
});

test('a part header running into its body (no blank line) ends at the first line that is no field', () => {
  const msg = crlf(`Content-Type: multipart/mixed; boundary=b

--b
Content-Type: application/pdf
Content-Disposition: attachment; filename=a.pdf
Content-Transfer-Encoding: base64
QUJD
--b--
`);
  const s = strip(msg);
  assert.equal(all(s.attachments[0]!).toString(), 'ABC');
});

test('a header of endless fields is cut off (bounded work), not read to the end', () => {
  const bomb = Buffer.from(
    `Content-Type: multipart/mixed; boundary=b\r\n${'X-A: b\r\n'.repeat(400_000)}\r\nbody`,
  );
  const t0 = performance.now();
  const parsed = parseMessage(bomb);
  assert.equal(parsed.root.header.fields.length, 5_000);
  assert.ok(performance.now() - t0 < 5_000);
  assert.ok(rewriteRecipients(parsed, env('a@example.com')).ok);
});

test('a boundary that is a prefix of a line is not a delimiter; transport padding after one is', () => {
  const msg = crlf(`Content-Type: multipart/mixed; boundary=b

--b
Content-Type: text/plain

--bb is not a delimiter
--b  \t
Content-Type: application/pdf
Content-Disposition: attachment
Content-Transfer-Encoding: base64

QUJD
--b--
`);
  const s = strip(msg);
  assert.equal(all(s.attachments[0]!).toString(), 'ABC');
  assert.match(s.mime.toString(), /--bb is not a delimiter/);
});

test('nested multipart: attachments inside a forwarded message/rfc822 are not opened', () => {
  const msg = crlf(`Content-Type: multipart/mixed; boundary=o

--o
Content-Type: text/plain

hi
--o
Content-Type: message/rfc822
Content-Disposition: attachment

Content-Type: multipart/mixed; boundary=i

--i
Content-Type: application/pdf; name=inner.pdf

AA
--i--
--o--
`);
  const s = strip(msg);
  assert.deepEqual(
    s.attachments.map((a) => [a.name, a.contentType]),
    [['message-1.eml', 'message/rfc822']],
  );
  assert.match(all(s.attachments[0]!).toString(), /^Content-Type: multipart\/mixed; boundary=i\r\n/);
});

test('base64 decoding: chunked reads at upload offsets, seeks back, junk and padding tolerated', () => {
  const data = randomBytes(1_000_003);
  const text = Buffer.from(data.toString('base64').replace(/.{76}/g, '$&\r\n'));
  const src = new Base64Source(text, 0, text.length);
  assert.equal(src.size, data.length);
  const pieces: Buffer[] = [];
  for (let o = 0; o < src.size; o += 327_680) pieces.push(src.read(o, 327_680));
  assert.ok(Buffer.concat(pieces).equals(data));
  assert.ok(src.read(5, 7).equals(data.subarray(5, 12)), 'seek back');
  assert.ok(src.read(999_999, 100).equals(data.subarray(999_999)), 'short read at the end');
  const odd = Buffer.from('QU JD\r\n\tRA==\r\nRUY=!!');
  assert.equal(new Base64Source(odd, 0, odd.length).read(0, 100).toString(), 'ABCDEF');
  const unpadded = Buffer.from('QUJDRA');
  assert.equal(new Base64Source(unpadded, 0, unpadded.length).read(0, 100).toString(), 'ABCD');
});

test('base64 of several buffers equals base64 of their concatenation', () => {
  fc.assert(
    fc.property(fc.array(fc.uint8Array({ maxLength: 20 }), { maxLength: 6 }), (arrs) => {
      const parts = arrs.map((a) => Buffer.from(a));
      assert.equal(base64Of(parts).toString(), Buffer.concat(parts).toString('base64'));
    }),
  );
});

test('quoted-printable: soft breaks, =XX, trailing blanks, stray = kept', () => {
  const q = Buffer.from('a=3Db  \r\nc=\r\nd= \nx=zz=4');
  assert.equal(decodeQuotedPrintable(q, 0, q.length).toString(), 'a=b\r\ncdx=zz=4');
});

test('fuzz: any bytes, and any cut or mutation of a real message, parse without throwing', () => {
  const base = scannerMessage(randomBytes(300));
  fc.assert(
    fc.property(
      fc.oneof(
        fc.uint8Array({ maxLength: 400 }).map((a) => Buffer.from(a)),
        fc
          .tuple(fc.nat(base.length), fc.nat(base.length), fc.uint8Array({ maxLength: 8 }))
          .map(([at, len, ins]) =>
            Buffer.concat([
              base.subarray(0, at),
              Buffer.from(ins),
              base.subarray(Math.min(base.length, at + len)),
            ]),
          ),
      ),
      (msg) => {
        const parsed = parseMessage(msg);
        rewriteRecipients(parsed, env('a@example.com'));
        const s = stripAttachments(parsed);
        for (const a of s.attachments) assert.equal(a.content.read(0, a.content.size).length, a.content.size);
      },
    ),
    { numRuns: 500 },
  );
});
