/**
 * Iron Cage JupyterLab extension: status bar item, per-cell markers, escalation
 * dialog and audit panel, all fed by the `ironcage.ui` comm (docs/ui-protocol.md).
 */
import {
  ILabShell,
  JupyterFrontEnd,
  JupyterFrontEndPlugin
} from '@jupyterlab/application';
import { INotebookTracker, NotebookActions, NotebookPanel } from '@jupyterlab/notebook';
import { IStatusBar } from '@jupyterlab/statusbar';
import { LabIcon } from '@jupyterlab/ui-components';

import { KernelLink } from './link';
import { IronCageState } from './state';
import {
  applyCellMarker,
  AuditPanel,
  clearCellMarker,
  EscalationQueue,
  StatusWidget
} from './widgets';

const SHIELD_SVG =
  '<svg xmlns="http://www.w3.org/2000/svg" viewBox="0 0 24 24" width="16" height="16">' +
  '<path class="jp-icon3" fill="#616161" d="M12 2 4 5v6c0 5 3.4 9.7 8 11 4.6-1.3 8-6 8-11V5l-8-3zm0 ' +
  '2.2 6 2.2V11c0 3.9-2.5 7.6-6 8.8-3.5-1.2-6-4.9-6-8.8V6.4l6-2.2z"/></svg>';

export const shieldIcon = new LabIcon({ name: 'ironcage:shield', svgstr: SHIELD_SVG });

export const OPEN_AUDIT_COMMAND = 'ironcage:open-audit';

const plugin: JupyterFrontEndPlugin<void> = {
  id: 'ironcage-jupyter-labextension:plugin',
  description: 'Iron Cage guardrail kernel UI',
  autoStart: true,
  requires: [INotebookTracker],
  optional: [IStatusBar, ILabShell],
  activate: (
    app: JupyterFrontEnd,
    tracker: INotebookTracker,
    statusBar: IStatusBar | null,
    labShell: ILabShell | null
  ) => {
    const links = new Map<NotebookPanel, KernelLink>();
    const escalations = new EscalationQueue();

    const currentLink = (): KernelLink | null => {
      const panel = tracker.currentWidget;
      return panel ? links.get(panel) ?? null : null;
    };
    const currentState = (): IronCageState | null => {
      const link = currentLink();
      return link && link.attached ? link.state : null;
    };

    const auditPanel = new AuditPanel(filters => currentLink()?.requestAudit(filters));
    auditPanel.title.icon = shieldIcon;
    app.shell.add(auditPanel, 'left', { rank: 1000 });

    const status = new StatusWidget(() => void app.commands.execute(OPEN_AUDIT_COMMAND));
    if (statusBar) {
      statusBar.registerStatusItem('ironcage:status', {
        item: status,
        align: 'left',
        rank: 50
      });
    }

    app.commands.addCommand(OPEN_AUDIT_COMMAND, {
      label: 'Open the Iron Cage audit panel',
      execute: () => {
        if (labShell) {
          labShell.activateById(auditPanel.id);
        } else {
          app.shell.activateById(auditPanel.id);
        }
        auditPanel.refresh();
      }
    });

    const renderCurrent = () => {
      const state = currentState();
      status.render(state);
      auditPanel.render(state);
    };

    tracker.widgetAdded.connect((_, panel) => {
      const link = new KernelLink(panel.sessionContext);
      links.set(panel, link);

      link.state.onChange(() => {
        if (tracker.currentWidget === panel) {
          renderCurrent();
        }
      });
      link.state.onCellMarker(marker => {
        for (const cell of panel.content.widgets) {
          if (cell.model.id === marker.cellId) {
            applyCellMarker(cell, marker);
          }
        }
        if (tracker.currentWidget === panel && auditPanel.isVisible) {
          auditPanel.refresh();
        }
      });
      link.state.onEscalation(escalation => {
        escalations.push(escalation, answer => link.answerEscalation(escalation.id, answer));
      });
      link.state.onEscalationResolved(id => escalations.resolvedElsewhere(id));

      panel.disposed.connect(() => {
        link.dispose();
        links.delete(panel);
        renderCurrent();
      });
    });

    // A re-executed cell loses its old markers until the kernel reports again.
    NotebookActions.executionScheduled.connect((_, { notebook, cell }) => {
      clearCellMarker(cell);
      for (const [panel, link] of links) {
        if (panel.content === notebook) {
          link.state.clearCell(cell.model.id);
        }
      }
    });

    tracker.currentChanged.connect(renderCurrent);
    auditPanel.render(null);
  }
};

export default plugin;
