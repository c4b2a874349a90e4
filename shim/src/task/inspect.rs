//! The calls that read a task's state: its processes' state, their exits, their pids, and the
//! shim itself (connect).

use containerd_shim_protos::api;
use containerd_shim_protos::protobuf::MessageField;
use ttrpc::Code;

use super::errors::{status, timestamp};
use super::registry::map_status;
use crate::service::Service;

impl Service {
    pub(crate) async fn state_task(
        &self,
        req: api::StateRequest,
    ) -> ttrpc::Result<api::StateResponse> {
        let mut state = self.inner.state.lock().unwrap();
        let bundle = state.container(&req.id)?.bundle.clone();
        let p = state.process(&req.id, &req.exec_id)?;
        let s = p.machine.state();
        let mut resp = api::StateResponse {
            id: req.id.clone(),
            bundle,
            pid: p.pid,
            status: map_status(s).into(),
            stdin: p.stdio.stdin.clone(),
            stdout: p.stdio.stdout.clone(),
            stderr: p.stdio.stderr.clone(),
            terminal: p.stdio.terminal,
            exec_id: req.exec_id.clone(),
            ..Default::default()
        };
        if let Some(e) = s.exit() {
            resp.exit_status = e.status;
            resp.exited_at = MessageField::some(timestamp(e.at));
        }
        Ok(resp)
    }

    pub(crate) async fn wait_task(
        &self,
        req: api::WaitRequest,
    ) -> ttrpc::Result<api::WaitResponse> {
        let mut rx = {
            let mut state = self.inner.state.lock().unwrap();
            state.process(&req.id, &req.exec_id)?.exit.subscribe()
        };
        let exit = loop {
            if let Some(e) = *rx.borrow_and_update() {
                break e;
            }
            if rx.changed().await.is_err() {
                return Err(status(Code::NOT_FOUND, "the process went away"));
            }
        };
        Ok(api::WaitResponse {
            exit_status: exit.status,
            exited_at: MessageField::some(timestamp(exit.at)),
            ..Default::default()
        })
    }

    pub(crate) async fn pids_task(
        &self,
        req: api::PidsRequest,
    ) -> ttrpc::Result<api::PidsResponse> {
        let pids = self.guest_of(&req.id)?.pids(&req.id).await?;
        let info = |pid| api::ProcessInfo {
            pid,
            ..Default::default()
        };
        Ok(api::PidsResponse {
            processes: pids.into_iter().map(info).collect(),
            ..Default::default()
        })
    }

    pub(crate) async fn connect_task(
        &self,
        req: api::ConnectRequest,
    ) -> ttrpc::Result<api::ConnectResponse> {
        let mut state = self.inner.state.lock().unwrap();
        let task_pid = state.container(&req.id).map(|c| c.init.pid).unwrap_or(0);
        Ok(api::ConnectResponse {
            shim_pid: std::process::id(),
            task_pid,
            version: env!("CARGO_PKG_VERSION").into(),
            ..Default::default()
        })
    }
}
