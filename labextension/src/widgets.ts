/**
 * The visible parts: status bar item, audit panel, escalation dialog body, cell markers.
 * All kernel-provided text goes through textContent (never innerHTML).
 */
import { Dialog } from '@jupyterlab/apputils';
import { Cell } from '@jupyterlab/cells';
import { Widget } from '@lumino/widgets';

import { EscalationAnswer, IEscalationMessage } from './protocol';
import {
  ICellMarker,
  IronCageState,
  MARKER_CLASS,
  MARKER_ICON,
  MarkerKind,
  statusText,
  statusTitle
} from './state';

function el<K extends keyof HTMLElementTagNameMap>(
  tag: K,
  className?: string,
  text?: string
): HTMLElementTagNameMap[K] {
  const node = document.createElement(tag);
  if (className) {
    node.className = className;
  }
  if (text !== undefined) {
    node.textContent = text;
  }
  return node;
}

// ------------------------------------------------------------------ status bar

export class StatusWidget extends Widget {
  constructor(private readonly onClick: () => void) {
    super();
    this.addClass('ironcage-status');
    this.node.addEventListener('click', () => this.onClick());
    this.render(null);
  }

  render(state: IronCageState | null): void {
    for (const isolation of ['all', 'degraded', 'unsafe']) {
      this.removeClass(`ironcage-isolation-${isolation}`);
    }
    if (state === null) {
      this.node.textContent = '';
      this.node.title = '';
      this.hide();
      return;
    }
    this.show();
    this.node.textContent = statusText(state.status);
    const problems = state.lastError ? `\nLast protocol problem: ${state.lastError}` : '';
    this.node.title = statusTitle(state.status) + problems + '\n(click for the audit panel)';
    if (state.status) {
      this.addClass(`ironcage-isolation-${state.status.isolation}`);
    }
  }
}

// ------------------------------------------------------------------ cell markers

const ALL_KINDS: MarkerKind[] = ['denied', 'escalated', 'redacted'];

export function clearCellMarker(cell: Cell): void {
  for (const kind of ALL_KINDS) {
    cell.removeClass(MARKER_CLASS[kind]);
  }
  cell.node.querySelectorAll('.ironcage-cell-marker').forEach(node => node.remove());
}

export function applyCellMarker(cell: Cell, marker: ICellMarker): void {
  clearCellMarker(cell);
  if (marker.kinds.length === 0) {
    return;
  }
  // A one-line banner between the cell's input and its outputs (clear of the cell toolbar).
  const badge = el('div', 'ironcage-cell-marker');
  for (const kind of marker.kinds) {
    cell.addClass(MARKER_CLASS[kind]);
    badge.classList.add(`ironcage-marker-${kind}`);
    badge.appendChild(el('span', `ironcage-marker-icon ironcage-marker-icon-${kind}`, MARKER_ICON[kind]));
  }
  badge.appendChild(el('span', 'ironcage-marker-label', marker.kinds.join(' \u00B7 ')));
  const event = marker.event;
  const detail = [
    event.rules.length ? `rule ${event.rules.join(', ')}` : '',
    event.reason
  ]
    .filter(Boolean)
    .join(': ');
  if (detail) {
    badge.appendChild(el('span', 'ironcage-marker-detail', detail));
  }
  badge.title = marker.title;
  badge.setAttribute('aria-label', marker.title);
  const outputs = cell.node.querySelector(':scope > .jp-Cell-outputWrapper');
  if (outputs) {
    cell.node.insertBefore(badge, outputs);
  } else {
    cell.node.appendChild(badge);
  }
}

// ------------------------------------------------------------------ escalation dialog

function row(table: HTMLElement, label: string, value: string, valueClass: string): void {
  const tr = el('tr');
  tr.appendChild(el('th', undefined, label));
  const td = el('td', valueClass);
  if (valueClass === 'ironcage-esc-canonical') {
    td.appendChild(el('pre', undefined, value));
  } else {
    td.textContent = value;
  }
  tr.appendChild(td);
  table.appendChild(tr);
}

export class EscalationBody extends Widget {
  constructor(escalation: IEscalationMessage) {
    super();
    this.addClass('ironcage-escalation-body');
    const intro = el(
      'p',
      'ironcage-esc-summary',
      escalation.summary || 'The policy asks for a human decision.'
    );
    this.node.appendChild(intro);
    const table = el('table', 'ironcage-esc-table');
    row(table, 'Request', escalation.canonical || '(none)', 'ironcage-esc-canonical');
    row(table, 'Kind', escalation.kind, 'ironcage-esc-kind');
    row(table, 'Rule', escalation.rules.join(', ') || '(none)', 'ironcage-esc-rule');
    row(table, 'Reason', escalation.reason || '(none)', 'ironcage-esc-reason');
    this.node.appendChild(table);
    const footer = escalation.timeout_s
      ? `Denied automatically after ${escalation.timeout_s} s without an answer.`
      : 'Closing this dialog denies the request.';
    this.node.appendChild(el('p', 'ironcage-esc-footer', footer));
  }
}

export const ANSWER_LABELS: Record<EscalationAnswer, string> = {
  once: 'Approve once',
  session: 'Approve for session',
  deny: 'Deny'
};

/**
 * Show escalations one at a time. `answer` is called exactly once per escalation
 * the user settles here; escalations settled elsewhere close their dialog silently.
 */
export class EscalationQueue {
  private _queue: Array<{
    escalation: IEscalationMessage;
    answer: (answer: EscalationAnswer) => void;
  }> = [];
  private _current: { id: string; dialog: Dialog<unknown> } | null = null;
  private _resolvedElsewhere = new Set<string>();

  push(escalation: IEscalationMessage, answer: (answer: EscalationAnswer) => void): void {
    this._queue.push({ escalation, answer });
    if (this._current === null) {
      void this._next();
    }
  }

  resolvedElsewhere(id: string): void {
    this._resolvedElsewhere.add(id);
    this._queue = this._queue.filter(item => item.escalation.id !== id);
    if (this._current && this._current.id === id) {
      this._current.dialog.reject();
    }
  }

  private async _next(): Promise<void> {
    const item = this._queue.shift();
    if (!item) {
      this._current = null;
      return;
    }
    const { escalation } = item;
    const buttons = [Dialog.cancelButton({ label: ANSWER_LABELS.deny, className: 'ironcage-esc-deny' })];
    if (escalation.allow_session) {
      buttons.push(
        Dialog.warnButton({ label: ANSWER_LABELS.session, className: 'ironcage-esc-session' })
      );
    }
    buttons.push(Dialog.okButton({ label: ANSWER_LABELS.once, className: 'ironcage-esc-once' }));
    const dialog = new Dialog({
      title: 'Iron Cage: approval needed',
      body: new EscalationBody(escalation),
      buttons,
      defaultButton: 0, // Enter denies: fail closed
      hasClose: false
    });
    dialog.addClass('ironcage-escalation-dialog');
    dialog.node.dataset.escalationId = escalation.id;
    this._current = { id: escalation.id, dialog };
    let answer: EscalationAnswer = 'deny';
    try {
      const result = await dialog.launch();
      const label = result.button.label;
      if (label === ANSWER_LABELS.once && result.button.accept) {
        answer = 'once';
      } else if (label === ANSWER_LABELS.session) {
        answer = 'session';
      }
    } catch {
      answer = 'deny';
    }
    if (!this._resolvedElsewhere.has(escalation.id)) {
      item.answer(answer);
    }
    dialog.dispose();
    await this._next();
  }
}

// ------------------------------------------------------------------ audit panel

/** HH:MM:SS in local time; the full timestamp is in the row's title. */
export function shortTime(ts: string): string {
  const date = new Date(ts);
  if (Number.isNaN(date.getTime())) {
    return ts;
  }
  const pad = (n: number) => String(n).padStart(2, '0');
  return `${pad(date.getHours())}:${pad(date.getMinutes())}:${pad(date.getSeconds())}`;
}

const DECISION_FILTERS = ['', 'allow', 'deny', 'escalate'];

export class AuditPanel extends Widget {
  private _state: IronCageState | null = null;
  private _typeSelect = el('select', 'ironcage-audit-type');
  private _decisionSelect = el('select', 'ironcage-audit-decision');
  private _scopeSelect = el('select', 'ironcage-audit-scope');
  private _body = el('tbody');
  private _summary = el('div', 'ironcage-audit-summary');

  constructor(private readonly request: (filters: Record<string, unknown>) => void) {
    super();
    this.id = 'ironcage-audit-panel';
    this.addClass('ironcage-audit-panel');
    this.title.caption = 'Iron Cage audit';
    this.title.label = '';

    const header = el('div', 'ironcage-audit-header');
    header.appendChild(el('h3', undefined, 'Iron Cage audit'));
    const filters = el('div', 'ironcage-audit-filters');
    filters.appendChild(this._labelled('Type', this._typeSelect));
    filters.appendChild(this._labelled('Decision', this._decisionSelect));
    filters.appendChild(this._labelled('Scope', this._scopeSelect));
    const refresh = el('button', 'jp-mod-styled ironcage-audit-refresh', 'Refresh');
    refresh.addEventListener('click', () => this.refresh());
    filters.appendChild(refresh);
    header.appendChild(filters);
    this.node.appendChild(header);
    this.node.appendChild(this._summary);

    for (const decision of DECISION_FILTERS) {
      this._decisionSelect.appendChild(this._option(decision, decision || 'all decisions'));
    }
    this._scopeSelect.appendChild(this._option('session', 'this session'));
    this._scopeSelect.appendChild(this._option('all', 'all sessions'));
    for (const select of [this._typeSelect, this._decisionSelect, this._scopeSelect]) {
      select.addEventListener('change', () => this.refresh());
    }

    const table = el('table', 'ironcage-audit-table');
    const head = el('thead');
    const tr = el('tr');
    for (const column of ['Time / decision', 'Event']) {
      tr.appendChild(el('th', undefined, column));
    }
    head.appendChild(tr);
    table.appendChild(head);
    table.appendChild(this._body);
    this.node.appendChild(table);
    this.render(null);
  }

  /** Ask the kernel for events matching the current filters. */
  refresh(): void {
    if (this._state === null) {
      return;
    }
    this.request({
      eventType: this._typeSelect.value || null,
      decision: this._decisionSelect.value || null,
      scope: this._scopeSelect.value === 'all' ? 'all' : 'session'
    });
  }

  render(state: IronCageState | null): void {
    const changed = state !== this._state;
    this._state = state;
    this._renderTypeOptions(state);
    this._body.textContent = '';
    if (state === null) {
      this._summary.textContent = 'Open a notebook running the Iron Cage kernel.';
      return;
    }
    if (changed) {
      this._decisionSelect.value = state.auditFilters.decision ?? '';
      this._scopeSelect.value = state.auditFilters.scope;
    }
    if (state.auditError) {
      this._summary.textContent = `Audit unavailable: ${state.auditError}`;
    } else {
      this._summary.textContent = `${state.auditEvents.length} of ${state.auditTotal} events`;
    }
    for (const event of state.auditEvents) {
      const tr = el('tr', 'ironcage-audit-row');
      tr.dataset.eventType = event.event_type;
      tr.dataset.decision = event.decision ?? '';
      tr.dataset.seq = String(event.seq);
      if (event.decision) {
        tr.classList.add(`ironcage-decision-${event.decision}`);
      }
      const when = el('td', 'ironcage-audit-time', shortTime(event.ts));
      when.appendChild(el('div', 'ironcage-audit-decision-cell', event.decision ?? ''));
      tr.appendChild(when);
      // Type, rule and reason stacked in one column: the sidebar is narrow.
      const what = el('td', 'ironcage-audit-what');
      what.appendChild(el('div', 'ironcage-audit-type-cell', event.event_type));
      if (event.rule) {
        what.appendChild(el('div', 'ironcage-audit-rule', event.rule));
      }
      const text = event.reason || event.summary || '';
      if (text) {
        what.appendChild(el('div', 'ironcage-audit-reason', text));
      }
      tr.appendChild(what);
      tr.title = [
        `#${event.seq} at ${event.ts}`,
        event.summary,
        event.reason,
        event.cell_id ? `cell ${event.cell_id}` : null,
        event.session_id ? `session ${event.session_id}` : null
      ]
        .filter(Boolean)
        .join('\n');
      this._body.appendChild(tr);
    }
  }

  private _renderTypeOptions(state: IronCageState | null): void {
    const wanted = state ? state.auditFilters.eventType ?? '' : this._typeSelect.value;
    const types = state ? Array.from(state.seenEventTypes).sort() : [];
    const existing = Array.from(this._typeSelect.options).map(option => option.value);
    const desired = ['', ...types];
    if (existing.join('\u0000') !== desired.join('\u0000')) {
      this._typeSelect.textContent = '';
      for (const type of desired) {
        this._typeSelect.appendChild(this._option(type, type || 'all types'));
      }
    }
    this._typeSelect.value = wanted;
  }

  private _option(value: string, label: string): HTMLOptionElement {
    const option = el('option', undefined, label);
    option.value = value;
    return option;
  }

  private _labelled(label: string, control: HTMLElement): HTMLElement {
    const wrapper = el('label', 'ironcage-audit-filter');
    wrapper.appendChild(el('span', undefined, label));
    wrapper.appendChild(control);
    return wrapper;
  }
}
