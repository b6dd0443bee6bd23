/**
 * Per-kernel UI state fed by the `ironcage.ui` comm: the latest status, the markers
 * of each cell, the escalations waiting for an answer and the last audit page.
 *
 * No JupyterLab imports: the widgets observe this model through `onChange`, and the
 * Jest tests drive it with raw comm payloads.
 */
import {
  DEFAULT_AUDIT_FILTERS,
  IAuditEvent,
  IAuditFilters,
  ICellEventMessage,
  IEscalationMessage,
  IStatusMessage,
  auditRequest,
  parseKernelMessage,
  ProtocolError
} from './protocol';

export type MarkerKind = 'denied' | 'escalated' | 'redacted';

export const MARKER_CLASS: Record<MarkerKind, string> = {
  denied: 'ironcage-cell-denied',
  escalated: 'ironcage-cell-escalated',
  redacted: 'ironcage-cell-redacted'
};

export const MARKER_ICON: Record<MarkerKind, string> = {
  denied: '\u2716', // heavy multiplication x (renders with the stock DejaVu fonts)
  escalated: '\u26A0', // warning sign
  redacted: '\u2702' // scissors
};

export interface ICellMarker {
  cellId: string;
  kinds: MarkerKind[];
  /** Hover text: what happened, which rules, why. */
  title: string;
  event: ICellEventMessage;
}

/** Which markers a cell event puts on its cell (docs/ui-protocol.md, cell_event). */
export function markerKinds(event: ICellEventMessage): MarkerKind[] {
  const kinds: MarkerKind[] = [];
  const escalationRefused =
    event.decision === 'escalate' &&
    (event.outcome === 'denied' || event.outcome === 'timeout');
  if (event.decision === 'deny' || escalationRefused) {
    kinds.push('denied');
  }
  if (event.decision === 'escalate') {
    kinds.push('escalated');
  }
  if (event.redacted > 0) {
    kinds.push('redacted');
  }
  return kinds;
}

const OUTCOME_TEXT: Record<string, string> = {
  approved_once: 'approved once',
  approved_session: 'approved for the session',
  denied: 'denied by the user',
  timeout: 'denied: no answer before the timeout'
};

export function markerTitle(event: ICellEventMessage): string {
  const lines: string[] = [];
  if (event.decision === 'deny') {
    lines.push('Iron Cage denied this cell');
  } else if (event.decision === 'escalate') {
    const outcome = event.outcome ? OUTCOME_TEXT[event.outcome] : 'pending';
    lines.push(`Iron Cage escalated this cell (${outcome})`);
  } else {
    lines.push('Iron Cage allowed this cell');
  }
  if (event.rules.length > 0) {
    lines.push(`Rule: ${event.rules.join(', ')}`);
  }
  if (event.reason) {
    lines.push(`Reason: ${event.reason}`);
  }
  if (event.redacted > 0) {
    lines.push(
      `Redacted: ${event.redacted} ${event.redacted === 1 ? 'value' : 'values'} in the output`
    );
  }
  for (const finding of event.findings) {
    const where = finding.line !== null ? ` (line ${finding.line})` : '';
    lines.push(`Finding ${finding.id} [${finding.severity}]${where}: ${finding.message}`);
  }
  return lines.join('\n');
}

export function statusText(status: IStatusMessage | null): string {
  if (status === null) {
    return 'Iron Cage: connecting\u2026';
  }
  const c = status.counts;
  return (
    `Iron Cage: ${status.policy} \u00B7 ${status.isolation} \u00B7 ` +
    `denied ${c.denied} \u00B7 escalated ${c.escalated} \u00B7 redacted ${c.redacted}`
  );
}

export function statusTitle(status: IStatusMessage | null): string {
  if (status === null) {
    return 'Waiting for the Iron Cage kernel';
  }
  const lines = [
    `Policy: ${status.policy}`,
    `Isolation: ${status.isolation}`,
    ...Object.entries(status.layers).map(
      ([name, layer]) => `  ${name}: ${layer.state}${layer.reason ? ` \u2014 ${layer.reason}` : ''}`
    ),
    `This session: ${status.counts.denied} denied, ${status.counts.escalated} escalated, ` +
      `${status.counts.redacted} redacted`
  ];
  return lines.join('\n');
}

/** The audit store's event types (ironcage_jupyter/audit/events.py), offered before they are seen. */
export const KNOWN_EVENT_TYPES = [
  'session_start',
  'session_end',
  'cell_submitted',
  'firewall_findings',
  'policy_decision',
  'escalation',
  'execution',
  'output_redaction',
  'credential_access',
  'tool_call',
  'violation',
  'policy_change'
];

export type Listener = (state: IronCageState) => void;
export type EscalationListener = (escalation: IEscalationMessage) => void;
export type ResolvedListener = (id: string, answer: string, by: string) => void;

export class IronCageState {
  status: IStatusMessage | null = null;
  readonly markers = new Map<string, ICellMarker>();
  readonly pendingEscalations = new Map<string, IEscalationMessage>();
  auditEvents: IAuditEvent[] = [];
  auditTotal = 0;
  auditFilters: IAuditFilters = { ...DEFAULT_AUDIT_FILTERS };
  auditError: string | null = null;
  readonly seenEventTypes = new Set<string>(KNOWN_EVENT_TYPES);
  /** Last protocol problem, shown in the status tooltip and logged. */
  lastError: string | null = null;

  private _requestCounter = 0;
  private _pendingAuditRequest: string | null = null;
  private _listeners = new Set<Listener>();
  private _escalationListeners = new Set<EscalationListener>();
  private _resolvedListeners = new Set<ResolvedListener>();
  private _cellListeners = new Set<(marker: ICellMarker) => void>();

  onChange(listener: Listener): () => void {
    this._listeners.add(listener);
    return () => this._listeners.delete(listener);
  }

  onEscalation(listener: EscalationListener): () => void {
    this._escalationListeners.add(listener);
    return () => this._escalationListeners.delete(listener);
  }

  onEscalationResolved(listener: ResolvedListener): () => void {
    this._resolvedListeners.add(listener);
    return () => this._resolvedListeners.delete(listener);
  }

  onCellMarker(listener: (marker: ICellMarker) => void): () => void {
    this._cellListeners.add(listener);
    return () => this._cellListeners.delete(listener);
  }

  /**
   * Apply one comm payload from the kernel. Returns the ProtocolError for a
   * malformed payload (the state is left untouched), otherwise null.
   */
  handle(data: unknown): ProtocolError | null {
    const msg = parseKernelMessage(data);
    if (msg instanceof ProtocolError) {
      this.lastError = msg.message;
      this._emit();
      return msg;
    }
    switch (msg.type) {
      case 'status':
        this.status = msg;
        break;
      case 'cell_event':
        this._applyCellEvent(msg);
        break;
      case 'escalation':
        this.pendingEscalations.set(msg.id, msg);
        this._escalationListeners.forEach(listener => listener(msg));
        break;
      case 'escalation_resolved':
        this.pendingEscalations.delete(msg.id);
        this._resolvedListeners.forEach(listener => listener(msg.id, msg.answer, msg.by));
        break;
      case 'audit_events':
        // Replies to an older request (the filters changed since) are stale.
        if (msg.request_id !== null && msg.request_id !== this._pendingAuditRequest) {
          return null;
        }
        this._pendingAuditRequest = null;
        this.auditEvents = msg.events;
        this.auditTotal = msg.total;
        this.auditError = null;
        msg.events.forEach(event => this.seenEventTypes.add(event.event_type));
        break;
      case 'error':
        if (msg.request_id !== null && msg.request_id === this._pendingAuditRequest) {
          this._pendingAuditRequest = null;
          this.auditError = `${msg.code}: ${msg.message}`;
        } else {
          this.lastError = `${msg.code}: ${msg.message}`;
        }
        break;
    }
    this._emit();
    return null;
  }

  /** The user re-ran a cell: its old markers no longer describe it. */
  clearCell(cellId: string): void {
    if (this.markers.delete(cellId)) {
      this._emit();
    }
  }

  /** Forget an escalation the user answered locally. */
  settleEscalation(id: string): void {
    this.pendingEscalations.delete(id);
  }

  /** Build the next audit request; replies to earlier ones are then ignored. */
  nextAuditRequest(filters?: Partial<IAuditFilters>): Record<string, unknown> {
    if (filters) {
      this.auditFilters = { ...this.auditFilters, ...filters };
    }
    this._requestCounter += 1;
    const requestId = `audit-${this._requestCounter}`;
    this._pendingAuditRequest = requestId;
    return auditRequest(requestId, this.auditFilters);
  }

  /** The kernel restarted: session counts, markers and escalations are gone. */
  reset(): void {
    this.status = null;
    this.markers.clear();
    this.pendingEscalations.clear();
    this.auditEvents = [];
    this.auditTotal = 0;
    this._pendingAuditRequest = null;
    this._emit();
  }

  private _applyCellEvent(event: ICellEventMessage): void {
    if (event.cell_id === null) {
      return; // e.g. nbclient sends no cell id: nothing to mark
    }
    const kinds = markerKinds(event);
    if (kinds.length === 0) {
      this.markers.delete(event.cell_id);
    } else {
      const marker: ICellMarker = {
        cellId: event.cell_id,
        kinds,
        title: markerTitle(event),
        event
      };
      this.markers.set(event.cell_id, marker);
    }
    const current = this.markers.get(event.cell_id) ?? {
      cellId: event.cell_id,
      kinds: [],
      title: '',
      event
    };
    this._cellListeners.forEach(listener => listener(current));
  }

  private _emit(): void {
    this._listeners.forEach(listener => listener(this));
  }
}
