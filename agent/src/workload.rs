//! The last step of a container process: exec its program with the
//! environment in the spec's order.
//!
//! libcontainer keeps `process.env` in a `HashMap` and puts it in the
//! process's environment in hash order. runc passes the spec's list to
//! execve as it is (a repeated name keeps its last value, at the place of
//! its last occurrence) and appends `HOME` when the spec has none; so does
//! this executor.
//!
//! An exec'd process also loads the container's seccomp profile here (see
//! [`crate::exec_seccomp`]).

use std::collections::HashMap;
use std::ffi::{CString, OsString};
use std::os::unix::ffi::OsStringExt;

use libcontainer::workload::default::DefaultExecutor;
use libcontainer::workload::{Executor, ExecutorError, ExecutorValidationError};
use oci_spec::runtime::Spec;

use crate::exec_seccomp::ExecSeccomp;

#[derive(Clone)]
pub struct OrderedEnvExecutor {
    /// For an exec'd process: the container's seccomp profile.
    pub seccomp: Option<ExecSeccomp>,
}

impl Executor for OrderedEnvExecutor {
    fn exec(&self, spec: &Spec) -> Result<(), ExecutorError> {
        let process = spec.process().as_ref().ok_or(ExecutorError::InvalidArg)?;
        let args = process.args().as_ref().ok_or(ExecutorError::InvalidArg)?;
        let spec_env = process.env().as_deref().unwrap_or_default();
        // libcontainer's setup_envs has already made this process's
        // environment what the container gets (HOME added): keep its values,
        // in the spec's order.
        let env = ordered_env(spec_env, std::env::vars_os().collect());
        let program = c_string(args[0].clone().into_bytes())?;
        let argv = args
            .iter()
            .map(|a| c_string(a.clone().into_bytes()))
            .collect::<Result<Vec<_>, _>>()?;
        let envp = env
            .into_iter()
            .map(|e| c_string(e.into_vec()))
            .collect::<Result<Vec<_>, _>>()?;
        // execvpe searches the PATH of this process's environment, which is
        // the container's.
        let err = nix::unistd::execvpe(&program, &argv, &envp).unwrap_err();
        Err(ExecutorError::Execution(
            format!("error '{err}' executing {:?}", args[0]).into(),
        ))
    }

    /// Runs in the new process after libcontainer set its user and capabilities, before it
    /// reports ready: a failure here fails the exec.
    fn validate(&self, spec: &Spec) -> Result<(), ExecutorValidationError> {
        match with_empty_path(spec) {
            Some(spec) => DefaultExecutor {}.validate(&spec)?,
            None => DefaultExecutor {}.validate(spec)?,
        }
        if let Some(seccomp) = &self.seccomp {
            crate::exec_seccomp::apply(seccomp)
                .map_err(ExecutorValidationError::ArgValidationError)?;
        }
        Ok(())
    }
}

/// libcontainer's check refuses a process whose environment has no PATH, even one that names
/// its program by a path (the pause image's `/pause`); runc runs that, and looks a bare name up
/// in an empty PATH (not found). A spec without PATH is checked as if it had an empty one;
/// None when it has one.
fn with_empty_path(spec: &Spec) -> Option<Spec> {
    let process = spec.process().as_ref()?;
    let env = process.env().clone().unwrap_or_default();
    if env.iter().any(|e| e.starts_with("PATH=")) {
        return None;
    }
    let mut process = process.clone();
    process.set_env(Some(env.into_iter().chain(["PATH=".to_string()]).collect()));
    let mut spec = spec.clone();
    spec.set_process(Some(process));
    Some(spec)
}

/// `NAME=value` entries: the spec's names in the spec's order (a repeated
/// name where it occurs last), then the names the spec lacks, sorted; the
/// values are the ones in `actual`, the environment libcontainer set up.
fn ordered_env(spec_env: &[String], actual: Vec<(OsString, OsString)>) -> Vec<OsString> {
    let mut values: HashMap<OsString, OsString> = actual.into_iter().collect();
    let names: Vec<OsString> = spec_env
        .iter()
        .map(|e| OsString::from(e.split_once('=').map_or(e.as_str(), |(name, _)| name)))
        .collect();
    let mut out = Vec::with_capacity(values.len());
    for (i, name) in names.iter().enumerate() {
        let repeated_later = names[i + 1..].contains(name);
        if repeated_later {
            continue;
        }
        if let Some(value) = values.remove(name) {
            out.push(entry(name.clone(), value));
        }
    }
    let mut rest: Vec<(OsString, OsString)> = values.into_iter().collect();
    rest.sort();
    out.extend(rest.into_iter().map(|(name, value)| entry(name, value)));
    out
}

fn entry(mut name: OsString, value: OsString) -> OsString {
    name.push("=");
    name.push(value);
    name
}

fn c_string(bytes: Vec<u8>) -> Result<CString, ExecutorError> {
    CString::new(bytes).map_err(|_| ExecutorError::InvalidArg)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn a_spec_without_path_is_checked_with_an_empty_one() {
        let mut spec = Spec::default();
        let mut process = spec.process().clone().unwrap();
        process.set_env(Some(vec!["A=1".into()]));
        spec.set_process(Some(process.clone()));
        let env = |s: &Spec| s.process().as_ref().unwrap().env().clone().unwrap();
        assert_eq!(env(&with_empty_path(&spec).unwrap()), ["A=1", "PATH="]);
        process.set_env(Some(vec!["PATH=/bin".into()]));
        spec.set_process(Some(process));
        assert!(with_empty_path(&spec).is_none());
    }

    fn os(pairs: &[(&str, &str)]) -> Vec<(OsString, OsString)> {
        pairs
            .iter()
            .map(|(k, v)| ((*k).into(), (*v).into()))
            .collect()
    }

    #[test]
    fn spec_order_then_the_names_libcontainer_added() {
        let spec: Vec<String> = ["PATH=/bin", "ZED=1", "ALPHA=2", "MID=a=b", "ALPHA=4"]
            .map(String::from)
            .to_vec();
        let actual = os(&[
            ("ALPHA", "4"),
            ("HOME", "/root"),
            ("MID", "a=b"),
            ("PATH", "/bin"),
            ("ZED", "1"),
        ]);
        let got = ordered_env(&spec, actual);
        assert_eq!(
            got,
            ["PATH=/bin", "ZED=1", "MID=a=b", "ALPHA=4", "HOME=/root"].map(OsString::from)
        );
    }
}
