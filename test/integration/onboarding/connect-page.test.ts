import assert from 'node:assert/strict';
import { execFile } from 'node:child_process';
import { mkdtempSync, rmSync } from 'node:fs';
import { tmpdir } from 'node:os';
import { join } from 'node:path';
import { after, before, describe, test } from 'node:test';
import { promisify } from 'node:util';
import { type BrowserContext, chromium } from 'playwright-core';
import { startOP, type TestOP } from '../../helpers/op.js';
import { type Stack, startStack, testMessage } from '../../helpers/stack.js';

const run = promisify(execFile);
const CHROMIUM = '/usr/bin/chromium';
// The README's screenshot is refreshed on demand (UPDATE_SCREENSHOTS=1); other runs write to the temp dir.
const SCREENSHOT = process.env.UPDATE_SCREENSHOTS
  ? 'test/screenshots/connect-page.png'
  : join(tmpdir(), `iop-connect-page-${process.pid}.png`);

/**
 * The self-service page end to end: headless Chromium signs in at oidc-provider, reads the new
 * app password off /connect's result page, then Python imaplib logs in through the proxy with
 * it and reads the mail Dovecot holds for the signed-in mailbox.
 */
describe('/connect self-service page in headless Chromium', () => {
  let op: TestOP;
  let s: Stack;
  let base: string;
  let browser: BrowserContext;
  let profile: string;

  before(async () => {
    op = await startOP({ loopbackCallback: true, clientCredentials: true });
    s = await startStack({ op });
    base = `http://127.0.0.1:${s.ports.admin}`;
    // The admin port is known only after listen(0); the onboarding routes read these per request.
    s.config.admin.public_url = base;
    s.config.admin.connect_page = true;
    s.config.admin.allowed_domains = ['example.com'];
    s.config.admin.admin_password = 'status-secret';
    profile = mkdtempSync(join(tmpdir(), 'iop-chromium-'));
    browser = await chromium.launchPersistentContext(profile, {
      executablePath: CHROMIUM,
      headless: true,
      args: [
        '--headless',
        '--no-sandbox',
        '--disable-gpu',
        '--disable-quic',
        '--no-first-run',
        '--disable-background-networking',
        '--disable-component-update',
        '--disable-sync',
      ],
    });
  });
  after(async () => {
    await browser?.close();
    if (profile) rmSync(profile, { recursive: true, force: true });
    await s?.close();
    await op?.close();
  });

  test('sign in at the IdP, get an app password once, read mail with it through the proxy', async () => {
    await s.dovecot.seed('carol@example.com', testMessage('connect-page', 'Mail for Carol.'));
    const page = await browser.newPage();
    await page.goto(`${base}/connect`);
    await page.getByRole('link', { name: 'Sign in with local' }).click();
    await page.locator('input[name=login]').fill('carol@example.com');
    await page.locator('input[name=password]').fill('any');
    await page.locator('button[type=submit]').click();
    await page.locator('button[type=submit]').click(); // consent
    await page.waitForURL(/\/oauth\/callback/);
    const password = (await page.locator('#app-password').textContent())?.trim() ?? '';
    assert.match(password, /^[a-z2-9]{4}(-[a-z2-9]{4}){5}$/);
    const text = await page.locator('body').innerText();
    assert.match(text, /Mailbox connected/);
    assert.match(text, /Incoming mail \(IMAP\)/);
    assert.match(text, new RegExp(`Port\\s+${s.ports.imaps}\\s+SSL/TLS`));
    assert.match(text, new RegExp(`Port\\s+${s.ports.starttls}\\s+STARTTLS`));
    // No token reaches the browser: not in the page, not in any cookie.
    const grant = await s.app.store.getGrant((await s.app.store.getAccountByLogin('carol@example.com'))!.id);
    const html = await page.content();
    assert.ok(
      grant?.refreshToken && !html.includes(grant.refreshToken) && !html.includes(grant.accessToken ?? '\0'),
    );
    assert.deepEqual(
      (await browser.cookies(base)).filter((c) => c.name === 'iop_oauth' && c.value !== ''),
      [],
      'the state cookie is cleared after use',
    );
    await page.screenshot({ path: SCREENSHOT, fullPage: true });

    const { stdout } = await run(
      'python3',
      [
        'test/helpers/clients/imaplib_client.py',
        '127.0.0.1',
        String(s.ports.imaps),
        'implicit',
        s.proxyCaFile,
        'carol@example.com',
        '-',
        'login',
        '1',
      ],
      { env: { ...process.env, IMAP_PASSWORD: password }, timeout: 30_000 },
    );
    const r = JSON.parse(stdout) as { login?: string; exists?: number; message_b64?: string; error?: string };
    assert.equal(r.error, undefined);
    assert.equal(r.login, 'OK');
    assert.equal(r.exists, 1);
    assert.match(Buffer.from(r.message_b64 ?? '', 'base64').toString(), /Mail for Carol\./);
    assert.ok(!s.logs().includes(password), 'the app password is never logged');
    assert.ok(!s.logs().includes(grant.refreshToken), 'the refresh token is never logged');

    // /status shows the account to the admin, with its grant and last login.
    const unauth = await fetch(`${base}/status`);
    assert.equal(unauth.status, 401);
    const st = await fetch(`${base}/status?format=json`, {
      headers: { authorization: `Basic ${Buffer.from('admin:status-secret').toString('base64')}` },
    });
    assert.equal(st.status, 200);
    const body = (await st.json()) as {
      accounts: { mailbox: string; grant: { status: string } | null; lastLoginAt: number | null }[];
    };
    const carol = body.accounts.find((a) => a.mailbox === 'carol@example.com');
    assert.equal(carol?.grant?.status, 'active');
    assert.ok(carol?.lastLoginAt);
  });

  test('the callback refuses a request without the state cookie (CSRF) and a forged link', async () => {
    const start = await fetch(`${base}/connect/start?provider=local`, { redirect: 'manual' });
    assert.equal(start.status, 302);
    const cookie = start.headers.get('set-cookie') ?? '';
    assert.match(cookie, /HttpOnly/);
    assert.match(cookie, /SameSite=Lax/);
    assert.match(start.headers.get('content-security-policy') ?? '', /default-src 'none'/);
    const auth = new URL(start.headers.get('location') ?? '');
    assert.equal(auth.searchParams.get('code_challenge_method'), 'S256');
    assert.ok(auth.searchParams.get('state') && auth.searchParams.get('nonce'));
    // An attacker's callback URL opened in a victim's browser carries no matching cookie.
    const forged = await fetch(
      `${base}/oauth/callback?code=attacker&state=${auth.searchParams.get('state')}`,
    );
    assert.equal(forged.status, 400);
    assert.match(await forged.text(), /Sign-in expired/);
    const link = await fetch(`${base}/connect/start?link=v1.k1.AAAA.BBBB`, { redirect: 'manual' });
    assert.equal(link.status, 400);
  });
});
