/**
 * One `ironcage.ui` comm per notebook session, re-opened after kernel restarts.
 */
import { ISessionContext } from '@jupyterlab/apputils';
import { Kernel, KernelMessage } from '@jupyterlab/services';

import {
  COMM_TARGET,
  EscalationAnswer,
  escalationAnswer,
  helloMessage,
  IAuditFilters,
  statusRequest
} from './protocol';
import { IronCageState } from './state';

export const CLIENT_VERSION = '0.1.0';

/** Is this kernel an Iron Cage wrapper kernel? (kernelspec name or implementation). */
export async function isIronCageKernel(kernel: Kernel.IKernelConnection): Promise<boolean> {
  if (kernel.name.startsWith('ironcage')) {
    return true;
  }
  try {
    const info = await kernel.info;
    return (info?.implementation ?? '').startsWith('ironcage');
  } catch {
    return false;
  }
}

export class KernelLink {
  readonly state = new IronCageState();
  /** True while a comm is open and the kernel has not closed it. */
  attached = false;

  constructor(private readonly sessionContext: ISessionContext) {
    sessionContext.kernelChanged.connect(this._onKernelChanged, this);
    sessionContext.statusChanged.connect(this._onStatusChanged, this);
    void sessionContext.ready.then(() => this._ensureComm());
  }

  dispose(): void {
    this.sessionContext.kernelChanged.disconnect(this._onKernelChanged, this);
    this.sessionContext.statusChanged.disconnect(this._onStatusChanged, this);
    this._closeComm();
  }

  answerEscalation(id: string, answer: EscalationAnswer): void {
    this.state.settleEscalation(id);
    this._send(escalationAnswer(id, answer));
  }

  requestAudit(filters?: Partial<IAuditFilters>): void {
    const request = this.state.nextAuditRequest(filters);
    this._send(request);
  }

  requestStatus(): void {
    this._send(statusRequest());
  }

  private _send(data: Record<string, unknown>): void {
    if (this._comm && !this._comm.isDisposed && this.attached) {
      this._comm.send(data as any);
    }
  }

  private _onKernelChanged(): void {
    this._closeComm();
    this.state.reset();
    this._refusedByKernel = false;
    void this._ensureComm();
  }

  private _onStatusChanged(_: ISessionContext, status: Kernel.Status): void {
    if (status === 'restarting' || status === 'autorestarting' || status === 'dead') {
      // The kernel-side comm dies with the kernel process.
      this._closeComm();
      this._refusedByKernel = false;
      this.state.reset();
      return;
    }
    if (status === 'idle' || status === 'busy') {
      void this._ensureComm();
    }
  }

  private async _ensureComm(): Promise<void> {
    const kernel = this.sessionContext.session?.kernel;
    if (!kernel || this._opening || this._refusedByKernel) {
      return;
    }
    if (this._comm && !this._comm.isDisposed && this._commKernel === kernel) {
      return;
    }
    this._opening = true;
    try {
      if (!(await isIronCageKernel(kernel))) {
        return;
      }
      const comm = kernel.createComm(COMM_TARGET);
      comm.onMsg = (msg: KernelMessage.ICommMsgMsg) => {
        const problem = this.state.handle(msg.content.data);
        if (problem) {
          console.warn('Iron Cage UI: ignoring malformed message:', problem.message);
        }
      };
      comm.onClose = () => {
        // A kernel without the ironcage.ui target closes the comm at once:
        // do not retry until the next restart.
        this.attached = false;
        this._refusedByKernel = true;
        this._comm = null;
      };
      this._comm = comm;
      this._commKernel = kernel;
      this.attached = true;
      // Not awaiting `.done`: while a cell runs, ipykernel handles comm_open
      // without busy/idle, so the future would only settle after the cell.
      comm.open(helloMessage(CLIENT_VERSION) as any);
    } catch (err) {
      console.warn('Iron Cage UI: could not open the ironcage.ui comm', err);
      this.attached = false;
    } finally {
      this._opening = false;
    }
  }

  private _closeComm(): void {
    if (this._comm && !this._comm.isDisposed) {
      try {
        this._comm.onClose = () => undefined;
        const kernel = this._commKernel;
        if (kernel && !kernel.isDisposed && kernel.status !== 'dead') {
          this._comm.close();
        }
        this._comm.dispose();
      } catch {
        // the kernel may already be gone
      }
    }
    this._comm = null;
    this._commKernel = null;
    this.attached = false;
  }

  private _comm: Kernel.IComm | null = null;
  private _commKernel: Kernel.IKernelConnection | null = null;
  private _opening = false;
  private _refusedByKernel = false;
}
