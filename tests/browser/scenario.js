// The web pages in headless Chromium (Playwright), with the real npm client: sign in, generate a
// token of each type and see it once, `npm whoami` with it, revoke it, `npm login` completed in
// the browser, two-factor setup with a code computed from the secret on the page, sign in again
// with a one-time password. Run by tests/browser.rs; any failed check throws and exits 1.
//
// Environment: BASE (http://127.0.0.1:PORT), TG_USER, TG_PASSWORD, SHOTS (a folder for the PNG
// screenshots), WORK (a scratch folder), CHROMIUM (the browser binary).
'use strict';
const { chromium } = require('playwright-core');
const { execFileSync, spawn } = require('node:child_process');
const crypto = require('node:crypto');
const path = require('node:path');
const fs = require('node:fs');

const BASE = process.env.BASE;
const USER = process.env.TG_USER;
const PASSWORD = process.env.TG_PASSWORD;
const SHOTS = process.env.SHOTS;
const WORK = process.env.WORK;
const REGISTRY = BASE + '/';
const NERF = '//' + new URL(BASE).host + '/';

function check(cond, what) {
  if (!cond) throw new Error('check failed: ' + what);
}

function log(...args) {
  console.log('[scenario]', ...args);
}

// Tells the Rust side a secret the scenario used, for its check that no log holds one.
function used(kind, value) {
  console.log('USED', kind, value);
}

// npm with a .npmrc of its own; returns {code, stdout, stderr}.
function npm(args, npmrc) {
  try {
    const stdout = execFileSync('npm', [...args, '--registry', REGISTRY, '--userconfig', npmrc], {
      encoding: 'utf8', stdio: ['ignore', 'pipe', 'pipe'], timeout: 60000,
    });
    return { code: 0, stdout, stderr: '' };
  } catch (e) {
    return { code: e.status ?? 1, stdout: e.stdout || '', stderr: e.stderr || '' };
  }
}

function npmrcWithToken(name, token) {
  const file = path.join(WORK, name + '.npmrc');
  fs.writeFileSync(file, `${NERF}:_authToken=${token}\n`);
  return file;
}

// RFC 6238 TOTP (SHA-1, 6 digits, 30 s) of a base32 secret at time step `step`.
function totp(secretB32, step) {
  const alphabet = 'ABCDEFGHIJKLMNOPQRSTUVWXYZ234567';
  let bits = '';
  for (const c of secretB32.replace(/=+$/, '').toUpperCase()) {
    const v = alphabet.indexOf(c);
    check(v >= 0, 'base32 secret ' + secretB32);
    bits += v.toString(2).padStart(5, '0');
  }
  const bytes = [];
  for (let i = 0; i + 8 <= bits.length; i += 8) bytes.push(parseInt(bits.slice(i, i + 8), 2));
  const counter = Buffer.alloc(8);
  counter.writeBigUInt64BE(BigInt(step));
  const mac = crypto.createHmac('sha1', Buffer.from(bytes)).update(counter).digest();
  const off = mac[mac.length - 1] & 0xf;
  const n = (mac.readUInt32BE(off) & 0x7fffffff) % 1000000;
  return String(n).padStart(6, '0');
}

async function shot(page, name) {
  await page.screenshot({ path: path.join(SHOTS, name + '.png'), fullPage: true });
}

async function signIn(page, password) {
  await page.fill('#name', USER);
  await page.fill('#password', password);
  await page.click('button:has-text("Sign in")');
}

async function generate(page, kind, fill) {
  await page.goto(BASE + '/-/web/tokens');
  await page.click('a:has-text("Generate New Token")');
  await page.waitForURL('**/-/web/tokens/new');
  await page.fill('#name', 'web ' + kind);
  await page.selectOption('#kind', kind);
  if (fill) await fill(page);
  await page.fill('#password', PASSWORD);
  if (kind === 'granular') await shot(page, 'generate-token');
  await page.click('button:has-text("Generate Token")');
  const token = await page.inputValue('#new-token');
  used('secret', token);
  check(/^npm_[A-Za-z0-9]{36}$/.test(token), `a ${kind} token is shown: ${token}`);
  check((await page.content()).includes('will not be shown again'), 'the once-only warning');
  check(await page.isVisible('button[data-copy="new-token"]'), 'the copy button');
  if (kind === 'read-only') await shot(page, 'new-token');
  // Shown once: the list holds only its redacted start.
  await page.goto(BASE + '/-/web/tokens');
  const list = await page.content();
  check(!list.includes(token), 'the list does not show the whole token');
  check(list.includes(token.slice(0, 8)), 'the list shows the start of the token');
  return token;
}

(async () => {
  const browser = await chromium.launch({
    executablePath: process.env.CHROMIUM || '/usr/bin/chromium',
    headless: true,
    args: ['--no-sandbox'],
  });
  const viewport = { width: 1000, height: 640 };
  const context = await browser.newContext({ viewport });
  const page = await context.newPage();
  const violations = [];
  page.on('console', (m) => {
    if (/Content.Security.Policy/i.test(m.text())) violations.push(m.text());
  });

  // Sign in: a page of the site sends the browser to the sign-in page and back.
  await page.goto(BASE + '/-/web/tokens');
  check(page.url().includes('/-/web/login?next='), 'redirected to sign in: ' + page.url());
  await shot(page, 'sign-in');
  await page.fill('#name', USER);
  await page.fill('#password', 'not the password');
  await page.click('button:has-text("Sign in")');
  check((await page.textContent('.error')).includes('Incorrect username or password'), 'wrong password refused');
  await signIn(page, PASSWORD);
  await page.waitForURL('**/-/web/tokens');
  log('signed in');

  // A token of each type, each shown once and usable with npm.
  const tokens = {};
  tokens['publish'] = await generate(page, 'publish');
  tokens['read-only'] = await generate(page, 'read-only', (p) => p.fill('#expires', '30'));
  tokens['automation'] = await generate(page, 'automation', (p) => p.fill('#cidr', '127.0.0.0/8, ::1/128'));
  tokens['granular'] = await generate(page, 'granular', async (p) => {
    await p.fill('#packages', 'lodash, @acme/ui');
    await p.fill('#scopes', '@tools');
    await p.selectOption('#packages_permission', 'read-write');
    await p.fill('#orgs', 'acme');
    await p.check('input[name=bypass_2fa]');
  });
  for (const [kind, token] of Object.entries(tokens)) {
    const who = npm(['whoami'], npmrcWithToken(kind, token));
    check(who.code === 0 && who.stdout.trim() === USER, `npm whoami with the ${kind} token: ${JSON.stringify(who)}`);
  }
  log('npm whoami works with every type');

  // The same validation as the API, shown on the form.
  await page.goto(BASE + '/-/web/tokens/new');
  await page.fill('#name', 'bad');
  await page.fill('#cidr', 'not-a-cidr');
  await page.fill('#password', PASSWORD);
  await page.click('button:has-text("Generate Token")');
  check((await page.textContent('.error')).includes('not-a-cidr'), 'an invalid CIDR is refused with its message');

  await page.goto(BASE + '/-/web/tokens');
  const rows = await page.locator('tbody tr').count();
  check(rows === 4, `four tokens listed, found ${rows}`);
  for (const kind of ['publish', 'read-only', 'automation', 'granular']) {
    check(await page.isVisible(`span.badge.${kind}`), `the ${kind} badge`);
  }
  await shot(page, 'access-tokens');

  // Revoke the publish token, with the confirmation.
  await page.click('a[aria-label="Revoke web publish"]');
  await page.waitForURL('**/-/web/tokens/revoke?key=*');
  await shot(page, 'revoke-token');
  await page.click('button:has-text("Revoke token")');
  await page.waitForURL('**/-/web/tokens?notice=revoked');
  check((await page.locator('tbody tr').count()) === 3, 'three tokens left');
  const dead = npm(['whoami'], npmrcWithToken('publish', tokens['publish']));
  check(dead.code !== 0 && /E401|revoked/.test(dead.stderr), 'the revoked token no longer works: ' + dead.stderr);
  log('revoked');

  // npm login (web, npm 11's default) completed in a fresh browser: sign in, then confirm.
  const loginRc = path.join(WORK, 'login.npmrc');
  fs.writeFileSync(loginRc, '');
  const child = spawn('npm', ['login', '--registry', REGISTRY, '--userconfig', loginRc], {
    stdio: ['ignore', 'pipe', 'pipe'],
  });
  let out = '', err = '';
  child.stdout.on('data', (d) => { out += d; });
  child.stderr.on('data', (d) => { err += d; });
  const exited = new Promise((resolve) => child.on('exit', resolve));
  const deadline = Date.now() + 30000;
  let loginUrl;
  while (!(loginUrl = (out.match(/https?:\/\/\S+\/-\/web\/npm-login\?id=\S+/) || [])[0])) {
    check(Date.now() < deadline, `npm login printed no login URL: ${out} ${err}`);
    check(child.exitCode === null, `npm login ended early: ${out} ${err}`);
    await new Promise((r) => setTimeout(r, 100));
  }
  const fresh = await browser.newContext({ viewport });
  const other = await fresh.newPage();
  await other.goto(loginUrl);
  check(other.url().includes('/-/web/login?next='), 'npm login asks to sign in first');
  check((await other.content()).includes('npm is waiting'), 'the sign-in page says npm is waiting');
  await signIn(other, PASSWORD);
  await other.waitForURL('**/-/web/npm-login?id=*');
  check((await other.textContent('h1')).includes('Log in npm on this machine?'), 'the confirmation');
  await shot(other, 'npm-login');
  await other.click('button:has-text("Log in npm")');
  check((await other.textContent('h1')).includes('npm is logged in'), 'npm login confirmed');
  const code = await Promise.race([exited, new Promise((r) => setTimeout(() => r('timeout'), 30000))]);
  check(code === 0, `npm login finished: ${code} ${out} ${err}`);
  const who = npm(['whoami'], loginRc);
  check(who.code === 0 && who.stdout.trim() === USER, 'npm whoami after web login: ' + JSON.stringify(who));
  const session = (fs.readFileSync(loginRc, 'utf8').match(/_authToken=(\S+)/) || [])[1];
  check(session, 'npm login saved a token');
  used('secret', session);
  // The link is used up.
  await other.goto(loginUrl);
  check((await other.content()).includes('confirmed or cancelled already'), 'the login link works once');
  await fresh.close();
  log('npm login through the browser works');

  // Two-factor authentication: the secret from the page, the code computed here.
  await page.goto(BASE + '/-/web/tfa');
  await shot(page, 'two-factor-off');
  await page.fill('#password', PASSWORD);
  await page.click('button:has-text("Set up two-factor authentication")');
  await page.waitForURL('**/-/web/tfa');
  const secret = await page.inputValue('#tfa-secret');
  check(/^[A-Z2-7]{32}$/.test(secret), 'the secret as text: ' + secret);
  used('totp', secret);
  check(await page.isVisible('.qr svg'), 'the QR code');
  await shot(page, 'two-factor-setup');
  const step = Math.floor(Date.now() / 1000 / 30);
  await page.fill('#code', totp(secret, step));
  await page.click('button:has-text("Confirm and enable")');
  const codes = (await page.inputValue('#recovery-codes')).split('\n');
  check(codes.length === 10 && codes.every((c) => /^[0-9a-f]{64}$/.test(c)), 'ten recovery codes: ' + codes);
  codes.forEach((c) => used('secret', c));
  check((await page.content()).includes('will not be shown again'), 'the recovery codes warning');
  await shot(page, 'recovery-codes');
  await page.goto(BASE + '/-/web/tfa');
  check((await page.content()).includes('auth-only'), 'two-factor is on');
  log('two-factor enabled');

  // Sign out, then in again: password, then the one-time password (the next step's code: the
  // server accepts one step of skew, and never a step twice).
  await page.click('header button:has-text("Sign out")');
  await page.waitForURL('**/-/web/login');
  await page.goto(BASE + '/-/web/tokens');
  await signIn(page, PASSWORD);
  await page.waitForSelector('#code');
  await shot(page, 'sign-in-otp');
  await page.fill('#code', '000000');
  await page.click('button:has-text("Verify")');
  check((await page.textContent('.error')).includes('not right'), 'a wrong code is refused');
  await page.fill('#code', totp(secret, step + 1));
  await page.click('button:has-text("Verify")');
  await page.waitForURL('**/-/web/tokens');
  check((await page.locator('tbody tr').count()) >= 3, 'signed in with the one-time password');
  log('signed in with the one-time password');

  await page.goto(BASE + '/-/web/password');
  check(await page.isVisible('#otp'), 'the password form asks for a one-time password');
  await shot(page, 'password');

  check(violations.length === 0, 'no CSP violations: ' + violations.join('\n'));
  for (const c of await page.context().cookies()) used('secret', c.value);
  await browser.close();
  console.log('SCENARIO OK');
})().catch((e) => {
  console.error(e && e.stack ? e.stack : e);
  process.exit(1);
});
