//! Ids that become path components: the pod id (from the CRI annotation
//! `io.kubernetes.cri.sandbox-id`, which whoever writes the OCI spec
//! controls), container ids and the containerd namespace. Anything else than
//! `[A-Za-z0-9][A-Za-z0-9_.-]*`, bounded, without `..`, is refused before it
//! reaches a path, so that no id names a file outside its sandbox directory.

/// The longest id accepted (containerd's own limit is 76; a CRI id is 64).
pub const MAX_ID_LEN: usize = 128;

/// What an id names, for the error.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum IdKind {
    /// A pod (sandbox) id.
    Pod,
    /// A container id.
    Container,
    /// A containerd namespace.
    Namespace,
}

impl IdKind {
    fn name(self) -> &'static str {
        match self {
            IdKind::Pod => "pod id",
            IdKind::Container => "container id",
            IdKind::Namespace => "namespace",
        }
    }
}

/// An id that cannot be used in a path.
#[derive(Clone, Debug, PartialEq, Eq, thiserror::Error)]
#[error("invalid {} {id:?}: {reason} (allowed: [A-Za-z0-9][A-Za-z0-9_.-]*, at most {MAX_ID_LEN} characters, no \"..\")", kind.name())]
pub struct IdError {
    /// What it names.
    pub kind: IdKind,
    /// The id as given (cut to a readable length).
    pub id: String,
    /// What is wrong with it.
    pub reason: &'static str,
}

/// Checks that `id` is safe as one path component.
pub fn validate(kind: IdKind, id: &str) -> Result<(), IdError> {
    let refuse = |reason| IdError {
        kind,
        id: id.chars().take(MAX_ID_LEN + 16).collect(),
        reason,
    };
    let mut chars = id.chars();
    match chars.next() {
        None => return Err(refuse("it is empty")),
        Some(c) if !c.is_ascii_alphanumeric() => {
            return Err(refuse("it must start with a letter or a digit"))
        }
        Some(_) => {}
    }
    if id.len() > MAX_ID_LEN {
        return Err(refuse("it is too long"));
    }
    if !chars.all(|c| c.is_ascii_alphanumeric() || matches!(c, '_' | '.' | '-')) {
        return Err(refuse(
            "it has a character other than letters, digits, '_', '.', '-'",
        ));
    }
    if id.contains("..") {
        return Err(refuse("it contains \"..\""));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ordinary_ids_pass() {
        for id in [
            "p1",
            "pod1",
            "0123456789abcdef0123456789abcdef0123456789abcdef0123456789abcdef",
            "app_1.v2-x",
            "k8s.io",
        ] {
            validate(IdKind::Pod, id).unwrap();
        }
        validate(IdKind::Container, &"a".repeat(MAX_ID_LEN)).unwrap();
    }

    #[test]
    fn ids_that_could_escape_a_directory_are_refused_by_name() {
        for (id, reason) in [
            ("", "empty"),
            ("..", "start with"),
            ("../etc", "start with"),
            ("a/../../b", "character"),
            ("a/b", "character"),
            (".hidden", "start with"),
            ("-rf", "start with"),
            ("a..b", "\"..\""),
            ("a b", "character"),
            ("a\0b", "character"),
            ("pöd", "character"),
        ] {
            let err = validate(IdKind::Pod, id).unwrap_err();
            let text = err.to_string();
            assert!(
                text.contains("invalid pod id") && text.contains(reason),
                "{id:?}: {text}"
            );
            assert!(text.contains(&format!("{id:?}")), "names the id: {text}");
        }
        let err = validate(IdKind::Container, &"a".repeat(MAX_ID_LEN + 1)).unwrap_err();
        assert!(err.to_string().contains("invalid container id"), "{err}");
        assert_eq!(err.reason, "it is too long");
        let err = validate(IdKind::Namespace, "x/y").unwrap_err();
        assert!(
            err.to_string().starts_with("invalid namespace \"x/y\""),
            "{err}"
        );
    }
}
