// The per-device `backup:` block of a policy file: which driver fetches the device's
// configuration, and how often, how patiently and how often again. docs/backup-drivers.md
// describes each driver. Secrets are never inline: *File fields name files (relative to the
// policy file's directory) that are read each time they are used.
import { z } from 'zod';

const Port = (dflt: number) => z.number().int().min(1, 'port must be 1-65535').max(65535, 'port must be 1-65535').default(dflt);

const Host = z
  .string()
  .regex(/^[A-Za-z0-9.:_-]{1,253}$/, 'a host name or an IPv4/IPv6 address')
  .describe('Defaults to the device\'s address (ipv4, else ipv6)');

const SecretFile = z.string().min(1);

const RangeName = z
  .string()
  .regex(/^[A-Za-z0-9][A-Za-z0-9_.-]{0,62}$/, 'use 1-63 letters, digits, "_", "." and "-", starting with a letter or digit');

export const MODBUS_KINDS = ['holding', 'input', 'coil', 'discrete'] as const;
export type ModbusKind = (typeof MODBUS_KINDS)[number];

export const ModbusRangeSchema = z
  .object({
    name: RangeName.describe('What the range holds (setpoints, alarm-limits); drift summaries name it'),
    kind: z.enum(MODBUS_KINDS).describe('holding registers and coils can be restored; input registers and discrete inputs are read-only'),
    address: z.number().int().min(0).max(65535).describe('First address, 0-based as on the wire (register 40001 is holding address 0)'),
    count: z.number().int().min(1).max(65536).describe('How many registers or bits; read in as many requests as the protocol needs'),
  })
  .strict()
  .refine((r) => r.address + r.count <= 65536, { message: 'address + count runs past 65535', path: ['count'] });
export type ModbusRange = z.infer<typeof ModbusRangeSchema>;

const Ranges = z
  .array(ModbusRangeSchema)
  .min(1)
  .superRefine((ranges, ctx) => {
    const seen = new Set<string>();
    ranges.forEach((r, i) => {
      if (seen.has(r.name)) ctx.addIssue({ code: 'custom', path: [i, 'name'], message: `range name "${r.name}" is used twice` });
      seen.add(r.name);
    });
  })
  .describe('The named ranges that make up the configuration');

const Unit = z.number().int().min(0).max(255).default(1).describe('Modbus unit id (slave address)');
const ResponseTimeoutMs = z.number().int().min(50).max(60000).default(2000).describe('How long one request may wait for its answer');

const ModbusTcpDriver = z
  .object({
    type: z.literal('modbus-tcp'),
    host: Host.optional(),
    port: Port(502),
    unit: Unit,
    responseTimeoutMs: ResponseTimeoutMs,
    ranges: Ranges,
  })
  .strict();

const ModbusRtuDriver = z
  .object({
    type: z.literal('modbus-rtu'),
    path: z.string().min(1).describe('The serial device, e.g. /dev/ttyUSB0 or /dev/serial/by-id/...'),
    // Modbus over Serial Line v1.02, 2.5.1: 19200 baud and even parity are the defaults.
    baudRate: z.number().int().min(300).max(921600).default(19200),
    parity: z.enum(['none', 'even', 'odd']).default('even'),
    dataBits: z.union([z.literal(7), z.literal(8)]).default(8),
    stopBits: z.union([z.literal(1), z.literal(2)]).default(1),
    unit: Unit,
    responseTimeoutMs: ResponseTimeoutMs,
    ranges: Ranges,
  })
  .strict();

/** SHA-256 of a DER certificate: 64 hex digits, with or without ":" between the bytes. */
const CertPin = z
  .string()
  .regex(/^(?:[0-9A-Fa-f]{64}|[0-9A-Fa-f]{2}(?::[0-9A-Fa-f]{2}){31})$/, 'a SHA-256 fingerprint: 64 hex digits, with or without ":" (openssl x509 -noout -fingerprint -sha256)');

const HttpAuth = z.discriminatedUnion('type', [
  z.object({ type: z.literal('none') }).strict(),
  z.object({ type: z.literal('basic'), username: z.string().min(1), passwordFile: SecretFile }).strict(),
  z.object({ type: z.literal('digest'), username: z.string().min(1), passwordFile: SecretFile }).strict().describe('RFC 7616, MD5 or SHA-256, qop auth'),
  z.object({ type: z.literal('bearer'), tokenFile: SecretFile }).strict(),
]);

const HttpDriver = z
  .object({
    type: z.literal('http'),
    url: z
      .string()
      .regex(/^https?:\/\/[^\s/]+(\/\S*)?$/, 'an http:// or https:// URL')
      .describe('Where the configuration is fetched from'),
    method: z.enum(['GET', 'POST']).default('GET'),
    auth: HttpAuth.default({ type: 'none' }),
    pin: CertPin.optional().describe('SHA-256 of the server\'s certificate, for devices with a self-signed one: the pin then replaces the CA check'),
    restore: z
      .object({
        method: z.enum(['PUT', 'POST']).default('PUT'),
        url: z.string().regex(/^https?:\/\/[^\s/]+(\/\S*)?$/, 'an http:// or https:// URL').optional().describe('Defaults to url'),
      })
      .strict()
      .optional()
      .describe('How a configuration is written back; without it the driver cannot restore'),
  })
  .strict();

const SftpDriver = z
  .object({
    type: z.literal('sftp'),
    host: Host.optional(),
    port: Port(22),
    username: z.string().min(1),
    privateKeyFile: SecretFile.optional().describe('OpenSSH or PEM private key'),
    passphraseFile: SecretFile.optional().describe('The private key\'s passphrase, if it has one'),
    passwordFile: SecretFile.optional(),
    hostKey: z
      .string()
      .regex(/^SHA256:[A-Za-z0-9+/]{43}=?$/, 'the host key\'s fingerprint as ssh-keygen -lf prints it: SHA256:<43 base64 characters>')
      .describe('Required: a host key that does not match is refused (no trust on first use)'),
    path: z.string().min(1).describe('The file to fetch'),
  })
  .strict()
  .superRefine((d, ctx) => {
    if ((d.privateKeyFile === undefined) === (d.passwordFile === undefined)) ctx.addIssue({ code: 'custom', path: ['privateKeyFile'], message: 'give one of privateKeyFile and passwordFile' });
    if (d.passphraseFile !== undefined && d.privateKeyFile === undefined) ctx.addIssue({ code: 'custom', path: ['passphraseFile'], message: 'passphraseFile goes with privateKeyFile' });
  });

const TftpDriver = z
  .object({
    type: z.literal('tftp'),
    host: Host.optional(),
    port: Port(69),
    file: z.string().min(1).max(255).describe('The file name to read (RFC 1350 RRQ, octet mode)'),
    blockSize: z.number().int().min(8).max(65464).optional().describe('Ask for this block size (RFC 2348); without it, 512'),
  })
  .strict();

const FileDriver = z.object({ type: z.literal('file') }).strict().describe('Configurations are imported by hand (wardgate backup import)');

const CommandDriver = z
  .object({
    type: z.literal('command'),
    argv: z.array(z.string()).min(1).describe('The program and its arguments, run without a shell in the policy file\'s directory; its standard output is the configuration'),
    timeoutSeconds: z.number().int().min(1).max(3600).default(60),
  })
  .strict();

export const DriverSchema = z.discriminatedUnion('type', [ModbusTcpDriver, ModbusRtuDriver, HttpDriver, SftpDriver, TftpDriver, FileDriver, CommandDriver]);
export type DriverConfig = z.infer<typeof DriverSchema>;
export type DriverType = DriverConfig['type'];
export type DriverOf<T extends DriverType> = Extract<DriverConfig, { type: T }>;

export const BackupDeviceSchema = z
  .object({
    driver: DriverSchema,
    schedule: z
      .object({ everyHours: z.number().min(0.25).max(24 * 365).describe('Hours between scheduled backups') })
      .strict()
      .optional()
      .describe('Without it, backups run only on demand'),
    timeoutSeconds: z.number().int().min(1).max(3600).default(30).describe('Longest one try may take'),
    retries: z.number().int().min(0).max(10).default(2).describe('Tries after a failed one, with a backoff between them'),
    expectEveryHours: z.number().min(0.25).max(24 * 365).optional().describe('Raise a stale event when no backup has succeeded for this long'),
  })
  .strict();
export type BackupDeviceConfig = z.infer<typeof BackupDeviceSchema>;
