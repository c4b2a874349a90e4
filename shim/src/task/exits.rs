//! A process's end (its exit status from the guest, its output drained, the exit event) and the
//! pod's: every process killed, then the sandbox torn down.

use containerd_shim_protos::api;
use containerd_shim_protos::events::task as ev;
use containerd_shim_protos::protobuf::MessageField;
use containerd_shim_protos::topics;
use std::sync::Arc;
use std::time::{Duration, SystemTime};

use tokio::sync::watch;

use super::errors::timestamp;
use super::guest::Guest;
use crate::sandbox::Sandbox;
use crate::service::Service;
use crate::state::ExitInfo;
use crate::stdio::Pumps;

/// How long a process's output may take to drain after it exited.
pub(crate) const DRAIN_LIMIT: Duration = Duration::from_secs(5);

impl Service {
    /// Waits for a process to exit (in the background), drains its output,
    /// records the exit and publishes it. For a container's own process the
    /// wait starts right away (a created container can be killed before start).
    pub(crate) fn spawn_waiter(
        &self,
        sandbox: Arc<Sandbox>,
        id: String,
        exec: String,
        mut pumps: Pumps,
    ) {
        let service = self.clone();
        let stdin = pumps.stdin.take();
        if let Ok(p) = self.inner.state.lock().unwrap().process(&id, &exec) {
            p.stdin = stdin;
        }
        tokio::spawn(async move {
            let waited = Guest::new(sandbox.agent()).wait(&id, &exec).await;
            let (status_code, pid) = match waited {
                Ok(r) => (u32::try_from(r.status).unwrap_or(0), r.pid),
                Err(e) => {
                    tracing::warn!(container = %id, exec = %exec, "waiting for the process: {e}");
                    (255, 0)
                }
            };
            pumps.drain(DRAIN_LIMIT).await;
            // A kill by the OOM killer is on the console by now: publish it before the exit.
            for oom in sandbox.scan_oom() {
                service.publish_oom(oom).await;
            }
            let exit = ExitInfo {
                status: status_code,
                at: SystemTime::now(),
            };
            let pid = {
                let mut state = service.inner.state.lock().unwrap();
                match state.process(&id, &exec) {
                    Ok(p) => {
                        if !p.machine.exited(exit) {
                            return;
                        }
                        let _ = p.exit.send(Some(exit));
                        if pid != 0 {
                            p.set_guest_pid(pid)
                        } else {
                            p.pid
                        }
                    }
                    Err(_) => return,
                }
            };
            tracing::info!(container = %id, exec = %exec, status = status_code, "process exited");
            service
                .publish(
                    topics::TASK_EXIT_EVENT_TOPIC,
                    ev::TaskExit {
                        container_id: id.clone(),
                        id: if exec.is_empty() {
                            id.clone()
                        } else {
                            exec.clone()
                        },
                        pid,
                        exit_status: status_code,
                        exited_at: MessageField::some(timestamp(exit.at)),
                        ..Default::default()
                    },
                )
                .await;
        });
    }

    /// Stops the pod when the shim gets SIGTERM or SIGINT (containerd-shim's
    /// own handler only logs them): its containers are killed (their exits
    /// are published), the VM is stopped, the sandbox directory removed, and
    /// the shim exits (its socket goes with it).
    pub fn stop_on_signals(&self) {
        use tokio::signal::unix::{signal, SignalKind};
        let (Ok(mut term), Ok(mut int)) = (
            signal(SignalKind::terminate()),
            signal(SignalKind::interrupt()),
        ) else {
            tracing::warn!("cannot watch SIGTERM/SIGINT");
            return;
        };
        let weak = Arc::downgrade(&self.inner);
        tokio::spawn(async move {
            let name = tokio::select! {
                _ = term.recv() => "SIGTERM",
                _ = int.recv() => "SIGINT",
            };
            let Some(inner) = weak.upgrade() else { return };
            tracing::info!("{name}: stopping the pod and exiting");
            let service = Service { inner };
            service.terminate().await;
            service.inner.exit.signal();
        });
    }

    /// Kills every process of the pod, waits briefly for their exits, then tears the sandbox down.
    pub(crate) async fn terminate(&self) {
        let _serial = self.inner.lifecycle.lock().await;
        let (sandbox, waits) = {
            let state = self.inner.state.lock().unwrap();
            let waits: Vec<(String, watch::Receiver<Option<ExitInfo>>)> = state
                .containers
                .iter()
                .filter(|(_, c)| c.init.machine.check_kill().is_ok())
                .map(|(id, c)| (id.clone(), c.init.exit.subscribe()))
                .collect();
            (state.sandbox.clone(), waits)
        };
        if let Some(sandbox) = sandbox {
            let guest = Guest::new(sandbox.agent());
            for (id, _) in &waits {
                let sigkill = libc::SIGKILL.unsigned_abs();
                if let Err(e) = guest.signal(id, "", sigkill, true).await {
                    tracing::warn!(container = %id, "SIGKILL at shutdown: {e}");
                }
            }
            let exits = wait_for_exits(waits);
            if tokio::time::timeout(DRAIN_LIMIT, exits).await.is_err() {
                tracing::warn!("some containers did not exit in time; stopping the VM anyway");
            }
        }
        self.teardown().await;
    }

    /// Stops the pod once its last container is gone (or at once with `now`), in the
    /// background: containerd gives Shutdown a few seconds, the shim exits when it is done.
    pub(crate) async fn shutdown_task(
        &self,
        req: api::ShutdownRequest,
    ) -> ttrpc::Result<api::Empty> {
        let _serial = self.inner.lifecycle.lock().await;
        let remaining = self.inner.state.lock().unwrap().containers.len();
        if remaining > 0 && !req.now {
            tracing::debug!(remaining, "shutdown: other containers of the pod remain");
            return Ok(api::Empty::new());
        }
        tracing::info!("shutdown: stopping the pod");
        let service = self.clone();
        tokio::spawn(async move {
            service.teardown().await;
            service.inner.exit.signal();
        });
        Ok(api::Empty::new())
    }

    pub(crate) async fn teardown(&self) {
        let sandbox = self.inner.state.lock().unwrap().sandbox.take();
        if let Some(s) = sandbox {
            s.stop().await;
        }
    }
}

/// Waits until every receiver has seen an exit.
async fn wait_for_exits(waits: Vec<(String, watch::Receiver<Option<ExitInfo>>)>) {
    for (_, mut rx) in waits {
        while rx.borrow_and_update().is_none() {
            if rx.changed().await.is_err() {
                break;
            }
        }
    }
}
