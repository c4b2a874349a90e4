//! The pod's VM watched from the shim: a VM that stops under its pod (a guest kernel panic, a
//! triple fault, the VMM or a helper process gone) closes no socket toward the agent, so
//! without a look from outside a request would wait out its deadline and a process wait would
//! never end. Once the VM stopped, the agent connection is told why (with the console's last
//! lines): every call on the guest ends at once with that, and each process still waited on is
//! published as exited (255, as for any failed wait).

use std::path::Path;
use std::sync::{Arc, Weak};
use std::time::Duration;

use tokio::task::JoinHandle;

use super::{console_tail, Sandbox};
use crate::state::SandboxState;

/// How often the VM is looked at.
const INTERVAL: Duration = Duration::from_millis(250);

/// Looks at `sandbox`'s VM every [`INTERVAL`] until it stopped, the pod is being stopped, or
/// the sandbox is gone.
pub(super) fn watch_vm(sandbox: Weak<Sandbox>) -> JoinHandle<()> {
    tokio::spawn(async move {
        loop {
            tokio::time::sleep(INTERVAL).await;
            let Some(sandbox) = sandbox.upgrade() else {
                return;
            };
            let exited = sandbox.vm_exited().await;
            if sandbox.stopping() {
                // The VM stops because it was asked to; the calls end as the VMM goes.
                return;
            }
            if let Some(why) = exited {
                vm_stopped(&sandbox, why);
                return;
            }
        }
    })
}

fn vm_stopped(sandbox: &Arc<Sandbox>, why: String) {
    let console = sandbox.paths.console();
    let mut why = why;
    if let Some(panic) = kernel_panic(&console) {
        why = format!("{why}; the guest kernel said: {panic}");
    }
    let tail = console_tail(&console);
    if !tail.is_empty() {
        why = format!("{why}; the guest console ends with: {tail}");
    }
    tracing::error!(pod = %sandbox.pod, "the VM stopped under the pod: {why}");
    sandbox.agent.vm_stopped(why);
}

/// The guest kernel's last panic line on its console, if any: the console's tail is often the
/// end of the backtrace that follows it.
fn kernel_panic(console: &Path) -> Option<String> {
    let text = std::fs::read(console).ok()?;
    let text = String::from_utf8_lossy(&text);
    let line = text.lines().rev().find(|l| l.contains("Kernel panic - "))?;
    Some(line.trim().to_string())
}

impl Sandbox {
    /// Whether the pod is being stopped, or is.
    fn stopping(&self) -> bool {
        matches!(
            self.machine.lock().unwrap().state(),
            SandboxState::Stopping | SandboxState::Stopped
        )
    }
}
