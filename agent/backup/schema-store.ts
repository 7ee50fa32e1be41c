// gateway.yaml's `backup:` block: where the data key is, and how much the store keeps.
import { z } from 'zod';

export const BackupStoreSchema = z
  .object({
    keyFile: z
      .string()
      .min(1)
      .optional()
      .describe('The data key (32 bytes, AES-256-GCM), mode 0600, made by `wardgate backup keygen`; relative to the gateway file. Default <stateDir>/keys/backup-data.key'),
    diskBudgetBytes: z
      .number()
      .int()
      .min(1024 * 1024)
      .max(1024 ** 4)
      .default(256 * 1024 * 1024)
      .describe('Most disk the store (<stateDir>/backups/) may take; over it the oldest versions go first, never a device\'s newest'),
    retention: z
      .object({
        last: z.number().int().min(1).max(10000).default(10).describe('The newest versions of each device that are kept'),
        dailyDays: z.number().int().min(0).max(3650).default(30).describe('And the newest version of each of this many last days (UTC)'),
      })
      .strict()
      .default({ last: 10, dailyDays: 30 }),
  })
  .strict();
export type BackupStoreConfig = z.infer<typeof BackupStoreSchema>;
