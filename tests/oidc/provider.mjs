// A real OpenID provider for the tests: oidc-provider (a certified OpenID Connect implementation).
// Configured by one JSON object in the OIDC_TEST_CONFIG environment variable:
//   {"port", "issuer", "audience", "client": {"client_id", "client_secret", "redirect_uri"},
//    "users": {"<sub>": {"email", "org_id", "roles"}}, "jwks": {"keys": [<private JWKs>]}}
// Key rotation: the test restarts this script with another "jwks" (the first key signs).
//
// Access tokens: oidc-provider's resourceIndicators feature with accessTokenFormat "jwt", so every
// access token is a provider-signed JWT (typ at+jwt, kid of the signing key) for the audience.
// POST /__test/token {"sub", "aud"?, "override"?, "header"?} mints one for a user through the provider's own
// AccessToken model (what the authorization code grant does once the person has signed in): the
// user's org_id, roles and email become claims. "override" replaces payload claims before signing
// (iss, exp, nbf, ...; null removes one) and "header" adds header fields, for the refusal tests:
// still a token the provider signed. Test-only: the
// endpoint exists in this script only, and listens on 127.0.0.1.
import { createServer } from 'node:http';
import Provider from 'oidc-provider';

const config = JSON.parse(process.env.OIDC_TEST_CONFIG);
const overrides = new WeakMap();

const provider = new Provider(config.issuer, {
  clients: [{
    client_id: config.client.client_id,
    client_secret: config.client.client_secret,
    redirect_uris: [config.client.redirect_uri],
    grant_types: ['authorization_code', 'refresh_token', 'client_credentials'],
    response_types: ['code'],
  }],
  jwks: config.jwks,
  claims: { openid: ['sub'], email: ['email'], org: ['org_id', 'roles'] },
  findAccount: async (ctx, sub) => {
    const user = config.users[sub];
    if (!user) return undefined;
    return { accountId: sub, claims: async () => ({ sub, ...user }) };
  },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
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

const callback = provider.callback();
createServer(async (req, res) => {
  if (req.method === 'POST' && req.url === '/__test/token') {
    let data = '';
    for await (const chunk of req) data += chunk;
    try {
      const [status, body] = await mint(JSON.parse(data));
      res.writeHead(status, { 'content-type': 'application/json' }).end(JSON.stringify(body));
    } catch (err) {
      res.writeHead(500, { 'content-type': 'application/json' }).end(JSON.stringify({ error: String(err) }));
    }
    return;
  }
  callback(req, res);
}).listen(config.port, '127.0.0.1', () => console.log(`oidc-provider listening on ${config.issuer}`));
