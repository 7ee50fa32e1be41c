// The simulated CT modality (hardware/sim/modality.ts) with real DICOM peers: dcmjs-dimse's
// client stores an instance, DCMTK's echoscu verifies (when installed), a wrong called AE title
// is rejected with reason 7, and it listens on the address it was given and no other.
import { execFile } from 'node:child_process';
import { connect } from 'node:net';
import { promisify } from 'node:util';
import dimse from 'dcmjs-dimse';
import { afterEach, describe, expect, it } from 'vitest';
import { startModality, type Modality } from '../../hardware/sim/modality.js';
import { freePort } from '../../agent/demo/util.js';
import { probeDicom } from '../../agent/health/probes.js';

const HOST = '127.0.0.11';
let modality: Modality | undefined;

afterEach(async () => {
  await modality?.close();
  modality = undefined;
});

const haveEchoscu = await promisify(execFile)('echoscu', ['--version']).then(
  () => true,
  () => false,
);

function store(port: number, calledAe: string): Promise<{ status?: number; rejected?: number }> {
  const { StorageClass, TransferSyntax } = dimse.constants;
  const dataset = new dimse.Dataset(
    {
      SOPClassUID: StorageClass.CtImageStorage,
      SOPInstanceUID: '1.2.826.0.1.3680043.2.1125.1.1',
      StudyInstanceUID: '1.2.826.0.1.3680043.2.1125.1.2',
      SeriesInstanceUID: '1.2.826.0.1.3680043.2.1125.1.3',
      Modality: 'CT',
      PatientName: 'DEMO^PHANTOM',
    },
    TransferSyntax.ImplicitVRLittleEndian,
  );
  return new Promise((resolve) => {
    const client = new dimse.Client();
    const request = new dimse.requests.CStoreRequest(dataset);
    const out: { status?: number; rejected?: number } = {};
    request.on('response', (r: { getStatus(): number }) => (out.status = r.getStatus()));
    client.addRequest(request);
    client.on('associationRejected', (rj: { reason?: number }) => (out.rejected = rj.reason));
    client.on('networkError', () => resolve(out));
    client.on('closed', () => resolve(out));
    client.send(HOST, port, 'PACS', calledAe, { connectTimeout: 3000, associationTimeout: 3000, pduTimeout: 3000 });
  });
}

describe('the simulated CT modality', () => {
  it('stores an instance sent to its AE title, and counts it', async () => {
    const port = await freePort(HOST);
    modality = await startModality({ port, host: HOST });
    const r = await store(port, 'CT01');
    expect(r).toEqual({ status: dimse.constants.Status.Success });
    expect(modality.stored).toEqual([{ callingAe: 'PACS', sopClassUid: dimse.constants.StorageClass.CtImageStorage, sopInstanceUid: '1.2.826.0.1.3680043.2.1125.1.1' }]);
  });

  it('rejects an association to another AE title (reason 7), and stores nothing', async () => {
    const port = await freePort(HOST);
    modality = await startModality({ port, host: HOST });
    expect(await store(port, 'MR01')).toEqual({ rejected: dimse.constants.RejectReason.CalledAeNotRecognized });
    const probe = await probeDicom({ address: HOST }, { type: 'dicom', port, calledAe: 'MR01', callingAe: 'WARDGATE', intervalSeconds: 30, timeoutMs: 3000, failuresToDown: 1, successesToUp: 1 });
    expect(probe.error).toBe('rejected: association rejected (permanent): called AE title not recognized');
    expect(modality.stored).toEqual([]);
    expect(modality.associations.map((a) => a.accepted)).toEqual([false, false]);
  });

  it.skipIf(!haveEchoscu)('answers DCMTK\'s echoscu', async () => {
    const port = await freePort(HOST);
    modality = await startModality({ port, host: HOST, aeTitle: 'CTSIM' });
    await promisify(execFile)('echoscu', ['-aet', 'PACS', '-aec', 'CTSIM', HOST, String(port)]);
    expect(modality.echoes).toBe(1);
  });

  it('listens on its address only', async () => {
    const port = await freePort(HOST);
    modality = await startModality({ port, host: HOST });
    const reach = (host: string) =>
      new Promise<boolean>((resolve) => {
        const s = connect({ host, port }, () => {
          s.destroy();
          resolve(true);
        });
        s.on('error', () => resolve(false));
      });
    expect(await reach(HOST)).toBe(true);
    expect(await reach('127.0.0.1')).toBe(false);
  });
});
