//! The calls that act on a running task's processes: signals, the terminal's size, the end of
//! stdin, and new resources.

use containerd_shim_protos::api;
use ttrpc::Code;

use super::errors::status;
use super::guest::Guest;
use super::registry::Process;
use crate::service::Service;

impl Service {
    pub(crate) async fn kill_task(&self, req: api::KillRequest) -> ttrpc::Result<api::Empty> {
        let (id, exec) = (&req.id, &req.exec_id);
        let signal = async |guest: Guest| guest.signal(id, exec, req.signal, req.all).await;
        self.on_guest(id, exec, still_running, signal).await
    }

    pub(crate) async fn resize_pty_task(
        &self,
        req: api::ResizePtyRequest,
    ) -> ttrpc::Result<api::Empty> {
        let (id, exec) = (&req.id, &req.exec_id);
        let resize = async |guest: Guest| guest.resize(id, exec, req.height, req.width).await;
        self.on_guest(id, exec, |_| Ok(()), resize).await
    }

    /// `call` on the guest of process `exec` of container `id`, once `check` allows it.
    async fn on_guest(
        &self,
        id: &str,
        exec: &str,
        check: impl FnOnce(&Process) -> ttrpc::Result<()>,
        call: impl AsyncFnOnce(Guest) -> ttrpc::Result<()>,
    ) -> ttrpc::Result<api::Empty> {
        call(self.guest_of_process(id, exec, check)?).await?;
        Ok(api::Empty::new())
    }

    pub(crate) async fn close_io_task(
        &self,
        req: api::CloseIORequest,
    ) -> ttrpc::Result<api::Empty> {
        if !req.stdin {
            return Ok(api::Empty::new());
        }
        let (sandbox, pump) = {
            let mut state = self.inner.state.lock().unwrap();
            let sandbox = state.sandbox()?;
            (sandbox, state.process(&req.id, &req.exec_id)?.stdin.take())
        };
        if let Some(mut pump) = pump {
            // The shim lets go of the FIFO and answers at once, as containerd's runc shim does:
            // the pump forwards what is left and ends stdin in the guest when the last writer is
            // gone, however long the process takes to read it. (ctr calls CloseIO from inside
            // its read of the EOF and closes its own writer only once CloseIO has returned:
            // waiting here for that writer cost every ctr 2 s and then cut off what the pump
            // had not forwarded yet.)
            drop(pump.hold.take());
            return Ok(api::Empty::new());
        }
        crate::stdio::close_stdin(sandbox.agent(), &req.id, &req.exec_id).await;
        Ok(api::Empty::new())
    }

    pub(crate) async fn update_task(
        &self,
        req: api::UpdateTaskRequest,
    ) -> ttrpc::Result<api::Empty> {
        let guest = self.guest_of(&req.id)?;
        let resources = req
            .resources
            .as_ref()
            .map(|r| r.value.clone())
            .ok_or_else(|| status(Code::INVALID_ARGUMENT, "update without resources"))?;
        guest.update(&req.id, resources).await?;
        Ok(api::Empty::new())
    }
}

/// A signal goes only to a process that has not finished (containerd takes NOT_FOUND as gone).
fn still_running(p: &Process) -> ttrpc::Result<()> {
    p.machine
        .check_kill()
        .map_err(|_| status(Code::NOT_FOUND, "process already finished"))
}
