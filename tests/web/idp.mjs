// A real OpenID Provider for the web tests: oidc-provider (certified) with one confidential
// client and test users from JSON, on loopback or in a test namespace. Never on a public address.
//
//   node idp.mjs --listen 127.0.0.1:9000 --client-id weft --client-secret s3cret \
//       --redirect-uri http://198.18.0.2:8080/login/oidc/callback \
//       --users users.json        # or --users '[{"login": "alice", ...}]'
//
// Users: [{"login": "alice", "email": "alice@example.com", "name": "Alice",
//          "groups": ["engineering"], "email_verified": true}]. With a file, it is read again at
// every sign-in: rewriting it is how a test changes a user's groups "at the IdP".
// The sign-in and consent pages are oidc-provider's own (devInteractions): any password is
// accepted for a listed login; an unknown login is not signed in. Claims (email, profile, groups) are
// put in the ID token, as Keycloak's and Authentik's mappers do.
// Prints `idp ready <issuer>` once it listens; stops on SIGTERM/SIGINT.
import Provider from 'oidc-provider';
import { readFileSync } from 'node:fs';

function args(argv) {
  const out = {};
  for (let i = 0; i < argv.length; i += 2) {
    const k = argv[i];
    if (!k.startsWith('--') || i + 1 >= argv.length) throw new Error(`bad argument ${k}: use --name value`);
    out[k.slice(2)] = argv[i + 1];
  }
  return out;
}

const a = args(process.argv.slice(2));
const listen = a.listen || process.env.IDP_LISTEN || '127.0.0.1:9000';
const [host, port] = [listen.slice(0, listen.lastIndexOf(':')), Number(listen.slice(listen.lastIndexOf(':') + 1))];
const issuer = a.issuer || `http://${listen}`;
const clientId = a['client-id'] || process.env.IDP_CLIENT_ID || 'weft';
const clientSecret = a['client-secret'] || process.env.IDP_CLIENT_SECRET;
const redirectUris = (a['redirect-uri'] || process.env.IDP_REDIRECT_URI || '').split(',').filter(Boolean);
const usersArg = a.users || process.env.IDP_USERS || '[]';
if (!clientSecret || redirectUris.length === 0) {
  console.error('idp.mjs needs --client-secret and --redirect-uri (or IDP_CLIENT_SECRET, IDP_REDIRECT_URI)');
  process.exit(2);
}

function users() {
  const text = usersArg.trimStart().startsWith('[') ? usersArg : readFileSync(usersArg, 'utf8');
  return JSON.parse(text);
}

function claimsOf(u) {
  return {
    sub: u.sub || u.login,
    email: u.email,
    email_verified: u.email_verified ?? true,
    name: u.name || u.login,
    preferred_username: u.login,
    groups: u.groups || [],
  };
}

const provider = new Provider(issuer, {
  clients: [{
    client_id: clientId,
    client_secret: clientSecret,
    redirect_uris: redirectUris,
    grant_types: ['authorization_code'],
    response_types: ['code'],
    token_endpoint_auth_method: 'client_secret_basic',
  }],
  scopes: ['openid', 'email', 'profile', 'groups'],
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'preferred_username'],
    groups: ['groups'],
  },
  conformIdTokenClaims: false,
  pkce: { required: () => true },
  features: { devInteractions: { enabled: true } },
  cookies: { keys: ['weft-test-idp-cookie-key'] },
  async findAccount(_ctx, id) {
    const u = users().find((x) => x.login === id || x.sub === id);
    if (!u) return undefined;
    return { accountId: id, async claims() { return claimsOf(u); } };
  },
});
provider.on('server_error', (_ctx, err) => console.error('idp server_error', err));

const server = provider.listen(port, host, () => {
  console.log(`idp ready ${issuer}`);
});
for (const sig of ['SIGTERM', 'SIGINT']) process.on(sig, () => server.close(() => process.exit(0)));
