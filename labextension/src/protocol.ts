/**
 * The `ironcage.ui` comm protocol (docs/ui-protocol.md), version 1.
 *
 * Pure TypeScript with no JupyterLab imports so it can be unit tested with Jest
 * and reasoned about on its own. Everything coming from the kernel is validated
 * here before the UI looks at it: a malformed message becomes a ProtocolError,
 * never an exception in a signal handler.
 */

export const COMM_TARGET = 'ironcage.ui';
export const PROTOCOL_VERSION = 1;
export const CLIENT_NAME = 'ironcage-jupyter-labextension';

export type Decision = 'allow' | 'deny' | 'escalate';
export type Isolation = 'all' | 'degraded' | 'unsafe';
export type LayerState = 'active' | 'degraded' | 'missing';
export type EscalationAnswer = 'once' | 'session' | 'deny';
export type EscalationOutcome =
  | 'approved_once'
  | 'approved_session'
  | 'denied'
  | 'timeout';

export interface ILayerStatus {
  state: LayerState;
  reason: string;
}

export interface ICounts {
  denied: number;
  escalated: number;
  redacted: number;
}

export interface IStatusMessage {
  type: 'status';
  protocol: number;
  session_id: string | null;
  policy: string;
  isolation: Isolation;
  layers: Record<string, ILayerStatus>;
  counts: ICounts;
}

export interface IFinding {
  id: string;
  severity: string;
  line: number | null;
  message: string;
}

export interface ICellEventMessage {
  type: 'cell_event';
  cell_id: string | null;
  msg_id: string | null;
  decision: Decision;
  outcome: EscalationOutcome | null;
  redacted: number;
  rules: string[];
  reason: string;
  findings: IFinding[];
}

export interface IEscalationMessage {
  type: 'escalation';
  id: string;
  cell_id: string | null;
  msg_id: string | null;
  kind: string;
  summary: string;
  canonical: string;
  rules: string[];
  reason: string;
  allow_session: boolean;
  timeout_s: number | null;
}

export interface IEscalationResolvedMessage {
  type: 'escalation_resolved';
  id: string;
  answer: string;
  by: string;
}

export interface IAuditEvent {
  seq: number;
  ts: string;
  event_type: string;
  decision: string | null;
  session_id: string | null;
  rule: string | null;
  reason: string | null;
  cell_id: string | null;
  summary: string | null;
}

export interface IAuditEventsMessage {
  type: 'audit_events';
  request_id: string | null;
  events: IAuditEvent[];
  total: number;
}

export interface IErrorMessage {
  type: 'error';
  request_id: string | null;
  code: string;
  message: string;
}

export type KernelMessage =
  | IStatusMessage
  | ICellEventMessage
  | IEscalationMessage
  | IEscalationResolvedMessage
  | IAuditEventsMessage
  | IErrorMessage;

/** Raised (returned) when the kernel sent something this client cannot use. */
export class ProtocolError extends Error {
  constructor(message: string) {
    super(message);
    this.name = 'ProtocolError';
  }
}

// ---------------------------------------------------------------- validation helpers

type Obj = Record<string, unknown>;

function isObject(value: unknown): value is Obj {
  return typeof value === 'object' && value !== null && !Array.isArray(value);
}

function str(obj: Obj, key: string, fallback?: string): string {
  const value = obj[key];
  if (typeof value === 'string') {
    return value;
  }
  if (value === undefined || value === null) {
    if (fallback !== undefined) {
      return fallback;
    }
  }
  throw new ProtocolError(`field "${key}" must be a string`);
}

function optStr(obj: Obj, key: string): string | null {
  const value = obj[key];
  if (value === undefined || value === null) {
    return null;
  }
  if (typeof value === 'string') {
    return value;
  }
  throw new ProtocolError(`field "${key}" must be a string or null`);
}

function count(obj: Obj, key: string): number {
  const value = obj[key];
  if (value === undefined || value === null) {
    return 0;
  }
  if (typeof value === 'number' && Number.isInteger(value) && value >= 0) {
    return value;
  }
  throw new ProtocolError(`field "${key}" must be a non-negative integer`);
}

function strList(obj: Obj, key: string): string[] {
  const value = obj[key];
  if (value === undefined || value === null) {
    return [];
  }
  if (Array.isArray(value) && value.every(item => typeof item === 'string')) {
    return value as string[];
  }
  throw new ProtocolError(`field "${key}" must be a list of strings`);
}

function oneOf<T extends string>(
  obj: Obj,
  key: string,
  allowed: readonly T[]
): T {
  const value = obj[key];
  if (typeof value === 'string' && (allowed as readonly string[]).includes(value)) {
    return value as T;
  }
  throw new ProtocolError(
    `field "${key}" must be one of ${allowed.join(', ')} (got ${JSON.stringify(value)})`
  );
}

const DECISIONS = ['allow', 'deny', 'escalate'] as const;
const ISOLATIONS = ['all', 'degraded', 'unsafe'] as const;
const LAYER_STATES = ['active', 'degraded', 'missing'] as const;
const OUTCOMES = ['approved_once', 'approved_session', 'denied', 'timeout'] as const;
export const ANSWERS = ['once', 'session', 'deny'] as const;

function parseStatus(obj: Obj): IStatusMessage {
  const layersRaw = obj.layers ?? {};
  if (!isObject(layersRaw)) {
    throw new ProtocolError('field "layers" must be an object');
  }
  const layers: Record<string, ILayerStatus> = {};
  for (const [name, layer] of Object.entries(layersRaw)) {
    if (!isObject(layer)) {
      throw new ProtocolError(`layer "${name}" must be an object`);
    }
    layers[name] = {
      state: oneOf(layer, 'state', LAYER_STATES),
      reason: str(layer, 'reason', '')
    };
  }
  const countsRaw = obj.counts ?? {};
  if (!isObject(countsRaw)) {
    throw new ProtocolError('field "counts" must be an object');
  }
  return {
    type: 'status',
    protocol: typeof obj.protocol === 'number' ? obj.protocol : PROTOCOL_VERSION,
    session_id: optStr(obj, 'session_id'),
    policy: str(obj, 'policy'),
    isolation: oneOf(obj, 'isolation', ISOLATIONS),
    layers,
    counts: {
      denied: count(countsRaw, 'denied'),
      escalated: count(countsRaw, 'escalated'),
      redacted: count(countsRaw, 'redacted')
    }
  };
}

function parseFindings(obj: Obj): IFinding[] {
  const raw = obj.findings;
  if (raw === undefined || raw === null) {
    return [];
  }
  if (!Array.isArray(raw)) {
    throw new ProtocolError('field "findings" must be a list');
  }
  return raw.map(item => {
    if (!isObject(item)) {
      throw new ProtocolError('each finding must be an object');
    }
    return {
      id: str(item, 'id', ''),
      severity: str(item, 'severity', ''),
      line: typeof item.line === 'number' ? item.line : null,
      message: str(item, 'message', '')
    };
  });
}

function parseCellEvent(obj: Obj): ICellEventMessage {
  const decision = oneOf(obj, 'decision', DECISIONS);
  const outcomeRaw = obj.outcome;
  let outcome: EscalationOutcome | null = null;
  if (outcomeRaw !== undefined && outcomeRaw !== null) {
    outcome = oneOf(obj, 'outcome', OUTCOMES);
  }
  return {
    type: 'cell_event',
    cell_id: optStr(obj, 'cell_id'),
    msg_id: optStr(obj, 'msg_id'),
    decision,
    outcome,
    redacted: count(obj, 'redacted'),
    rules: strList(obj, 'rules'),
    reason: str(obj, 'reason', ''),
    findings: parseFindings(obj)
  };
}

function parseEscalation(obj: Obj): IEscalationMessage {
  const timeout = obj.timeout_s;
  return {
    type: 'escalation',
    id: str(obj, 'id'),
    cell_id: optStr(obj, 'cell_id'),
    msg_id: optStr(obj, 'msg_id'),
    kind: str(obj, 'kind', 'cell'),
    summary: str(obj, 'summary', ''),
    canonical: str(obj, 'canonical', ''),
    rules: strList(obj, 'rules'),
    reason: str(obj, 'reason', ''),
    allow_session: obj.allow_session === true,
    timeout_s: typeof timeout === 'number' && timeout > 0 ? timeout : null
  };
}

function parseAuditEvent(raw: unknown): IAuditEvent {
  if (!isObject(raw)) {
    throw new ProtocolError('each audit event must be an object');
  }
  const seq = raw.seq;
  if (typeof seq !== 'number') {
    throw new ProtocolError('audit event field "seq" must be a number');
  }
  return {
    seq,
    ts: str(raw, 'ts'),
    event_type: str(raw, 'event_type'),
    decision: optStr(raw, 'decision'),
    session_id: optStr(raw, 'session_id'),
    rule: optStr(raw, 'rule'),
    reason: optStr(raw, 'reason'),
    cell_id: optStr(raw, 'cell_id'),
    summary: optStr(raw, 'summary')
  };
}

function parseAuditEvents(obj: Obj): IAuditEventsMessage {
  if (!Array.isArray(obj.events)) {
    throw new ProtocolError('field "events" must be a list');
  }
  const events = obj.events.map(parseAuditEvent);
  return {
    type: 'audit_events',
    request_id: optStr(obj, 'request_id'),
    events,
    total: typeof obj.total === 'number' ? obj.total : events.length
  };
}

/**
 * Validate one comm `data` payload from the kernel.
 * Returns the typed message or a ProtocolError describing what is wrong.
 */
export function parseKernelMessage(data: unknown): KernelMessage | ProtocolError {
  try {
    if (!isObject(data)) {
      throw new ProtocolError('message must be a JSON object');
    }
    switch (data.type) {
      case 'status':
        return parseStatus(data);
      case 'cell_event':
        return parseCellEvent(data);
      case 'escalation':
        return parseEscalation(data);
      case 'escalation_resolved':
        return {
          type: 'escalation_resolved',
          id: str(data, 'id'),
          answer: str(data, 'answer', ''),
          by: str(data, 'by', '')
        };
      case 'audit_events':
        return parseAuditEvents(data);
      case 'error':
        return {
          type: 'error',
          request_id: optStr(data, 'request_id'),
          code: str(data, 'code', 'error'),
          message: str(data, 'message', '')
        };
      default:
        throw new ProtocolError(`unknown message type ${JSON.stringify(data.type)}`);
    }
  } catch (err) {
    if (err instanceof ProtocolError) {
      return err;
    }
    return new ProtocolError(String(err));
  }
}

// ---------------------------------------------------------------- frontend -> kernel

export interface IAuditFilters {
  eventType: string | null;
  decision: string | null;
  limit: number;
  scope: 'session' | 'all';
}

export const DEFAULT_AUDIT_FILTERS: IAuditFilters = {
  eventType: null,
  decision: null,
  limit: 200,
  scope: 'session'
};

export function helloMessage(version: string): Record<string, unknown> {
  return { type: 'hello', protocol: PROTOCOL_VERSION, client: CLIENT_NAME, version };
}

export function statusRequest(): Record<string, unknown> {
  return { type: 'status_request' };
}

export function escalationAnswer(id: string, answer: EscalationAnswer): Record<string, unknown> {
  if (!(ANSWERS as readonly string[]).includes(answer)) {
    throw new ProtocolError(`invalid answer ${JSON.stringify(answer)}`);
  }
  return { type: 'escalation_answer', id, answer };
}

export function auditRequest(requestId: string, filters: IAuditFilters): Record<string, unknown> {
  const limit = Math.max(1, Math.min(1000, Math.floor(filters.limit)));
  return {
    type: 'audit_request',
    request_id: requestId,
    limit,
    event_type: filters.eventType || null,
    decision: filters.decision || null,
    scope: filters.scope
  };
}
