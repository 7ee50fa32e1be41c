// The application rules an allow entry can carry (`modbus:` and `dicom:`), and the gateway's
// `protocols:` block. Traffic for an inbound entry with such rules is steered by the ruleset to
// an inline proxy in the agent, which enforces them (docs/protocols.md).
import { z } from 'zod';

/** Modbus public function codes by name (Modbus Application Protocol v1.1b3, 6.1-6.21). */
export const MODBUS_FUNCTIONS = {
  'read-coils': 0x01,
  'read-discrete-inputs': 0x02,
  'read-holding-registers': 0x03,
  'read-input-registers': 0x04,
  'write-single-coil': 0x05,
  'write-single-register': 0x06,
  'read-exception-status': 0x07,
  diagnostics: 0x08,
  'get-comm-event-counter': 0x0b,
  'get-comm-event-log': 0x0c,
  'write-multiple-coils': 0x0f,
  'write-multiple-registers': 0x10,
  'report-server-id': 0x11,
  'read-file-record': 0x14,
  'write-file-record': 0x15,
  'mask-write-register': 0x16,
  'read-write-multiple-registers': 0x17,
  'read-fifo-queue': 0x18,
  'read-device-identification': 0x2b,
} as const;
export type ModbusFunctionName = keyof typeof MODBUS_FUNCTIONS;
const FUNCTION_NAMES = Object.keys(MODBUS_FUNCTIONS) as [ModbusFunctionName, ...ModbusFunctionName[]];

/** The one-word profiles. read-only reads the data model and the device's identity; read-write adds the writes. */
export const MODBUS_PROFILES = {
  'read-only': ['read-coils', 'read-discrete-inputs', 'read-holding-registers', 'read-input-registers', 'read-device-identification'],
  'read-write': [
    'read-coils', 'read-discrete-inputs', 'read-holding-registers', 'read-input-registers', 'read-device-identification',
    'write-single-coil', 'write-single-register', 'write-multiple-coils', 'write-multiple-registers', 'mask-write-register', 'read-write-multiple-registers',
  ],
} as const satisfies Record<string, readonly ModbusFunctionName[]>;

/** An address or unit id, or a range "low-high", within [0, max]. */
const NumberRange = (max: number, what: string) =>
  z.union([
    z.number().int().min(0, `${what} must be 0-${max}`).max(max, `${what} must be 0-${max}`),
    z.string().superRefine((value, ctx) => {
      const m = /^(\d{1,5})-(\d{1,5})$/.exec(value);
      if (!m) return void ctx.addIssue({ code: 'custom', message: `"${value}" is not a ${what} or a range "low-high"` });
      const lo = Number(m[1]);
      const hi = Number(m[2]);
      if (hi > max) ctx.addIssue({ code: 'custom', message: `${what} range ${value} runs past ${max}` });
      else if (lo > hi) ctx.addIssue({ code: 'custom', message: `${what} range ${value} runs backwards` });
    }),
  ]);
export type NumberRangeSpec = number | string;

const Addresses = z.array(NumberRange(65535, 'address')).min(1);

export const ModbusRulesSchema = z
  .object({
    profile: z.enum(['read-only', 'read-write']).optional().describe('read-only: the four reads and device identification; read-write adds the six writes'),
    functions: z.array(z.enum(FUNCTION_NAMES)).min(1).optional().describe('Function codes by name, added to the profile\'s'),
    unitIds: z.array(NumberRange(255, 'unit id')).min(1).optional().describe('Unit ids the peer may address (default: any)'),
    read: z
      .object({
        coils: Addresses.optional(),
        discreteInputs: Addresses.optional(),
        holdingRegisters: Addresses.optional(),
        inputRegisters: Addresses.optional(),
      })
      .strict()
      .optional()
      .describe('Addresses (0-based, as on the wire) the peer may read, per table; a table not named here may be read whole'),
    write: z
      .object({
        coils: Addresses.optional(),
        holdingRegisters: Addresses.optional(),
      })
      .strict()
      .optional()
      .describe('Addresses the peer may write, per table; a table not named here may be written whole when a write function is allowed'),
    onDeny: z.enum(['exception', 'close']).default('exception').describe('exception: answer a denied request with exception 01 (function) or 02 (address, unit); close: drop the connection'),
  })
  .strict()
  .refine((r) => r.profile !== undefined || r.functions !== undefined, { message: 'name a profile (read-only, read-write) or the functions the peer may use', path: ['profile'] });
export type ModbusRules = z.infer<typeof ModbusRulesSchema>;

/** Common SOP classes by name (PS3.4 annex B, C, F, K). Any other is given by its UID. */
export const SOP_CLASSES = {
  verification: '1.2.840.10008.1.1',
  'cr-image-storage': '1.2.840.10008.5.1.4.1.1.1',
  'dx-image-storage': '1.2.840.10008.5.1.4.1.1.1.1',
  'mg-image-storage': '1.2.840.10008.5.1.4.1.1.1.2',
  'ct-image-storage': '1.2.840.10008.5.1.4.1.1.2',
  'enhanced-ct-image-storage': '1.2.840.10008.5.1.4.1.1.2.1',
  'us-image-storage': '1.2.840.10008.5.1.4.1.1.6.1',
  'mr-image-storage': '1.2.840.10008.5.1.4.1.1.4',
  'enhanced-mr-image-storage': '1.2.840.10008.5.1.4.1.1.4.1',
  'secondary-capture-image-storage': '1.2.840.10008.5.1.4.1.1.7',
  'xa-image-storage': '1.2.840.10008.5.1.4.1.1.12.1',
  'nm-image-storage': '1.2.840.10008.5.1.4.1.1.20',
  'pet-image-storage': '1.2.840.10008.5.1.4.1.1.128',
  'rt-plan-storage': '1.2.840.10008.5.1.4.1.1.481.5',
  'encapsulated-pdf-storage': '1.2.840.10008.5.1.4.1.1.104.1',
  'basic-text-sr-storage': '1.2.840.10008.5.1.4.1.1.88.11',
  'enhanced-sr-storage': '1.2.840.10008.5.1.4.1.1.88.22',
  'patient-root-qr-find': '1.2.840.10008.5.1.4.1.2.1.1',
  'patient-root-qr-move': '1.2.840.10008.5.1.4.1.2.1.2',
  'patient-root-qr-get': '1.2.840.10008.5.1.4.1.2.1.3',
  'study-root-qr-find': '1.2.840.10008.5.1.4.1.2.2.1',
  'study-root-qr-move': '1.2.840.10008.5.1.4.1.2.2.2',
  'study-root-qr-get': '1.2.840.10008.5.1.4.1.2.2.3',
  'modality-worklist-find': '1.2.840.10008.5.1.4.31',
  'storage-commitment-push': '1.2.840.10008.1.20.1',
  'modality-performed-procedure-step': '1.2.840.10008.3.1.2.3.3',
} as const;

export const DIMSE_COMMANDS = ['C-ECHO', 'C-STORE', 'C-FIND', 'C-MOVE', 'C-GET', 'N-EVENT-REPORT', 'N-GET', 'N-SET', 'N-ACTION', 'N-CREATE', 'N-DELETE'] as const;
export type DimseCommand = (typeof DIMSE_COMMANDS)[number];

/** An AE title (PS3.5 6.2, VR AE): 1-16 characters, no backslash or control characters, not only spaces. */
export const AeTitle = z
  .string()
  .regex(/^[\x20-\x5b\x5d-\x7e]{1,16}$/, 'an AE title: 1-16 printable characters, no "\\"')
  .refine((s) => s.trim().length > 0, 'an AE title cannot be only spaces');

const SopClass = z.string().superRefine((value, ctx) => {
  if (value in SOP_CLASSES) return;
  if (/^[0-2](\.(0|[1-9][0-9]*))+$/.test(value) && value.length <= 64) return;
  ctx.addIssue({ code: 'custom', message: `"${value}" is neither a SOP class name (${Object.keys(SOP_CLASSES).slice(0, 4).join(', ')}, ...) nor a UID` });
});

export const DicomRulesSchema = z
  .object({
    calledAeTitle: AeTitle.describe('The device\'s own AE title: associations calling another are rejected (A-ASSOCIATE-RJ, reason 7)'),
    callingAeTitles: z.array(AeTitle).min(1).optional().describe('AE titles the peer may call from (default: any); others are rejected (reason 3)'),
    sopClasses: z.array(SopClass).min(1).optional().describe('SOP classes by name or UID (default: any); other presentation contexts are refused (abstract syntax not supported)'),
    commands: z.array(z.enum(DIMSE_COMMANDS)).min(1).optional().describe('DIMSE commands the peer may send (default: C-ECHO, C-STORE, C-FIND, C-MOVE, C-GET); another aborts the association'),
    tls: z
      .object({
        cert: z.string().min(1).describe('The certificate the proxy shows on the hospital side (PEM), relative to the policy file'),
        key: z.string().min(1).describe('Its private key (PEM), mode 0600'),
        ca: z.string().min(1).optional().describe('CA (PEM) that signed the peers\' client certificates; with it, a peer without a valid one is refused'),
        devicePort: z.number().int().min(1).max(65535).default(104).describe('The device\'s own (plain) DICOM port the proxy forwards to'),
      })
      .strict()
      .optional()
      .describe('DICOM TLS (PS3.15 B.1) on the hospital side for a device that cannot speak it: the entry\'s ports are the TLS ports (2762)'),
  })
  .strict();
export type DicomRules = z.infer<typeof DicomRulesSchema>;

/**
 * A device on an RS-485 line behind the gateway (Modbus over Serial Line v1.02):
 * the gateway listens on a TCP port of its own and carries each allowed request to the device
 * as an RTU frame (docs/protocols.md, "Modbus RTU gateway").
 */
export const RtuSchema = z
  .object({
    serialPort: z
      .string()
      .regex(/^\/[^\0]*[^/\0]$/, 'the serial device\'s absolute path, for example /dev/ttyUSB0 or /dev/serial/by-id/...')
      .describe('The serial device the RS-485 line is on; devices on one line share it (one request at a time)'),
    baudRate: z.number().int().min(300).max(921600).default(19200).describe('Modbus over Serial Line 2.5.1: 19200 is the default every device must support'),
    parity: z.enum(['none', 'even', 'odd']).default('even').describe('Modbus over Serial Line 2.5.1: even by default'),
    dataBits: z
      .literal(8, { error: 'Modbus RTU characters carry 8 data bits (Modbus over Serial Line 2.5.1); 7 data bits is the ASCII mode, which the gateway does not speak' })
      .default(8)
      .describe('Always 8 in RTU mode (Modbus over Serial Line 2.5.1)'),
    stopBits: z
      .literal([1, 2], { error: 'stopBits is 1 or 2' })
      .optional()
      .describe('Default: 1 with parity, 2 without (Modbus over Serial Line 2.5.1: 11 bits a character)'),
    listenPort: z.number().int().min(1, 'port must be 1-65535').max(65535, 'port must be 1-65535').describe('The gateway\'s own TCP port for this device: peers connect to the gateway\'s address on it'),
    responseTimeoutMs: z.number().int().min(10).max(60000).default(1000).describe('How long the gateway waits for an answer; then the peer gets exception 0x0B'),
    turnaroundDelayMs: z.number().int().min(0).max(10000).default(100).describe('Modbus over Serial Line 2.4.1: the pause after a broadcast (unit 0), which no device answers, and after a timeout, before the next request'),
  })
  .strict()
  .transform((r) => ({ ...r, stopBits: r.stopBits ?? (r.parity === 'none' ? 2 : 1) }));
export type RtuConfig = z.infer<typeof RtuSchema>;
/** What the gateway needs to drive the line: everything but the TCP side's port. */
export type RtuLine = Omit<RtuConfig, 'listenPort'>;

export const ProtocolsSchema = z
  .object({
    listenPorts: z
      .string()
      .regex(/^\d{1,5}-\d{1,5}$/, 'a port range "low-high"')
      .default('40100-40299')
      .describe('Local ports the proxies listen on; the ruleset redirects each proxied device port to one of them'),
    listenHost: z
      .string()
      .regex(/^[0-9A-Fa-f.:]{2,45}$/, 'an IPv4 or IPv6 address')
      .default('::')
      .describe('The address the proxies listen on. Keep "::" with nftables: the redirect delivers to the address of the interface a connection came in on. 127.0.0.1 is for a gateway without the kernel\'s redirect (the dry-run backend, the demo), whose peers on the same machine connect to the listeners directly'),
    maxConnections: z.number().int().min(1).max(100000).default(512).describe('Proxied connections at once, all devices'),
    maxConnectionsPerPeer: z.number().int().min(1).max(10000).default(16).describe('Proxied connections at once from one peer address'),
    connectTimeoutMs: z.number().int().min(100).max(60000).default(3000).describe('How long the proxy waits for the device to accept'),
    idleTimeoutSeconds: z.number().int().min(1).max(86400).default(900).describe('A connection with no bytes either way for this long is closed'),
    logBytes: z
      .number()
      .int()
      .min(64 * 1024)
      .max(16 * 1024 ** 3)
      .default(16 * 1024 * 1024)
      .describe('Most disk the application log (<stateDir>/app/: writes that passed, associations) may take'),
    modbus: z
      .object({
        maxPendingRequests: z.number().int().min(1).max(1024).default(32).describe('Requests forwarded and not yet answered, per connection; more are held until answers come'),
      })
      .strict()
      .default({ maxPendingRequests: 32 }),
    dicom: z
      .object({
        maxPduBytes: z.number().int().min(4096).max(64 * 1024 * 1024).default(1024 * 1024).describe('Largest PDU the proxy accepts (PS3.8 9.3.1); a larger one aborts the association'),
      })
      .strict()
      .default({ maxPduBytes: 1024 * 1024 }),
  })
  .strict();
export type ProtocolsConfig = z.infer<typeof ProtocolsSchema>;
