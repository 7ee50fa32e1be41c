// The gateway file's `nodeRed:` block: Node-RED on the gateway itself, for local flows (poll a
// device, raise a wardgate event). Optional and off unless the block is there; when it runs,
// its editor and admin API always want a login (docs/nodered.md).
import { z } from 'zod';

/** A bcrypt hash as Node-RED's adminAuth takes it (node-red admin hash-pw). */
export const BCRYPT_HASH = /^\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}$/;

export const NodeRedSchema = z
  .object({
    enabled: z.boolean().default(true).describe('false keeps the settings and does not start Node-RED'),
    host: z
      .string()
      .regex(/^[0-9A-Za-z.:-]{1,253}$/, 'an address or a host name')
      .default('127.0.0.1')
      .describe('Where the editor, the admin API and the flows\' HTTP endpoints listen. Off loopback, the login crosses the network in clear: reach it through an SSH tunnel, or put TLS in front'),
    port: z.number().int().min(1, 'port must be 1-65535').max(65535, 'port must be 1-65535').default(1880),
    flowFile: z
      .string()
      .min(1)
      .default('flows/gateway.json')
      .describe('The flows. A relative path is looked for beside the gateway file, then in the wardgate installation (which ships flows/gateway.json; Node-RED then runs a copy in <stateDir>/node-red, so that the editor never writes to the installation)'),
    adminAuth: z
      .object({
        username: z.string().regex(/^[A-Za-z0-9._@-]{1,64}$/, '1-64 letters, digits, ".", "_", "@", "-"'),
        passwordHashFile: z.string().min(1).describe('A file holding the bcrypt hash of the password (npx node-red admin hash-pw), relative to the gateway file; mode 0600'),
      })
      .strict()
      .optional()
      .describe('The login of the editor and the admin API, and of the flows\' HTTP endpoints. Required when Node-RED runs'),
    env: z
      .record(z.string(), z.string().max(4096))
      .default({})
      .describe('Environment for the flows (env.get("NAME") in a function node): the devices\' addresses and registers the flows use'),
  })
  .strict()
  .superRefine((n, ctx) => {
    if (n.enabled && n.adminAuth === undefined) {
      ctx.addIssue({ code: 'custom', path: ['adminAuth'], message: 'required when Node-RED runs: its editor and admin API need a login (adminAuth: { username, passwordHashFile }); or set enabled: false' });
    }
    for (const name of Object.keys(n.env)) {
      if (!/^[A-Z_][A-Z0-9_]{0,63}$/.test(name)) ctx.addIssue({ code: 'custom', path: ['env', name], message: 'an environment variable name: 1-64 of A-Z, 0-9 and "_", not starting with a digit' });
      else if (name.startsWith('WARDGATE_')) ctx.addIssue({ code: 'custom', path: ['env', name], message: 'names that start with WARDGATE_ are the agent\'s (WARDGATE_EVENTS_URL, WARDGATE_EVENTS_TOKEN, ...)' });
    }
  });
export type NodeRedConfig = z.infer<typeof NodeRedSchema>;
