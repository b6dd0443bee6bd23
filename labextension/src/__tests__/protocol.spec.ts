import {
  ProtocolError,
  auditRequest,
  escalationAnswer,
  helloMessage,
  parseKernelMessage,
  DEFAULT_AUDIT_FILTERS,
  COMM_TARGET,
  IStatusMessage,
  ICellEventMessage
} from '../protocol';

const status = {
  type: 'status',
  protocol: 1,
  session_id: 's1',
  policy: 'default',
  isolation: 'degraded',
  layers: {
    process: { state: 'active', reason: '' },
    network: { state: 'degraded', reason: 'user namespaces refused' }
  },
  counts: { denied: 2, escalated: 1, redacted: 3 }
};

describe('parseKernelMessage', () => {
  it('accepts a full status message', () => {
    const msg = parseKernelMessage(status) as IStatusMessage;
    expect(msg).not.toBeInstanceOf(ProtocolError);
    expect(msg.policy).toBe('default');
    expect(msg.isolation).toBe('degraded');
    expect(msg.layers.network.state).toBe('degraded');
    expect(msg.counts).toEqual({ denied: 2, escalated: 1, redacted: 3 });
  });

  it('fills defaults for optional status fields', () => {
    const msg = parseKernelMessage({ type: 'status', policy: 'p', isolation: 'all' }) as IStatusMessage;
    expect(msg.counts).toEqual({ denied: 0, escalated: 0, redacted: 0 });
    expect(msg.layers).toEqual({});
    expect(msg.session_id).toBeNull();
  });

  it.each([
    ['not an object', 'status'],
    ['array', [1, 2]],
    ['null', null],
    ['unknown type', { type: 'launch_missiles' }],
    ['missing type', { policy: 'x' }],
    ['bad isolation', { ...status, isolation: 'mostly' }],
    ['negative count', { ...status, counts: { denied: -1 } }],
    ['fractional count', { ...status, counts: { denied: 1.5 } }],
    ['bad layer state', { ...status, layers: { fs: { state: 'on' } } }],
    ['policy not a string', { ...status, policy: 42 }],
    ['cell_event bad decision', { type: 'cell_event', decision: 'maybe' }],
    ['cell_event bad outcome', { type: 'cell_event', decision: 'escalate', outcome: 'yes' }],
    ['cell_event rules not strings', { type: 'cell_event', decision: 'deny', rules: [1] }],
    ['escalation without id', { type: 'escalation', summary: 's' }],
    ['audit events not a list', { type: 'audit_events', events: {} }],
    ['audit event without seq', { type: 'audit_events', events: [{ ts: 't', event_type: 'cell' }] }]
  ])('rejects %s', (_name, payload) => {
    const result = parseKernelMessage(payload);
    expect(result).toBeInstanceOf(ProtocolError);
    expect((result as ProtocolError).message.length).toBeGreaterThan(0);
  });

  it('parses a cell event with findings', () => {
    const msg = parseKernelMessage({
      type: 'cell_event',
      cell_id: 'c1',
      msg_id: 'm1',
      decision: 'deny',
      redacted: 0,
      rules: ['fs.protected.ssh'],
      reason: 'reads ~/.ssh/id_rsa',
      findings: [{ id: 'IC-FS-1', severity: 'high', line: 2, message: 'ssh key path' }]
    }) as ICellEventMessage;
    expect(msg.decision).toBe('deny');
    expect(msg.outcome).toBeNull();
    expect(msg.findings[0]).toEqual({ id: 'IC-FS-1', severity: 'high', line: 2, message: 'ssh key path' });
  });

  it('ignores unknown extra keys (forward compatible)', () => {
    const msg = parseKernelMessage({ ...status, future_field: { x: 1 } });
    expect(msg).not.toBeInstanceOf(ProtocolError);
  });

  it('treats a non-positive escalation timeout as none', () => {
    const msg = parseKernelMessage({ type: 'escalation', id: 'e1', timeout_s: 0 });
    expect(msg).toMatchObject({ type: 'escalation', id: 'e1', timeout_s: null, allow_session: false });
  });
});

describe('frontend messages', () => {
  it('uses the documented comm target', () => {
    expect(COMM_TARGET).toBe('ironcage.ui');
  });

  it('builds hello', () => {
    expect(helloMessage('0.1.0')).toEqual({
      type: 'hello',
      protocol: 1,
      client: 'ironcage-jupyter-labextension',
      version: '0.1.0'
    });
  });

  it('builds escalation answers and refuses invalid ones', () => {
    expect(escalationAnswer('e1', 'session')).toEqual({
      type: 'escalation_answer',
      id: 'e1',
      answer: 'session'
    });
    expect(() => escalationAnswer('e1', 'always' as any)).toThrow(ProtocolError);
  });

  it('clamps the audit limit and drops empty filters', () => {
    expect(auditRequest('r1', { ...DEFAULT_AUDIT_FILTERS, limit: 5000, eventType: '' })).toEqual({
      type: 'audit_request',
      request_id: 'r1',
      limit: 1000,
      event_type: null,
      decision: null,
      scope: 'session'
    });
    expect(auditRequest('r2', { ...DEFAULT_AUDIT_FILTERS, limit: 0, decision: 'deny' })).toMatchObject({
      limit: 1,
      decision: 'deny'
    });
  });
});
