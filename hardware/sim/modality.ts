// A simulated DICOM modality (a CT scanner's storage and verification service), for the demo
// and tests: a C-ECHO and C-STORE SCP (PS3.4 annex A and B) on dcmjs-dimse, speaking the real
// protocol on a loopback address. Like a real modality it accepts only associations that call
// its own AE title (A-ASSOCIATE-RJ reason 7 otherwise, PS3.8 9.3.4) and takes any calling AE
// title: deciding who may call is the gateway's job. Stored instances are counted, not kept.
//
// dcmjs-dimse's Server listens on every interface (it calls server.listen(port) with no host),
// which a simulator on a shared machine must not do; so this module runs its own net.Server on
// the address asked for and hands each connection to an Scp, which is all Server does.
import { createServer, type Server, type Socket } from 'node:net';
import dimse from 'dcmjs-dimse';
import type { association, requests, responses } from 'dcmjs-dimse';

type Association = association.Association;
type CEchoRequest = requests.CEchoRequest;
type CStoreRequest = requests.CStoreRequest;
type CEchoResponse = responses.CEchoResponse;
type CStoreResponse = responses.CStoreResponse;

export interface StoredInstance {
  callingAe: string;
  sopClassUid: string;
  sopInstanceUid: string;
}

export interface Modality {
  host: string;
  port: number;
  aeTitle: string;
  /** C-ECHO requests answered. */
  echoes: number;
  /** Associations accepted and rejected, by calling AE title. */
  associations: { callingAe: string; calledAe: string; accepted: boolean }[];
  stored: StoredInstance[];
  close(): Promise<void>;
}

export interface ModalityOptions {
  /** A free port: the modality does not pick one. */
  port: number;
  /** Default 127.0.0.1. */
  host?: string;
  /** Its own AE title (default CT01). */
  aeTitle?: string;
}

const { PresentationContextResult, RejectReason, RejectResult, RejectSource, SopClass, Status, StorageClass, TransferSyntax } = dimse.constants;
const ACCEPTED_SYNTAXES = new Set([TransferSyntax.ImplicitVRLittleEndian, TransferSyntax.ExplicitVRLittleEndian]);
const STORAGE = new Set<string>(Object.values(StorageClass));

// Importing dcmjs-dimse turns its logger on at every level, onto stdout.
dimse.log.setLevel('silent');

export function startModality(opts: ModalityOptions): Promise<Modality> {
  const host = opts.host ?? '127.0.0.1';
  const aeTitle = opts.aeTitle ?? 'CT01';
  const sockets = new Set<Socket>();
  const state: Omit<Modality, 'close'> = { host, port: opts.port, aeTitle, echoes: 0, associations: [], stored: [] };

  class ModalityScp extends dimse.Scp {
    private callingAe = '';

    override associationRequested(association: Association): void {
      this.callingAe = association.getCallingAeTitle().trim();
      const calledAe = association.getCalledAeTitle().trim();
      const accepted = calledAe === aeTitle;
      state.associations.push({ callingAe: this.callingAe, calledAe, accepted });
      if (!accepted) {
        this.sendAssociationReject(RejectResult.Permanent, RejectSource.ServiceUser, RejectReason.CalledAeNotRecognized);
        return;
      }
      for (const { id } of association.getPresentationContexts()) {
        const context = association.getPresentationContext(id);
        const abstract = context.getAbstractSyntaxUid();
        if (abstract !== SopClass.Verification && !STORAGE.has(abstract)) {
          context.setResult(PresentationContextResult.RejectAbstractSyntaxNotSupported);
          continue;
        }
        const syntax = context.getTransferSyntaxUids().find((t: string) => ACCEPTED_SYNTAXES.has(t));
        if (syntax === undefined) context.setResult(PresentationContextResult.RejectTransferSyntaxesNotSupported);
        else context.setResult(PresentationContextResult.Accept, syntax);
      }
      this.sendAssociationAccept();
    }

    override associationReleaseRequested(): void {
      this.sendAssociationReleaseResponse();
    }

    override cEchoRequest(request: CEchoRequest, callback: (r: CEchoResponse) => void): void {
      state.echoes++;
      const response = dimse.responses.CEchoResponse.fromRequest(request);
      response.setStatus(Status.Success);
      callback(response);
    }

    override cStoreRequest(request: CStoreRequest, callback: (r: CStoreResponse) => void): void {
      state.stored.push({ callingAe: this.callingAe, sopClassUid: request.getAffectedSopClassUid(), sopInstanceUid: request.getAffectedSopInstanceUid() });
      const response = dimse.responses.CStoreResponse.fromRequest(request);
      response.setStatus(Status.Success);
      callback(response);
    }

    override abort(): void {
      // The peer aborted: the connection is closed by the peer or by the library.
    }
  }

  return new Promise((resolve, reject) => {
    const server: Server = createServer((socket) => {
      sockets.add(socket);
      socket.once('close', () => sockets.delete(socket));
      const scp = new ModalityScp(socket, { connectTimeout: 5000, associationTimeout: 5000, pduTimeout: 5000 });
      scp.on('networkError', () => socket.destroy());
    });
    server.once('error', reject);
    server.listen({ port: opts.port, host }, () => {
      server.off('error', reject);
      resolve(
        Object.assign(state, {
          close: () =>
            new Promise<void>((r) => {
              for (const s of sockets) s.destroy();
              server.close(() => r());
            }),
        }),
      );
    });
  });
}
