import { IronCageState, markerKinds, markerTitle, statusText, statusTitle } from '../state';
import { ICellEventMessage, IEscalationMessage, ProtocolError } from '../protocol';

function cellEvent(overrides: Partial<ICellEventMessage>): ICellEventMessage {
  return {
    type: 'cell_event',
    cell_id: 'c1',
    msg_id: 'm1',
    decision: 'allow',
    outcome: null,
    redacted: 0,
    rules: [],
    reason: '',
    findings: [],
    ...overrides
  };
}

describe('markers', () => {
  it.each([
    [{ decision: 'allow' }, []],
    [{ decision: 'deny' }, ['denied']],
    [{ decision: 'escalate', outcome: 'approved_once' }, ['escalated']],
    [{ decision: 'escalate', outcome: 'approved_session' }, ['escalated']],
    [{ decision: 'escalate', outcome: 'denied' }, ['denied', 'escalated']],
    [{ decision: 'escalate', outcome: 'timeout' }, ['denied', 'escalated']],
    [{ decision: 'allow', redacted: 2 }, ['redacted']],
    [{ decision: 'escalate', outcome: 'approved_once', redacted: 1 }, ['escalated', 'redacted']]
  ])('%j -> %j', (overrides, kinds) => {
    expect(markerKinds(cellEvent(overrides as Partial<ICellEventMessage>))).toEqual(kinds);
  });

  it('explains rule and reason on hover', () => {
    const title = markerTitle(
      cellEvent({
        decision: 'deny',
        rules: ['fs.protected.ssh', 'fw.secret-path'],
        reason: 'reads ~/.ssh/id_rsa',
        findings: [{ id: 'IC-1', severity: 'high', line: 3, message: 'ssh key' }]
      })
    );
    expect(title).toContain('denied');
    expect(title).toContain('Rule: fs.protected.ssh, fw.secret-path');
    expect(title).toContain('Reason: reads ~/.ssh/id_rsa');
    expect(title).toContain('Finding IC-1 [high] (line 3): ssh key');
  });

  it('says how an escalation ended', () => {
    expect(markerTitle(cellEvent({ decision: 'escalate', outcome: 'timeout' }))).toContain('timeout');
    expect(markerTitle(cellEvent({ redacted: 1 }))).toContain('Redacted: 1 value');
  });
});

describe('IronCageState', () => {
  it('tracks status and renders it', () => {
    const state = new IronCageState();
    expect(statusText(state.status)).toContain('connecting');
    const changes: number[] = [];
    state.onChange(() => changes.push(1));
    expect(
      state.handle({
        type: 'status',
        policy: 'strict',
        isolation: 'unsafe',
        layers: { network: { state: 'missing', reason: 'no netns' } },
        counts: { denied: 4, escalated: 2, redacted: 7 }
      })
    ).toBeNull();
    expect(changes).toHaveLength(1);
    const text = statusText(state.status);
    expect(text).toContain('strict');
    expect(text).toContain('unsafe');
    expect(text).toMatch(/4.*2.*7/);
    expect(statusTitle(state.status)).toContain('network: missing \u2014 no netns');
  });

  it('keeps the previous state when a message is malformed', () => {
    const state = new IronCageState();
    state.handle({ type: 'status', policy: 'p', isolation: 'all' });
    const problem = state.handle({ type: 'status', policy: 'p', isolation: 'sort of' });
    expect(problem).toBeInstanceOf(ProtocolError);
    expect(state.status?.isolation).toBe('all');
    expect(state.lastError).toContain('isolation');
  });

  it('sets, replaces and clears cell markers', () => {
    const state = new IronCageState();
    const seen: string[][] = [];
    state.onCellMarker(marker => seen.push(marker.kinds));
    state.handle({ ...cellEvent({ decision: 'deny', rules: ['r1'], reason: 'no' }) });
    expect(state.markers.get('c1')?.kinds).toEqual(['denied']);
    state.handle({ ...cellEvent({ decision: 'allow' }) });
    expect(state.markers.has('c1')).toBe(false);
    expect(seen).toEqual([['denied'], []]);
    state.handle({ ...cellEvent({ decision: 'allow', redacted: 1 }) });
    state.clearCell('c1');
    expect(state.markers.size).toBe(0);
  });

  it('ignores cell events without a cell id (e.g. nbclient)', () => {
    const state = new IronCageState();
    const seen: unknown[] = [];
    state.onCellMarker(marker => seen.push(marker));
    state.handle({ ...cellEvent({ cell_id: null, decision: 'deny' }) });
    expect(seen).toHaveLength(0);
    expect(state.markers.size).toBe(0);
  });

  it('queues escalations and forgets resolved ones', () => {
    const state = new IronCageState();
    const raised: IEscalationMessage[] = [];
    const resolved: string[] = [];
    state.onEscalation(e => raised.push(e));
    state.onEscalationResolved((id, answer, by) => resolved.push(`${id}:${answer}:${by}`));
    state.handle({
      type: 'escalation',
      id: 'e1',
      summary: 'POST to evil.example',
      canonical: 'network.connect host=evil.example port=443',
      rules: ['net.unknown'],
      reason: 'not allowlisted',
      allow_session: true,
      timeout_s: 60
    });
    expect(raised[0].canonical).toContain('evil.example');
    expect(state.pendingEscalations.has('e1')).toBe(true);
    state.handle({ type: 'escalation_resolved', id: 'e1', answer: 'deny', by: 'timeout' });
    expect(state.pendingEscalations.has('e1')).toBe(false);
    expect(resolved).toEqual(['e1:deny:timeout']);
  });

  it('accepts only the reply to the latest audit request', () => {
    const state = new IronCageState();
    const first = state.nextAuditRequest({ decision: 'deny' });
    const second = state.nextAuditRequest({ eventType: 'cell' });
    expect(second).toMatchObject({ decision: 'deny', event_type: 'cell' });
    const event = { seq: 1, ts: '2026-01-01T00:00:00Z', event_type: 'cell', decision: 'deny' };
    state.handle({ type: 'audit_events', request_id: first.request_id, events: [event], total: 1 });
    expect(state.auditEvents).toHaveLength(0);
    state.handle({
      type: 'audit_events',
      request_id: second.request_id,
      events: [event, { ...event, seq: 2, event_type: 'mcp_call' }],
      total: 9
    });
    expect(state.auditEvents.map(e => e.seq)).toEqual([1, 2]);
    expect(state.auditTotal).toBe(9);
    expect(state.seenEventTypes.has('mcp_call')).toBe(true);
  });

  it('reports an audit error for the pending request', () => {
    const state = new IronCageState();
    const request = state.nextAuditRequest();
    state.handle({ type: 'error', request_id: request.request_id, code: 'audit_unavailable', message: 'locked' });
    expect(state.auditError).toBe('audit_unavailable: locked');
    state.handle({ type: 'error', code: 'unknown_escalation', message: 'e9' });
    expect(state.lastError).toBe('unknown_escalation: e9');
  });

  it('reset forgets the session', () => {
    const state = new IronCageState();
    state.handle({ type: 'status', policy: 'p', isolation: 'all' });
    state.handle({ ...cellEvent({ decision: 'deny' }) });
    state.reset();
    expect(state.status).toBeNull();
    expect(state.markers.size).toBe(0);
  });
});
