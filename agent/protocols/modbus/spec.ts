// Sizes, codes and names from the two Modbus specifications the filter follows:
//   [MAP]  Modbus Application Protocol Specification v1.1b3
//   [TCP]  Modbus Messaging on TCP/IP Implementation Guide v1.0b
import { MODBUS_FUNCTIONS, type ModbusFunctionName } from '../schema.js';

/** [TCP] 3.1.3: transaction id (2), protocol id (2), length (2), unit id (1). */
export const MBAP_HEADER_BYTES = 7;
/** [MAP] 4.1: the PDU (function code and data) is at most 253 bytes, from RS-485's 256-byte ADU. */
export const MAX_PDU_BYTES = 253;
/** [TCP] 3.1.3 on top of [MAP] 4.1: 7 bytes of MBAP header and the PDU. */
export const MAX_ADU_BYTES = MBAP_HEADER_BYTES + MAX_PDU_BYTES;
/**
 * [TCP] 3.1.3: the length field counts the unit id and the PDU, so a frame with a function code
 * has at least 2, and at most 1 + 253.
 */
export const MIN_MBAP_LENGTH = 2;
export const MAX_MBAP_LENGTH = 1 + MAX_PDU_BYTES;

/** [MAP] 7: the exception codes the filter answers with. */
export const EXCEPTION = {
  /** 01: the function code is not allowed (or not known). */
  illegalFunction: 0x01,
  /** 02: an address (or, here, a unit id) outside what the peer may touch. */
  illegalDataAddress: 0x02,
  /** 03: a value or a length that does not fit the function's definition. */
  illegalDataValue: 0x03,
  /** 0A: a gateway found no path to the target (no such unit on its line, the line is down, it is overloaded). */
  gatewayPathUnavailable: 0x0a,
  /** 0B: a gateway's target did not answer (in time, or with an intact frame). */
  gatewayTargetFailed: 0x0b,
} as const;
export type ExceptionCode = (typeof EXCEPTION)[keyof typeof EXCEPTION];

/** [MAP] 4.3: the data model's four tables; file records ([MAP] 6.14, 6.15) are a fifth kind of object. */
export type Table = 'coils' | 'discreteInputs' | 'holdingRegisters' | 'inputRegisters' | 'fileRecords';

/** [MAP] 6.21: the MEI type of Read Device Identification within function 0x2B. */
export const MEI_READ_DEVICE_ID = 0x0e;

/** The public function names by code (undefined for a code the filter does not know). */
export const FUNCTION_NAMES: readonly (ModbusFunctionName | undefined)[] = (() => {
  const names: (ModbusFunctionName | undefined)[] = new Array<ModbusFunctionName | undefined>(256).fill(undefined);
  for (const [name, code] of Object.entries(MODBUS_FUNCTIONS) as [ModbusFunctionName, number][]) names[code] = name;
  return names;
})();

/** Two hex digits, as function codes are written in the specification. */
export const hex2 = (n: number): string => `0x${n.toString(16).padStart(2, '0')}`;
