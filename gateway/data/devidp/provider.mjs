// The development and test OpenID provider: oidc-provider (a certified OpenID Connect implementation).
// DEV/TEST ONLY: users and passwords come from its configuration in plain text.
// Configured by one JSON object in the OIDC_TEST_CONFIG environment variable:
//   {"port", "issuer", "audience",
//    "client": {"client_id", "client_secret", "redirect_uri", "post_logout_redirect_uri"},
//    "users": {"<sub>": {"email", "org_id", "roles", "password"}}, "jwks": {"keys": [<private JWKs>]},
//    "test_endpoints": bool}
// Key rotation: restart this script with another "jwks" (the first key signs).
//
// Sign-in: authorization code flow, PKCE (S256) required for every client, a login page at
// /interaction/:uid (user name and password), consent granted automatically, refresh tokens issued,
// RP-initiated logout. ID tokens carry the claims of the scopes granted (conformIdTokenClaims
// false): email with "email", org_id and roles with "org".
//
// Access tokens: the resourceIndicators feature with accessTokenFormat "jwt", so every access token
// is a provider-signed JWT (typ at+jwt) for the audience.
//
// Test endpoints (only with "test_endpoints": true; never in `gateway dev`):
// - POST /__test/token {"sub", "aud"?, "override"?, "header"?}: an access token for a user through the
//   provider's own AccessToken model; "override" replaces payload claims (null removes one), "header"
//   sets the header.
// - POST /__test/next-id-token {"override"?, "header"?, "tamper"?, "alg"?, "key"?}: the NEXT token
//   response's ID token is changed: "override" claims (null removes one), "header" fields; then re-signed
//   with the provider's key, or with "key" (a private JWK), or "alg": "none" (no signature) or "HS256"
//   (the client secret as HMAC key); "tamper": true keeps the original signature (so it no longer matches).
// - POST /__test/users {"<sub>": {...} | null}: replace (or remove) users, e.g. to change roles.
// - GET /__test/last-token-request: the form of the last token request (to show the client sends PKCE).
import { createHmac } from 'node:crypto';
import { createServer } from 'node:http';
import { importJWK, SignJWT } from 'jose';
import Provider from 'oidc-provider';

const config = JSON.parse(process.env.OIDC_TEST_CONFIG);
const overrides = new WeakMap();
let nextIdToken = null;
let lastTokenRequest = null;

const escapeHtml = (s) => String(s).replace(/[&<>"']/g, (c) => ({ '&': '&amp;', '<': '&lt;', '>': '&gt;', '"': '&quot;', "'": '&#39;' }[c]));

const provider = new Provider(config.issuer, {
  clients: [{
    client_id: config.client.client_id,
    client_secret: config.client.client_secret,
    redirect_uris: [config.client.redirect_uri],
    post_logout_redirect_uris: config.client.post_logout_redirect_uri ? [config.client.post_logout_redirect_uri] : [],
    grant_types: ['authorization_code', 'refresh_token', 'client_credentials'],
    response_types: ['code'],
  }],
  jwks: config.jwks,
  claims: { openid: ['sub'], email: ['email'], org: ['org_id', 'roles'] },
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  issueRefreshToken: async (ctx, client) => client.grantTypeAllowed('refresh_token'),
  // Consent is granted automatically: every scope and claim the client asks for.
  loadExistingGrant: async (ctx) => {
    const grant = new ctx.oidc.provider.Grant({ clientId: ctx.oidc.client.clientId, accountId: ctx.oidc.session.accountId });
    grant.addOIDCScope([...ctx.oidc.requestParamScopes].join(' '));
    if (ctx.oidc.requestParamClaims) grant.addOIDCClaims([...ctx.oidc.requestParamClaims]);
    grant.addResourceScope(config.audience, 'api_keys');
    await grant.save();
    return grant;
  },
  findAccount: async (ctx, sub) => {
    const user = config.users[sub];
    if (!user) return undefined;
    return {
      accountId: sub,
      claims: async () => ({ sub, email: user.email, org_id: user.org_id, roles: user.roles }),
    };
  },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    rpInitiatedLogout: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: async () => config.audience,
      useGrantedResource: async () => true,
      getResourceServerInfo: async (ctx, resourceIndicator) => ({
        scope: 'api_keys',
        audience: resourceIndicator,
        accessTokenTTL: 300,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: 'RS256' } },
      }),
    },
  },
  extraTokenClaims: async (ctx, token) => {
    const user = token.accountId && config.users[token.accountId];
    return user ? { email: user.email, org_id: user.org_id, roles: user.roles } : undefined;
  },
  formats: {
    customizers: {
      jwt: async (ctx, token, jwt) => {
        const { header, claims } = overrides.get(token) || {};
        for (const [name, value] of Object.entries(claims || {})) {
          if (value === null) delete jwt.payload[name]; else jwt.payload[name] = value;
        }
        if (header) jwt.header = header; // e.g. {"typ": "JWT"}: an ID token's type
      },
    },
  },
});
provider.proxy = false;
if (config.test_endpoints) {
  // What the last token request sent (its grant type, whether a code_verifier came with it).
  provider.use(async (ctx, next) => {
    await next();
    if (ctx.method === 'POST' && ctx.path === '/token' && ctx.oidc) {
      const params = ctx.oidc.params || {};
      lastTokenRequest = { grant_type: params.grant_type, has_code_verifier: Boolean(params.code_verifier), status: ctx.status };
    }
  });
}

async function mint(body) {
  const user = config.users[body.sub];
  if (!user) return [404, { error: `no user ${body.sub}` }];
  const client = await provider.Client.find(config.client.client_id);
  const aud = body.aud || config.audience;
  const info = { scope: 'api_keys', audience: aud, accessTokenTTL: 300, accessTokenFormat: 'jwt', jwt: { sign: { alg: 'RS256' } } };
  const token = new provider.AccessToken({ accountId: body.sub, client, grantId: 'test-grant', scope: 'api_keys',
    gty: 'authorization_code' });
  token.resourceServer = new provider.ResourceServer(aud, info);
  token.extra = { email: user.email, org_id: user.org_id, roles: user.roles };
  overrides.set(token, { header: body.header, claims: body.override });
  return [200, { access_token: await token.save() }];
}

const b64 = (obj) => Buffer.from(JSON.stringify(obj)).toString('base64url');
const unb64 = (text) => JSON.parse(Buffer.from(text, 'base64url').toString());

// The changed ID token of /__test/next-id-token.
async function changeIdToken(idToken, change) {
  const [h, p, signature] = idToken.split('.');
  const header = { ...unb64(h), ...(change.header || {}) };
  const payload = unb64(p);
  for (const [name, value] of Object.entries(change.override || {})) {
    if (value === null) delete payload[name]; else payload[name] = value;
  }
  if (change.tamper) return `${b64(header)}.${b64(payload)}.${signature}`;
  if (change.alg === 'none') return `${b64({ ...header, alg: 'none' })}.${b64(payload)}.`;
  if (change.alg === 'HS256') {
    const input = `${b64({ ...header, alg: 'HS256' })}.${b64(payload)}`;
    return `${input}.${createHmac('sha256', config.client.client_secret).update(input).digest('base64url')}`;
  }
  const jwk = change.key || config.jwks.keys[0];
  const key = await importJWK(jwk, jwk.alg || 'RS256');
  return new SignJWT(payload).setProtectedHeader({ ...header, alg: jwk.alg || 'RS256', kid: jwk.kid }).sign(key);
}

// Buffers the token endpoint's response and rewrites its ID token before it is sent.
function interceptTokenResponse(res, change) {
  const chunks = [];
  const end = res.end.bind(res);
  res.write = (chunk) => { chunks.push(Buffer.from(chunk)); return true; };
  res.end = (chunk, ...rest) => {
    if (chunk && typeof chunk !== 'function') chunks.push(Buffer.from(chunk));
    const original = Buffer.concat(chunks);
    (async () => {
      try {
        const body = JSON.parse(original.toString());
        if (body.id_token) body.id_token = await changeIdToken(body.id_token, change);
        const out = Buffer.from(JSON.stringify(body));
        if (!res.headersSent) res.setHeader('content-length', out.length);
        end(out);
      } catch {
        end(original);
      }
    })();
    return res;
  };
}

async function readBody(req) {
  let data = '';
  for await (const chunk of req) data += chunk;
  return data;
}

function loginPage(uid, message) {
  return `<!DOCTYPE html>
<html lang="en"><head><meta charset="utf-8"><title>Sign in (development provider)</title></head>
<body>
<h1>Sign in</h1>
<p>Development and test identity provider: not for production.</p>
${message ? `<p role="alert">${escapeHtml(message)}</p>` : ''}
<form method="post" action="/interaction/${escapeHtml(uid)}/login" autocomplete="off">
<label for="login">User name</label> <input id="login" name="login" required autofocus>
<label for="password">Password</label> <input id="password" name="password" type="password" required>
<button type="submit">Sign in</button>
</form>
</body></html>`;
}

const html = (res, status, body) => res.writeHead(status, { 'content-type': 'text/html; charset=utf-8' }).end(body);
const json = (res, status, body) => res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));

async function interaction(req, res, uid, submit) {
  const details = await provider.interactionDetails(req, res);
  if (details.uid !== uid) return html(res, 400, 'interaction mismatch');
  if (details.prompt.name !== 'login') {
    // Consent is automatic (loadExistingGrant); anything else is finished with what is there.
    return provider.interactionFinished(req, res, {}, { mergeWithLastSubmission: true });
  }
  if (!submit) return html(res, 200, loginPage(uid));
  const form = new URLSearchParams(await readBody(req));
  const sub = form.get('login') || '';
  const user = Object.hasOwn(config.users, sub) ? config.users[sub] : undefined;
  if (!user || user.password === undefined || user.password !== form.get('password')) {
    return html(res, 200, loginPage(uid, 'Invalid user name or password.'));
  }
  return provider.interactionFinished(req, res, { login: { accountId: sub } }, { mergeWithLastSubmission: false });
}

async function testEndpoint(req, res, path) {
  if (req.method === 'GET' && path === '/__test/last-token-request') return json(res, 200, lastTokenRequest || {});
  if (req.method !== 'POST') return json(res, 405, { error: 'POST only' });
  const body = JSON.parse((await readBody(req)) || '{}');
  if (path === '/__test/token') {
    const [status, out] = await mint(body);
    return json(res, status, out);
  }
  if (path === '/__test/next-id-token') {
    nextIdToken = body;
    return json(res, 200, {});
  }
  if (path === '/__test/users') {
    for (const [sub, user] of Object.entries(body)) {
      if (user === null) delete config.users[sub]; else config.users[sub] = user;
    }
    return json(res, 200, {});
  }
  return json(res, 404, { error: 'no such test endpoint' });
}

const callback = provider.callback();
createServer(async (req, res) => {
  const path = req.url.split('?')[0];
  try {
    if (path.startsWith('/__test/')) {
      if (!config.test_endpoints) return json(res, 404, { error: 'not found' });
      return await testEndpoint(req, res, path);
    }
    const m = path.match(/^\/interaction\/([A-Za-z0-9_-]+)(\/login)?$/);
    if (m) {
      if (req.method === 'GET' && !m[2]) return await interaction(req, res, m[1], false);
      if (req.method === 'POST' && m[2]) return await interaction(req, res, m[1], true);
      return html(res, 405, 'method not allowed');
    }
    if (req.method === 'POST' && path === '/token' && nextIdToken && config.test_endpoints) {
      const change = nextIdToken;
      nextIdToken = null;
      interceptTokenResponse(res, change);
    }
  } catch (err) {
    if (!res.headersSent) return html(res, 400, escapeHtml(String(err && err.message)));
    return res.end();
  }
  return callback(req, res);
}).listen(config.port, '127.0.0.1', () => console.log(`oidc-provider listening on ${config.issuer}`));
