// The lab's OpenID provider: node-oidc-provider (a certified implementation) with a directory
// of test users read from a JSON file, so the lab can add and remove users while it runs.
//
//   node server.js CONFIG.json
//
// CONFIG: {"host", "port" (0: any free port), "tls_cert", "tls_key", "users_file",
//          "clients": [oidc-provider client metadata], "ttl": {"AccessToken": s, ...}}
// USERS_FILE: {"alice": {"password": "...", "email": "...", "name": "...", "groups": [...]}}
//
// Prints one JSON line {"issuer": URL} on stdout once it serves requests.

import { readFileSync } from 'node:fs';
import https from 'node:https';

import Provider from 'oidc-provider';

const config = JSON.parse(readFileSync(process.argv[2], 'utf8'));

// Read on every look-up: a user deleted from the file is unknown to the provider at once,
// so its refresh tokens stop working, as at a real provider whose directory changed.
function directory() {
  return JSON.parse(readFileSync(config.users_file, 'utf8'));
}

function escape(text) {
  return String(text).replace(/[&<>"']/g, (c) => `&#${c.charCodeAt(0)};`);
}

// Plain pages without external resources: the lab's browser has no internet, and a failed
// font download is a console error (so is the browser's own /favicon.ico request: an empty
// icon inline spares it).
function page(title, body) {
  return `<!DOCTYPE html><html><head><meta charset="utf-8"><title>${escape(title)}</title>`
    + '<link rel="icon" href="data:,">'
    + '<meta name="viewport" content="width=device-width, initial-scale=1"></head>'
    + `<body><main><h1>${escape(title)}</h1>${body}</main></body></html>`;
}

function loginForm(uid, error) {
  return page('Sign in to the wiremesh lab provider', `${error ? `<p role="alert">${escape(error)}</p>` : ''}
<form method="post" action="/interaction/${escape(uid)}/login" autocomplete="off">
<label>Username <input name="login" id="login" required autofocus></label>
<label>Password <input name="password" id="password" type="password" required></label>
<button type="submit" id="submit">Sign in</button></form>`);
}

async function readForm(req) {
  const chunks = [];
  let size = 0;
  for await (const chunk of req) {
    size += chunk.length;
    if (size > 16384) throw new Error('form too large');
    chunks.push(chunk);
  }
  return new URLSearchParams(Buffer.concat(chunks).toString('utf8'));
}

const server = https.createServer({
  cert: readFileSync(config.tls_cert), key: readFileSync(config.tls_key),
});
server.listen(config.port, config.host, () => {
  const { port } = server.address();
  const host = config.host.includes(':') ? `[${config.host}]` : config.host;
  const issuer = `https://${host}:${port}`;
  const provider = new Provider(issuer, {
    clients: config.clients,
    async findAccount(_ctx, sub) {
      const user = directory()[sub];
      if (!user) return undefined;
      return {
        accountId: sub,
        async claims() {
          return {
            sub,
            email: user.email,
            email_verified: true,
            name: user.name,
            preferred_username: sub,
            groups: user.groups || [],
          };
        },
      };
    },
    claims: {
      openid: ['sub'],
      email: ['email', 'email_verified'],
      profile: ['name', 'preferred_username'],
      groups: ['groups'],
    },
    scopes: ['openid', 'offline_access', 'email', 'profile', 'groups'],
    // Claims of the granted scopes go into the ID token too (the relying party reads
    // groups from there, as it does with most providers).
    conformIdTokenClaims: false,
    features: {
      devInteractions: { enabled: false },
      deviceFlow: {
        enabled: true,
        userCodeInputSource(ctx, form, _out, err) {
          ctx.body = page('Connect a device', `${err ? '<p role="alert">That code is not valid.</p>' : ''}
${form}<button type="submit" form="op.deviceInputForm" id="continue">Continue</button>`);
        },
        userCodeConfirmSource(ctx, form, _client, _info, userCode) {
          ctx.body = page('Confirm the device', `<p>Code <code id="user-code">${escape(userCode)}</code></p>
${form}<button type="submit" form="op.deviceConfirmForm" id="confirm">Continue</button>`);
        },
        successSource(ctx) {
          ctx.body = page('Device connected', '<p id="done">You can close this window.</p>');
        },
      },
      rpInitiatedLogout: { enabled: true },
    },
    // The lab's clients are first-party: no consent screen; each login's grant carries the
    // scopes it asked for.
    async loadExistingGrant(ctx) {
      const grant = new ctx.oidc.provider.Grant({
        accountId: ctx.oidc.account.accountId, clientId: ctx.oidc.client.clientId,
      });
      grant.addOIDCScope([...ctx.oidc.requestParamOIDCScopes].join(' '));
      await grant.save();
      return grant;
    },
    // Refresh tokens whenever the client may use them (the relying party re-checks users
    // with them), also without prompt=consent.
    async issueRefreshToken(_ctx, client) {
      return client.grantTypeAllowed('refresh_token');
    },
    interactions: { url: (_ctx, interaction) => `/interaction/${interaction.uid}` },
    pkce: { required: () => true },
    ttl: config.ttl || {},
    cookies: { keys: [config.cookie_key] },
    renderError(ctx, out) {
      ctx.type = 'html';
      ctx.body = page('Error', `<p role="alert">${escape(out.error)}: ${escape(out.error_description || '')}</p>`);
    },
  });
  provider.proxy = false;

  provider.use(async (ctx, next) => {
    const match = ctx.path.match(/^\/interaction\/([\w-]+)(\/login)?$/);
    if (!match) return next();
    const details = await provider.interactionDetails(ctx.req, ctx.res);
    if (details.prompt.name !== 'login') {
      // Only a login prompt reaches here (consent is granted by loadExistingGrant).
      ctx.status = 400;
      ctx.body = page('Error', `<p role="alert">unexpected prompt ${escape(details.prompt.name)}</p>`);
      return undefined;
    }
    ctx.set('cache-control', 'no-store');
    ctx.type = 'html';
    if (ctx.method === 'GET' && !match[2]) {
      ctx.body = loginForm(details.uid);
      return undefined;
    }
    if (ctx.method === 'POST' && match[2]) {
      const form = await readForm(ctx.req);
      const login = form.get('login') || '';
      const user = Object.hasOwn(directory(), login) ? directory()[login] : undefined;
      if (!user || user.password !== form.get('password')) {
        ctx.status = 401;
        ctx.body = loginForm(details.uid, 'Unknown user or wrong password.');
        return undefined;
      }
      return provider.interactionFinished(ctx.req, ctx.res, { login: { accountId: login } },
        { mergeWithLastSubmission: false });
    }
    ctx.status = 405;
    return undefined;
  });

  server.on('request', provider.callback());
  process.stdout.write(`${JSON.stringify({ issuer })}\n`);
});

for (const signal of ['SIGTERM', 'SIGINT']) {
  process.on(signal, () => server.close(() => process.exit(0)));
}
